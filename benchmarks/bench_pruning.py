"""Pruning-at-initialization cost on IQL-sized networks (obs 17, act 6), printed as a table.

    python benchmarks/bench_pruning.py [--sparsity 0.9] [--repeats 3] [--threads 2]

Networks: actor 17-256-256-6 (Gaussian, state-independent log-std), twin critics (23-256-256-1)x2,
value 17-256-256-1, with IQL's saliency losses (critic TD against r + gamma V(s'), value expectile
0.7, actor advantage-weighted log-likelihood, beta 3, weights clamped at 100) on one batch of 256.
The networks and saliency losses are the project's own IQL (`make_algorithm("iql", ...)`). Targets: SNIP / GraSP < 2 s, SynFlow
(100 rounds) < 10 s for all networks together. Also: mask enforcement (`MaskSet.apply` over online
weights, target weights and Adam state) against one Adam step and one full IQL-style update.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
from sparse_offline_rl.algorithms import OfflineAlgorithm, ProblemSpec, make_algorithm
from sparse_offline_rl.data.buffer import Batch
from sparse_offline_rl.pruning import prune_at_initialization

OBS, ACT, BATCH = 17, 6, 256


def fresh_iql() -> OfflineAlgorithm:
    """The project's IQL (2x256 actor, twin critics, value), freshly initialised with a fixed seed."""
    torch.manual_seed(0)
    return make_algorithm("iql", ProblemSpec(OBS, ACT, total_steps=1000))


def sampler(seed: int = 0) -> Callable[[int], Batch]:
    gen = torch.Generator().manual_seed(seed)

    def sample(n: int = BATCH) -> Batch:
        return Batch(
            torch.randn(n, OBS, generator=gen), torch.rand(n, ACT, generator=gen) * 2 - 1,
            torch.randn(n, generator=gen), torch.randn(n, OBS, generator=gen), torch.zeros(n),
        )

    return sample


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (2 collapses on a busy 2-core box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, load average {load:.1f}, "
        f"sparsity {args.sparsity}, batch {BATCH}"
    )

    rows = []
    cases = [
        ("random", {}, "< 2 s"), ("magnitude", {}, "< 2 s"), ("snip", {}, "< 2 s"), ("grasp", {}, "< 2 s"),
        ("snip", {"rounds": 10}, "-"), ("synflow", {}, "< 10 s"), ("synflow", {"scope": "erk"}, "< 10 s"),
    ]
    for name, extra, target in cases:
        times, report = [], None
        for _ in range(args.repeats):
            algo = fresh_iql()  # fresh, unpruned weights every time
            t = time.perf_counter()
            _, report = prune_at_initialization(algo, sampler(), {"name": name, **extra}, args.sparsity, seed=0)
            times.append(time.perf_counter() - t)
        assert report is not None
        dens = " ".join(f"{n}={r['density']:.3f}" for n, r in report["networks"].items())
        label = name + "".join(f" {k}={v}" for k, v in extra.items())
        rows.append((label, f"{report['rounds']}", f"{min(times):.3f}", f"{statistics.median(times):.3f}", target, dens))
    header = ("pruner (all 3 networks)", "rounds", "best s", "median s", "target", "achieved density")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))

    # -- mask enforcement overhead ------------------------------------------------------------------
    algo = fresh_iql()
    sample = sampler(1)
    mask_set, _ = prune_at_initialization(algo, sample, {"name": "random"}, args.sparsity, seed=0)
    batch = sample(BATCH)
    for _ in range(3):  # create Adam state, warm up (the optimizer hooks apply the masks)
        algo.update(batch)
    n = 200
    apply_s = statistics.median(timed(lambda: [mask_set.apply() for _ in range(n)], args.repeats)) / n
    optimizers = algo.optimizers()
    for net_name, net in algo.networks().items():
        optimizers[net_name].zero_grad()
        algo.saliency_loss(net_name, batch).backward()
    adam_s = statistics.median(timed(lambda: [o.step() for _ in range(n) for o in optimizers.values()], args.repeats)) / n
    m = 50
    update_s = statistics.median(timed(lambda: [algo.update(batch) for _ in range(m)], args.repeats)) / m
    n_tensors = mask_set.num_tensors
    print()
    print(f"MaskSet.apply ({n_tensors} tensors: weights, target weights, Adam exp_avg/exp_avg_sq): {apply_s * 1e6:.0f} us")
    print(f"Adam step, 3 optimizers (all parameters):                                 {adam_s * 1e6:.0f} us "
          f"-> apply = {100 * apply_s / adam_s:.0f}% of an Adam step")
    print(f"full IQL update (3 losses, backward, 3 Adam steps, Polyak, lr schedule):   {update_s * 1e3:.2f} ms "
          f"-> apply = {100 * apply_s / update_s:.1f}% of an update")


if __name__ == "__main__":
    main()
