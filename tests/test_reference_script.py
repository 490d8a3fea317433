"""studies/reference.sh: scheduling overrides reach every block's sweep; anything else is refused early."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                                reason="needs git and a checkout")


@pytest.fixture
def clone(tmp_path):
    """A clone of this checkout, so the worktree the script adds never touches the real repository."""
    target = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(target)], check=True)
    shutil.copy(REPO / "studies" / "reference.sh", target / "studies" / "reference.sh")
    return target


def launch(clone, tmp_path, *args, check_rc=0):
    """The script run with a stand-in python that records its arguments instead of training; its
    --check-draws call exits with `check_rc`."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\ncase \"$*\" in *--check-draws*) exit {check_rc};; esac\n")
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SORL_PYTHON": str(fake),
           "SORL_STUDY_DIR": str(tmp_path / "study")}
    proc = subprocess.run(["bash", str(clone / "studies" / "reference.sh"), "HEAD", *args], env=env,
                          capture_output=True, text=True)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_overrides_reach_every_block(clone, tmp_path):
    proc, calls = launch(clone, tmp_path, "dense curve", "hydra.launcher.max_members=1", "env=hopper")
    assert proc.returncode == 0, proc.stderr
    assert calls == [f"-m sparse_offline_rl.report {clone}/results/reference --check-draws hopper",
                     "run.py -m +sweep=reference_dense hydra.launcher.max_members=1 env=hopper",
                     "run.py -m +sweep=reference_curve hydra.launcher.max_members=1 env=hopper"]
    log = (tmp_path / "study" / "logs" / "blocks.log").read_text()
    assert "start reference_dense at" in log and "hydra.launcher.max_members=1 env=hopper" in log


def test_a_setting_override_is_refused_before_anything_starts(clone, tmp_path):
    proc, calls = launch(clone, tmp_path, "dense", "steps=1000")
    assert proc.returncode == 1 and calls == []
    assert proc.stderr.strip().splitlines() == [
        "error: override steps=1000 is not accepted: accepted: hydra.launcher.*, env=, algo=, pruner=, "
        "sparsity=, seed="]
    assert not (tmp_path / "study").exists()


def test_without_overrides_the_preset_runs_as_written(clone, tmp_path):
    proc, calls = launch(clone, tmp_path, "pai")
    assert proc.returncode == 0, proc.stderr
    assert calls == [f"-m sparse_offline_rl.report {clone}/results/reference --check-draws ", "run.py -m +sweep=reference"]


def test_a_dataset_of_another_draw_stops_the_study_before_anything_starts(clone, tmp_path):
    proc, calls = launch(clone, tmp_path, "dense", "env=hopper", check_rc=1)
    assert proc.returncode == 1 and calls == [f"-m sparse_offline_rl.report {clone}/results/reference --check-draws hopper"]
    assert not (tmp_path / "study").exists()

