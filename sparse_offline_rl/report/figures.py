"""The sweep report's figures (matplotlib, Agg, PNG written atomically).

- score_vs_sparsity.png: one panel per algorithm (rows) and dataset (columns); IQM over seeds per
  pruner with its bootstrap 95% CI band; the dense run as a grey line and band. The x axis is the
  kept fraction on a log scale, labelled with the sparsity, so 0.9 / 0.95 / 0.98 do not pile up.
- score_vs_training_flops.png: the same panels and scores against the training FLOPs of the run
  (summary.json `training_flops`, mean over seeds, log scale), one marker per (pruner, sparsity)
  labelled with the sparsity, so methods compare at equal training cost: GMP pays for its dense
  phase, RigL for its dense gradients.
- learning_curves.png: evaluation score during training, mean over seeds with a +-1 standard error
  band, one line per (pruner, sparsity), same panel grid.
- density_per_layer.png: the achieved density of every pruned layer (mean over seeds and datasets),
  one panel per algorithm (rows) and sparsity (columns), one line per pruner; dashed: the target.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparse_offline_rl.io import atomic_save_figure  # noqa: E402
from sparse_offline_rl.evaluation.run_logs import read_curve  # noqa: E402

Row = Mapping[str, Any]


def panel_grid(rows: Sequence[str], cols: Sequence[str], width: float = 4.0, height: float = 3.0) -> tuple[Any, Any]:
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(width * len(cols), height * len(rows)), squeeze=False,
                             constrained_layout=True)
    return fig, axes


def short(dataset: str) -> str:
    """A dataset given as a file path is titled by its file name."""
    return Path(dataset).name if "/" in dataset and not dataset.startswith(("mujoco/", "sorl/")) else dataset


def is_number(label: str) -> bool:
    try:
        float(label)
        return True
    except ValueError:
        return False


def pruner_colors(pruners: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {p: cmap(i % 10) for i, p in enumerate(sorted(set(pruners)))}


def score_panels(groups: Sequence[Row]) -> tuple[list[str], list[str], dict[str, Any], Any, Any]:
    """The algorithm x dataset grid the score figures share: algos, datasets, pruner colours, fig, axes."""
    algos = sorted({g["algo"] for g in groups})
    datasets = sorted({g["dataset"] for g in groups})
    colors = pruner_colors([g["pruner"] for g in groups if g["pruner"] != "dense"])
    return (algos, datasets, colors, *panel_grid(algos, datasets))


def score_vs_sparsity(groups: Sequence[Row], path: Path) -> Path:
    algos, datasets, colors, fig, axes = score_panels(groups)
    for i, algo in enumerate(algos):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            here = [g for g in groups if g["algo"] == algo and g["dataset"] == dataset and is_number(g["sparsity"])]
            sparse = [g for g in here if float(g["sparsity"]) > 0]
            ticks = sorted({float(g["sparsity"]) for g in sparse})
            if ticks:  # axis first: a single point would give matplotlib an empty log range
                ax.set_xscale("log")
                ax.set_xticks([1 - s for s in ticks], [f"{s:g}" for s in ticks])
                ax.minorticks_off()
                ax.set_xlim(max(1 - s for s in ticks) * 1.5, min(1 - s for s in ticks) / 1.5)  # sparser to the right
            for dense in (g for g in here if float(g["sparsity"]) == 0):
                ax.axhline(dense["score_iqm"], color="0.3", lw=1.5, label=f"dense (n={dense['n_seeds']})")
                ax.axhspan(dense["iqm_ci_low"], dense["iqm_ci_high"], color="0.5", alpha=0.15, lw=0)
            for pruner in sorted({g["pruner"] for g in sparse}):
                line = sorted((g for g in sparse if g["pruner"] == pruner), key=lambda g: float(g["sparsity"]))
                kept = [1 - float(g["sparsity"]) for g in line]
                ax.plot(kept, [g["score_iqm"] for g in line], "o-", color=colors[pruner], label=pruner, ms=4)
                ax.fill_between(kept, [g["iqm_ci_low"] for g in line], [g["iqm_ci_high"] for g in line],
                                color=colors[pruner], alpha=0.2, lw=0)
            ax.set_title(f"{algo} / {short(dataset)}", fontsize=10)
            ax.set_xlabel("sparsity" if i == len(algos) - 1 else "")
            ax.set_ylabel("score, dataset's reference returns\n(IQM, 95% CI)" if j == 0 else "")
            ax.grid(alpha=0.3)
            if here:
                ax.legend(fontsize=7)
    return atomic_save_figure(fig, path)


def score_vs_training_flops(groups: Sequence[Row], path: Path) -> Path:
    algos, datasets, colors, fig, axes = score_panels(groups)
    for i, algo in enumerate(algos):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            here = [g for g in groups if g["algo"] == algo and g["dataset"] == dataset
                    and g.get("training_flops", 0) > 0]  # NaN (summaries without FLOPs) compares False
            for pruner in sorted({g["pruner"] for g in here}):
                line = sorted((g for g in here if g["pruner"] == pruner), key=lambda g: g["training_flops"])
                x = [g["training_flops"] for g in line]
                y = [g["score_iqm"] for g in line]
                err = [[g["score_iqm"] - g["iqm_ci_low"] for g in line], [g["iqm_ci_high"] - g["score_iqm"] for g in line]]
                color = "0.3" if pruner == "dense" else colors[pruner]
                ax.errorbar(x, y, yerr=err, fmt="o-", color=color, label=pruner, ms=4, capsize=2, lw=1)
                for g, xi, yi in zip(line, x, y):
                    ax.annotate(g["sparsity"], (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            if here:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # within a decade labels collide
                ax.legend(fontsize=7)
            ax.set_title(f"{algo} / {short(dataset)}", fontsize=10)
            ax.set_xlabel("training FLOPs (model)" if i == len(algos) - 1 else "")
            ax.set_ylabel("score, dataset's reference returns\n(IQM, 95% CI)" if j == 0 else "")
            ax.grid(alpha=0.3)
    return atomic_save_figure(fig, path)


def learning_curves(runs: Sequence[Row], path: Path) -> Path:
    algos = sorted({r["algo"] for r in runs})
    datasets = sorted({r["dataset"] for r in runs})
    curves: dict[tuple[str, str, str, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for run in runs:
        curve = read_curve(run["run_dir"])
        if curve is not None:
            curves[(run["algo"], run["dataset"], run["pruner"], run["sparsity"])].append(curve)
    colors = pruner_colors([k[2] for k in curves if k[2] != "dense"])
    levels = sorted({k[3] for k in curves})  # line style tells sparsities of one pruner apart
    fig, axes = panel_grid(algos, datasets)
    for (algo, dataset, pruner, sparsity), members in sorted(curves.items()):
        ax = axes[algos.index(algo)][datasets.index(dataset)]
        steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in members)))  # steps every seed reached
        if not steps:
            continue
        values = np.array([[dict(zip(s.tolist(), v))[t] for t in steps] for s, v in members])
        mean = values.mean(axis=0)
        sem = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros_like(mean)
        color = "0.2" if pruner == "dense" else colors[pruner]
        style = "-" if pruner == "dense" else ["-", "--", ":", "-."][levels.index(sparsity) % 4]
        ax.plot(steps, mean, style, color=color, marker="o", ms=2.5, lw=1.3,
                label=f"{pruner} s={sparsity} (n={len(values)})")
        ax.fill_between(steps, mean - sem, mean + sem, color=color, alpha=0.15, lw=0)
    data_level = {d: [r["data_score"] for r in runs if r["dataset"] == d and not math.isnan(r.get("data_score", math.nan))]
                  for d in datasets}
    for i, algo in enumerate(algos):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            if data_level[dataset]:  # the behaviour data's mean return: what "learns the data's level" means
                ax.axhline(float(np.mean(data_level[dataset])), color="0.5", ls="--", lw=1.0, label="data mean return")
            ax.set_title(f"{algo} / {short(dataset)}", fontsize=10)
            ax.set_xlabel("gradient step" if i == len(algos) - 1 else "")
            ax.set_ylabel("score, dataset's reference returns\n(mean ± s.e.)" if j == 0 else "")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6)
    return atomic_save_figure(fig, path)


def layer_densities(summary_pruning: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for net, info in (summary_pruning.get("networks") or {}).items():
        for layer, layer_info in (info.get("layers") or {}).items():
            out[f"{net}.{layer}"] = float(layer_info["density"])
    return out


def density_per_layer(runs: Sequence[Row], pruning: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """`pruning`: run_dir -> the summary's pruning report."""
    sparse = [r for r in runs if r["pruner"] != "dense" and is_number(r["sparsity"]) and float(r["sparsity"]) > 0]
    algos = sorted({r["algo"] for r in sparse}) or ["(no pruned runs)"]
    levels = sorted({r["sparsity"] for r in sparse}, key=float) or ["-"]
    colors = pruner_colors([r["pruner"] for r in sparse])
    collected: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for run in sparse:
        collected[(run["algo"], run["sparsity"], run["pruner"])].append(layer_densities(pruning.get(run["run_dir"], {})))
    fig, axes = panel_grid(algos, levels, width=5.0, height=3.2)
    for (algo, sparsity, pruner), members in sorted(collected.items()):
        ax = axes[algos.index(algo)][levels.index(sparsity)]
        layers = list(members[0])
        means = [np.mean([m[layer] for m in members if layer in m]) for layer in layers]
        ax.plot(range(len(layers)), means, "o-", color=colors[pruner], label=pruner, ms=4)
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    for i, algo in enumerate(algos):
        for j, sparsity in enumerate(levels):
            ax = axes[i][j]
            if is_number(sparsity):
                ax.axhline(1 - float(sparsity), color="0.3", ls="--", lw=1, label="target")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{algo}, sparsity {sparsity}", fontsize=10)
            ax.set_ylabel("kept fraction (mean over runs)" if j == 0 else "")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    return atomic_save_figure(fig, path)


