"""`report --progress` on a fabricated sweep (no training): each job's state, step and rate from the
files a running sweep writes, and the time left."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from sparse_offline_rl.report.__main__ import main as report_main
from sparse_offline_rl.report.progress import RUNNING_WITHIN, progress_lines, sweep_progress

NOW = time.time()


def job(root: Path, seed: int, logged: list[int] | None = None, ckpt: tuple[int, float] | None = None,
        ages: tuple[float, float] = (10.0, 20.0)) -> Path:
    """A job of seed `seed` with train rows at `logged` steps, a checkpoint (step, train_seconds), and
    (metrics age, checkpoint age) in seconds."""
    path = root / f"seed={seed}"
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"steps": 1000, "seed": seed}))
    if logged is not None:
        metrics = path / "metrics.jsonl"
        metrics.write_text("".join(json.dumps({"step": s, "kind": "train"}) + "\n" for s in logged))
        os.utime(metrics, (NOW - ages[0], NOW - ages[0]))
    if ckpt is not None:
        torch.save({"step": ckpt[0], "train_seconds": ckpt[1]}, path / "checkpoint.pt")
        os.utime(path / "checkpoint.pt", (NOW - ages[1], NOW - ages[1]))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"steps": 1000, "hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": {"seed": "0,1,2,3,4,5"}},
        "overrides": {"task": []}}}))
    done = job(root, 0)
    (done / "summary.json").write_text(json.dumps({"steps": 1000}))
    job(root, 1, logged=[100, 500, 600], ckpt=(500, 10.0), ages=(10.0, 20.0))  # 100 steps in 10 s since its checkpoint
    job(root, 2, logged=[500], ckpt=(500, 10.0))  # nothing past the checkpoint yet: its own training rate
    job(root, 3, logged=[300], ages=(RUNNING_WITHIN + 100, RUNNING_WITHIN + 200))
    job(root, 4)  # seed 5 never started
    return root


def test_states_steps_and_rates_come_from_the_files(sweep):
    progress = {p.label: p for p in sweep_progress(sweep, now=NOW)}
    assert {k: v.state for k, v in progress.items()} == {
        "seed=0": "done", "seed=1": "running", "seed=2": "running", "seed=3": "stopped", "seed=4": "starting",
        "seed=5": "not started"}
    assert [progress[f"seed={s}"].step for s in range(6)] == [1000, 600, 500, 300, 0, 0]
    assert all(p.steps == 1000 for p in progress.values())  # the not-started job's from multirun.yaml
    assert progress["seed=1"].rate == pytest.approx(10.0, rel=1e-3) and progress["seed=1"].rate_from == "wall"
    assert progress["seed=1"].eta_seconds == pytest.approx(40.0, rel=1e-3)
    assert progress["seed=2"].rate == pytest.approx(50.0) and progress["seed=2"].rate_from == "checkpoint"
    assert progress["seed=3"].rate is None  # a stopped job is not part of the current rate


def test_lines_total_the_steps_and_the_time_left(sweep):
    lines = progress_lines("sweep", sweep_progress(sweep, now=NOW))
    assert lines[0] == "sweep: 1 done, 2 running, 1 stopped, 1 starting, 0 failed, 1 not started of 6 jobs"
    assert lines[1] == "steps: 2,400 of 6,000 (40.0%)"
    assert lines[-1] == "remaining: 3,600 steps; about 0.0 h at the current 60 steps/s of 2 running jobs"
    assert any(line.startswith("  stopped: seed=3  300/1,000  resumes") for line in lines)


def test_the_command_prints_and_writes_nothing(sweep, capsys):
    assert report_main([str(sweep), "--progress"]) == 0
    out = capsys.readouterr().out
    assert "2 running" in out and "remaining: 3,600 steps" in out
    assert not (sweep / "report").exists()
