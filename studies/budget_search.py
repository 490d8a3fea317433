"""Issue 25's evidence table (results/budget_search/): bisection against the constrained allocator at the
same budgets, from the runs of `python run.py -m +sweep=budget_search`.

  python studies/budget_search.py SWEEP_DIR [--out results/budget_search]

Per run: the budget, the search, the actor's kept fraction and per-layer densities, the search's
reward (the retained SNIP score, on one scale for both), the costs reached, probes, seconds, and the
final normalised score (mean of the last 3 evaluations). Per (budget, search): means over seeds with
a bootstrap 95% CI (mean statistic), and P(constrained > bisect) on the final score.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from sparse_offline_rl.evaluation.stats import mean, probability_of_improvement_ci, stratified_bootstrap_ci
from sparse_offline_rl.io import atomic_save_figure, atomic_write_json, atomic_write_text, code_version
from sparse_offline_rl.report.collect import curve_scores


def run_row(run_dir: Path) -> dict[str, Any] | None:
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    search = summary["pruning"]["budget_cost"]
    actor = summary["pruning"]["networks"]["actor"]
    budget = re.search(r"\+budget=([^,]+)", run_dir.name)
    costs = search["cost"] if isinstance(search["cost"], list) else [search["cost"]]
    return {"run": run_dir.name, "budget": budget.group(1) if budget else "?", "search": search["search"],
            "seed": summary["seed"], "actor_density": actor["density"],
            "layer_density": {k: round(v, 4) for k, v in actor["layer_density"].items()},
            "reward": search["reward"], "costs": costs, "limits": search["budget_cost_max"],
            "probes": len(search["probes"]), "search_seconds": search["seconds"],
            "final_score": curve_scores(run_dir)[0], "steps": summary["steps"], "code": summary["code"]}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in sorted({(r["budget"], r["search"]) for r in rows}):
        group = [r for r in rows if (r["budget"], r["search"]) == key]
        entry: dict[str, Any] = {"budget": key[0], "search": key[1], "seeds": len(group)}
        for field in ("final_score", "reward", "actor_density", "probes", "search_seconds"):
            entry[field] = stratified_bootstrap_ci([[r[field] for r in group]], statistic=mean)
        entry["costs"] = np.mean([r["costs"] for r in group], axis=0).tolist()
        entry["limits"] = group[0]["limits"]
        out.append(entry)
    return out


def improvement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """P(constrained > bisect) on the final score, per budget."""
    result = {}
    for budget in sorted({r["budget"] for r in rows}):
        by = {s: [r["final_score"] for r in rows if r["budget"] == budget and r["search"] == s]
              for s in ("constrained", "bisect")}
        if all(by.values()):
            result[budget] = probability_of_improvement_ci([by["constrained"]], [by["bisect"]])
    return result


def markdown(groups: list[dict[str, Any]], better: dict[str, Any]) -> str:
    fmt = lambda t, d=1: f"{t[0]:.{d}f} [{t[1]:.{d}f}, {t[2]:.{d}f}]"  # noqa: E731
    lines = ["| budget | search | seeds | final score | reward (retained SNIP) | actor density | costs (limits) | "
             "probes | search s |", "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        costs = ", ".join(f"{c:.4g} ({lim:g})" for c, lim in zip(g["costs"], g["limits"] if isinstance(g["limits"], list)
                                                               else [g["limits"]]))
        lines.append(f"| {g['budget']} | {g['search']} | {g['seeds']} | {fmt(g['final_score'])} | {fmt(g['reward'], 3)} | "
                     f"{fmt(g['actor_density'], 3)} | {costs} | {g['probes'][0]:.0f} | {g['search_seconds'][0]:.0f} |")
    lines.append("")
    for budget, (p, lo, hi) in better.items():
        lines.append(f"- {budget}: P(constrained > bisect) on the final score = {p:.2f} [{lo:.2f}, {hi:.2f}]")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, field, label in ((axes[0], "reward", "reward at initialization (retained SNIP score)"),
                             (axes[1], "final_score", "final normalised score")):
        for i, budget in enumerate(budgets):
            for j, (search, color) in enumerate((("bisect", "tab:gray"), ("constrained", "tab:blue"))):
                values = [r[field] for r in rows if r["budget"] == budget and r["search"] == search]
                x = i + (j - 0.5) * 0.3
                ax.scatter([x] * len(values), values, color=color, s=18, label=search if i == 0 else None)
                if values:
                    ax.hlines(np.mean(values), x - 0.1, x + 0.1, color=color)
        ax.set_xticks(range(len(budgets)), budgets, fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("bisection vs the constrained allocator at the same budgets (IQL hopper-medium, 3 seeds)")
    fig.tight_layout()
    atomic_save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/budget_search"))
    args = parser.parse_args()
    rows = [r for r in map(run_row, sorted(p for p in args.sweep.iterdir() if p.is_dir())) if r is not None]
    if not rows:
        raise SystemExit(f"error: no finished run under {args.sweep}")
    groups, better = aggregate(rows), improvement(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "runs.json", {"runs": rows, "groups": groups, "improvement": better,
                                               "made_by": code_version()})
    atomic_write_text(args.out / "table.md", markdown(groups, better))
    figure(rows, args.out / "budget_search.png")
    print(markdown(groups, better))


if __name__ == "__main__":
    main()