def draw_aggregate(summary: Sequence[Row], taus: np.ndarray, profiles: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                   level: str, keeps: float, path: Path) -> Path:
    """The over-tasks figure of `report.aggregate`: retained fraction vs sparsity, the profile at
    `level`, and P(pruner > random)."""
    colors = pruner_colors([r["pruner"] for r in summary])
    fig, (curve, profile, poi) = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    for pruner, color in colors.items():
        mine = sorted((r for r in summary if r["pruner"] == pruner), key=lambda r: float(r["sparsity"]))
        x = [float(r["sparsity"]) for r in mine]
        curve.plot(x, [r["iqm"] for r in mine], "o-", color=color, label=pruner)
        curve.fill_between(x, [r["low"] for r in mine], [r["high"] for r in mine], color=color, alpha=0.2)
        if pruner in profiles:
            frac, low, high = profiles[pruner]
            profile.plot(taus, frac, color=color, label=pruner)
            profile.fill_between(taus, low, high, color=color, alpha=0.2)
    curve.axhline(1.0, color="k", lw=1, label="dense")
    curve.axhline(keeps, color="k", lw=1, ls="--", label=f"{keeps:.0%} of dense")
    curve.set(xlabel="sparsity", ylabel="retained fraction of dense\n(IQM over tasks and seeds, 95% CI)")
    curve.legend(fontsize=7)
    profile.axvline(keeps, color="k", lw=1, ls="--")
    profile.set(xlabel="retained fraction of dense, tau", ylabel="fraction of runs > tau", ylim=(-0.02, 1.02),
                title=f"performance profile at sparsity {level}")
    beside = [r for r in summary if "p_over_random" in r]
    labels = [f"{r['pruner']}\n{r['sparsity']}" for r in beside]
    heights = [r["p_over_random"] for r in beside]
    errors = [[h - r["p_low"] for h, r in zip(heights, beside)], [r["p_high"] - h for h, r in zip(heights, beside)]]
    poi.bar(range(len(beside)), heights, yerr=errors, color=[colors[r["pruner"]] for r in beside], capsize=3)
    poi.set_xticks(range(len(beside)), labels, fontsize=7)
    poi.axhline(0.5, color="k", lw=1, ls="--")
    poi.set(ylabel="P(pruner > random pruning)\nat the same sparsity (95% CI)", ylim=(0, 1))
    for ax in (curve, profile, poi):
        ax.grid(alpha=0.3)
    return atomic_save_figure(fig, path)
