"""Wall time to a target return: Adam at batch 256 against LAMB at large batches (issue 17, item 3).

    python benchmarks/bench_lamb.py --target-return 900,1000 --max-seconds 300 --eval-every-samples 256000 \\
        --lamb-batches 2048,4096,8192 --lamb-lr 3e-3 --seeds 0,1,2 [--algo iql] [--sparsity 0.95] [--json out.json]

Each contender is one ordinary run through the trainer (`optim=`, `batch_size=` and, for LAMB, every
network's learning rate set to `--lamb-lr`), on `--dataset` (default hopper-medium), evaluated every
`--eval-every` steps, or every `--eval-every-samples` transitions (the same grid of samples, so of
compute, for every batch size: 256000 is Adam's 1000 steps, batch 8192's 31); it records the first
evaluation at or above each target (`--target-return`, comma-separated) and stops at the highest, at
`--max-steps` or when its training time passes `--max-seconds`. The time reported is training time only: evaluations, diagnostics and checkpoints are left out (a step
that follows one is counted at the previous step's duration). On a CPU a large batch makes each
update do more work per call overhead, so fewer, slower steps can still reach the target sooner;
the table says whether they do. With several `--seeds` every contender runs once per seed (the
seed sets pruning, initialisation and batches alike) and a last table gives, per contender, how many
seeds reached the target and the median and range of their times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sparse_offline_rl.io import atomic_write_json  # noqa: E402
from sparse_offline_rl.training import setup as run_setup, trainer  # noqa: E402

LR_KEYS = ("actor_lr", "critic_lr", "value_lr")  # whichever of them the algorithm has


class Reached(Exception):
    """Raised from the evaluation that first reaches the highest target: the run has answered."""


class OutOfTime(Exception):
    """Raised from the step whose training time passes the contender's budget."""


class TrainingClock:
    """Training seconds per step, read from a per-step callback: the gap between two callbacks,
    except after an evaluation or checkpoint step, whose gap is charged as the previous step's. The
    first step (warm-up included) is not counted."""

    def __init__(self, pause_every: int, budget: float = float("inf")) -> None:
        self.pause_every, self.seconds, self.last, self.step_seconds = pause_every, 0.0, None, 0.0
        self.budget = budget
        self.paused, self.step, self.counted = False, 0, 0  # counted: the steps `seconds` covers

    def __call__(self, info) -> None:
        now = time.perf_counter()
        if self.last is not None:
            if not self.paused:
                self.step_seconds = now - self.last
            self.seconds += self.step_seconds
            self.counted += 1
        self.last, self.paused, self.step = now, info.step % self.pause_every == 0, info.step
        if self.seconds > self.budget:
            raise OutOfTime


