"""Sweeps through `run.py -m`: the joblib launcher and submitit's local executor run the grid, a
re-launch skips finished jobs and resumes an interrupted one, failures are recorded, and the report
turns the sweep into tables and figures.

The joblib test runs the full 2 algos x 2 tasks x 2 sparsities x 2 seeds grid (16 jobs, 100 steps).
submitit's local executor starts every job as a fresh Python process (~3 s of imports each), so its
test runs 2 x 2 x 1 x 1 = 4 jobs; SORL_FULL_SWEEP_TESTS=1 makes it run the 16-job grid too.
The stacked launchers group the jobs that can share a process: locally (joblib), and one group per
submitit job (stacked_submitit_local, the code path of stacked_slurm).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Interrupt, REPO, random_dataset, write_d4rl_hdf5
from sparse_offline_rl.cli import threads_per_job, usable_cores
from sparse_offline_rl.report import collect, write_report
from sparse_offline_rl.report.__main__ import main as report_main
from sparse_offline_rl.training.trainer import StepInfo, train

pytestmark = pytest.mark.slow  # every sweep runs jobs through a launcher, most in subprocesses

GRID = ["algo=iql,td3bc", "env=hopper,walker2d", "sparsity=0.5,0.9", "seed=0,1"]
GRID_DIRS = sorted(f"algo={a},env={e},seed={s},sparsity={p}"
                   for a in ("iql", "td3bc") for e in ("hopper", "walker2d") for p in (0.5, 0.9) for s in (0, 1))


@pytest.fixture(scope="module")
def sweep_conf(tmp_path_factory) -> Path:
    """Tiny datasets plus a sweep preset that points at them (the grid stays the only overrides)."""
    root = tmp_path_factory.mktemp("sweep_conf")
    for env in ("hopper", "walker2d"):
        write_d4rl_hdf5(root / f"{env}.hdf5", random_dataset(env, n=600, episode_len=100))
    (root / "sweep").mkdir()
    (root / "sweep" / "tiny.yaml").write_text(f"""# @package _global_
defaults:
  - override /pruner: random
