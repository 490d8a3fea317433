"""Agent-steps/s of stacked training (many agents in one process) against separate runs.

    python benchmarks/bench_stacked.py [--algos iql,td3bc] [--members 1,2,4,8,16] [--sparsity 0.95]
                                       [--processes 2] [--seconds 5] [--rounds 2] [--json benchmarks/results/stacked.json]

What is timed is the training step only (`algo.update` on the members' batches), after each
agent was set up through the trainer's own path (`trainer.setup_run`: SNIP pruning at
`--sparsity`, seeds 0..K-1, the sparse-kernel choice `auto`) on bench_training's synthetic
halfcheetah-sized dataset (100k transitions, obs 17, act 6, batch 256). Every process uses one torch
thread; `--processes` of them run at once (the machine's cores), started together.

Per algorithm, for K agents:
- `separate dense-masked`: today's way before sparse kernels (`sparse_kernels=dense`), one agent per
  process, min(K, `--processes`) processes: agent-steps/s is the sum of the processes' steps/s (a
  sequence of K such jobs runs at this rate, whatever K).
- `separate sparse`: the same with `sparse_kernels=auto` (the best separate way on this CPU).
- `stacked`: the K agents split into min(K, `--processes`) stacked groups, one per process;
  agent-steps/s = sum over processes of members x steps/s. With K <= `--processes` every group has
  one member, which is exactly `separate sparse` (the launcher trains a group of one as a single run).
- `stacked dense-masked`: stacked with every layer dense-masked (one batched product per layer), at
  `--dense-members` only: what stacking alone gives without the sparse kernels.

Timing is interleaved: each round measures every contender once (order rotated per round), so a
change of machine load hits all of them alike; each figure is the median over `--rounds` rounds.
The JSON has every figure with the machine (CPU, torch, load average at the start and the end).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def config(algo: str, seed: int, sparsity: float, kernels: str, device: str) -> dict[str, Any]:
    return {"algo": {"name": algo}, "pruner": {"name": "snip"}, "env": "halfcheetah", "dataset": "synthetic",
            "seed": seed, "sparsity": sparsity, "steps": 1_000_000, "batch_size": 256, "val_fraction": 0.0,
            "device": device, "threads": 1, "resume": False, "checkpoint_every": 10_000, "log_every": 1000,
            "eval": {"every": 5000, "episodes": 1, "suite": None}, "sparse_kernels": kernels,
            "tensorboard": False, "progress": False, "verbose": False}


def worker(algo: str, seeds: list[int], sparsity: float, kernels: str, device: str, seconds: float,
           barrier: Any, results: Any) -> None:
    """Set up the agents `seeds` (stacked when more than one), wait for the other processes, then
    time training steps for `seconds`; puts (agents, steps, elapsed) on `results`."""
    import torch

    torch.set_num_threads(1)
    from bench_training import synthetic_dataset

    from sparse_offline_rl.training.stacked import StackedAlgorithm
    from sparse_offline_rl.training.trainer import setup_run

    dataset = synthetic_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [setup_run(config(algo, s, sparsity, kernels, device), os.path.join(tmp, str(s)), dataset) for s in seeds]
        if len(runs) == 1:
            run = runs[0]
            step = lambda: run.algo.update(run.buffer.sample(256))  # noqa: E731
        else:
            stacked = StackedAlgorithm(runs)
            step = lambda: stacked.algo.update(stacked.batch(256))  # noqa: E731
        for _ in range(20):  # warm-up: allocator, kernel handles, optimizer state
            step()
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        sync()
        barrier.wait()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += 1
        sync()
        results.put((len(seeds), n, time.perf_counter() - t0))
        for run in runs:
            run.logger.close()


def agent_steps_per_sec(algo: str, groups: list[list[int]], sparsity: float, kernels: str, device: str,
                        seconds: float) -> float:
    """One process per group, all timed together; the sum of members x steps/s."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(groups)), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(algo, g, sparsity, kernels, device, seconds, barrier, results)) for g in groups]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a benchmark process failed (exit {p.exitcode})")
    return sum(agents * n / elapsed for agents, n, elapsed in rates)


def split(k: int, processes: int) -> list[list[int]]:
    """Seeds 0..k-1 over min(k, processes) groups, as evenly as possible."""
    n = min(k, processes)
    return [list(range(k))[i::n] for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="iql,td3bc")
    parser.add_argument("--members", default="1,2,4,8,16")
    parser.add_argument("--dense-members", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch
    from run_all import load_average, machine

    from sparse_offline_rl.io import atomic_write_json

    members = [int(k) for k in args.members.split(",")]
    procs = args.processes
    result: dict[str, Any] = {"machine": machine(1), "load_average_start": load_average(), "sparsity": args.sparsity,
                              "processes": procs, "seconds": args.seconds, "rounds": args.rounds, "device": args.device,
                              "rows": []}
    print(f"load average at start: {result['load_average_start']}", flush=True)
    # contender -> (groups of seeds, kernels); separate runs at 1 and at `procs` processes.
    contenders: dict[str, tuple[list[list[int]], str]] = {}
    for n in sorted({min(k, procs) for k in members}):
        contenders[f"separate dense {n}"] = ([[p] for p in range(n)], "dense")
        contenders[f"separate sparse {n}"] = ([[p] for p in range(n)], "auto")
    for k in members:
        if k > procs:
            contenders[f"stacked {k}"] = (split(k, procs), "auto")
    contenders[f"stacked dense {args.dense_members}"] = (split(args.dense_members, procs), "dense")
    header = ("| algorithm | K | separate dense-masked | separate sparse | stacked | stacked / separate dense-masked "
              "| stacked / separate sparse |")
    lines = [header, "|" + "---|" * 7]
    for algo in args.algos.split(","):
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                groups, kernels = contenders[name]
                rates[name].append(agent_steps_per_sec(algo, groups, args.sparsity, kernels, args.device, args.seconds))
                print(f"  {algo} round {r}: {name}: {rates[name][-1]:.0f} agent-steps/s", flush=True)
        med = {name: statistics.median(v) for name, v in rates.items()}
        for k in members:
            n = min(k, procs)
            stacked = med[f"stacked {k}"] if k > procs else med[f"separate sparse {n}"]
            row = {"algo": algo, "members": k, "separate_dense": med[f"separate dense {n}"],
                   "separate_sparse": med[f"separate sparse {n}"], "stacked": stacked}
            result["rows"].append(row)
            lines.append(f"| {algo} | {k} | {row['separate_dense']:.0f} | {row['separate_sparse']:.0f} | {stacked:.0f} | "
                         f"{stacked / row['separate_dense']:.2f}x | {stacked / row['separate_sparse']:.2f}x |")
        dense = med[f"stacked dense {args.dense_members}"]
        result["rows"].append({"algo": algo, "members": args.dense_members, "stacked_dense_masked": dense,
                               "all_rounds": rates})
        lines.append(f"| {algo} | {args.dense_members}, stacked dense-masked | | | {dense:.0f} | "
                     f"{dense / med[f'separate dense {procs}']:.2f}x | |")
    result["load_average_end"] = load_average()
    result["table"] = "\n".join(lines)
    print("\n".join(lines))
    print(f"load average at end: {result['load_average_end']}; torch {torch.__version__}")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
