"""Wall time to a target return: Adam at batch 256 against LAMB at large batches (issue 17, item 3).

    python benchmarks/bench_lamb.py --target-return 350 --max-steps 200000 \\
        --lamb-batches 2048,4096,8192 --lamb-lr 3e-3 --seeds 0,1,2 [--algo iql] [--sparsity 0.95] [--json out.json]

Each contender is one ordinary run through the trainer (`optim=`, `batch_size=` and, for LAMB, every
network's learning rate set to `--lamb-lr`), on `--dataset` (default hopper-medium), evaluated every
`--eval-every` steps; it stops at the first evaluation whose mean return reaches the target. The
time reported is training time only: evaluations, diagnostics and checkpoints are left out (a step
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
from sparse_offline_rl.training import trainer  # noqa: E402

LR_KEYS = ("actor_lr", "critic_lr", "value_lr")  # whichever of them the algorithm has


class Reached(Exception):
    """Raised from the evaluation that first reaches the target: the run has answered."""


class TrainingClock:
    """Training seconds per step, read from a per-step callback: the gap between two callbacks,
    except after an evaluation or checkpoint step, whose gap is charged as the previous step's. The
    first step (warm-up included) is not counted."""

    def __init__(self, pause_every: int) -> None:
        self.pause_every, self.seconds, self.last, self.step_seconds = pause_every, 0.0, None, 0.0
        self.paused, self.step, self.counted = False, 0, 0  # counted: the steps `seconds` covers

    def __call__(self, info) -> None:
        now = time.perf_counter()
        if self.last is not None:
            if not self.paused:
                self.step_seconds = now - self.last
            self.seconds += self.step_seconds
            self.counted += 1
        self.last, self.paused, self.step = now, info.step % self.pause_every == 0, info.step


def run_contender(base: dict, optim: str, batch: int, lr: float | None, target: float, run_dir: Path) -> dict:
    cfg = {**base, "optim": optim, "batch_size": batch, "algo": dict(base["algo"])}
    if lr is not None:
        cfg["algo"].update({k: lr for k in LR_KEYS if k in cfg["algo"]})
    clock = TrainingClock(min(int(cfg["eval"]["every"]), int(cfg["checkpoint_every"])))
    evals: list[dict] = []
    evaluate = trainer.evaluate

    def evaluate_and_check(algo, *args, **kwargs):
        result, episodes = evaluate(algo, *args, **kwargs)
        evals.append({"step": clock.step, "train_seconds": clock.seconds, "return_mean": result["return_mean"],
                      "normalized_score_mean": result["normalized_score_mean"]})
        if result["return_mean"] >= target:
            raise Reached
        return result, episodes

    trainer.evaluate = evaluate_and_check
    try:
        trainer.train(cfg, run_dir, callbacks=[clock])
        reached = False
    except Reached:
        reached = True
    finally:
        trainer.evaluate = evaluate
    steps = clock.step
    return {"optim": optim, "batch_size": batch, "lr": lr, "reached": reached,
            "steps": steps, "train_seconds": round(clock.seconds, 2),
            "steps_per_sec": round(clock.counted / clock.seconds, 1) if clock.seconds else None,
            "best_return": max((e["return_mean"] for e in evals), default=None), "evals": evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target-return", type=float, required=True, help="mean evaluation return to reach")
    ap.add_argument("--max-steps", type=int, default=200_000, help="a contender that has not reached it by then stops")
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
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for optim, batch, lr in contenders:
            row = {"seed": seed, **run_contender({**base, "seed": seed}, optim, batch, lr, args.target_return,
                                                 out / f"{optim}-b{batch}-seed{seed}")}
            rows.append(row)
            print(f"seed {seed} {optim:5s} batch {batch:5d} lr {lr or 'default':>8}: "
                  f"{'reached' if row['reached'] else 'NOT reached'} {args.target_return:g} after {row['steps']} steps, "
                  f"{row['train_seconds']} s of training ({row['steps_per_sec']} steps/s), best return {row['best_return']}",
                  flush=True)
    print(f"\n| optimizer | batch | seeds reaching {args.target_return:g} | median seconds (reached) | range | median steps |")
    print("|---|---|---|---|---|---|")
    for optim, batch, _ in contenders:
        mine = [r for r in rows if r["optim"] == optim and r["batch_size"] == batch]
        done = [r for r in mine if r["reached"]]
        secs, steps = [r["train_seconds"] for r in done], [r["steps"] for r in done]
        print(f"| {optim} | {batch} | {len(done)} / {len(mine)} | "
              + (f"{statistics.median(secs):.1f} | {min(secs):.1f}-{max(secs):.1f} | {statistics.median(steps):g} |"
                 if done else "- | - | - |"))
    if args.json:
        meta = {"args": vars(args), "loadavg": os.getloadavg(), "threads": args.threads}
        atomic_write_json(Path(args.json), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