dataset: {root}/${{env}}.hdf5
algo: {{hidden: [32, 32]}}
pruner: {{scope: layer}}       # one threshold per layer: tiny layers never lose every weight
steps: 100
batch_size: 32
log_every: 50
checkpoint_every: 50
eval: {{every: 100, episodes: 1}}
tensorboard: false
progress: false
verbose: false
""")
    return root


def sweep(conf: Path, out: Path, *args: str, launcher: str | None = "local") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "run.py"), "-m", f"hydra.searchpath=[file://{conf}]", "+sweep=tiny",
           f"hydra.sweep.dir={out}", *args]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def job_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def summaries(out: Path) -> dict[str, dict]:
    return {d: json.loads((out / d / "summary.json").read_text()) for d in job_dirs(out)}


def test_joblib_sweep_runs_the_grid_then_skips_and_resumes(tmp_path, sweep_conf):
    out = tmp_path / "sweep"
    first = sweep(sweep_conf, out, "hydra.launcher.n_jobs=2", *GRID)
    assert first.returncode == 0, first.stderr[-3000:]
    assert job_dirs(out) == GRID_DIRS  # one directory per job, named by its overrides
    done = summaries(out)
    for name, summary in done.items():
        assert f"algo={summary['algo']}" in name and f"sparsity={summary['sparsity']}" in name
        assert f"seed={summary['seed']}" in name and f"env={summary['env']}" in name
        assert summary["steps"] == 100 and summary["pruner"] == "random"
        assert summary["config"]["threads"] == max(1, usable_cores() // 2)  # cores shared by 2 jobs

    # Interrupt one job half-way: its checkpoint stays at step 50 and it has no summary.
    cut = out / GRID_DIRS[0]
    expected_eval = done[GRID_DIRS[0]]["eval"]
    for file in ("summary.json", "checkpoint.pt", "metrics.jsonl", "eval.csv"):
        (cut / file).unlink()

    def interrupt(info: StepInfo) -> None:
        if info.step == 75:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(done[GRID_DIRS[0]]["config"], cut, callbacks=[interrupt])
    assert not (cut / "summary.json").exists()
    mtimes = {d: (out / d / "summary.json").stat().st_mtime_ns for d in GRID_DIRS[1:]}

    again = sweep(sweep_conf, out, "hydra.launcher.n_jobs=2", *GRID)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: ") == 15 and again.stdout.count("resume: ") == 1
    assert {d: (out / d / "summary.json").stat().st_mtime_ns for d in GRID_DIRS[1:]} == mtimes  # untouched
    resumed = json.loads((cut / "summary.json").read_text())
    assert resumed["eval"] == expected_eval  # resuming reproduces the uninterrupted run

    result = write_report(out, reps=200)
    assert len(result["runs"]) == 16 and not result["problems"]
    assert len(result["groups"]) == 8 and {g["n_seeds"] for g in result["groups"]} == {2}
    for path in result["paths"].values():
        assert path.exists() and path.stat().st_size > 0


def test_failed_and_missing_jobs_are_recorded_and_listed(tmp_path, sweep_conf, capsys):
    out = tmp_path / "sweep"
    # Basic (sequential, in-process) launcher: the invalid sparsity fails before any data is loaded.
    result = sweep(sweep_conf, out, "algo=td3bc", "env=hopper", "sparsity=0.9,1.5", "seed=0,1", launcher=None)
    assert result.returncode != 0  # Hydra reports the failed jobs once every job has run
    assert "sparsity=1.5 is invalid" in result.stderr
    assert (out / "algo=td3bc,env=hopper,seed=0,sparsity=0.9" / "summary.json").exists()
    failure = json.loads((out / "algo=td3bc,env=hopper,seed=0,sparsity=1.5" / "failed.json").read_text())
    assert "sparsity=1.5 is invalid" in failure["error"]
    shutil.rmtree(out / "algo=td3bc,env=hopper,seed=1,sparsity=0.9")  # as if never started

    statuses = {(job.status, job.label) for job in collect(out)}
    assert statuses == {
        ("done", "algo=td3bc,env=hopper,seed=0,sparsity=0.9"),
        ("missing", "algo=td3bc,env=hopper,seed=1,sparsity=0.9"),
        ("failed", "algo=td3bc,env=hopper,seed=0,sparsity=1.5"),
        ("failed", "algo=td3bc,env=hopper,seed=1,sparsity=1.5"),
    }
    assert report_main([str(out), "--reps", "50", "--strict"]) == 3
    assert "missing: algo=td3bc,env=hopper,seed=1,sparsity=0.9: no job directory" in capsys.readouterr().out
    markdown = (out / "report" / "results.md").read_text()
    assert "## Missing or failed runs (3)" in markdown and "sparsity=1.5 is invalid" in markdown


@pytest.mark.parametrize("full", [pytest.param(os.environ.get("SORL_FULL_SWEEP_TESTS") == "1", id="grid")])
def test_submitit_local_executor_sweep(tmp_path, sweep_conf, full):
    out = tmp_path / "sweep"
    grid = GRID if full else ["algo=iql,td3bc", "env=hopper,walker2d", "sparsity=0.9", "seed=0"]
    result = sweep(sweep_conf, out, *grid, launcher="local_submitit")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = GRID_DIRS if full else sorted(d for d in GRID_DIRS if d.endswith("seed=0,sparsity=0.9"))
    assert job_dirs(out) == expected
    assert (out / ".submitit").is_dir()  # the jobs really went through submitit
    for summary in summaries(out).values():
        assert summary["config"]["threads"] == 1  # cpus_per_task of the preset
    report = write_report(out, reps=100)
    assert len(report["runs"]) == len(expected) and not report["problems"]


def test_threads_per_job_follow_the_launcher():
    cores = usable_cores()
    assert threads_per_job({"n_jobs": 2}) == max(1, cores // 2)
    assert threads_per_job({"n_jobs": 1}) == cores
    assert threads_per_job({"n_jobs": -1}) == 1  # joblib: every core runs a job
    assert threads_per_job({"n_jobs": 4 * cores}) == 1
    assert threads_per_job({"cpus_per_task": 6, "tasks_per_node": 1}) == 6
    assert threads_per_job({"cpus_per_task": None}) is None  # no hint: torch's default
    assert threads_per_job({}) is None  # the basic (sequential) launcher


def test_stacked_launcher_groups_the_jobs_that_can_share_a_process(tmp_path, sweep_conf):
    """IQL's four Adam jobs train as one stacked group; LAMB cannot be stacked, so its jobs run one by
    one. Every job has its own directory and summary; a re-launch skips them all."""
    out = tmp_path / "sweep"
    grid = ["algo=iql", "optim=adam,lamb", "env=hopper", "sparsity=0.5,0.9", "seed=0,1"]
    first = sweep(sweep_conf, out, *grid, launcher="stacked")
    assert first.returncode == 0, first.stderr[-3000:]
    expected = sorted(d for d in (f"algo=iql,env=hopper,optim={o},seed={s},sparsity={p}" for o in ("adam", "lamb")
                                  for p in (0.5, 0.9) for s in (0, 1)))
    assert job_dirs(out) == expected
    assert first.stdout.count("stacked: 4 runs in one process") == 1
    for name, summary in summaries(out).items():
        assert summary["steps"] == 100 and f"seed={summary['seed']}" in name
        assert summary.get("stacked", {}).get("members") == (4 if summary["config"]["optim"] == "adam" else None)
        assert (out / name / ".hydra" / "overrides.yaml").exists()
    again = sweep(sweep_conf, out, *grid, launcher="stacked")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: ") == 8
    report = write_report(out, reps=100)
    assert len(report["runs"]) == 8 and not report["problems"]


def test_stacked_launcher_gives_every_worker_a_group():
    from hydra_plugins.sorl_stacked_launcher.stacked_launcher import split_cells

    assert split_cells([list(range(8))], max_members=16, workers=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_cells([list(range(7))], max_members=16, workers=2) == [[0, 1, 2], [3, 4, 5, 6]]
    assert split_cells([list(range(20))], max_members=16, workers=1) == [list(range(10)), list(range(10, 20))]
    # the widest cell is cut first; a sweep with fewer jobs than workers runs one job per group
    assert split_cells([[0, 1, 2, 3, 4, 5], [6, 7]], max_members=16, workers=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert split_cells([[0, 1]], max_members=16, workers=4) == [[0], [1]]
    assert split_cells([[0], [1], [2]], max_members=16, workers=2) == [[0], [1], [2]]


def test_a_stacked_sweep_of_one_cell_uses_every_worker(tmp_path, sweep_conf):
    out = tmp_path / "sweep"
    grid = ["algo=iql", "env=hopper", "sparsity=0.5,0.9", "seed=0,1", "hydra.launcher.n_jobs=2"]
    done = sweep(sweep_conf, out, *grid, launcher="stacked")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stacked: 2 runs in one process") == 2
    assert {s["config"]["threads"] for s in summaries(out).values()} == {max(1, usable_cores() // 2)}


def test_stacked_submitit_launcher_submits_one_job_per_group(tmp_path, sweep_conf):
    """hydra/launcher=stacked_submitit_local (stacked_slurm's code path on this machine): the four IQL
    Adam jobs are one submitit job, each LAMB job its own; every member writes its summary, and a
    re-launch submits the same groups again, which skip every member."""
    out = tmp_path / "sweep"
    grid = ["algo=iql", "optim=adam,lamb", "env=hopper", "sparsity=0.5,0.9", "seed=0,1"]
    first = sweep(sweep_conf, out, *grid, launcher="stacked_submitit_local")
    assert first.returncode == 0, first.stderr[-3000:]
    expected = sorted(f"algo=iql,env=hopper,optim={o},seed={s},sparsity={p}" for o in ("adam", "lamb")
                      for p in (0.5, 0.9) for s in (0, 1))
    assert job_dirs(out) == expected
    jobs = sorted((out / ".submitit").glob("*/*_result.pkl"))
    assert len(jobs) == 5  # one group of 4 + 4 groups of one
    logs = [p.read_text() for p in (out / ".submitit").glob("*/*_log.out")]
    assert sum(text.count("stacked: 4 runs in one process") for text in logs) == 1
    for name, summary in summaries(out).items():
        assert summary["steps"] == 100 and f"seed={summary['seed']}" in name
        assert summary["config"]["threads"] == 1  # cpus_per_task of the preset
        assert summary.get("stacked", {}).get("members") == (4 if summary["config"]["optim"] == "adam" else None)
        assert (out / name / ".hydra" / "overrides.yaml").exists()
    stamps = {name: (out / name / "summary.json").stat().st_mtime_ns for name in expected}
    again = sweep(sweep_conf, out, *grid, launcher="stacked_submitit_local")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((out / ".submitit").glob("*/*_result.pkl"))) == 10
    logs = [p.read_text() for p in (out / ".submitit").glob("*/*_log.out")]
    assert sum(text.count("skip: ") for text in logs) == 8
    assert {name: (out / name / "summary.json").stat().st_mtime_ns for name in expected} == stamps


def test_stacked_slurm_launcher_settings_reach_sbatch(tmp_path, monkeypatch):
    """stacked_slurm.yaml's settings, as submitit writes them into the sbatch script of a group; a group
    that times out resubmits itself with the same members; a bad cluster is one clear line."""
    from omegaconf import OmegaConf

    from hydra_plugins.sorl_stacked_launcher.stacked_submitit_launcher import (
        GroupJob, StackedSubmititConf, StackedSubmititLauncher)

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit's SLURM executor wants srun on PATH
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    preset = OmegaConf.load(REPO / "configs" / "hydra" / "launcher" / "stacked_slurm.yaml")
    preset.pop("defaults")
    conf = OmegaConf.merge(OmegaConf.structured(StackedSubmititConf), preset,
                           {"partition": "cpu", "account": "lab", "setup": ["source venv/bin/activate"],
                            "submitit_folder": str(tmp_path / "%j"), "name": "run"})
    params = OmegaConf.to_container(conf)
    params.pop("_target_")
    executor = StackedSubmititLauncher(**params).executor()
    assert executor.cluster == "slurm" and executor._executor.max_num_timeout == 3
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--partition=cpu", "--account=lab", "--cpus-per-task=4", "--mem=16GB", "--time=720",
                 "--signal=USR2@120", "\nsource venv/bin/activate\n"):
        assert line in sbatch, sbatch
    assert executor._executor.parameters["array_parallelism"] == 64
    job = GroupJob(hydra_context=None, config=None)  # type: ignore[arg-type]
    again = job.checkpoint([3, 4], [["seed=0"], ["seed=1"]], {})
    assert again.function is job and again.args == ([3, 4], [["seed=0"], ["seed=1"]], {})
    with pytest.raises(ValueError, match=r"hydra.launcher.cluster='pbs': accepted: slurm, local"):
        StackedSubmititLauncher(cluster="pbs")
