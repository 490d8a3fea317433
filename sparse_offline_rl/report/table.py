"""Finished runs -> one row each -> one row per configuration, aggregated over seeds.

A configuration is (algo, env, dataset, pruner, sparsity) plus any other setting that differs between
runs of one such group (say a sweep over algo.expectile): those become extra columns, so runs of
different settings are never averaged together as if they were seeds.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sparse_offline_rl.checks import VOLATILE_KEYS, flatten
from sparse_offline_rl.evaluation.stats import iqm, stratified_bootstrap_ci
from sparse_offline_rl.report.collect import FINAL_EVALS, Job, curve_scores

BASE_KEYS = ("algo", "env", "dataset", "pruner", "sparsity")
SCALE_NOTE = ("Scores are normalised with each dataset's own reference returns: 100 * (R - random) / (expert - "
              "random), 0 = the dataset's random policy, 100 = its expert policy (for the project's datasets these "
              "are the project's behaviour policies, not D4RL's).")
FINAL_NOTE = (f"Final score: the mean of a run's last {FINAL_EVALS} evaluations (its last evaluation where it has no "
              "eval.csv); best eval: its best evaluation; results.csv also has last_mean, the last evaluation's mean.")
# Config entries already covered by BASE_KEYS, or that never define a configuration.
NOT_SETTINGS = {"algo.name", "env", "dataset", "pruner.name", "sparsity", "seed", "plugins"}


def sparsity_label(value: Any) -> str:
    if isinstance(value, Mapping):
        return json.dumps(dict(sorted(value.items())), separators=(",", ":"))
    return f"{float(value):g}"


def final_score(row: Mapping[str, Any], final: str = "score_final", last: str = "score") -> float:
    """A run's final score (the mean of its last evaluations); its last evaluation where it has no curve."""
    value = row.get(final, math.nan)
    return float(row[last]) if value is None or math.isnan(value) else float(value)


def data_draw(summary: Mapping[str, Any]) -> str:
    """Which draw of its dataset a run trained on: the same `make` command on two CPU platforms rolls the
    behaviour policy out into different episodes (docs/reproducibility.md). "" where a summary lacks it."""
    data = summary.get("dataset_returns") or {}
    if "episodes" not in data or "return_mean" not in data:
        return ""
    return draw_label(data["episodes"], data["return_mean"])


def draw_label(episodes: int, return_mean: float) -> str:
    return f"{episodes} episodes, mean return {return_mean:.1f}"


def draws_by_dataset(rows: Sequence[Mapping[str, Any]], runs: str | None = None) -> dict[str, dict[str, int]]:
    """dataset -> draw -> runs, for the datasets whose runs trained on more than one draw; a row counts as
    row[runs] runs (an aggregated group: "n_seeds"), else as one."""
    seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        seen[row["dataset"]][row.get("data_draw", "")] += row[runs] if runs else 1
    return {name: dict(draws) for name, draws in sorted(seen.items()) if len(draws) > 1}


