"""Command-line glue for one job, alone or inside a Hydra sweep.

- Bad input becomes one clear line instead of a traceback.
- A job whose `summary.json` exists is skipped (its stored score is returned), so re-launching a
  sweep only runs what is missing. A finished run with a different config in the same directory is
  an error, never silently reused.
- In a sweep, a job with a `checkpoint.pt` but no summary was interrupted: it resumes.
- In a sweep with `threads=null`, torch threads per job come from the launcher (joblib's n_jobs,
  submitit's cpus_per_task), so parallel jobs do not oversubscribe the cores.
- A job that fails writes `failed.json` (error and traceback) for the sweep report; the exception
  still reaches Hydra, which marks the job failed and lets the other jobs of the sweep finish.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Mapping

from hydra.types import RunMode

from sparse_offline_rl.checks import check_same_config
from sparse_offline_rl.errors import USER_ERRORS
from sparse_offline_rl.io import atomic_write_json, load_checkpoint
from sparse_offline_rl.training.trainer import to_dict, train

FAILED_FILE = "failed.json"


class JobError(RuntimeError):
    """A sweep job that cannot run; Hydra records it as failed and the other jobs carry on."""


def run_training(cfg: Any, run_dir: str) -> float:
    """Train (or skip, or resume) and return the final normalised score (what Hydra sweepers optimise)."""
    hydra_cfg = _hydra_config()
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    config = to_dict(cfg)
    try:
        done = finished_summary(run_dir, config)
        if done is not None:
            print(f"skip: {run_dir} is finished (summary.json); delete it to train again")
            return float(done["eval"]["normalized_score_mean"])
        if multirun and interrupted(run_dir, config):
            print(f"resume: {run_dir} from its checkpoint")
            config["resume"] = True
        if config.get("threads") is None and hydra_cfg is not None:
            config["threads"] = threads_per_job(hydra_cfg.launcher)
        summary = train(config, run_dir)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        record_failure(run_dir, err)
        raise JobError(f"{run_dir}: {err}") from None
    except Exception as err:
        if multirun:
            record_failure(run_dir, err)
        raise
    Path(run_dir, FAILED_FILE).unlink(missing_ok=True)  # an earlier failure of this job is history now
    print(f"summary: {run_dir}/summary.json  normalized score {summary['eval']['normalized_score_mean']:.1f}")
    return float(summary["eval"]["normalized_score_mean"])


def finished_summary(run_dir: str | Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    check_same_config(summary.get("config", {}), config, path)
    return summary


def interrupted(run_dir: str | Path, config: Mapping[str, Any]) -> bool:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        return False
    check_same_config(load_checkpoint(path).get("config", {}), config, path)
    return True


def threads_per_job(launcher: Mapping[str, Any]) -> int | None:
    """Torch threads for one job of this launcher; None (torch's default) for sequential launchers."""
    cpus = launcher.get("cpus_per_task")
    if cpus:
        return int(cpus)
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None:
        return None
    cores = usable_cores()
    n_jobs = int(n_jobs)
    if n_jobs < 0:  # joblib: -1 is every core, -2 all but one, ...
        n_jobs = max(cores + 1 + n_jobs, 1)
    return max(1, cores // max(1, min(n_jobs, cores)))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroup CPU sets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


def record_failure(run_dir: str | Path, err: BaseException) -> None:
    try:
        atomic_write_json(Path(run_dir) / FAILED_FILE, {
            "error": f"{type(err).__name__}: {err}",
            "traceback": "".join(traceback.format_exception(err)),
        })
    except OSError:
        pass  # the original error matters more than its record


def _hydra_config() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None
