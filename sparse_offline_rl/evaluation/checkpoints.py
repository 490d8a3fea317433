"""Choosing the checkpoint offline: which signal a run logged during training finds its best point.

Every `eval.every` steps a run logs its diagnostics (metrics.jsonl, kind "diagnostics":
`td_error_train`, `td_error_val`, `bc_mse_train`, `bc_mse_val`, `q_s0`) and, from the simulator, its
true normalised score (eval.csv). For one signal and one run, over the steps that have both:
- the step the signal picks (its best value; ties go to the later step, the longer-trained agent);
- regret = the run's best true score over those steps - the true score at the picked step (>= 0);
- Spearman's rank correlation of the signal (oriented, higher is better) with the true score over steps.
`last` (always the final step, what a run without selection keeps) is the baseline a signal must beat.
Per algorithm x dataset cell the runs' regrets and correlations are averaged, with a bootstrap 95% CI
over seeds (`ranking.resamples`).

FQE and LogME need the agent at each step, so they rank checkpoints only where a run kept them; the
logged signals above cost nothing more and are available for every run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sparse_offline_rl.evaluation.ranking import cell_of, resamples
from sparse_offline_rl.evaluation.run_logs import read_curve, read_diagnostics
from sparse_offline_rl.evaluation.stats import spearman

#: Logged signal -> whether higher is better. `last` is the final step's constant preference.
SIGNALS: dict[str, bool] = {"last": True, "td_error_train": False, "td_error_val": False, "bc_mse_train": False,
                            "bc_mse_val": False, "q_s0": True}


def run_table(run_dir: Path | str) -> dict[str, Any] | None:
    """A run's steps with their true score and each logged signal; None without evaluations."""
    run_dir = Path(run_dir)
    curve = read_curve(run_dir)
    if curve is None:
        return None
    truth = dict(zip(curve[0].tolist(), curve[1].tolist()))
    logged = {row["step"]: row for row in read_diagnostics(run_dir / "metrics.jsonl")}
    steps = sorted(s for s in truth if s in logged)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    meta = {k: summary.get(k) for k in ("algo", "dataset", "env", "pruner", "sparsity", "seed")}
    signals = {name: [logged[s].get(name) for s in steps] for name in SIGNALS if name != "last"}
    signals["last"] = [float(s) for s in steps]
    return {"run_dir": str(run_dir), "meta": meta, "steps": steps, "true": [truth[s] for s in steps], "signals": signals}


def pick(table: Mapping[str, Any], signal: str) -> dict[str, Any] | None:
    """The step `signal` picks in one run, its regret and Spearman over steps; None if not logged."""
    values = table["signals"][signal]
    keep = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(keep) < 2:
        return None
    sign = 1.0 if SIGNALS[signal] else -1.0
    v = sign * np.array([values[i] for i in keep])
    t = np.array([table["true"][i] for i in keep])
    chosen = int(len(v) - 1 - np.argmax(v[::-1]))  # ties: the later step
    return {"step": table["steps"][keep[chosen]], "regret": float(t.max() - t[chosen]),
            "spearman": spearman(v, t) if signal != "last" else math.nan, "steps": len(keep)}


def cell_agreement(tables: Sequence[Mapping[str, Any]], signal: str, reps: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Mean regret and Spearman of `signal` over a cell's runs, with bootstrap CIs over seeds."""
    picks = [(pick(t, signal), t["meta"].get("seed")) for t in tables]
    picks = [(p, s) for p, s in picks if p is not None]
    if not picks:
        return None
    regret = np.array([p["regret"] for p, _ in picks])
    rho = np.array([p["spearman"] for p, _ in picks])
    boot, unit = resamples([s for _, s in picks], reps, np.random.default_rng(seed))
    interval = lambda x: [float(v) for v in np.nanpercentile(x, [2.5, 97.5])] if np.isfinite(x).any() else [math.nan] * 2  # noqa: E731
    mean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else math.nan  # noqa: E731
    return {"signal": signal, "runs": len(picks), "regret": float(regret.mean()),
            "regret_ci": interval(np.array([regret[i].mean() for i in boot])), "spearman": mean(rho),
            "spearman_ci": interval(np.array([mean(rho[i]) for i in boot])), "bootstrap": unit,
            "picked_steps": [p["step"] for p, _ in picks]}


def checkpoint_selection(run_dirs: Sequence[Path | str], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """{cell: {signal: cell_agreement}} over the runs that logged evaluations, and the runs' tables."""
    tables = [t for t in map(run_table, run_dirs) if t is not None]
    cells: dict[str, list[Mapping[str, Any]]] = {}
    for t in tables:
        cells.setdefault(cell_of(t), []).append(t)
    found = {cell: {s: cell_agreement(runs, s, reps, seed) for s in SIGNALS} for cell, runs in sorted(cells.items())}
    return {"cells": {c: {s: a for s, a in by.items() if a is not None} for c, by in found.items()}, "runs": tables}


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    lines = []
    for cell, by_signal in result["cells"].items():
        lines.append(f"{cell}: regret of the checkpoint each signal picks (true normalised score; mean over runs, "
                     "95% CI over seeds) and Spearman over steps")
        for signal, a in sorted(by_signal.items(), key=lambda kv: kv[1]["regret"]):
            rho = "" if signal == "last" else f", Spearman {a['spearman']:.2f} [{a['spearman_ci'][0]:.2f}, {a['spearman_ci'][1]:.2f}]"
            lines.append(f"  {signal:>15}: regret {a['regret']:.2f} [{a['regret_ci'][0]:.2f}, {a['regret_ci'][1]:.2f}]"
                         f"{rho} ({a['runs']} runs)")
    return lines


def figure(result: Mapping[str, Any], path: Path | str) -> Path | None:
    """One panel per cell: each signal's mean regret with its CI, `last` as the dashed baseline."""
    cells = [c for c, by in result["cells"].items() if by]
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparse_offline_rl.io import atomic_save_figure

    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.2), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        by = result["cells"][cell]
        names = [s for s in SIGNALS if s in by]
        means = [by[s]["regret"] for s in names]
        errors = [[m - by[s]["regret_ci"][0] for s, m in zip(names, means)], [by[s]["regret_ci"][1] - m for s, m in zip(names, means)]]
        ax.barh(names, means, xerr=errors, color=["0.6" if s == "last" else "tab:blue" for s in names], capsize=3)
        if "last" in by:
            ax.axvline(by["last"]["regret"], color="k", ls="--", lw=0.8)
        ax.set(xlabel="regret (true normalised score)", title=f"{cell}: checkpoint picked by each signal")
        ax.invert_yaxis()
    fig.tight_layout()
    return atomic_save_figure(fig, path)


__all__ = ["SIGNALS", "cell_agreement", "checkpoint_selection", "figure", "pick", "run_table", "summary_lines"]
