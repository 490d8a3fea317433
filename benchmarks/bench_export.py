"""Exported actor: latency at batch 1 and 256 and file size vs sparsity, both formats, both storages.

    python benchmarks/bench_export.py [--sparsities 0,0.8,0.9,0.95,0.98,0.99] [--repeats 5] [--rounds 25]
                                      [--threads 1] [--plot docs/export_latency_size.png]

IQL's actor (2x256, obs 17, act 6, bench_training's synthetic dataset for the normaliser) is pruned
at initialization with the random pruner, every layer to the same sparsity (scope=layer; trained
weights would time the same). Each sparsity is exported exactly as `python -m sparse_offline_rl.export`
does (`exportable_policy`, `serialize`): TorchScript with dense storage and with CSR storage, ONNX
dense (onnxruntime has no kernel for a sparse weight inside a model), each checked against `act`.

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
from sparse_offline_rl.export import (MAX_ABS_DIFF, REPORTED_BATCHES, ROUNDS, dataset_observations, exportable_policy,  # noqa: E402
                                      max_abs_diff, measure, runtime, serialize, with_sparse_storage)
from sparse_offline_rl.io import atomic_save_figure, cpu_model  # noqa: E402
from sparse_offline_rl.pruning import prune_at_initialization  # noqa: E402

#: (format, storage) columns, in table order.
VARIANTS = (("torchscript", "dense"), ("torchscript", "sparse"), ("onnx", "dense"))


def pruned_iql_agent(sparsity: float, dataset: Any) -> EvalAgent:
    torch.manual_seed(0)
    algo = make_algorithm("iql", ProblemSpec(dataset.obs_dim, dataset.act_dim, 1.0), {"name": "iql"})
    # Random pruning draws no batch; at 0.99 a layer may keep no path, which timing does not mind.
    pruner = {"name": "random", "scope": "layer", "allow_layer_collapse": True}
    prune_at_initialization(algo, lambda: None, pruner, {"actor": sparsity, "critic": 0.0, "value": 0.0}, seed=0)
    return EvalAgent(algo, ObsNormalizer.from_dataset(dataset), "hopper", dataset, meta={"algo": "iql"})


def artefacts(sparsities: list[float], dataset: Any) -> dict[tuple[str, str, float], bytes]:
    """Every (format, storage, sparsity) artefact, each checked against the framework's actions."""
    out = {}
    for sparsity in sparsities:
        agent = pruned_iql_agent(sparsity, dataset)
        observations = dataset_observations(agent)
        dense = exportable_policy(agent, observations)
        policies = {"dense": dense, "sparse": with_sparse_storage(dense)}
        example = torch.from_numpy(observations[:2])
        for fmt, storage in VARIANTS:
            if sparsity == 0 and storage == "sparse":
                continue  # nothing pruned: no CSR artefact to make
            data = serialize(policies[storage], fmt, example)
            diff = max_abs_diff(agent, runtime(fmt, data, threads=1), observations)
            assert diff <= MAX_ABS_DIFF, f"{fmt} {storage} s={sparsity}: actions off by {diff}"
            out[fmt, storage, sparsity] = data
    return out


def time_all(arts: dict[tuple[str, str, float], bytes], observations: np.ndarray, threads: int, repeats: int,
             rounds: int) -> dict[tuple[str, str, float], dict[int, float]]:
    """Median over `repeats` of each artefact's fastest-round microseconds per call, per batch."""
    runs: dict[tuple[str, str, float], dict[int, list[float]]] = {key: {b: [] for b in REPORTED_BATCHES} for key in arts}
    for _ in range(repeats):
        for fmt in dict.fromkeys(fmt for fmt, _, _ in arts):
            of_format = {key: data for key, data in arts.items() if key[0] == fmt}
            timed = measure({str(k): v for k, v in of_format.items()}, fmt, observations, threads, rounds=rounds)
            for key in of_format:
                for batch, us in timed[str(key)].items():
                    runs[key][batch].append(us)
    return {key: {b: statistics.median(v) for b, v in per_batch.items()} for key, per_batch in runs.items()}


def table(sparsities: list[float], arts: dict, latency: dict) -> str:
    head = ["sparsity"] + [f"{f} {s} b{b} (us)" for b in REPORTED_BATCHES for f, s in VARIANTS] + [f"{f} {s} (KB)" for f, s in VARIANTS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sparsity in sparsities:
        cells = [f"{sparsity:g}"]
        for batch in REPORTED_BATCHES:
            cells += [f"{latency[f, s, sparsity][batch]:.1f}" if (f, s, sparsity) in latency else "-" for f, s in VARIANTS]
        cells += [f"{len(arts[f, s, sparsity]) / 1024:.0f}" if (f, s, sparsity) in arts else "-" for f, s in VARIANTS]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(sparsities: list[float], arts: dict, latency: dict, path: Path, note: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for fmt, storage in VARIANTS:
        xs = [s for s in sparsities if (fmt, storage, s) in arts]
        label = f"{'TorchScript' if fmt == 'torchscript' else 'ONNX'} {'CSR' if storage == 'sparse' else 'dense'}"
        # Against density on a log axis: the sparsities of interest (0.8-0.99) spread out evenly.
        density = [1 - s for s in xs]
        for ax, batch in zip(axes, REPORTED_BATCHES):
            ax.plot(density, [latency[fmt, storage, s][batch] for s in xs], marker="o", label=label)
        axes[2].plot(density, [len(arts[fmt, storage, s]) / 1024 for s in xs], marker="o", label=label)
    for ax, (title, unit) in zip(axes, [(f"latency, batch {b}", "us per call") for b in REPORTED_BATCHES] + [("file size", "KB")]):
        ax.set(title=title, xlabel="actor sparsity", ylabel=unit, xscale="log")
        ax.set_xticks([1 - s for s in sparsities], [f"{s:g}" for s in sparsities])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_ylim(bottom=0)
    axes[0].legend()
    fig.suptitle(f"IQL actor (2x256) exported, random pruning per layer; {note}", fontsize=9)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsities", default="0,0.8,0.9,0.95,0.98,0.99")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "export_latency_size.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    dataset = synthetic_dataset(n=10_000)
    load0 = os.getloadavg()
    print(f"{cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__}, {args.threads} thread(s); "
          f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    arts = artefacts(sparsities, dataset)
    latency = time_all(arts, dataset.observations, args.threads, args.repeats, args.rounds)
    load1 = os.getloadavg()
    print(table(sparsities, arts, latency))
    print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    note = f"{args.threads} thread, median of {args.repeats} x best of {args.rounds} rounds, load {load0[0]:.1f}-{load1[0]:.1f}"
    print(f"wrote {plot(sparsities, arts, latency, Path(args.plot), note)}")


if __name__ == "__main__":
    main()
