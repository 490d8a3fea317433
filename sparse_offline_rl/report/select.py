"""`report SWEEP --select SCORE`: the sweep's finished runs ranked by an offline score
(evaluation.selection), the recommended run and its expected regret: select.md, select.csv, select.png.

Each run's scores are read from its `offline_scores.json` (written by `evaluate select`); a run
without one is scored here with the default settings (about a minute per hopper-medium run on one
CPU thread, mostly FQE) and the file written, so a sweep on a dataset without a simulator still
ends with a recommendation.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from sparse_offline_rl.evaluation import ranking
from sparse_offline_rl.evaluation.ranking import SCORES
from sparse_offline_rl.io import atomic_write_text
from sparse_offline_rl.report.collect import ReportError, collect


def sweep_scores(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """The offline-score record of every finished run, computing the missing ones."""
    from sparse_offline_rl.evaluation.selection import read_scores, select_runs  # late: torch only when scoring

    done = [job.path for job in collect(sweep_dir) if job.status == "done"]
    if not done:
        raise ReportError(f"no finished run (summary.json) under {sweep_dir}")
    records = {str(path): read_scores(path) for path in done}
    missing = [path for path in done if records[str(path)] is None]
    if missing:
        print(f"scoring {len(missing)} run(s) without offline_scores.json (python -m sparse_offline_rl.evaluate select)",
              file=sys.stderr)
        for record in select_runs(missing):
            records[record["run_dir"]] = record
    return [records[str(path)] for path in done]


def to_markdown(records: Sequence[Mapping[str, Any]], score: str, reps: int) -> str:
    rec = ranking.recommend(records, score)
    if rec is None:
        return f"# Offline selection by {score}\n\nNo finished run has this score.\n"
    by_dir = {r["run_dir"]: r for r in records}
    lines = [f"# Offline selection by {score} ({'higher' if SCORES[score] else 'lower'} is better)", "",
             *ranking.summary_lines(records, [score], reps=reps), "",
             "| rank | run | algo | pruner | sparsity | seed | held-out data | score | true score |", "|---|---|---|---|---|---|---|---|---|"]
    for i, run_dir in enumerate(rec["ranking"], 1):
        r = by_dir[run_dir]
        meta = r.get("meta", {})
        lines.append(f"| {i} | {run_dir} | {meta.get('algo')} | {meta.get('pruner')} | {meta.get('sparsity')} | "
                     f"{meta.get('seed')} | {r.get('eval_split')} | {r['scores'][score]['value']:.4g} | "
                     f"{ranking.true_score(r):.1f} |")
    lines += ["", "Expected regret: the score's own sampling noise (bootstrap replicates), in its units; the regret in "
              "true return needs the score checked against true returns (regret@1 above, where the runs have them)."]
    return "\n".join(lines) + "\n"


def write_select(sweep_dir: Path | str, score: str, out_dir: Path | str, reps: int = 2000) -> dict[str, Path]:
    ranking.check_score(score)
    records = sweep_scores(sweep_dir)
    out = Path(out_dir)
    paths = {"select_md": out / "select.md", "select_csv": out / "select.csv"}
    atomic_write_text(paths["select_md"], to_markdown(records, score, reps))
    atomic_write_text(paths["select_csv"], ranking.to_csv(ranking.table_rows(records)))
    figure = ranking.figure(records, [score], out / "select.png")
    if figure is not None:
        paths["select_png"] = figure
    return paths