def run_rows(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    """One flat row per finished run."""
    rows = []
    for job in jobs:
        if job.status != "done" or job.summary is None:
            continue
        s = job.summary
        row: dict[str, Any] = {
            "algo": s["algo"], "env": s["env"], "dataset": s["dataset"], "pruner": s["pruner"],
            "sparsity": sparsity_label(s["sparsity"]), "seed": s["seed"],
            "score": s["eval"]["normalized_score_mean"], "return": s["eval"]["return_mean"],
            "d4rl_score": s["eval"].get("d4rl_score_mean", math.nan),
            # the data's own mean episode return on the same scale as `score` (older runs lack it)
            "data_score": (s.get("dataset_returns") or {}).get("normalized_score", math.nan),
            "score_scale": (s.get("score_scales") or {}).get("normalized_score", ""),
            "data_draw": data_draw(s),
            "steps": s["steps"], "steps_per_sec": s.get("steps_per_sec"), "run_dir": str(job.path),
            # What the method ended with and what training cost (pruning.density.step_flops); older
            # summaries have neither.
            "final_sparsity": s.get("final_sparsity", math.nan), "training_flops": s.get("training_flops", math.nan),
        }
        for net, density in sorted(s.get("density", {}).items()):
            row[f"density_{net}"] = density
        for key, value in sorted((s.get("generalization") or {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"gen_{key}"] = value
        # The reference study's two figures (results/reference): the mean of the last evaluations, and the best.
        row["score_final"], row["score_best"] = curve_scores(job.path)
        row["d4rl_final"], row["d4rl_best"] = curve_scores(job.path, "d4rl_score_mean")
        row["_config"] = flatten(s.get("config", {}))
        rows.append(row)
    return rows


def setting_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys whose value differs between runs of one base group (other than the seed)."""
    values: dict[tuple, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        group = values[tuple(row[k] for k in BASE_KEYS)]
        for key, value in row["_config"].items():
            if key not in NOT_SETTINGS and key.split(".")[0] not in VOLATILE_KEYS:
                group[key].add(json.dumps(value, sort_keys=True))
    return sorted({key for group in values.values() for key, seen in group.items() if len(seen) > 1})


def aggregate(rows: Sequence[Mapping[str, Any]], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per configuration, over seeds: the final score's mean, std (ddof 1) and IQM with a bootstrap 95% CI,
    the best evaluation's and the last evaluation's means, and the seed count."""
    extra = setting_columns(rows)
    # Runs on two draws of one dataset are never averaged as if they were seeds of one configuration.
    split_draws = bool(draws_by_dataset(rows))
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        key = tuple(row[k] for k in BASE_KEYS) + tuple(json.dumps(row["_config"].get(k)) for k in extra)
        groups[key + ((row.get("data_draw", ""),) if split_draws else ())].append(row)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        scores = np.array([final_score(m) for m in members], dtype=np.float64)
        point, low, high = stratified_bootstrap_ci([scores], iqm, reps=reps, seed=seed)
        agg: dict[str, Any] = dict(zip(BASE_KEYS, key))
        agg.update({k: members[0]["_config"].get(k) for k in extra})
        if split_draws:
            agg["data_draw"] = members[0].get("data_draw", "")
        agg.update({
            "n_seeds": len(members),
            "seeds": " ".join(str(s) for s in sorted(m["seed"] for m in members)),
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std(ddof=1)) if len(scores) > 1 else math.nan,
            "score_iqm": point, "iqm_ci_low": low, "iqm_ci_high": high,
            "last_mean": float(np.mean([m["score"] for m in members])),
            "d4rl_final_mean": float(np.mean([final_score(m, "d4rl_final", "d4rl_score") for m in members])),
        })
        numeric = sorted({c for m in members for c in m
                          if c.startswith(("density_", "gen_", "return", "d4rl_", "steps_per_sec", "final_sparsity",
                                             "training_flops", "score_final", "score_best"))})
        for column in numeric:
            values = [m[column] for m in members if isinstance(m.get(column), (int, float))]
            agg[f"{column}_mean" if column in ("return", "d4rl_score") else column] = \
                float(np.mean(values)) if values else math.nan
        agg["score_scale"] = members[0].get("score_scale", "")
        agg["steps"] = max(m["steps"] for m in members)
        out.append(agg)
    return out


def extra_columns(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The setting columns `aggregate` put between the base keys and n_seeds."""
    columns = list(groups[0]) if groups else []
    return columns[len(BASE_KEYS):columns.index("n_seeds")] if columns else []


def _sort_key(key: tuple) -> tuple:
    algo, env, dataset, pruner, sparsity, *rest = key
    try:
        s = float(sparsity)
    except ValueError:
        s = math.inf
    return (algo, env, dataset, pruner != "dense", pruner, s, *map(str, rest))


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not c.startswith("_")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(groups: Sequence[Mapping[str, Any]], problems: Sequence[Job]) -> str:
    draws = draws_by_dataset(groups, runs="n_seeds")
    extra = extra_columns(groups)
    gen = [c for c in ("gen_generalization_gap", "gen_retention") if any(c in g for g in groups)]
    d4rl = any(not math.isnan(g.get("d4rl_score_mean", math.nan)) for g in groups)
    flops = any(not math.isnan(g.get("training_flops", math.nan)) for g in groups)
    best = any(not math.isnan(g.get("score_best", math.nan)) for g in groups)
    head = ["algo", "dataset", "pruner", "sparsity", *extra, "seeds", "final score mean ± std", "IQM [95% CI]",
            *(["best eval mean"] if best else []), *(["D4RL-scale final mean"] if d4rl else []), "density", *(["final sparsity", "training FLOPs"] if flops else []),
            *gen]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        densities = [v for k, v in g.items() if k.startswith("density_") and isinstance(v, float)]
        cells = [g["algo"], g["dataset"], g["pruner"], g["sparsity"], *(str(g[c]) for c in extra), str(g["n_seeds"]),
                 f"{g['score_mean']:.1f} ± {_num(g['score_std'])}",
                 f"{g['score_iqm']:.1f} [{g['iqm_ci_low']:.1f}, {g['iqm_ci_high']:.1f}]",
                 *([_num(g.get("score_best", math.nan))] if best else []),
                 *([_num(g.get("d4rl_final_mean", math.nan))] if d4rl else []),
                 f"{np.mean(densities):.3f}" if densities else "",
                 *([_num(g.get("final_sparsity", math.nan), 4), _flops(g.get("training_flops", math.nan))] if flops else []),
                 *(_num(g.get(c, math.nan), 2) for c in gen)]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    text += f"\n{FINAL_NOTE} {SCALE_NOTE}"
    scales = sorted({g["score_scale"] for g in groups if g.get("score_scale")})
    if scales:
        text += " Reference returns per dataset: " + "; ".join(scales) + "."
    if d4rl:
        text += (" D4RL-scale final mean: the same final returns on D4RL's scale (D4RL's random and expert reference returns "
                 "for the task), the scale of published D4RL tables.")
    text += (" IQM: interquartile mean over seeds with a percentile-bootstrap 95% CI; density: mean kept fraction "
             "over the agent's networks (counted on the weights)."
             + (" Final sparsity: of all prunable weights, from the masks the run ended with; training FLOPs: "
                "the FLOP model of the whole run (README, \"Training FLOPs\"), mean over seeds." if flops else "")
             + "\n")
    if draws:
        text += ("\n## Datasets with more than one draw\n\nThe same `make` command on two CPU platforms gives two "
                 "draws of a dataset (docs/reproducibility.md); the table keeps their runs apart (data_draw):\n\n"
                 + "\n".join(f"- {name}: " + "; ".join(f"{draw or 'not recorded'} ({n} runs)" for draw, n in found.items())
                              for name, found in draws.items()) + "\n")
    if problems:
        text += f"\n## Missing or failed runs ({len(problems)})\n\n" + "\n".join(
            f"- **{job.status}** `{job.label}`: {job.detail}" + (f" ({job.path})" if job.path else "") for job in problems
        ) + "\n"
    return text


def _flops(value: Any) -> str:
    """1.23e+12: FLOP counts differ by orders of magnitude between methods and run lengths."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _num(value: Any, digits: int = 1) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
