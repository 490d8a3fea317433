"""Choosing among runs by an offline score (evaluation.selection): the recommendation, its expected
regret, and, where the runs were also evaluated in the simulator, how well the score ranked them.

- `recommend`: the run the score puts first. Its expected regret is read from the score's bootstrap
  replicates: in replicate b, regret_b = best score in b - the recommended run's score in b (>= 0,
  oriented so higher is better); the mean over b, in the score's units, with P(best) the fraction of
  replicates in which the recommended run is still first. This is the regret the score's own
  sampling noise allows, not the regret in true return: that needs the score checked against true
  returns (`agreement`), on this sweep or on a reference study.
- `agreement`: with each run's true final result (summary.json), Spearman's rank correlation of the
  score with the true normalised score, regret@1 = best true score - the true score of the run the
  score puts first, and top-k precision (the share of the score's top k that are truly top k), each
  with a bootstrap CI over seeds (`resamples`); `agreement_by_cell` within each algorithm x dataset;
  `config_agreement` the same for the choice of configuration (pruner, sparsity; seeds averaged).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sparse_offline_rl.evaluation.stats import spearman

Record = Mapping[str, Any]
#: The offline scores (evaluation.selection computes them) -> whether higher is better. Kept here, with
#: numpy only, so that the report can name them without importing torch.
SCORES: dict[str, bool] = {"td_error": False, "bc_mse": False, "q_s0": True, "fqe": True, "logme": True,
                           "logme_actor": True}


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"select={score} is not a score; accepted: {', '.join(SCORES)}")
    return score


def oriented(record: Record, score: str) -> float:
    """The run's score, negated where lower is better (so higher is always better); NaN if missing."""
    entry = record["scores"].get(score) or {}
    value = entry.get("value")
    if value is None or not math.isfinite(value):
        return math.nan
    return value if SCORES[score] else -value


def true_score(record: Record) -> float:
    value = (record.get("true") or {}).get("normalized_score_mean")
    return math.nan if value is None else float(value)


def recommend(records: Sequence[Record], score: str) -> dict[str, Any] | None:
    """The best run by `score`, its P(best) and expected regret over the score's replicates."""
    scored = [r for r in records if math.isfinite(oriented(r, check_score(score)))]
    if not scored:
        return None
    values = np.array([oriented(r, score) for r in scored])
    order = np.argsort(-values, kind="stable")
    best = int(order[0])
    out: dict[str, Any] = {"score": score, "run": scored[best]["run_dir"], "value": scored[best]["scores"][score]["value"],
                           "ranking": [scored[i]["run_dir"] for i in order], "p_best": None, "expected_regret": None}
    reps = [r["scores"][score].get("replicates") or [] for r in scored]
    if len(set(map(len, reps))) == 1 and reps[0]:
        sign = 1.0 if SCORES[score] else -1.0
        boot = sign * np.array(reps)  # (runs, replicates)
        out["p_best"] = float((boot.argmax(0) == best).mean())
        out["expected_regret"] = float((boot.max(0) - boot[best]).mean())
    return out


def regret_at_1(scores: np.ndarray, truth: np.ndarray) -> float:
    return float(truth.max() - truth[int(np.argmax(scores))])


