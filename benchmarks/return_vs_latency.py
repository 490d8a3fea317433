"""Return vs latency of the exported actors of a sweep: structured vs unstructured pruning at equal latency.

    python benchmarks/return_vs_latency.py SWEEP_DIR [--format torchscript|onnx] [--rounds 25] [--threads 1]
                                                     [--out benchmarks/results/return_vs_latency]
                                                     [--plot docs/return_vs_latency.png]

For the sweep of `configs/sweep/return_vs_latency.yaml` (any sweep works): every finished run's
actor is serialised as `python -m sparse_offline_rl.export` would (`candidate_artefacts`: dense, and
CSR where weights are pruned and the format has it; each checked against the framework's actions on
the dataset), and all the artefacts of all runs are timed together (`export.measure`: alternating
rounds, each keeping its fastest), so the load of a shared machine falls on every run alike rather
than on whichever was measured during a busy minute. Each run's latency at a batch is that of its
faster storage there (what export picks for that batch). Runs are grouped by their pruner label
(`snip` for weights, `snip-units` for units, `dense`) and sparsity: mean and standard deviation of
the normalized score over seeds, median latency at batch 1 and 256, the smallest artefact's bytes
and the fraction of actor weights kept.

Writes OUT.json (every run and every group), OUT.md (the group table) and the figure: score against
latency at batch 1 and at batch 256, one line per label, so two kinds of pruning are compared where
their latencies are equal.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from sparse_offline_rl.data import load_dataset  # noqa: E402
from sparse_offline_rl.data.envs import get_task  # noqa: E402
from sparse_offline_rl.evaluation.agent import load_agent  # noqa: E402
from sparse_offline_rl.export import (FORMATS, MAX_ABS_DIFF, REPORTED_BATCHES, ROUNDS, candidate_artefacts,  # noqa: E402
                                      dataset_observations, exportable_policy, machine, max_abs_diff, measure, runtime)
from sparse_offline_rl.io import atomic_save_figure, atomic_write_json, atomic_write_text  # noqa: E402
from sparse_offline_rl.report.collect import collect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_artefacts(sweep_dir: Path, fmt: str) -> tuple[list[dict[str, Any]], dict[tuple[str, str], bytes]]:
    """One record per finished run of the sweep, and {(run_dir, storage): artefact} of its actor."""
    runs, artefacts, datasets = [], {}, {}
    for job in collect(sweep_dir):
        if job.status != "done" or job.summary is None:
            continue
        summary, cfg = job.summary, job.summary["config"]
        key = (cfg["dataset"], cfg["env"])
        if key not in datasets:  # one load per dataset, not per run
            datasets[key] = load_dataset(cfg["dataset"], env=cfg["env"])
        agent = load_agent(job.path, dataset=datasets[key])
        observations = dataset_observations(agent)
        for storage, data in candidate_artefacts(exportable_policy(agent, observations), fmt, observations).items():
            diff = max_abs_diff(agent, runtime(fmt, data, threads=1), observations)
            if not diff <= MAX_ABS_DIFF:
                raise SystemExit(f"error: {job.path}: the {storage} artefact's actions differ by {diff:.3g}")
            artefacts[str(job.path), storage] = data
        runs.append({
            "run_dir": str(job.path),
            "label": summary["pruner"],
            "sparsity": summary["sparsity"],
            "seed": summary["seed"],
            "score": summary["eval"]["normalized_score_mean"],
            "actor_weights_kept": summary["density"]["actor"],
            "obs_dim": get_task(summary["env"]).obs_dim,
            "bytes": min(len(data) for (run, _), data in artefacts.items() if run == str(job.path)),
        })
    if not runs:
        raise SystemExit(f"error: no finished run under {sweep_dir}")
    return runs, artefacts


def time_together(runs: list[dict[str, Any]], artefacts: dict[tuple[str, str], bytes], fmt: str, threads: int,
                  rounds: int) -> None:
    """Latency at batch 1 and 256 of every run's faster artefact, all measured in the same rounds."""
    obs_dims = {run["obs_dim"] for run in runs}
    if len(obs_dims) != 1:
        raise SystemExit(f"error: the sweep mixes observation sizes {sorted(obs_dims)}; report one env at a time")
    observations = np.random.default_rng(0).standard_normal((max(REPORTED_BATCHES), obs_dims.pop())).astype(np.float32)
    latency = measure({f"{run}|{storage}": data for (run, storage), data in artefacts.items()}, fmt, observations,
                      threads, rounds=rounds)
    for run in runs:
        mine = {storage: latency[f"{r}|{storage}"] for r, storage in artefacts if r == run["run_dir"]}
        run["latency_us"] = {str(b): min(by_batch[b] for by_batch in mine.values()) for b in REPORTED_BATCHES}
        run["storage"] = {str(b): min(mine, key=lambda s: mine[s][b]) for b in REPORTED_BATCHES}