def run_contender(base: dict, optim: str, batch: int, lr: float | None, targets: list[float], run_dir: Path,
                  eval_every_samples: int | None = None, max_seconds: float = float("inf")) -> dict:
    cfg = {**base, "optim": optim, "batch_size": batch, "algo": dict(base["algo"]), "eval": dict(base["eval"])}
    if lr is not None:
        cfg["algo"].update({k: lr for k in LR_KEYS if k in cfg["algo"]})
    if eval_every_samples:
        cfg["eval"]["every"] = max(1, round(eval_every_samples / batch))
    clock = TrainingClock(min(int(cfg["eval"]["every"]), int(cfg["checkpoint_every"])), max_seconds)
    evals: list[dict] = []
    reached: dict[str, dict] = {}  # target -> the first evaluation at or above it
    evaluate = run_setup.evaluate  # what Run.run_eval calls

    def evaluate_and_check(algo, *args, **kwargs):
        result, episodes = evaluate(algo, *args, **kwargs)
        evals.append({"step": clock.step, "train_seconds": round(clock.seconds, 2), "return_mean": result["return_mean"],
                      "normalized_score_mean": result["normalized_score_mean"]})
        for target in targets:
            if result["return_mean"] >= target and f"{target:g}" not in reached:
                reached[f"{target:g}"] = {"steps": clock.step, "train_seconds": round(clock.seconds, 2)}
        if len(reached) == len(targets):
            raise Reached
        return result, episodes

    run_setup.evaluate = evaluate_and_check
    try:
        trainer.train(cfg, run_dir, callbacks=[clock])
    except (Reached, OutOfTime):
        pass
    finally:
        run_setup.evaluate = evaluate
    return {"optim": optim, "batch_size": batch, "lr": lr, "eval_every": int(cfg["eval"]["every"]),
            "reached": reached, "steps": clock.step, "train_seconds": round(clock.seconds, 2),
            "steps_per_sec": round(clock.counted / clock.seconds, 1) if clock.seconds else None,
            "best_return": max((e["return_mean"] for e in evals), default=None), "evals": evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target-return", required=True, help="mean evaluation return(s) to reach, comma-separated")
    ap.add_argument("--max-steps", type=int, default=200_000, help="a contender that has not reached them by then stops")
    ap.add_argument("--max-seconds", type=float, default=float("inf"), help="each contender's training-time budget")
    ap.add_argument("--eval-every-samples", type=int, default=None,
                    help="evaluate every this many transitions (eval.every = this / batch), instead of --eval-every steps")
    ap.add_argument("--adam-batch", type=int, default=256)
    ap.add_argument("--lamb-batches", default="2048,4096,8192")
    ap.add_argument("--lamb-lr", type=float, default=3e-3, help="every network's learning rate under LAMB")
    ap.add_argument("--algo", default="iql")
    ap.add_argument("--dataset", default="hopper-medium")
    ap.add_argument("--env", default="hopper")
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--pruner", default="snip")
    ap.add_argument("--seeds", default="0", help="comma-separated; every contender runs once per seed")
    ap.add_argument("--eval-every", type=int, default=5000)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="run directories go here (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    overrides = [f"algo={args.algo}", f"pruner={args.pruner}", f"env={args.env}", f"dataset={args.dataset}",
                 f"sparsity={args.sparsity}", f"steps={args.max_steps}",
                 f"eval.every={args.eval_every}", f"eval.episodes={args.episodes}",
                 f"checkpoint_every={args.max_steps}", "tensorboard=false", "progress=false", "verbose=false"]
    if args.threads:
        overrides.append(f"threads={args.threads}")
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        base = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_lamb_"))
    contenders = [("adam", args.adam_batch, None)] + [("lamb", int(b), args.lamb_lr) for b in args.lamb_batches.split(",")]
    targets = sorted(float(t) for t in args.target_return.split(","))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for optim, batch, lr in contenders:
            row = {"seed": seed, **run_contender({**base, "seed": seed}, optim, batch, lr, targets,
                                                 out / f"{optim}-b{batch}-seed{seed}", args.eval_every_samples,
                                                 args.max_seconds)}
            rows.append(row)
            got = ", ".join(f"{t} at step {r['steps']} ({r['train_seconds']} s)" for t, r in row["reached"].items()) or "none"
            print(f"seed {seed} {optim:5s} batch {batch:5d} lr {lr or 'default':>8}: targets reached: {got}; "
                  f"stopped at step {row['steps']} after {row['train_seconds']} s of training "
                  f"({row['steps_per_sec']} steps/s), best return {row['best_return']:.1f}", flush=True)
    for target in (f"{t:g}" for t in targets):
        print(f"\n| optimizer | batch | seeds reaching {target} | median seconds (of those) | range | median steps |")
        print("|---|---|---|---|---|---|")
        for optim, batch, _ in contenders:
            mine = [r for r in rows if r["optim"] == optim and r["batch_size"] == batch]
            done = [r["reached"][target] for r in mine if target in r["reached"]]
            secs, steps = [d["train_seconds"] for d in done], [d["steps"] for d in done]
            print(f"| {optim} | {batch} | {len(done)} / {len(mine)} | "
                  + (f"{statistics.median(secs):.1f} | {min(secs):.1f}-{max(secs):.1f} | {statistics.median(steps):g} |"
                     if done else "- | - | - |"))
    if args.json:
        meta = {"args": vars(args), "loadavg": os.getloadavg(), "threads": args.threads}
        atomic_write_json(Path(args.json), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
