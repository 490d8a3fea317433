"""Sweep directory -> report directory: runs.csv, results.csv, results.md and the figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sparse_offline_rl.io import atomic_write_text
from sparse_offline_rl.report import aggregate as aggregate_tasks
from sparse_offline_rl.report import figures
from sparse_offline_rl.report.against import against
from sparse_offline_rl.report.against import to_markdown as against_markdown
from sparse_offline_rl.report.collect import ReportError, collect
from sparse_offline_rl.report.table import aggregate, run_rows, to_csv, to_markdown


def write_report(sweep_dir: Path | str, out_dir: Path | str | None = None, reps: int = 2000) -> dict[str, Any]:
    """Write the report; returns the paths written, the aggregated rows and the missing/failed jobs."""
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    runs = run_rows(jobs)
    problems = [job for job in jobs if job.status != "done"]
    if not runs:
        listed = f" ({len(problems)} job(s) not finished)" if problems else ""
        raise ReportError(f"no finished run (summary.json) under {sweep_dir}{listed}")
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    groups = aggregate(runs, reps=reps)
    pruning = {str(job.path): job.summary.get("pruning", {}) for job in jobs if job.summary}
    paths = {
        "runs_csv": out / "runs.csv",
        "results_csv": out / "results.csv",
        "results_md": out / "results.md",
    }
    atomic_write_text(paths["runs_csv"], to_csv(runs))
    atomic_write_text(paths["results_csv"], to_csv(groups))
    atomic_write_text(paths["results_md"], to_markdown(groups, problems))
    paths["score_vs_sparsity"] = figures.score_vs_sparsity(groups, out / "score_vs_sparsity.png")
    paths["score_vs_training_flops"] = figures.score_vs_training_flops(groups, out / "score_vs_training_flops.png")
    paths["learning_curves"] = figures.learning_curves(runs, out / "learning_curves.png")
    paths["density_per_layer"] = figures.density_per_layer(runs, pruning, out / "density_per_layer.png")
    cells = aggregate_tasks.retained_cells(runs, reps=reps)
    if cells:  # some task has dense runs to measure the pruned ones against
        paths["aggregate_md"] = out / "aggregate.md"
        summary = aggregate_tasks.across_tasks(runs, reps=reps)
        atomic_write_text(paths["aggregate_md"], aggregate_tasks.to_markdown(cells, summary))
        paths["aggregate"] = aggregate_tasks.figure(runs, out / "aggregate.png", reps=reps, summary=summary)
    return {"paths": paths, "groups": groups, "runs": runs, "problems": problems, "out": out}


def write_against(sweep_dir: Path | str, spec: str | Path, out_dir: Path | str, reps: int = 2000) -> dict[str, Path]:
    """against.md and against.csv: the sweep beside a results folder (`report.against`)."""
    result = against(sweep_dir, spec, reps=reps)
    out = Path(out_dir)
    paths = {"against_md": out / "against.md", "against_csv": out / "against.csv"}
    atomic_write_text(paths["against_md"], against_markdown(result))
    atomic_write_text(paths["against_csv"], to_csv(result["rows"] + result["unmatched"]))
    return paths
