"""Exported actor: latency at batch 1 and 256 and file size vs sparsity, both formats, both storages,
unstructured (weights) and structured (whole hidden units) pruning.

    python benchmarks/bench_export.py [--sparsities 0,0.8,0.9,0.95,0.98,0.99] [--unit-sparsities 0.3,0.5,0.75,0.9,0.95]
                                      [--repeats 5] [--rounds 25] [--threads 1] [--plot docs/export_latency_size.png]

IQL's actor (2x256, obs 17, act 6, bench_training's synthetic dataset for the normaliser) is pruned
at initialization with the random pruner, every layer to the same sparsity (scope=layer; trained
weights would time the same): unstructured at `--sparsities` (fraction of weights removed), and
structured (`pruner.structure=units`) at `--unit-sparsities` (fraction of hidden units removed:
the actor becomes a narrower dense MLP). Each is exported exactly as `python -m
sparse_offline_rl.export` does (`exportable_policy`, `serialize`): TorchScript with dense storage and
with CSR storage (unstructured only: a narrow actor has no zeros to skip), ONNX dense (onnxruntime
has no kernel for a sparse weight inside a model), each checked against `act`. Both kinds are
compared at the fraction of the actor's weights they keep (`kept`), the x axis of the plot.

Timing (`export.measure`): per format, every artefact of every sparsity is loaded as a deployment
loads it and timed in the same rounds, the order rotating each round, each keeping its fastest
round; that is repeated `--repeats` times and the table gives the median of the repeats, in
microseconds per call (one batch). The load average is printed at the start and the end: the
machine (2 cores) is shared with background jobs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_training import synthetic_dataset  # noqa: E402

from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm  # noqa: E402
from sparse_offline_rl.data.buffer import ObsNormalizer  # noqa: E402
from sparse_offline_rl.evaluation.agent import EvalAgent  # noqa: E402
from sparse_offline_rl.export import (MAX_ABS_DIFF, REPORTED_BATCHES, ROUNDS, candidate_artefacts,  # noqa: E402
                                      dataset_observations, exportable_policy, max_abs_diff, measure, runtime)
from sparse_offline_rl.io import atomic_save_figure, cpu_model  # noqa: E402
from sparse_offline_rl.pruning import prune_at_initialization  # noqa: E402
from sparse_offline_rl.sparse.narrow import network_densities  # noqa: E402

#: (format, storage) columns, in table order.
VARIANTS = (("torchscript", "dense"), ("torchscript", "sparse"), ("onnx", "dense"))
STRUCTURES = ("unstructured", "units")


def pruned_iql_agent(sparsity: float, dataset: Any, structure: str = "unstructured") -> tuple[EvalAgent, float]:
    """The agent with its actor pruned, and the fraction of the actor's weights kept (of 2x256)."""
    torch.manual_seed(0)
    algo = make_algorithm("iql", ProblemSpec(dataset.obs_dim, dataset.act_dim, 1.0), {"name": "iql"})
    # Random pruning draws no batch; at 0.99 a layer may keep no path, which timing does not mind.
    pruner = {"name": "random", "scope": "layer", "allow_layer_collapse": True, "structure": structure}
    _, report = prune_at_initialization(algo, lambda: None, pruner, {"actor": sparsity, "critic": 0.0, "value": 0.0}, seed=0)
    kept = network_densities(algo.networks(), report)["actor"]
    return EvalAgent(algo, ObsNormalizer.from_dataset(dataset), "hopper", dataset, meta={"algo": "iql"}), kept


Key = tuple[str, str, str, float]  # (structure, format, storage, sparsity)


def artefacts(grid: list[tuple[str, float]], dataset: Any) -> tuple[dict[Key, bytes], dict[tuple[str, float], float]]:
    """Every (structure, format, storage, sparsity) artefact, each checked against the framework's
    actions, and the fraction of actor weights each (structure, sparsity) keeps."""
    out, kept = {}, {}
    for structure, sparsity in grid:
        agent, kept[structure, sparsity] = pruned_iql_agent(sparsity, dataset, structure)
        observations = dataset_observations(agent)
        for fmt in dict.fromkeys(f for f, _ in VARIANTS):
            # What the export command would choose between: no CSR artefact when nothing inside the
            # layers is pruned (dense, or a narrow actor).
            for storage, data in candidate_artefacts(exportable_policy(agent, observations), fmt, observations).items():
                diff = max_abs_diff(agent, runtime(fmt, data, threads=1), observations)
                assert diff <= MAX_ABS_DIFF, f"{structure} {fmt} {storage} s={sparsity}: actions off by {diff}"
                out[structure, fmt, storage, sparsity] = data
    return out, kept


