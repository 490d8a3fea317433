"""Behaviour-policy SAC: training stops and resumes, from its work folder or from a committed snapshot."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_offline_rl.generation.behavior import snapshot_keeps, train
from sparse_offline_rl.io import file_lock


def _log(path: Path) -> dict:
    return json.loads((path / "train_log.json").read_text())


def test_behaviour_training_resumes_from_work_folder_then_from_snapshot(tmp_path: Path) -> None:
    work, snap = tmp_path / "work", tmp_path / "snap"
    kw = dict(every=100, snapshot_every=200, start_steps=100, batch_size=32, hidden=16, refill=50, progress=False,
              work=work, snapshot=snap)
    train("hopper", steps=300, **kw)
    log = _log(work)
    assert log["steps_done"] == 300 and [c["step"] for c in log["checkpoints"]] == [0, 100, 200, 300]
    assert all((work / "actors" / f"{c['name']}.npz").exists() for c in log["checkpoints"])
    state = torch.load(work / "state.pt", weights_only=True)
    assert state["step"] == 300 and state["buffer_size"] == 300
    rows_before = np.array(np.memmap(work / "buffer.f32", dtype=np.float32, mode="r").reshape(300, -1))

    train("hopper", steps=500, **kw)  # the same command with a later cap continues where it stopped
    log = _log(work)
    assert [c["step"] for c in log["checkpoints"]] == [0, 100, 200, 300, 400, 500]
    assert log["sessions"][1]["from_step"] == 300 and log["sessions"][1]["resumed_from"].startswith("work folder")
    rows_after = np.memmap(work / "buffer.f32", dtype=np.float32, mode="r").reshape(500, -1)
    np.testing.assert_array_equal(rows_after[:300], rows_before)  # the buffer only grows
    assert torch.load(work / "state.pt", weights_only=True)["buffer_size"] == 500

    with np.load(snap / "snapshot.npz") as z:  # compact: half precision, no buffer, no optimizer state
        assert int(z["step"]) == 500 and z["actor/net.0.weight"].dtype == np.float16
        assert not any(k.startswith(("opt", "buffer")) for k in z.files)
    shutil.rmtree(work)  # a replaced machine: only the committed snapshot is left
    train("hopper", steps=600, **kw)
    log = _log(work)
    assert log["sessions"][-1]["resumed_from"].startswith("committed snapshot at step 500")
    assert [c["step"] for c in log["checkpoints"]][-2:] == [500, 600]
    assert torch.load(work / "state.pt", weights_only=True)["buffer_size"] == 50 + 100  # refill, then new steps


def test_snapshot_keeps_early_checkpoints_densely() -> None:
    kept = [s for s in range(0, 1_000_001, 10_000) if snapshot_keeps(s)]
    assert kept[:21] == list(range(0, 200_001, 10_000)) and kept[21:] == list(range(250_000, 1_000_001, 50_000))


def test_a_second_process_on_the_same_work_folder_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with file_lock(work / "train.lock"):  # another training process holds the folder
        with pytest.raises(RuntimeError, match="being trained by another process"):
            train("hopper", steps=10, work=work, snapshot=tmp_path / "snap", progress=False)
    assert not (work / "state.pt").exists()


def test_finalize_ships_measured_expert_and_medium_in_full_precision(tmp_path: Path) -> None:
    from sparse_offline_rl.generation.behavior import finalize
    from sparse_offline_rl.generation.policies import load_checkpoint

    work = tmp_path / "work"
    train("hopper", steps=400, every=100, snapshot_every=400, start_steps=100, batch_size=32, hidden=16,
          progress=False, work=work, snapshot=tmp_path / "snap")
    info = finalize("hopper", work=work, policy_dir=tmp_path / "policies", episodes=3, top=2, replay_every=200)
    names = info["policies"]
    steps = {c["name"]: c["step"] for c in info["checkpoints"]}
    assert names["expert"] in info["expert_candidates"] and names["medium"] in info["medium_candidates"]
    assert steps[names["medium"]] <= steps[names["expert"]]
    assert info["returns"]["expert"] == info["expert_candidates"][names["expert"]]
    assert all(steps[n] % 200 == 0 and steps[n] <= steps[names["medium"]] for n in names["medium-replay"])
    with np.load(tmp_path / "policies" / "hopper" / "actors.npz") as z:
        for name in {names["expert"], names["medium"], *names["medium-replay"]}:
            weight = z[f"{name}/net.0.weight"]
            measured = name in (names["expert"], names["medium"])
            assert weight.dtype == (np.float32 if measured else np.float16)
            with np.load(work / "actors" / f"{name}.npz") as original:  # the policy that was measured, exactly
                expected = original["net.0.weight"].astype(np.float32)
            np.testing.assert_array_equal(weight.astype(np.float32), expected if measured else expected.astype(np.float16))
            load_checkpoint("hopper", name, 11, 3, policy_dir=tmp_path / "policies")  # loads as a policy
    assert (tmp_path / "policies" / "hopper" / "return_curve.png").exists()


def test_the_recorded_behaviour_command_still_runs() -> None:
    import subprocess
    import sys

    # policies.json and train logs record `python -m sparse_offline_rl.data.behavior ...`
    r = subprocess.run([sys.executable, "-m", "sparse_offline_rl.data.behavior"], capture_output=True, text=True)
    assert r.returncode == 1 and "usage: python -m sparse_offline_rl.data.behavior" in r.stderr
