"""The generalization suite's per-run figure (generalization.png): initial-state gap, one degradation curve per perturbation, and the training
diagnostics from metrics.jsonl (when the run logged them)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from sparse_offline_rl.evaluation.perturbations import ALL_GROUPS, NOMINAL_LEVEL  # noqa: E402
from sparse_offline_rl.io import atomic_save_figure  # noqa: E402

DIAGNOSTIC_PANELS = (  # (title, [(metrics.jsonl key, legend)])
    ("TD error", [("td_error_train", "train"), ("td_error_val", "validation")]),
    ("BC loss (MSE)", [("bc_mse_train", "train"), ("bc_mse_val", "validation")]),
    ("Q(s0, pi(s0)) vs. return", [("q_s0", "Q(s0, pi(s0))"), ("discounted_return_s0", "discounted return")]),
    ("policy churn", [("policy_churn", "mean |a_t - a_prev|")]),
)


def read_diagnostics(metrics_path: Path) -> list[dict[str, Any]]:
    if not metrics_path.exists():
        return []
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "diagnostics"]


def _value(row: Mapping[str, Any], use_scores: bool) -> tuple[float, float]:
    return (row["score_mean"], row["score_std"]) if use_scores else (row["return_mean"], row["return_std"])


def plot_run(result: Mapping[str, Any], metrics_path: Path, out_path: Path) -> None:
    rows = result["cells"]
    use_scores = result["summary"].get("metric") == "normalized_score"
    ylabel = "score (dataset's reference returns)" if use_scores else "return"
    groups = [g for g in ALL_GROUPS if any(r["group"] == g for r in rows)]
    diagnostics = read_diagnostics(Path(metrics_path))
    n_panels = 1 + len(groups) + (len(DIAGNOSTIC_PANELS) if diagnostics else 0)
    cols = 4
    fig, axes = plt.subplots(math.ceil(n_panels / cols), cols, figsize=(4 * cols, 3.2 * math.ceil(n_panels / cols)), squeeze=False)
    flat = list(axes.ravel())

    seed_rows = [r for r in rows if r["group"] == "seeds"]
    ax = flat.pop(0)
    values = [_value(r, use_scores) for r in seed_rows]
    ax.bar([r["level"] for r in seed_rows], [v[0] for v in values], yerr=[v[1] for v in values], capsize=4,
           color=["tab:blue", "tab:orange", "tab:green"][: len(seed_rows)])
    gap = result["summary"].get("generalization_gap")
    ax.set_title("initial states" + ("" if gap is None else f" (gap {gap:.1f})"))
    ax.set_ylabel(ylabel)

    nominal = next((r for r in seed_rows if r["level"] == "heldout"), None)
    for group in groups:
        ax = flat.pop(0)
        points = [(float(r["level"]), *_value(r, use_scores)) for r in rows if r["group"] == group]
        if nominal is not None:  # the unperturbed point on the same held-out seeds
            points.append((NOMINAL_LEVEL[group], *_value(nominal, use_scores)))
        points.sort()
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3)
        ax.axvline(NOMINAL_LEVEL[group], color="grey", lw=0.8, ls=":")
        ax.set_title(group)
        ax.set_xlabel({"reset_noise": "x default reset_noise_scale", "obs_noise": "sigma (x dataset std)",
                       "action_noise": "sigma", "sticky": "p"}.get(group, "scale"))
        ax.set_ylabel(ylabel)

    if diagnostics:
        for title, series in DIAGNOSTIC_PANELS:
            ax = flat.pop(0)
            for key, legend in series:
                pts = [(r["step"], r[key]) for r in diagnostics if key in r]
                if pts:
                    ax.plot(*zip(*pts), marker=".", label=legend)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
    for ax in flat:
        ax.axis("off")
    meta = result.get("meta", {})
    fig.suptitle(" ".join(f"{k}={meta[k]}" for k in ("algo", "env", "pruner", "sparsity", "seed") if k in meta)
                 + f"  suite={result['suite']}, {result['episodes_per_cell']} episodes/cell")
    fig.tight_layout()
    atomic_save_figure(fig, out_path, dpi=90)