def time_all(arts: dict[Key, bytes], observations: np.ndarray, threads: int, repeats: int,
             rounds: int) -> dict[Key, dict[int, float]]:
    """Median over `repeats` of each artefact's fastest-round microseconds per call, per batch."""
    runs: dict[Key, dict[int, list[float]]] = {key: {b: [] for b in REPORTED_BATCHES} for key in arts}
    for _ in range(repeats):
        for fmt in dict.fromkeys(key[1] for key in arts):
            of_format = {key: data for key, data in arts.items() if key[1] == fmt}
            timed = measure({str(k): v for k, v in of_format.items()}, fmt, observations, threads, rounds=rounds)
            for key in of_format:
                for batch, us in timed[str(key)].items():
                    runs[key][batch].append(us)
    return {key: {b: statistics.median(v) for b, v in per_batch.items()} for key, per_batch in runs.items()}


def table(grid: list[tuple[str, float]], arts: dict, latency: dict, kept: dict) -> str:
    head = (["pruned", "sparsity", "weights kept"] + [f"{f} {s} b{b} (us)" for b in REPORTED_BATCHES for f, s in VARIANTS]
            + [f"{f} {s} (KB)" for f, s in VARIANTS])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for structure, sparsity in grid:
        cells = ["dense" if sparsity == 0 else structure, f"{sparsity:g}", f"{kept[structure, sparsity]:.4f}"]
        for batch in REPORTED_BATCHES:
            cells += [f"{latency[structure, f, s, sparsity][batch]:.1f}" if (structure, f, s, sparsity) in latency else "-"
                      for f, s in VARIANTS]
        cells += [f"{len(arts[structure, f, s, sparsity]) / 1024:.0f}" if (structure, f, s, sparsity) in arts else "-"
                  for f, s in VARIANTS]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(grid: list[tuple[str, float]], arts: dict, latency: dict, kept: dict, path: Path, note: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for structure in STRUCTURES:
        for fmt, storage in VARIANTS:
            # The dense reference (sparsity 0) starts every line.
            points = sorted(((kept[st, s], st, s) for st, s in grid if (st, fmt, storage, s) in arts
                             and (st == structure or s == 0)), reverse=True)
            if not points:
                continue
            label = (f"{'TorchScript' if fmt == 'torchscript' else 'ONNX'} "
                     + ("narrow (units)" if structure == "units" else "CSR" if storage == "sparse" else "dense (weights)"))
            style = {"linestyle": "--", "marker": "s"} if structure == "units" else {"marker": "o"}
            xs = [x for x, _, _ in points]
            for ax, batch in zip(axes, REPORTED_BATCHES):
                ax.plot(xs, [latency[st, fmt, storage, s][batch] for _, st, s in points], label=label, **style)
            axes[2].plot(xs, [len(arts[st, fmt, storage, s]) / 1024 for _, st, s in points], label=label, **style)
    for ax, (title, unit) in zip(axes, [(f"latency, batch {b}", "us per call") for b in REPORTED_BATCHES] + [("file size", "KB")]):
        # Against the kept fraction of weights on a log axis: 0.2-0.01 spread out evenly.
        ax.set(title=title, xlabel="fraction of actor weights kept", ylabel=unit, xscale="log")
        ax.invert_xaxis()
        ax.set_ylim(bottom=0)
    axes[2].legend(fontsize=7, loc="center right")
    fig.suptitle(f"IQL actor (2x256) exported, random pruning per layer, weights vs units; {note}", fontsize=9)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsities", default="0,0.8,0.9,0.95,0.98,0.99", help="unstructured: fraction of weights removed")
    ap.add_argument("--unit-sparsities", default="0.3,0.5,0.75,0.9,0.95", help="structured: fraction of hidden units removed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "export_latency_size.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = ([("unstructured", float(s)) for s in args.sparsities.split(",") if s]
            + [("units", float(s)) for s in args.unit_sparsities.split(",") if s and float(s) > 0])
    dataset = synthetic_dataset(n=10_000)
    load0 = os.getloadavg()
    print(f"{cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__}, {args.threads} thread(s); "
          f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    arts, kept = artefacts(grid, dataset)
    latency = time_all(arts, dataset.observations, args.threads, args.repeats, args.rounds)
    load1 = os.getloadavg()
    print(table(grid, arts, latency, kept))
    print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    note = f"{args.threads} thread, median of {args.repeats} x best of {args.rounds} rounds, load {load0[0]:.1f}-{load1[0]:.1f}"
    print(f"wrote {plot(grid, arts, latency, kept, Path(args.plot), note)}")


if __name__ == "__main__":
    main()
