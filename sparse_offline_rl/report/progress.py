"""How far a sweep has got, read from its files while it runs (`report SWEEP_DIR --progress`): each
job's step of its total, which jobs are training now, their rates and the time left.

A job counts as running when its metrics.jsonl changed in the last RUNNING_WITHIN seconds. Its rate is
measured on the wall clock since its last checkpoint (steps logged since then over the time between
the two files' modification times, so evaluations and a shared machine are in it); before a job has
logged past its checkpoint, the checkpoint's own training rate (step / train_seconds) stands in. The
sweep's time left assumes the launcher keeps as many jobs going at the rates now measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from sparse_offline_rl.io import load_checkpoint
from sparse_offline_rl.report.collect import Job, collect, last_logged_step, sweep_config

#: A job whose metrics.jsonl is older than this is stopped (it resumes when the sweep is launched again).
RUNNING_WITHIN = 900.0


@dataclass
class JobProgress:
    """One job: `state` done | running | stopped | starting (no step logged yet) | failed | not started;
    `rate` in steps per second (None when not measured), `rate_from` wall | checkpoint."""

    label: str
    state: str
    step: int
    steps: int | None
    rate: float | None = None
    rate_from: str = ""

    @property
    def left(self) -> int:
        return max((self.steps or 0) - self.step, 0)

    @property
    def eta_seconds(self) -> float | None:
        return self.left / self.rate if self.rate else None


def job_steps(job: Job, default: int | None) -> int | None:
    """The job's total gradient steps: its summary, its resolved config, or the sweep's (with the job's
    own `steps=` override)."""
    if job.summary is not None:
        return int(job.summary.get("steps", default or 0))
    config = job.path / ".hydra" / "config.yaml" if job.path is not None else None
    if config is not None and config.exists():
        steps = (yaml.safe_load(config.read_text()) or {}).get("steps")
        if steps is not None:
            return int(steps)
    given = [o.split("=", 1)[1] for o in job.overrides if o.split("=", 1)[0].lstrip("+") == "steps"]
    return int(given[-1]) if given else default


def measured_rate(path: Path, step: int) -> tuple[float | None, str]:
    """(steps per second, where it came from) of a job logging into `path`."""
    ckpt, metrics = path / "checkpoint.pt", path / "metrics.jsonl"
    if not ckpt.exists():
        return None, ""
    saved = load_checkpoint(ckpt)
    ckpt_step, train_seconds = int(saved.get("step", 0)), float(saved.get("train_seconds", 0.0))
    elapsed = metrics.stat().st_mtime - ckpt.stat().st_mtime if metrics.exists() else 0.0
    if step > ckpt_step and elapsed > 0:
        return (step - ckpt_step) / elapsed, "wall"
    if ckpt_step > 0 and train_seconds > 0:
        return ckpt_step / train_seconds, "checkpoint"
    return None, ""


def job_progress(job: Job, default_steps: int | None, now: float) -> JobProgress:
    steps = job_steps(job, default_steps)
    if job.status == "done":
        return JobProgress(job.label, "done", steps or 0, steps)
    if job.status == "missing" or job.path is None:
        return JobProgress(job.label, "not started", 0, steps)
    if job.status == "failed":
        return JobProgress(job.label, "failed", last_logged_step(job.path), steps)
    step, metrics = job.extra["step"], job.path / "metrics.jsonl"
    if step == 0:
        # Nothing in the files tells a job still pruning at initialization from one stopped before it trained.
        return JobProgress(job.label, "starting", 0, steps)
    running = metrics.exists() and now - metrics.stat().st_mtime <= RUNNING_WITHIN
    progress = JobProgress(job.label, "running" if running else "stopped", step, steps)
    if running:
        progress.rate, progress.rate_from = measured_rate(job.path, step)
    return progress


def sweep_progress(sweep_dir: Path | str, now: float | None = None) -> list[JobProgress]:
    """Every job of the sweep (expected ones not started included), in the order `collect` finds them."""
    root = Path(sweep_dir)
    jobs = collect(root)
    default = (sweep_config(root) or {}).get("steps")
    now = time.time() if now is None else now
    return [job_progress(job, int(default) if default is not None else None, now) for job in jobs]


def hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.1f} h"


def progress_lines(sweep_dir: Path | str, progress: list[JobProgress]) -> list[str]:
    """What `report --progress` prints."""
    states = ["done", "running", "stopped", "starting", "failed", "not started"]
    count = {s: sum(p.state == s for p in progress) for s in states}
    total = sum(p.steps or 0 for p in progress)
    done = sum(min(p.step, p.steps or p.step) for p in progress)
    lines = [f"{sweep_dir}: " + ", ".join(f"{count[s]} {s}" for s in states) + f" of {len(progress)} jobs",
             f"steps: {done:,} of {total:,} ({100 * done / total:.1f}%)" if total else "steps: unknown"]
    for p in progress:
        if p.state in ("running", "stopped", "starting", "failed"):
            rate = f"{p.rate:.1f} steps/s ({p.rate_from})" if p.rate else "rate not measured yet"
            tail = {"running": f"{rate}, {hours(p.eta_seconds)} left", "stopped": "resumes on the next launch",
                    "starting": "no step logged yet: pruning at initialization, or stopped before training",
                    "failed": "failed (failed.json)"}[p.state]
            lines.append(f"  {p.state}: {p.label}  {p.step:,}/{p.steps or 0:,}  {tail}")
    lines.append(remaining_line(progress, total - done))
    return lines


def remaining_line(progress: list[JobProgress], left: int) -> str:
    rated = [p for p in progress if p.state == "running" and p.rate]
    if left <= 0:
        return "remaining: nothing"
    if not rated:
        return f"remaining: {left:,} steps; no running job to measure a rate on"
    rate = sum(p.rate for p in rated)
    return (f"remaining: {left:,} steps; about {hours(left / rate)} at the current {rate:.0f} steps/s "
            f"of {len(rated)} running jobs")


__all__ = ["JobProgress", "RUNNING_WITHIN", "progress_lines", "sweep_progress"]