def groups(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        out.setdefault((run["label"], json.dumps(run["sparsity"])), []).append(run)
    rows = []
    for (label, sparsity), members in out.items():
        scores = [r["score"] for r in members]
        rows.append({
            "label": label, "sparsity": json.loads(sparsity), "seeds": len(members),
            "score_mean": statistics.fmean(scores), "score_std": statistics.pstdev(scores),
            "latency_us": {str(b): statistics.median(r["latency_us"][str(b)] for r in members) for b in REPORTED_BATCHES},
            "bytes": statistics.median(r["bytes"] for r in members),
            "actor_weights_kept": statistics.fmean(r["actor_weights_kept"] for r in members),
        })
    return sorted(rows, key=lambda r: (r["label"], -r["latency_us"]["256"]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| pruner | sparsity | seeds | normalized score | latency b1 (us) | latency b256 (us) | size (KB) | actor weights kept |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['sparsity']} | {r['seeds']} | {r['score_mean']:.1f} ± {r['score_std']:.1f} | "
                     f"{r['latency_us']['1']:.1f} | {r['latency_us']['256']:.1f} | {r['bytes'] / 1024:.0f} | "
                     f"{r['actor_weights_kept']:.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, note: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, batch in zip(axes, REPORTED_BATCHES):
        for label in dict.fromkeys(r["label"] for r in rows):
            mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["latency_us"][str(batch)])
            style = {"marker": "*", "markersize": 12, "linestyle": "none"} if label == "dense" else \
                {"marker": "s", "linestyle": "--"} if label.endswith("-units") else {"marker": "o"}
            ax.errorbar([r["latency_us"][str(batch)] for r in mine], [r["score_mean"] for r in mine],
                        yerr=[r["score_std"] for r in mine], label=label, capsize=3, **style)
            for r in mine:
                ax.annotate(f"{r['sparsity']}", (r["latency_us"][str(batch)], r["score_mean"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set(title=f"batch {batch}", xlabel="exported actor latency (us per call)", ylabel="normalized score")
        ax.set_xlim(left=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"return vs latency, units vs weights pruned (labels: sparsity); {note}", fontsize=9)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--format", default="torchscript", choices=list(FORMATS))
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "return_vs_latency")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "return_vs_latency.png")
    args = ap.parse_args(argv)
    runs, artefacts = run_artefacts(args.sweep_dir, args.format)
    time_together(runs, artefacts, args.format, args.threads, args.rounds)
    rows = groups(runs)
    measured_on = machine(args.threads, args.format)
    atomic_write_json(args.out.with_suffix(".json"), {"sweep_dir": str(args.sweep_dir), "format": args.format,
                                                      "measured_on": measured_on, "groups": rows, "runs": runs})
    text = table(rows)
    atomic_write_text(args.out.with_suffix(".md"), f"# python benchmarks/return_vs_latency.py {args.sweep_dir} "
                      f"--format {args.format}\n# {measured_on}\n\n{text}\n")
    print(text)
    load = measured_on["load_average"][0]
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}, "
          f"{plot(rows, args.plot, f'{args.format}, {args.threads} thread, load {load:.1f}')}")


if __name__ == "__main__":
    main()
