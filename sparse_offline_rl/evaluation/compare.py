"""Compare configurations (e.g. sparsity 0 vs 0.95) over the generalization results of many runs.

Runs are grouped into configurations by a label built from their metadata (default: algo, pruner,
sparsity) and into tasks (strata) by env and dataset; seeds are the runs. For each summary metric:
the IQM over runs and tasks with a stratified-bootstrap 95% CI per configuration, and the
probability that each configuration improves on the first (the baseline), with its CI.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sparse_offline_rl.evaluation.stats import (
    iqm,
    performance_profile,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
)
from sparse_offline_rl.evaluation.suite import load_result

DEFAULT_LABEL_KEYS = ("algo", "pruner", "sparsity")
# Higher is better for all of these (the gap is reported but not "improved" on: lower is better there).
HIGHER_IS_BETTER = ("seeds_heldout", "seeds_train", "seeds_val", "perturbed_mean", "reset_noise_mean", "mass_mean",
                    "friction_mean", "damping_mean", "gear_mean", "obs_noise_mean", "action_noise_mean", "sticky_mean",
                    "retention")
LOWER_IS_BETTER = ("generalization_gap", "val_gap", "overestimation_mean")
PROFILE_METRICS = ("seeds_heldout", "perturbed_mean")  # score distributions worth a performance profile
PROFILE_POINTS = 51


def label_of(meta: Mapping[str, Any], keys: Sequence[str] = DEFAULT_LABEL_KEYS) -> str:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"label key(s) {missing} not in run metadata; available: {', '.join(sorted(meta))}")
    return " ".join(f"{k}={meta[k]}" for k in keys)


def task_of(meta: Mapping[str, Any]) -> str:
    return f"{meta.get('env')}/{meta.get('dataset')}"


def group_scores(results: Sequence[Mapping[str, Any]], metric: str, label_keys: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """label -> task -> per-run values of one summary metric (runs lacking it are skipped)."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        value = result["summary"].get(metric)
        if value is not None and np.isfinite(value):
            table[label_of(result["meta"], label_keys)][task_of(result["meta"])].append(float(value))
    return table


def compare_results(
    results: Sequence[Mapping[str, Any]],
    label_keys: Sequence[str] = DEFAULT_LABEL_KEYS,
    reps: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    labels = list(dict.fromkeys(label_of(r["meta"], label_keys) for r in results))  # first seen = baseline
    if len(labels) < 1:
        raise ValueError("no runs to compare")
    out: dict[str, Any] = {"labels": labels, "baseline": labels[0], "metrics": {}}
    for metric in HIGHER_IS_BETTER + LOWER_IS_BETTER:
        table = group_scores(results, metric, label_keys)
        if not table:
            continue
        entry: dict[str, Any] = {"higher_is_better": metric in HIGHER_IS_BETTER, "iqm": {}, "p_improvement": {}}
        for label in labels:
            if label in table:
                point, low, high = stratified_bootstrap_ci(list(table[label].values()), iqm, reps=reps, seed=seed)
                entry["iqm"][label] = {"value": point, "ci": [low, high], "runs": sum(map(len, table[label].values()))}
        base = table.get(labels[0], {})
        for label in labels[1:]:
            shared = sorted(set(base) & set(table.get(label, {})))
            if not shared:
                continue
            x, y = [table[label][t] for t in shared], [base[t] for t in shared]
            if metric in LOWER_IS_BETTER:  # improvement = lower value
                x, y = [[-v for v in s] for s in x], [[-v for v in s] for s in y]
            point, low, high = probability_of_improvement_ci(x, y, reps=reps, seed=seed)
            entry["p_improvement"][label] = {"value": point, "ci": [low, high], "tasks": shared}
        if metric in PROFILE_METRICS:
            entry["profile"] = profiles(table, labels, reps, seed)
        out["metrics"][metric] = entry
    return out


def profiles(table: Mapping[str, Mapping[str, list[float]]], labels: Sequence[str], reps: int, seed: int) -> dict[str, Any]:
    """Performance profiles of every configuration on one shared grid of thresholds."""
    values = [v for label in labels for runs in table.get(label, {}).values() for v in runs]
    taus = np.linspace(min(values), max(values), PROFILE_POINTS)
    out: dict[str, Any] = {"tau": taus.tolist()}
    for label in labels:
        if label in table:
            frac, low, high = performance_profile(list(table[label].values()), taus, reps=reps, seed=seed)
            out[label] = {"fraction": frac.tolist(), "low": low.tolist(), "high": high.tolist()}
    return out


def plot_profiles(comparison: Mapping[str, Any], path: Path | str) -> Path | None:
    """One panel per profiled metric: fraction of runs above tau, with bootstrap bands."""
    panels = [(m, e["profile"]) for m, e in comparison["metrics"].items() if "profile" in e]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparse_offline_rl.io import atomic_save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (metric, profile) in zip(axes[0], panels):
        for label in comparison["labels"]:
            if label in profile:
                line = ax.plot(profile["tau"], profile[label]["fraction"], label=label)[0]
                ax.fill_between(profile["tau"], profile[label]["low"], profile[label]["high"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel(f"{metric} threshold tau")
        ax.set_ylabel("fraction of runs > tau")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("performance profiles (stratified bootstrap 95% bands)")
    return atomic_save_figure(fig, path)


def compare_run_dirs(run_dirs: Sequence[Path | str], label_keys: Sequence[str] = DEFAULT_LABEL_KEYS,
                     reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    results = [load_result(d) for d in run_dirs]
    comparison = compare_results(results, label_keys, reps=reps, seed=seed)
    comparison["runs"] = [str(d) for d in run_dirs]
    return comparison


def format_comparison(comparison: Mapping[str, Any]) -> str:
    lines = [f"baseline: {comparison['baseline']}"]
    for metric, entry in comparison["metrics"].items():
        arrow = "higher is better" if entry["higher_is_better"] else "lower is better"
        lines.append(f"\n{metric} ({arrow})")
        for label, v in entry["iqm"].items():
            poi = entry["p_improvement"].get(label)
            poi_text = "" if poi is None else f"   P(improves on baseline) {poi['value']:.2f} [{poi['ci'][0]:.2f}, {poi['ci'][1]:.2f}]"
            lines.append(f"  {label:<40} IQM {v['value']:9.2f} [{v['ci'][0]:9.2f}, {v['ci'][1]:9.2f}]  n={v['runs']}{poi_text}")
    return "\n".join(lines)
