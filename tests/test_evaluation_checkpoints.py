"""Checkpoint selection from logged signals (evaluation.checkpoints): the pick, its regret and Spearman
by hand, the `last` baseline, cells and seeds, and the command's output and one-line errors."""
from __future__ import annotations

import json

import pytest

from sparse_offline_rl.evaluate import main as evaluate_main
from sparse_offline_rl.evaluation import checkpoints


def fake_run(path, seed, truth, td, algo="iql"):
    path.mkdir(parents=True)
    rows = ["step,kind,normalized_score_mean"] + [f"{(i + 1) * 10},eval,{t}" for i, t in enumerate(truth)]
    (path / "eval.csv").write_text("\n".join(rows) + "\n")
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": (i + 1) * 10, "kind": "diagnostics", "td_error_train": e, "q_s0": 1.0}) + "\n"
        for i, e in enumerate(td)))
    (path / "summary.json").write_text(json.dumps({"algo": algo, "dataset": "hopper-medium", "seed": seed}))
    return path


def test_the_pick_its_regret_and_the_last_baseline_by_hand(tmp_path):
    run = fake_run(tmp_path / "a", 0, truth=[10.0, 40.0, 30.0, 20.0], td=[4.0, 1.0, 2.0, 3.0])
    table = checkpoints.run_table(run)
    td = checkpoints.pick(table, "td_error_train")  # lower is better: step 20, the true best
    assert td["step"] == 20 and td["regret"] == 0.0 and td["spearman"] == pytest.approx(1.0)
    last = checkpoints.pick(table, "last")
    assert last["step"] == 40 and last["regret"] == 20.0
    q = checkpoints.pick(table, "q_s0")  # constant: ties go to the later step
    assert q["step"] == 40
    assert checkpoints.pick(table, "bc_mse_val") is None  # not logged


def test_cells_average_over_runs_with_a_seed_bootstrap(tmp_path):
    dirs = [fake_run(tmp_path / f"iql{s}", s, [10.0, 20.0 + s], [2.0, 1.0]) for s in range(3)]
    dirs += [fake_run(tmp_path / f"td3bc{s}", s, [30.0, 10.0], [2.0, 1.0], algo="td3bc") for s in range(3)]
    result = checkpoints.checkpoint_selection(dirs, reps=200)
    iql, td3bc = result["cells"]["iql/hopper-medium"], result["cells"]["td3bc/hopper-medium"]
    assert iql["td_error_train"]["regret"] == 0.0 and iql["last"]["regret"] == 0.0
    assert td3bc["td_error_train"]["regret"] == 20.0 and td3bc["td_error_train"]["spearman"] == pytest.approx(-1.0)
    assert td3bc["last"]["regret_ci"] == [20.0, 20.0] and iql["last"]["bootstrap"] == "seeds"


def test_the_command_writes_the_table_and_fails_in_one_line(tmp_path, capsys):
    dirs = [str(fake_run(tmp_path / f"r{s}", s, [10.0, 20.0, 15.0], [3.0, 1.0, 2.0])) for s in range(3)]
    out = tmp_path / "ck.json"
    assert evaluate_main(["checkpoints", *dirs, f"out={out}", "reps=50"]) == 0
    assert "td_error_train: regret 0.00" in capsys.readouterr().out
    assert json.loads(out.read_text())["cells"]["iql/hopper-medium"]["last"]["regret"] == 5.0
    assert out.with_suffix(".png").stat().st_size > 5000
    assert evaluate_main(["checkpoints", str(tmp_path / "nothing")]) == 2
    assert evaluate_main(["checkpoints", *dirs, "reps=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
