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
- `run_group`: the same for the jobs of one stacked group (`hydra/launcher=stacked`): finished
  members skipped, interrupted ones resumed, the rest trained as one stacked group.
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
from sparse_offline_rl.errors import JobError, USER_ERRORS
from sparse_offline_rl.io import atomic_write_json, load_checkpoint
from sparse_offline_rl.training.stacked import stackable, train_stacked
from sparse_offline_rl.training.config import to_dict, validate_config
from sparse_offline_rl.training.trainer import train

FAILED_FILE = "failed.json"


def run_training(cfg: Any, run_dir: str) -> float:
    """Train (or skip, or resume) and return the final normalised score (what Hydra sweepers optimise)."""
    hydra_cfg = _hydra_config()
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    config = to_dict(cfg)
    try:
        done = prepare_job(run_dir, config, hydra_cfg, multirun)
        if done is not None:
            return done
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
    return finished(run_dir, summary)


def finished(run_dir: str, summary: Mapping[str, Any]) -> float:
    """A job that trained to the end: its score."""
    Path(run_dir, FAILED_FILE).unlink(missing_ok=True)  # an earlier failure of this job is history now
    print(f"summary: {run_dir}/summary.json  normalized score {summary['eval']['normalized_score_mean']:.1f}")
    return float(summary["eval"]["normalized_score_mean"])


def prepare_job(run_dir: str, config: dict[str, Any], hydra_cfg: Any, multirun: bool) -> float | None:
    """A finished job's score (it is skipped); else None, with `config` set to resume an interrupted
    sweep job and to the launcher's threads per job."""
    done = finished_summary(run_dir, config)
    if done is not None:
        print(f"skip: {run_dir} is finished (summary.json); delete it to train again")
        return float(done["eval"]["normalized_score_mean"])
    if multirun and interrupted(run_dir, config):
        print(f"resume: {run_dir} from its checkpoint")
        config["resume"] = True
    if config.get("threads") is None and hydra_cfg is not None:
        config["threads"] = threads_per_job(hydra_cfg.launcher)
    return None


def run_group(cfgs: list[Any], run_dirs: list[str]) -> list[float | BaseException]:
    """The jobs of one sweep group in this process (`hydra/launcher=stacked`): each finished job is
    skipped and each interrupted one resumes, as `run_training` does; the others train together as
    one stacked group (`train_stacked`), or one after the other when their algorithm cannot be
    stacked. Returns each job's score, or the exception that failed it (recorded in `failed.json`)."""
    from sparse_offline_rl.algorithms.plugins import import_plugins

    hydra_cfg = _hydra_config()
    results: list[float | BaseException | None] = [None] * len(cfgs)
    todo: list[tuple[int, dict[str, Any], str]] = []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
        config = to_dict(cfg)
        try:
            import_plugins(config.get("plugins"))  # a launcher's worker process starts without them
            validate_config(config)  # a bad config fails its own job, not its group's
            done = prepare_job(run_dir, config, hydra_cfg, multirun=True)
        except Exception as err:
            results[i] = _failed(run_dir, err)
            continue
        if done is not None:
            results[i] = done
        else:
            todo.append((i, config, run_dir))
    if len(todo) > 1 and stackable(todo[0][1]):
        batches = [todo]
    else:
        batches = [[job] for job in todo]
    for batch in batches:
        try:
            if len(batch) == 1:
                summaries = [train(batch[0][1], batch[0][2])]
            else:
                print(f"stacked: {len(batch)} runs in one process: {', '.join(d for _, _, d in batch)}")
                summaries = train_stacked([c for _, c, _ in batch], [d for _, _, d in batch])
        except Exception as err:
            for i, _, run_dir in batch:
                results[i] = _failed(run_dir, err)
            continue
        for (i, _, run_dir), summary in zip(batch, summaries):
            results[i] = finished(run_dir, summary)
    return results  # type: ignore[return-value]


def _failed(run_dir: str, err: Exception) -> Exception:
    """Record a failed job; a user error becomes one line (JobError), anything else stays itself."""
    record_failure(run_dir, err)
    if isinstance(err, USER_ERRORS):
        print(f"error: {err}", file=sys.stderr)
        return JobError(f"{run_dir}: {err}")
    return err


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
