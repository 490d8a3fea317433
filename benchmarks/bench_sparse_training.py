"""Training steps/s with compressed sparse layers against dense-masked training, same process, alternating.

    python benchmarks/bench_sparse_training.py [--algos iql,td3bc,cql] [--sparsities 0,0.8,0.9,0.95,0.98,0.99]
                                               [--threads 1,2] [--rounds 5] [--seconds 1.0] [--mode auto]
                                               [--json results.json] [--plot docs/sparse_training.png]
    python benchmarks/bench_sparse_training.py --replot results.json --plot docs/sparse_training.png

For each algorithm and sparsity, two agents are pruned identically at initialization (random
pruner, `--scope` global by default, seed 0) on bench_training's synthetic hopper-sized dataset (obs 17, act 6,
batch 256): `dense-masked` trains as today (masks re-zeroed after every optimizer step), `sparse`
goes through `apply_sparse_kernels` (each layer converted where its measured call is faster). Each
round runs every contender for about `--seconds` in turn, in rotated order; the table gives the
median steps/s and the median per-round ratio sparse / dense-masked, with the layers converted.
`--json` also writes the rows with the machine's load average; `--plot` draws steps/s against
sparsity per algorithm and thread count (from this run, or from a saved `--replot` file).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_training import BATCH, Contender, WithThreads, measure, ratio, synthetic_dataset  # noqa: E402

from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm  # noqa: E402
from sparse_offline_rl.io import atomic_save_figure, atomic_write_json  # noqa: E402
from sparse_offline_rl.data.buffer import TransitionBuffer  # noqa: E402
from sparse_offline_rl.pruning import prune_at_initialization  # noqa: E402
from sparse_offline_rl.sparse.kernels import apply_sparse_kernels, choose_kernels, kernels_of  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class Pruned(Contender):
    """One agent pruned at initialization, trained by `algo.update(buffer.sample(B))`; `mode` None
    keeps it dense-masked, else its layers are converted as `choose_kernels(mode)` says (the trainer's path)."""

    def __init__(self, name: str, dataset: Any, sparsity: float, pruner: dict[str, Any], mode: str | None) -> None:
        torch.manual_seed(0)
        spec = ProblemSpec(dataset.obs_dim, dataset.act_dim, 1.0, total_steps=1_000_000)
        self.algo = make_algorithm(name, spec, {"name": name})
        self.buffer = TransitionBuffer(dataset)
        self.buffer.seed(0)
        self.masks, _ = prune_at_initialization(self.algo, lambda: self.buffer.sample(BATCH), pruner,
                                                {n: sparsity for n in self.algo.networks()}, seed=0)
        self.choice: dict[str, dict[str, str]] = {}
        if mode is not None and self.masks:
            self.choice = kernels_of(choose_kernels(self.algo, self.masks, BATCH, mode))
            apply_sparse_kernels(self.algo, self.masks, self.choice)
        self.label = "dense-masked" if mode is None else "sparse"

    def step(self) -> None:
        self.algo.update(self.buffer.sample(BATCH))

    def converted(self) -> str:
        kinds = [k for layers in self.choice.values() for k in layers.values()]
        return f"{kinds.count('sparse')}/{len(kinds)}"


def plot(result: dict[str, Any], path: str) -> None:
    """Steps/s against sparsity, dense-masked and sparse, one panel per algorithm (a line per thread
    count), the sparse / dense-masked ratio written above each sparse point. Sparsities are evenly
    spaced on the axis: the interesting ones crowd near 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    fig, axes = plt.subplots(1, len(algos), figsize=(4.2 * len(algos), 3.6), squeeze=False)
    levels = sorted({r["sparsity"] for r in rows})
    for ax, algo in zip(axes[0], algos):
        for threads in sorted({r["threads"] for r in rows if r["algo"] == algo}):
            mine = sorted((r for r in rows if r["algo"] == algo and r["threads"] == threads), key=lambda r: r["sparsity"])
            x = [levels.index(r["sparsity"]) for r in mine]
            suffix = f", {threads} thread{'s' if threads > 1 else ''}"
            ax.plot(x, [r["dense_masked"] for r in mine], "o--", color="grey", label="dense-masked" + suffix)
            ax.plot(x, [r["sparse"] for r in mine], "o-", color="C0" if threads == 1 else "C1", label="sparse kernels" + suffix)
            for xi, r in zip(x, mine):
                ax.annotate(f"{r['ratio']:.2f}x", (xi, r["sparse"]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
        ax.set_title(algo)
        ax.set_xticks(range(len(levels)), [f"{v:g}" for v in levels])
        ax.set_xlabel("sparsity")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training steps/s")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    load = result["load_average"]
    fig.suptitle(f"batch {BATCH}, random pruner, {result['cpus']} CPUs ({result['torch']}), "
                 f"load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algos", default="iql,td3bc,cql")
    ap.add_argument("--sparsities", default="0,0.8,0.9,0.95,0.98,0.99")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--mode", default="auto", choices=["auto", "sparse", "dense"])
    ap.add_argument("--scope", default="global", choices=["global", "layer", "erk"], help="random pruner's scope")
    ap.add_argument("--json", default=None, help="also write the rows and the load average here")
    ap.add_argument("--plot", default=None, help="PNG of steps/s against sparsity")
    ap.add_argument("--replot", default=None, help="draw --plot from this saved --json file instead of measuring")
    args = ap.parse_args(argv)
    if args.replot:
        if not args.plot:
            ap.error("--replot needs --plot")
        with open(args.replot) as f:
            plot(json.load(f), args.plot)
        return
    dataset = synthetic_dataset()
    # At 0.99 a global threshold can leave a 1x256 head empty; timing does not mind.
    pruner = {"name": "random", "scope": args.scope, "allow_layer_collapse": True}
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"{'algo':6} {'sparsity':>8} {'thr':>3} | {'dense-masked':>12} {'sparse':>8} {'ratio':>6} | layers sparse")
    rows: list[dict[str, Any]] = []
    for name in args.algos.split(","):
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)  # the per-layer choice is measured at this thread count
                dense = Pruned(name, dataset, sparsity, pruner, None)
                sparse = Pruned(name, dataset, sparsity, pruner, args.mode)
                contenders = [WithThreads(dense, threads), WithThreads(sparse, threads)]
                rates = measure(contenders, args.rounds, args.seconds)
                d, s = (c.label for c in contenders)
                rows.append({"algo": name, "sparsity": sparsity, "threads": threads, "dense_masked": statistics.median(rates[d]),
                             "sparse": statistics.median(rates[s]), "ratio": ratio(rates, s, d), "layers_sparse": sparse.converted()})
                r = rows[-1]
                print(f"{name:6} {sparsity:8.2f} {threads:3d} | {r['dense_masked']:12.1f} {r['sparse']:8.1f} {r['ratio']:5.2f}x "
                      f"| {r['layers_sparse']}", flush=True)
    load1 = os.getloadavg()
    print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    result = {"command": " ".join(["python", "benchmarks/bench_sparse_training.py", *(argv if argv is not None else sys.argv[1:])]),
              "torch": torch.__version__, "cpus": os.cpu_count(), "mode": args.mode, "rounds": args.rounds, "seconds": args.seconds,
              "load_average": {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in load1]}, "rows": rows}
    if args.json:
        atomic_write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
