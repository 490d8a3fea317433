"""Training steps/s with compressed sparse layers against dense-masked training, same process, alternating.

    python benchmarks/bench_sparse_training.py [--algos iql,td3bc,cql] [--sparsities 0,0.8,0.9,0.95,0.98,0.99]
                                               [--threads 1,2] [--rounds 5] [--seconds 1.0] [--mode auto]

For each algorithm and sparsity, two agents are pruned identically at initialization (random
pruner, `--scope` global by default, seed 0) on bench_training's synthetic hopper-sized dataset (obs 17, act 6,
batch 256): `dense-masked` trains as today (masks re-zeroed after every optimizer step), `sparse`
goes through `apply_sparse_kernels` (each layer converted where its measured call is faster). Each
round runs every contender for about `--seconds` in turn, in rotated order; the table gives the
median steps/s and the median per-round ratio sparse / dense-masked, with the layers converted.
"""
from __future__ import annotations

import argparse
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
from sparse_offline_rl.data.buffer import TransitionBuffer  # noqa: E402
from sparse_offline_rl.pruning import prune_at_initialization  # noqa: E402
from sparse_offline_rl.pruning.sparse_choice import apply_sparse_kernels, choose_kernels, kernels_of  # noqa: E402

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algos", default="iql,td3bc,cql")
    ap.add_argument("--sparsities", default="0,0.8,0.9,0.95,0.98,0.99")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--mode", default="auto", choices=["auto", "sparse", "dense"])
    ap.add_argument("--scope", default="global", choices=["global", "layer", "erk"], help="random pruner's scope")
    args = ap.parse_args(argv)
    dataset = synthetic_dataset()
    # At 0.99 a global threshold can leave a 1x256 head empty; timing does not mind.
    pruner = {"name": "random", "scope": args.scope, "allow_layer_collapse": True}
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"{'algo':6} {'sparsity':>8} {'thr':>3} | {'dense-masked':>12} {'sparse':>8} {'ratio':>6} | layers sparse")
    for name in args.algos.split(","):
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)  # the per-layer choice is measured at this thread count
                dense = Pruned(name, dataset, sparsity, pruner, None)
                sparse = Pruned(name, dataset, sparsity, pruner, args.mode)
                contenders = [WithThreads(dense, threads), WithThreads(sparse, threads)]
                rates = measure(contenders, args.rounds, args.seconds)
                d, s = (c.label for c in contenders)
                print(f"{name:6} {sparsity:8.2f} {threads:3d} | {statistics.median(rates[d]):12.1f} "
                      f"{statistics.median(rates[s]):8.1f} {ratio(rates, s, d):5.2f}x | {sparse.converted()}", flush=True)
    load1 = os.getloadavg()
    print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
