"""A run's own figures: the generalization suite's (generalization.png: initial-state gap, one
degradation curve per perturbation, and the training diagnostics from metrics.jsonl when the run
logged them) and the constrained budget search's (budget_search.png)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from sparse_offline_rl.evaluation.perturbations import ALL_GROUPS, NOMINAL_LEVEL  # noqa: E402
from sparse_offline_rl.evaluation.run_logs import read_diagnostics  # noqa: E402
from sparse_offline_rl.io import atomic_save_figure  # noqa: E402

DIAGNOSTIC_PANELS = (  # (title, [(metrics.jsonl key, legend)])
    ("TD error", [("td_error_train", "train"), ("td_error_val", "validation")]),
    ("BC loss (MSE)", [("bc_mse_train", "train"), ("bc_mse_val", "validation")]),
    ("Q(s0, pi(s0)) vs. return", [("q_s0", "Q(s0, pi(s0))"), ("discounted_return_s0", "discounted return")]),
    ("policy churn", [("policy_churn", "mean |a_t - a_prev|")]),
)


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


def plot_budget_search(search: Mapping[str, Any], out_path: Path) -> Path:
    """budget_search.png of a pruner.budget_search=constrained report: every probe's reward (feasible
    ones filled, the chosen one starred), each cost over its limit per probe, and the Lagrange
    multipliers and the policy's std per update."""
    probes, updates = search["probes"], search["updates"]
    names = list(probes[0]["costs"]) if probes else []
    limits = dict(zip(names, search["budget_cost_max"] if isinstance(search["budget_cost_max"], list)
                      else [search["budget_cost_max"]]))
    fig, (ax_r, ax_c, ax_l) = plt.subplots(1, 3, figsize=(15, 4))
    feasible = [i for i, p in enumerate(probes) if p["feasible"]]
    other = [i for i, p in enumerate(probes) if not p["feasible"]]
    ax_r.scatter(other, [probes[i]["reward"] for i in other], s=8, facecolors="none", edgecolors="tab:red", label="infeasible")
    ax_r.scatter(feasible, [probes[i]["reward"] for i in feasible], s=8, color="tab:blue", label="feasible")
    best = next((i for i, p in enumerate(probes) if p["counts"] == search["counts"]), None)
    if best is not None:
        ax_r.scatter([best], [probes[best]["reward"]], marker="*", s=160, color="gold", edgecolors="k", label="chosen")
    ax_r.set(xlabel="probe", ylabel="reward", title="reward of each allocation")
    ax_r.legend(fontsize=8)
    for name in names:
        ax_c.plot([p["costs"][name] / limits[name] for p in probes], ".", ms=3, label=name.rsplit(":", 1)[-1])
    ax_c.axhline(1.0, color="k", lw=0.8, ls="--")
    ax_c.set(xlabel="probe", ylabel="cost / limit", title="costs against their limits")
    ax_c.legend(fontsize=8)
    for j, name in enumerate(names):
        ax_l.plot([u["probes"] for u in updates], [u["lambdas"][j] for u in updates], label=f"lambda {name.rsplit(':', 1)[-1]}")
    ax_l.plot([u["probes"] for u in updates], [u["std"] for u in updates], "k:", label="policy std (logits)")
    ax_l.set(xlabel="probes used", title="Lagrange multipliers")
    ax_l.legend(fontsize=8)
    fig.suptitle(f"budget_search=constrained: {len(probes)} probes, {search['seconds']:.1f} s, reward {search['reward']:.4g}")
    fig.tight_layout()
    return atomic_save_figure(fig, out_path, dpi=90)
