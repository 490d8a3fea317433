"""How much of dense each pruner keeps, per task and over tasks (the reference study's question).

A task is an (algorithm, dataset) pair at one run length. A pruned run's *retained fraction* is its
final score (mean of the last evaluations, `collect.curve_scores`; the summary's last evaluation
where a run has no curve) over the IQM of the task's dense runs' final scores, on the dataset's own
scale. Per cell: the ratio of the pruned runs' IQM to the dense runs' IQM, with a bootstrap CI that
resamples both. Over tasks, per pruner and sparsity: the IQM of the runs' retained fractions with a
stratified-bootstrap CI (each task a stratum), the performance profile of the retained fraction,
and the probability of improvement over random pruning at the same sparsity (Agarwal et al. 2021).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sparse_offline_rl.evaluation.stats import (
    iqm,
    performance_profile,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
    stratified_resample,
)
from sparse_offline_rl.report.table import final_score

Task = tuple[str, str, int]  # algo, dataset, steps
Method = tuple[str, str]  # pruner, sparsity
#: The share of dense a pruner must keep to count as keeping performance (the study's criterion).
KEEPS = 0.95
#: The sparsity whose performance profile is drawn: the claim's (SSP: 95% of the weights pruned).
PROFILE_AT = "0.95"


def by_task(rows: Sequence[Mapping[str, Any]]) -> dict[Task, dict[Method, np.ndarray]]:
    """task -> (pruner, sparsity) -> the runs' final scores."""
    table: dict[Task, dict[Method, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        table[(row["algo"], row["dataset"], int(row["steps"]))][(row["pruner"], row["sparsity"])].append(final_score(row))
    return {task: {m: np.asarray(v, dtype=np.float64) for m, v in methods.items()} for task, methods in table.items()}


def dense_of(methods: Mapping[Method, np.ndarray]) -> np.ndarray | None:
    return next((v for (pruner, _), v in methods.items() if pruner == "dense"), None)


def retained_cells(rows: Sequence[Mapping[str, Any]], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per task and pruned configuration: IQM(pruned) / IQM(dense) with a two-sample bootstrap 95% CI."""
    out = []
    for (algo, dataset, steps), methods in sorted(by_task(rows).items()):
        dense = dense_of(methods)
        if dense is None:
            continue
        for (pruner, sparsity), scores in sorted(methods.items()):
            if pruner == "dense":
                continue
            rng = np.random.default_rng(seed)
            boot = [_ratio(*stratified_resample([scores, dense], rng)) for _ in range(reps)]
            low, high = np.nanpercentile(boot, [2.5, 97.5])
            out.append({"algo": algo, "dataset": dataset, "steps": steps, "pruner": pruner, "sparsity": sparsity,
                        "seeds": len(scores), "dense_seeds": len(dense), "iqm": iqm(scores), "dense_iqm": iqm(dense),
                        "retained": _ratio(scores, dense), "low": float(low), "high": float(high)})
    return out


def across_tasks(rows: Sequence[Mapping[str, Any]], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per (pruner, sparsity) over every task that has dense runs: IQM of retained fractions [CI], the
    tasks whose retained IQM ratio reaches KEEPS, and P(X > random at that sparsity) [CI]."""
    strata = retained_strata(rows)
    out = []
    for (pruner, sparsity), per_task in sorted(strata.items(), key=lambda kv: (float(kv[0][1]), kv[0][0])):
        point, low, high = stratified_bootstrap_ci(list(per_task.values()), iqm, reps=reps, seed=seed)
        entry = {"pruner": pruner, "sparsity": sparsity, "tasks": len(per_task),
                 "runs": sum(len(v) for v in per_task.values()), "iqm": point, "low": low, "high": high,
                 # IQM is linear in a positive or negative scale, so this is each task's IQM ratio
                 "tasks_keeping": sum(iqm(v) >= KEEPS for v in per_task.values())}
        baseline = strata.get(("random", sparsity), {})
        shared = sorted(set(per_task) & set(baseline))
        if pruner != "random" and shared:
            p, p_low, p_high = probability_of_improvement_ci([per_task[t] for t in shared], [baseline[t] for t in shared],
                                                             reps=reps, seed=seed)
            entry.update({"p_over_random": p, "p_low": p_low, "p_high": p_high})
        out.append(entry)
    return out


def retained_strata(rows: Sequence[Mapping[str, Any]]) -> dict[Method, dict[Task, np.ndarray]]:
    """(pruner, sparsity) -> task -> each run's final score / the task's dense IQM."""
    out: dict[Method, dict[Task, np.ndarray]] = defaultdict(dict)
    for task, methods in by_task(rows).items():
        dense = dense_of(methods)
        if dense is None or iqm(dense) == 0:
            continue
        for method, scores in methods.items():
            if method[0] != "dense":
                out[method][task] = scores / iqm(dense)
    return dict(out)


def figure(rows: Sequence[Mapping[str, Any]], path: Path, reps: int = 2000, seed: int = 0,
           summary: Sequence[Mapping[str, Any]] | None = None) -> Path | None:
    """Retained fraction vs sparsity per pruner (IQM over tasks, CI band); the performance profile at
    sparsity PROFILE_AT (else the most populated one); P(pruner > random) per sparsity with its CI."""
    summary = across_tasks(rows, reps=reps, seed=seed) if summary is None else summary  # the table's, if made
    if not summary:
        return None
    from sparse_offline_rl.report.figures import draw_aggregate

    strata = retained_strata(rows)
    counts = defaultdict(int)
    for pruner, sparsity in strata:
        counts[sparsity] += 1
    level = PROFILE_AT if PROFILE_AT in counts else max(counts, key=lambda s: (counts[s], float(s)))
    taus = np.linspace(0, 1.2, 61)
    profiles = {pruner: performance_profile(list(per_task.values()), taus, reps=reps, seed=seed)
                for (pruner, sparsity), per_task in strata.items() if sparsity == level}
    return draw_aggregate(summary, taus, profiles, level, KEEPS, path)


def _ratio(scores: np.ndarray, dense: np.ndarray) -> float:
    base = iqm(dense)
    return iqm(scores) / base if base != 0 else math.nan


def to_markdown(cells: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> str:
    lines = ["## Retained fraction of dense, per task", "",
             "| algo | dataset | steps | pruner | sparsity | seeds | IQM | dense IQM | retained [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['algo']} | {c['dataset']} | {c['steps']} | {c['pruner']} | {c['sparsity']} | {c['seeds']} | "
              f"{c['iqm']:.1f} | {c['dense_iqm']:.1f} | {c['retained']:.2f} [{c['low']:.2f}, {c['high']:.2f}] |" for c in cells]
    lines += ["", "## Over tasks", "",
              f"| pruner | sparsity | tasks | runs | retained IQM [95% CI] | tasks keeping >= {KEEPS:.0%} | P(> random) [95% CI] |",
              "|---|---|---|---|---|---|---|"]
    for r in summary:
        poi = f"{r['p_over_random']:.2f} [{r['p_low']:.2f}, {r['p_high']:.2f}]" if "p_over_random" in r else ""
        lines.append(f"| {r['pruner']} | {r['sparsity']} | {r['tasks']} | {r['runs']} | {r['iqm']:.2f} [{r['low']:.2f}, "
                     f"{r['high']:.2f}] | {r['tasks_keeping']} of {r['tasks']} | {poi} |")
    lines += ["", "Final score: the mean of a run's last 3 evaluations, on the dataset's own scale. Retained: "
              "IQM of the pruned runs over IQM of the task's dense runs (CI: both resampled); over tasks: IQM of "
              "every run's score over its task's dense IQM, tasks as strata."]
    return "\n".join(lines) + "\n"
