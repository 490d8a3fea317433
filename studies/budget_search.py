"""Issue 25's evidence table (results/budget_search/): bisection against the constrained allocator at the
same budgets, from the runs of `python run.py -m +sweep=budget_search`, and (`--compress`) the
outputs of `bash studies/compress.sh` (trained dense runs fitted to a bytes budget).

  python studies/budget_search.py [SWEEP_DIR] [--compress DIR] [--out results/budget_search]

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


def run_state(run_dir: Path) -> dict[str, Any] | None:
    """summary.json of a finished run; for one still training, its checkpoint's pruning report and
    step (the search is over once it has a checkpoint; its final score is not known yet)."""
    if (run_dir / "summary.json").exists():
        return json.loads((run_dir / "summary.json").read_text())
    if not (run_dir / "checkpoint.pt").exists():
        return None
    from sparse_offline_rl.io import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    return {"pruning": ckpt["pruning_report"], "seed": ckpt["config"]["seed"], "steps": ckpt["step"],
            "code": None, "unfinished": True}


def run_row(run_dir: Path) -> dict[str, Any] | None:
    summary = run_state(run_dir)
    if summary is None:
        return None
    search = summary["pruning"]["budget_cost"]
    actor = summary["pruning"]["networks"]["actor"]
    budget = re.search(r"\+budget=([^,]+)", run_dir.name)
    costs = search["cost"] if isinstance(search["cost"], list) else [search["cost"]]
    return {"run": run_dir.name, "budget": budget.group(1) if budget else "?", "search": search["search"],
            "seed": summary["seed"], "actor_density": actor["density"],
            "layer_density": {k: round(v, 4) for k, v in actor["layer_density"].items()},
            "reward": search["reward"], "costs": costs, "limits": search["budget_cost_max"],
            "probes": len(search["probes"]), "search_seconds": search["seconds"],
            "final_score": float("nan") if summary.get("unfinished") else curve_scores(run_dir)[0],
            "steps": summary["steps"], "code": summary["code"]}


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
        if all(by.values()) and np.isfinite(by["constrained"] + by["bisect"]).all():
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


def compress_row(out_dir: Path) -> dict[str, Any] | None:
    """One `compress` output: its options, per-layer counts, bytes, reward before and after fine-tuning,
    and score, beside its dense source's score (the mean of the source's last 3 evaluations)."""
    if not (out_dir / "summary.json").exists():
        return None
    summary = json.loads((out_dir / "summary.json").read_text())
    record = summary["compress"]
    return {"out": out_dir.name, "seed": record["seed"], "search": record["options"]["budget_search"],
            "finetune_steps": record["finetune_steps"], "counts": record["search"]["counts"],
            "bytes": record["cost"]["after_finetune"], "limit": record["options"]["budget_cost_max"],
            "reward_before": record["reward"]["before_finetune"], "reward_after": record["reward"]["after_finetune"],
            "score": summary["eval"]["normalized_score_mean"], "source_score": curve_scores(Path(record["source"]))[0],
            "source_steps": summary["steps"] - record["finetune_steps"], "search_seconds": record["search"]["seconds"],
            "seconds": record["seconds"], "code": summary["code"]}


def compress_markdown(rows: list[dict[str, Any]]) -> str:
    fmt = lambda t, d=1: f"{t[0]:.{d}f} [{t[1]:.{d}f}, {t[2]:.{d}f}]"  # noqa: E731
    source = stratified_bootstrap_ci([[r["source_score"] for r in rows if r["search"] == "bisect" and not r["finetune_steps"]]],
                                     statistic=mean)
    lines = [f"Dense source runs: final score {fmt(source)} at {rows[0]['source_steps']} steps.", "",
             "| search | fine-tuning steps | seeds | score | fidelity reward (before fine-tuning) | "
             "after fine-tuning | actor bytes (limit) | search s |", "|---|---|---|---|---|---|---|---|"]
    for key in sorted({(r["search"], r["finetune_steps"]) for r in rows}):
        group = [r for r in rows if (r["search"], r["finetune_steps"]) == key]
        ci = lambda field: stratified_bootstrap_ci([[r[field] for r in group]], statistic=mean)  # noqa: E731
        lines.append(f"| {key[0]} | {key[1]} | {len(group)} | {fmt(ci('score'))} | {fmt(ci('reward_before'), 3)} | "
                     f"{fmt(ci('reward_after'), 3) if key[1] else '-'} | {np.mean([r['bytes'] for r in group]):.0f} "
                     f"({group[0]['limit']:.0f}) | {np.mean([r['search_seconds'] for r in group]):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, nargs="?")
    parser.add_argument("--compress", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/budget_search"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep is not None:
        rows = [r for r in map(run_row, sorted(p for p in args.sweep.iterdir() if p.is_dir())) if r is not None]
        if not rows:
            raise SystemExit(f"error: no finished run under {args.sweep}")
        groups, better = aggregate(rows), improvement(rows)
        atomic_write_json(args.out / "runs.json", {"runs": rows, "groups": groups, "improvement": better,
                                                   "made_by": code_version()})
        atomic_write_text(args.out / "table.md", markdown(groups, better))
        figure(rows, args.out / "budget_search.png")
        print(markdown(groups, better))
    if args.compress is not None:
        rows = [r for r in map(compress_row, sorted(p for p in args.compress.iterdir() if p.is_dir())) if r is not None]
        if not rows:
            raise SystemExit(f"error: no finished compress output under {args.compress}")
        atomic_write_json(args.out / "compress.json", {"outputs": rows, "made_by": code_version()})
        atomic_write_text(args.out / "compress.md", compress_markdown(rows))
        print(compress_markdown(rows))


if __name__ == "__main__":
    main()
