"""Agent-steps/s of stacked training (many agents in one process) against separate runs.

    python benchmarks/bench_stacked.py [--algos iql,td3bc] [--members 1,2,4,8,16] [--sparsity 0.95]
                                       [--processes 2] [--seconds 6] [--json benchmarks/results/stacked.json]

What is timed is the training step only (`algo.update` on the members' batches), after each
agent was set up through the trainer's own path (`trainer.setup_run`: SNIP pruning at
`--sparsity`, seeds 0..K-1, the sparse-kernel choice `auto`) on bench_training's synthetic
halfcheetah-sized dataset (100k transitions, obs 17, act 6, batch 256). Every process uses one torch
thread; `--processes` of them run at once (the machine's cores), started together.

Per algorithm, for K agents:
- `separate dense-masked`: today's way before sparse kernels (`sparse_kernels=dense`), one agent per
  process, `--processes` processes: agent-steps/s is the sum of the processes' steps/s (a
  sequence of K such jobs runs at this rate, whatever K).
- `separate sparse`: the same with `sparse_kernels=auto` (the best separate way on this CPU).
- `stacked`: the K agents split into `--processes` stacked groups (one per process; K = 1 is one
  process), agent-steps/s = sum over processes of members x steps/s.
- `stacked dense`: stacked with every layer dense-masked (one batched product per layer), at the
  largest K only: what stacking alone gives without the sparse kernels.

The JSON has every figure with the machine (CPU, torch, load average at the start and the end).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
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
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch
    from run_all import load_average, machine

    from sparse_offline_rl.io import atomic_write_json

    members = [int(k) for k in args.members.split(",")]
    result: dict[str, Any] = {"machine": machine(1), "load_average_start": load_average(), "sparsity": args.sparsity,
                              "processes": args.processes, "seconds": args.seconds, "device": args.device, "rows": []}
    print(f"load average at start: {result['load_average_start']}", flush=True)
    header = "| algorithm | K | separate dense-masked | separate sparse | stacked | stacked / separate dense-masked | stacked / separate sparse |"
    lines = [header, "|" + "---|" * 7]
    for algo in args.algos.split(","):
        separate = {kernels: agent_steps_per_sec(algo, [[p] for p in range(args.processes)], args.sparsity, kernels,
                                                 args.device, args.seconds) for kernels in ("dense", "auto")}
        for k in members:
            stacked = agent_steps_per_sec(algo, split(k, args.processes), args.sparsity, "auto", args.device, args.seconds)
            # K = 1 runs one process: the separate figures for one job are half of the 2-process ones.
            scale = min(k, args.processes) / args.processes
            row = {"algo": algo, "members": k, "separate_dense": separate["dense"] * scale,
                   "separate_sparse": separate["auto"] * scale, "stacked": stacked}
            result["rows"].append(row)
            lines.append(f"| {algo} | {k} | {row['separate_dense']:.0f} | {row['separate_sparse']:.0f} | {stacked:.0f} | "
                         f"{stacked / row['separate_dense']:.2f}x | {stacked / row['separate_sparse']:.2f}x |")
            print(lines[-1], flush=True)
        k = members[-1]
        dense = agent_steps_per_sec(algo, split(k, args.processes), args.sparsity, "dense", args.device, args.seconds)
        result["rows"].append({"algo": algo, "members": k, "stacked_dense_masked": dense})
        print(f"{algo}: stacked dense-masked, K={k}: {dense:.0f} agent-steps/s "
              f"({dense / separate['dense']:.2f}x separate dense-masked)", flush=True)
    result["load_average_end"] = load_average()
    result["table"] = "\n".join(lines)
    print("\n".join(lines))
    print(f"load average at end: {result['load_average_end']}; torch {torch.__version__}")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
