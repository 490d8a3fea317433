"""Find the jobs of a sweep directory and what became of each: done, failed, incomplete or missing.

A job directory is any folder holding `summary.json`, `failed.json`, `checkpoint.pt` or Hydra's
`.hydra/`. The jobs a sweep should have are recomputed from its `multirun.yaml` (the sweeper params
and command-line overrides of its last launch, expanded as Hydra's basic sweeper does), so a job that
never started is listed as missing instead of silently dropped.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from sparse_offline_rl.errors import ReportError
from sparse_offline_rl.evaluation.run_logs import read_curve

#: A run's final score is the mean of its last FINAL_EVALS evaluations (fewer if it has fewer), which
#: is steadier than the last one alone; its best evaluation is reported beside it.
FINAL_EVALS = 3
JOB_MARKERS = ("summary.json", "failed.json", "checkpoint.pt", ".hydra")
SKIP_DIRS = {".submitit", "tensorboard", "report", ".hydra"}
DEFAULT_EXCLUDE = ("sweep", "resume", "threads", "progress", "tensorboard", "verbose")


@dataclass
class Job:
    """One job of a sweep. `status`: done | failed | incomplete | missing."""

    status: str
    path: Path | None
    overrides: tuple[str, ...] = ()
    summary: dict[str, Any] | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.overrides:
            return ",".join(self.overrides)
        return str(self.path)


def collect(sweep_dir: Path | str) -> list[Job]:
    """Every job found under `sweep_dir` plus every expected job not found (status `missing`)."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    exclude = excluded_keys(root)
    jobs = [read_job(path, exclude) for path in job_dirs(root)]
    found = {frozenset(job.overrides) for job in jobs if job.overrides}
    for overrides in expected_jobs(root, exclude):
        if frozenset(overrides) not in found:
            jobs.append(Job("missing", None, tuple(overrides), detail="no job directory: never started"))
    return jobs


def job_dirs(root: Path) -> Iterator[Path]:
    for here, dirs, files in os.walk(root):
        is_job = any(marker in files or marker in dirs for marker in JOB_MARKERS)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        if is_job:
            yield Path(here)


def read_job(path: Path, exclude: tuple[str, ...]) -> Job:
    overrides = job_overrides(path, exclude)
    summary_path = path / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        generalization = path / "generalization.json"
        if "generalization" not in summary and generalization.exists():
            summary["generalization"] = json.loads(generalization.read_text()).get("summary", {})
        return Job("done", path, overrides, summary)
    failed = path / "failed.json"
    if failed.exists():
        return Job("failed", path, overrides, detail=json.loads(failed.read_text()).get("error", "unknown error"))
    step = last_logged_step(path)
    detail = f"interrupted or running: last logged step {step}" if step else "started, nothing logged (crashed early?)"
    return Job("incomplete", path, overrides, detail=detail, extra={"step": step})


def job_overrides(path: Path, exclude: tuple[str, ...]) -> tuple[str, ...]:
    file = path / ".hydra" / "overrides.yaml"
    if not file.exists():
        return ()
    return normalise(yaml.safe_load(file.read_text()) or [], exclude)


def normalise(overrides: list[str], exclude: tuple[str, ...]) -> tuple[str, ...]:
    """Overrides that identify a job: the same rule Hydra uses for the job's directory name."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in exclude]
    return tuple(sorted(kept))


def last_logged_step(path: Path) -> int:
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    try:
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (ValueError, KeyError):
        return 0  # a line cut by a kill mid-write


def sweep_config(root: Path) -> dict[str, Any] | None:
    file = root / "multirun.yaml"
    return yaml.safe_load(file.read_text()) if file.exists() else None


def excluded_keys(root: Path) -> tuple[str, ...]:
    cfg = sweep_config(root) or {}
    keys = (((cfg.get("hydra") or {}).get("job") or {}).get("config") or {}).get("override_dirname", {}).get("exclude_keys")
    return tuple(keys) if keys else DEFAULT_EXCLUDE


def expected_jobs(root: Path, exclude: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The job override lists of the sweep's last launch; none when it used another sweeper."""
    cfg = sweep_config(root)
    if not cfg:
        return []
    hydra = cfg.get("hydra", {})
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments = params + list((hydra.get("overrides") or {}).get("task") or [])
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [normalise(job, exclude) for batch in batches for job in batch]


def curve_scores(run_dir: str | Path, column: str = "normalized_score_mean") -> tuple[float, float]:
    """(final, best): the mean of the last FINAL_EVALS evaluations and the best one (NaN without eval.csv)."""
    curve = read_curve(run_dir, column)
    if curve is None:
        return math.nan, math.nan
    values = curve[1][np.argsort(curve[0], kind="stable")]
    return float(values[-FINAL_EVALS:].mean()), float(values.max())