def top_k_precision(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """The fraction of the score's top k runs that are among the true top k (ties by index)."""
    k = min(k, len(scores))
    picked = set(np.argsort(-scores, kind="stable")[:k].tolist())
    best = set(np.argsort(-truth, kind="stable")[:k].tolist())
    return len(picked & best) / k


def resamples(seeds: Sequence[Any], reps: int, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """Bootstrap index sets over the runs: seeds resampled with replacement, each drawn seed bringing
    all its runs (runs of one seed share a dataset shuffle and evaluation episodes, so they are not
    independent draws), when there are at least 2 seeds; else the runs themselves."""
    n = len(seeds)
    groups: dict[Any, list[int]] = {}
    for i, seed in enumerate(seeds):
        groups.setdefault(seed, []).append(i)
    if None in groups or len(groups) < 2:
        return [rng.integers(0, n, n) for _ in range(reps)], "runs"
    keys = list(groups)
    draws = rng.integers(0, len(keys), (reps, len(keys)))
    return [np.concatenate([groups[keys[j]] for j in row]) for row in draws], "seeds"


def agreement(records: Sequence[Record], score: str, reps: int = 2000, seed: int = 0, k: int = 3) -> dict[str, Any] | None:
    """Spearman, regret@1 and top-k precision of `score` against the true normalised scores, with
    bootstrap 95% CIs over seeds (`resamples`); None with fewer than 3 runs that have both."""
    rows = [(oriented(r, check_score(score)), true_score(r), (r.get("meta") or {}).get("seed")) for r in records]
    rows = [row for row in rows if math.isfinite(row[0]) and math.isfinite(row[1])]
    if len(rows) < 3:
        return None
    s, t = np.array([row[:2] for row in rows]).T
    boot, unit = resamples([row[2] for row in rows], reps, np.random.default_rng(seed))
    rho = np.array([spearman(s[i], t[i]) for i in boot])
    regret = np.array([regret_at_1(s[i], t[i]) for i in boot])
    precision = np.array([top_k_precision(s[i], t[i], k) for i in boot])
    interval = lambda x: [float(v) for v in np.nanpercentile(x, [2.5, 97.5])] if np.isfinite(x).any() else [math.nan] * 2  # noqa: E731
    return {"score": score, "runs": len(s), "spearman": spearman(s, t), "spearman_ci": interval(rho),
            "regret_at_1": regret_at_1(s, t), "regret_at_1_ci": interval(regret), "k": min(k, len(s)),
            "top_k_precision": top_k_precision(s, t, k), "top_k_precision_ci": interval(precision),
            "true_best": float(t.max()), "bootstrap": unit}


def config_agreement(records: Sequence[Record], score: str, reps: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """The configuration-level choice (what a researcher picks: the pruner and sparsity, not one seed's
    run): each (pruner, sparsity)'s mean oriented score and mean true score over its seeds; Spearman
    across configurations and regret@1 = best true mean - the true mean of the configuration the score
    puts first, with a bootstrap over seeds (each resample recomputes every configuration's means from
    the drawn seeds). None with fewer than 3 configurations or 2 seeds."""
    rows = [(oriented(r, check_score(score)), true_score(r), (r.get("meta") or {}).get("seed"),
             ((r.get("meta") or {}).get("pruner"), (r.get("meta") or {}).get("sparsity"))) for r in records]
    rows = [row for row in rows if math.isfinite(row[0]) and math.isfinite(row[1])]
    configs, seeds = sorted({row[3] for row in rows}, key=str), sorted({row[2] for row in rows}, key=str)
    if len(configs) < 3 or len(seeds) < 2 or None in seeds:
        return None
    table = {(row[3], row[2]): row[:2] for row in rows}

    def means(drawn: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        cells = [[table[(c, d)] for d in drawn if (c, d) in table] for c in configs]
        return np.array([[np.mean([v[i] for v in cell]) if cell else math.nan for cell in cells] for i in (0, 1)])

    s, t = means(seeds)
    rng = np.random.default_rng(seed)
    boot = [means([seeds[j] for j in rng.integers(0, len(seeds), len(seeds))]) for _ in range(reps)]
    ok = [(bs, bt) for bs, bt in boot if np.isfinite(bs).all()]
    interval = lambda x: [float(v) for v in np.nanpercentile(x, [2.5, 97.5])]  # noqa: E731
    return {"score": score, "configs": [f"{p}@{q}" for p, q in configs], "seeds": len(seeds),
            "spearman": spearman(s, t), "spearman_ci": interval([spearman(bs, bt) for bs, bt in ok]),
            "regret_at_1": regret_at_1(s, t), "regret_at_1_ci": interval([regret_at_1(bs, bt) for bs, bt in ok]),
            "picked": f"{configs[int(np.argmax(s))][0]}@{configs[int(np.argmax(s))][1]}",
            "true_best": f"{configs[int(np.argmax(t))][0]}@{configs[int(np.argmax(t))][1]}"}


def cell_of(record: Record) -> str:
    """A run's algorithm x dataset cell, "algo/dataset": runs are ranked against each other within one."""
    meta = record.get("meta") or {}
    return f"{meta.get('algo')}/{meta.get('dataset') or meta.get('env')}"


def agreement_by_cell(records: Sequence[Record], score: str, reps: int = 2000, seed: int = 0,
                      of: Callable[..., dict[str, Any] | None] = agreement) -> dict[str, Any]:
    """`agreement` (or `of`, e.g. `config_agreement`) within each algorithm x dataset cell (cells where
    it is undefined left out)."""
    cells: dict[str, list[Record]] = {}
    for r in records:
        cells.setdefault(cell_of(r), []).append(r)
    found = {cell: of(runs, score, reps=reps, seed=seed) for cell, runs in sorted(cells.items())}
    return {cell: a for cell, a in found.items() if a is not None}


def table_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One flat row per run: who it is, each score's value, the true result if any."""
    rows = []
    for r in records:
        meta = r.get("meta", {})
        row = {"run_dir": r["run_dir"], **{k: meta.get(k) for k in ("algo", "dataset", "pruner", "sparsity", "seed", "step")},
               "eval_split": r.get("eval_split")}
        for name in SCORES:
            entry = r["scores"].get(name)
            if entry is not None:
                row[name] = entry.get("value")
        true = r.get("true") or {}
        row["true_return"], row["true_score"] = true.get("return_mean"), true.get("normalized_score_mean")
        rows.append(row)
    return rows


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_lines(records: Sequence[Record], scores: Sequence[str], reps: int = 2000, seed: int = 0) -> list[str]:
    """For each score: the recommendation, its expected regret and P(best); the agreement with true
    results where the runs have them."""
    lines = []
    splits = {r.get("eval_split") for r in records}
    if len(splits) > 1:
        lines.append("note: some runs have a validation split and some do not: td_error, bc_mse and logme of "
                     "runs scored on their training data (eval_split=train) are not comparable with the others")
    for score in scores:
        rec = recommend(records, score)
        if rec is None:
            lines.append(f"{score}: no run has this score")
            continue
        lines.append(f"{score} ({'higher' if SCORES[score] else 'lower'} is better): recommend {rec['run']} "
                     f"({_fmt(rec['value'])}); P(best) {_fmt(rec['p_best'])}, expected regret {_fmt(rec['expected_regret'])} "
                     f"(score units, from the score's bootstrap)")
        for cell, agr in agreement_by_cell(records, score, reps=reps, seed=seed).items():
            lines.append(f"  {cell}, vs true score over {agr['runs']} runs: Spearman {agr['spearman']:.2f} "
                         f"[{agr['spearman_ci'][0]:.2f}, {agr['spearman_ci'][1]:.2f}], regret@1 {agr['regret_at_1']:.2f} "
                         f"[{agr['regret_at_1_ci'][0]:.2f}, {agr['regret_at_1_ci'][1]:.2f}] (normalised score), "
                         f"top-{agr['k']} precision {agr['top_k_precision']:.2f} [{agr['top_k_precision_ci'][0]:.2f}, "
                         f"{agr['top_k_precision_ci'][1]:.2f}] (bootstrap over {agr['bootstrap']})")
        for cell, agr in agreement_by_cell(records, score, reps=reps, seed=seed, of=config_agreement).items():
            lines.append(f"  {cell}, choosing among {len(agr['configs'])} configurations (means over {agr['seeds']} "
                         f"seeds): picks {agr['picked']} (truly best: {agr['true_best']}), regret@1 "
                         f"{agr['regret_at_1']:.2f} [{agr['regret_at_1_ci'][0]:.2f}, {agr['regret_at_1_ci'][1]:.2f}], "
                         f"Spearman {agr['spearman']:.2f} [{agr['spearman_ci'][0]:.2f}, {agr['spearman_ci'][1]:.2f}]")
    return lines


def figure(records: Sequence[Record], scores: Sequence[str], path: Path | str) -> Path | None:
    """One panel per score: against the true score where runs have one, else each run's value with
    its bootstrap 95% interval."""
    panels = [s for s in scores if any(math.isfinite(oriented(r, s)) for r in records)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparse_offline_rl.io import atomic_save_figure

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, score in zip(axes.flat, panels):
        runs = [r for r in records if math.isfinite(oriented(r, score))]
        values = [r["scores"][score]["value"] for r in runs]
        low, high = zip(*[np.percentile(r["scores"][score].get("replicates") or [v], [2.5, 97.5]) for r, v in zip(runs, values)])
        truth = [true_score(r) for r in runs]
        y = truth if all(math.isfinite(t) for t in truth) else list(range(len(runs)))
        ax.errorbar(values, y, xerr=[np.subtract(values, low), np.subtract(high, values)], fmt="o", ms=4, capsize=2)
        ax.set_xlabel(f"{score} ({'higher' if SCORES[score] else 'lower'} is better)")
        ax.set_ylabel("true normalised score" if y is truth else "run")
        if y is not truth:
            ax.set_yticks(y, [Path(r["run_dir"]).name[-24:] for r in runs], fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle("offline selection scores (bootstrap 95% intervals)")
    fig.tight_layout()
    return atomic_save_figure(fig, path)


__all__ = ["SCORES", "agreement", "agreement_by_cell", "cell_of", "check_score", "config_agreement", "resamples", "top_k_precision", "figure", "recommend", "summary_lines", "table_rows", "to_csv"]
