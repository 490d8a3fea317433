"""The sweep report on fabricated run directories (no training): statistics, grouping, dense
reference, incomplete runs, figures, one-line CLI errors; plus the job-level skip/stale checks."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sparse_offline_rl.checks import StaleRunError, check_same_config
from sparse_offline_rl.cli import run_training
from sparse_offline_rl.evaluation.stats import iqm
from sparse_offline_rl.io import atomic_write_json
from sparse_offline_rl.report import collect, write_report
from sparse_offline_rl.report.__main__ import main as report_main

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(root: Path, algo: str, pruner: str, sparsity: float, seed: int, score: float, **algo_cfg) -> Path:
    run = root / f"{algo}-{pruner}-{sparsity}-{seed}-{'-'.join(f'{k}{v}' for k, v in algo_cfg.items())}"
    density = 1 - sparsity
    layers = {"net.0.weight": {"density": density * 1.2}, "net.2.weight": {"density": density * 0.8}}
    config = {"algo": {"name": algo, **algo_cfg}, "env": "hopper", "dataset": "hopper-medium", "seed": seed,
              "sparsity": sparsity, "pruner": {"name": pruner, "rounds": 100 if pruner == "synflow" else 1},
              "steps": 1000, "progress": seed % 2 == 0}  # `progress` differs between seeds: never a setting
    atomic_write_json(run / "summary.json", {
        "algo": algo, "env": "hopper", "dataset": "hopper-medium", "pruner": pruner if sparsity > 0 else "dense",
        "sparsity": sparsity, "density": {"actor": density, "critic": density}, "steps": 1000, "steps_per_sec": 100.0,
        "eval": {"normalized_score_mean": score, "normalized_score_std": 1.0, "return_mean": 10 * score,
                 "d4rl_score_mean": score / 4},
        "score_scales": {"normalized_score": "sorl/hopper/medium-v0 reference returns (0 = 20.0, 100 = 815.0)"},
        "seed": seed, "pruning": {"networks": {"actor": {"layers": layers}, "critic": {"layers": layers}}},
        "config": config,
    })
    with open(run / "eval.csv", "w") as f:
        f.write("step,kind,normalized_score_mean\n" + "".join(f"{s},eval,{score * s / 1000}\n" for s in (500, 1000)))
    return run


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    scores = {0: [50.0, 52.0, 54.0, 90.0], 0.9: [40.0, 41.0, 42.0, 43.0]}
    for seed in range(4):
        fake_run(root, "iql", "dense", 0.0, seed, scores[0][seed])
        for pruner in ("snip", "synflow"):
            fake_run(root, "iql", pruner, 0.9, seed, scores[0.9][seed] + (pruner == "synflow"))
    return root


def test_table_aggregates_over_seeds_with_iqm_and_ci(sweep_dir):
    result = write_report(sweep_dir, reps=500)
    groups = {(g["pruner"], g["sparsity"]): g for g in result["groups"]}
    assert set(groups) == {("dense", "0"), ("snip", "0.9"), ("synflow", "0.9")}  # pruner.rounds is no setting
    dense = groups[("dense", "0")]
    assert dense["n_seeds"] == 4 and dense["seeds"] == "0 1 2 3"
    # the final score: the mean of the last evaluations, 0.75 x the summary's (fake_run's curve: 0.5 x, then 1 x)
    final = 0.75 * np.array([50, 52, 54, 90])
    assert dense["score_mean"] == pytest.approx(final.mean()) and dense["last_mean"] == pytest.approx(61.5)
    assert dense["score_std"] == pytest.approx(np.std(final, ddof=1))
    assert dense["score_iqm"] == pytest.approx(0.75 * 53.0) == pytest.approx(iqm(final))  # the outlier is trimmed
    assert final[0] <= dense["iqm_ci_low"] <= 0.75 * 53.0 <= dense["iqm_ci_high"] <= final[-1]
    assert dense["score_best"] == pytest.approx(61.5)
    assert groups[("snip", "0.9")]["density_actor"] == pytest.approx(0.1)
    with open(result["paths"]["results_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and float(rows[0]["score_iqm"]) == pytest.approx(0.75 * 53.0)
    markdown = result["paths"]["results_md"].read_text()
    assert "| final score mean ± std | IQM [95% CI] | best eval mean |" in markdown
    assert "| iql | hopper-medium | dense | 0 | 4 | 46.1 ± " in markdown and "| 61.5 |" in markdown
    assert "mean of a run's last 3 evaluations" in markdown and "Missing or failed" not in markdown
    for name in ("score_vs_sparsity", "learning_curves", "density_per_layer"):
        assert result["paths"][name].read_bytes().startswith(PNG)


def test_a_setting_that_differs_between_runs_splits_groups(tmp_path):
    for seed in range(2):
        for expectile in (0.7, 0.9):
            fake_run(tmp_path, "iql", "snip", 0.9, seed, 40.0 + 10 * expectile, expectile=expectile)
    groups = write_report(tmp_path, reps=50)["groups"]
    assert [(g["algo.expectile"], g["n_seeds"]) for g in groups] == [(0.7, 2), (0.9, 2)]
    assert "| algo.expectile |" in (tmp_path / "report" / "results.md").read_text()


def test_unfinished_runs_are_listed_not_dropped(sweep_dir):
    failed = sweep_dir / "failed-job"
    atomic_write_json(failed / "failed.json", {"error": "RuntimeError: loss is NaN", "traceback": ""})
    cut = sweep_dir / "cut-job"
    (cut / ".hydra").mkdir(parents=True)
    (cut / "metrics.jsonl").write_text('{"step": 50, "kind": "train"}\n{"step": 100, "kind": "train"}\n')
    jobs = {job.path.name: job for job in collect(sweep_dir) if job.status != "done"}
    assert jobs["failed-job"].status == "failed" and jobs["failed-job"].detail == "RuntimeError: loss is NaN"
    assert jobs["cut-job"].status == "incomplete" and "last logged step 100" in jobs["cut-job"].detail
    markdown = write_report(sweep_dir, reps=50)["paths"]["results_md"].read_text()
    assert "## Missing or failed runs (2)" in markdown and "loss is NaN" in markdown


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'nope'} is not a directory"]
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: no finished run (summary.json) under {tmp_path / 'empty'}"]


def test_a_finished_job_is_skipped_and_a_stale_one_refused(tmp_path, fast_config, capsys):
    run = fake_run(tmp_path, "iql", "random", 0.9, 0, 42.0)
    stored = json.loads((run / "summary.json").read_text())
    stored["config"] = {**fast_config, "threads": 8, "progress": True}  # volatile keys may differ
    atomic_write_json(run / "summary.json", stored)
    assert run_training(fast_config, str(run)) == 42.0  # no training: the stored score
    assert "skip: " in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        run_training({**fast_config, "steps": 500}, str(run))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another config (steps: 300 -> 500)" in err[0]
    with pytest.raises(StaleRunError):
        check_same_config({"algo": {"name": "iql", "beta": 3.0}}, {"algo": {"name": "iql", "beta": 1.0}}, run)
    check_same_config({"algo": {"name": "iql"}}, {"algo": {"name": "iql"}, "plugins": []}, run)  # new keys are fine


def test_every_table_says_which_score_scale_it_shows(sweep_dir):
    markdown = write_report(sweep_dir, reps=50)["paths"]["results_md"].read_text()
    assert "D4RL-normalised" not in markdown  # the project's datasets are not on D4RL's scale
    assert "each dataset's own reference returns" in markdown
    assert "sorl/hopper/medium-v0 reference returns (0 = 20.0, 100 = 815.0)" in markdown
    # dense: mean(50, 52, 54, 90) / 4, the summary's: the fake curves have no D4RL column to take a final score from
    assert "| D4RL-scale final mean |" in markdown and "| 15.4 |" in markdown


def test_training_flops_are_tabulated_and_drawn(tmp_path):
    """PaI and during-training runs at one sparsity: the table gives each its final sparsity and
    training FLOPs (mean over seeds), and score_vs_training_flops.png is drawn."""
    root = tmp_path / "sweep"
    cost = {"snip": 1.0e12, "gmp": 2.5e12}
    for pruner in cost:
        for seed in range(2):
            run = fake_run(root, "iql", pruner, 0.9, seed, 40.0 + seed)
            summary = json.loads((run / "summary.json").read_text())
            summary.update(final_sparsity=0.9, training_flops=cost[pruner] * (1 + seed))
            atomic_write_json(run / "summary.json", summary)
    out = write_report(root, reps=200)
    groups = {g["pruner"]: g for g in out["groups"]}
    assert groups["gmp"]["training_flops"] == pytest.approx(2.5e12 * 1.5)
    assert groups["snip"]["final_sparsity"] == pytest.approx(0.9)
    table = out["paths"]["results_md"].read_text()
    assert "| final sparsity | training FLOPs |" in table and "| 0.9000 | 3.75e+12 |" in table
    assert out["paths"]["score_vs_training_flops"].read_bytes().startswith(PNG)


def moved(run: Path, **fields) -> Path:
    """A fake run with other summary fields (dataset, steps)."""
    summary = json.loads((run / "summary.json").read_text())
    atomic_write_json(run / "summary.json", {**summary, **fields})
    return run


def test_the_final_score_is_the_mean_of_the_last_three_evaluations_and_the_best_is_reported(tmp_path):
    run = fake_run(tmp_path / "sweep", "iql", "snip", 0.9, 0, 40.0)
    (run / "eval.csv").write_text("step,kind,normalized_score_mean\n"
                                  + "".join(f"{s},eval,{v}\n" for s, v in ((250, 10), (500, 60), (750, 20), (1000, 40))))
    (row,) = write_report(tmp_path / "sweep", reps=100)["runs"]
    assert row["score_final"] == pytest.approx(40.0) and row["score_best"] == 60.0  # (60 + 20 + 40) / 3
    assert row["score"] == 40.0  # the summary's last evaluation is still reported as it was


def test_a_sweep_is_set_beside_the_reference_of_the_same_cell_and_cells_without_one_say_why(tmp_path):
    ref, sweep = tmp_path / "reference", tmp_path / "sweep"
    for seed in range(3):
        fake_run(ref, "iql", "dense", 0.0, seed, 60.0 + seed)
        fake_run(ref, "iql", "snip", 0.9, seed, 40.0 + seed)
        fake_run(ref, "iql", "random", 0.9, seed, 10.0 + seed)
        fake_run(sweep, "iql", "mine", 0.9, seed, 30.0 + seed)  # a new pruner: between snip and random
        moved(fake_run(sweep, "iql", "mine", 0.5, seed, 50.0), sparsity=0.5)
        moved(fake_run(sweep / "long", "iql", "mine", 0.9, seed, 50.0), steps=5000)
        moved(fake_run(sweep / "walker", "iql", "mine", 0.9, seed, 50.0), dataset="walker2d-medium")
    assert report_main([str(sweep), "--against", str(ref), "--reps", "200"]) == 0
    text = (sweep / "report" / "against.md").read_text()
    rows = list(csv.DictReader(open(sweep / "report" / "against.csv")))
    beside = {(r["sparsity"], r["ref_pruner"]): r for r in rows if r["ref_pruner"] and r["steps"] == "1000"
              and r["dataset"] == "hopper-medium"}
    assert float(beside[("0.9", "snip")]["p_improve"]) == 0.0  # every sweep run below every snip run
    assert float(beside[("0.9", "random")]["p_improve"]) == 1.0
    assert float(beside[("0.9", "dense")]["p_improve"]) == 0.0
    assert ("0.5", "dense") in beside and ("0.5", "snip") not in beside  # a new sparsity: only the dense line
    # the final score: 0.75 x the summary's (fake_run's curve is 0.5 x and 1 x the score)
    assert float(beside[("0.9", "snip")]["ref_iqm"]) == pytest.approx(0.75 * 41.0)
    assert "no reference at sparsity 0.5 (it has 0.9)" in text
    assert "no reference at 5000 steps (it has 1000)" in text
    assert "no reference run of iql on walker2d-medium" in text


def test_against_an_unknown_folder_is_one_line(tmp_path, capsys):
    fake_run(tmp_path / "sweep", "iql", "snip", 0.9, 0, 40.0)
    assert report_main([str(tmp_path / "sweep"), "--against", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no results folder" in err


def test_publish_copies_summaries_curves_and_configs_but_no_checkpoint(tmp_path):
    run = fake_run(tmp_path / "sweep", "iql", "snip", 0.9, 0, 40.0)
    (run / "checkpoint.pt").write_bytes(b"big")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    assert report_main([str(tmp_path / "sweep"), "--publish", str(tmp_path / "results")]) == 0
    out = tmp_path / "results" / run.name
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".hydra/config.yaml", "eval.csv", "summary.json"]
    assert (out / "summary.json").read_bytes() == (run / "summary.json").read_bytes()


def test_retained_fraction_of_dense_per_task_and_over_tasks(tmp_path):
    root = tmp_path / "sweep"
    for seed in range(3):
        fake_run(root, "iql", "dense", 0.0, seed, 60.0)
        fake_run(root, "iql", "snip", 0.9, seed, 60.0 if seed else 54.0)  # keeps 57/60 = 95% (IQM of 3 = mean)
        fake_run(root, "iql", "random", 0.9, seed, 30.0)
    result = write_report(root, reps=200)
    text = (root / "report" / "aggregate.md").read_text()
    assert (root / "report" / "aggregate.png").read_bytes()[:8] == PNG
    assert "| iql | hopper-medium | 1000 | snip | 0.9 | 3 | 43.5 | 45.0 | 0.97" in text  # final = 0.75 x score
    assert "| random | 0.9 | 1 | 3 | 0.50 [0.50, 0.50] | 0 of 1 |" in text
    snip = next(line for line in text.splitlines() if line.startswith("| snip | 0.9 |"))
    assert "1 of 1" in snip and "1.00 [1.00, 1.00]" in snip  # every snip run above every random run
    assert result["paths"]["aggregate"].exists()


def test_runs_on_two_draws_of_a_dataset_are_kept_apart_and_named(tmp_path):
    """The same make command on two CPU platforms gives two draws of a dataset: their runs are not seeds of one
    configuration, and the table says which datasets have more than one draw."""
    for seed in range(4):
        draw = {"return_mean": 1134.4 if seed < 2 else 1127.4, "episodes": 2826 if seed < 2 else 2843}
        moved(fake_run(tmp_path / "sweep", "iql", "snip", 0.9, seed, 40.0 + 10 * (seed >= 2)), dataset_returns=draw)
    out = write_report(tmp_path / "sweep", reps=50)
    groups = {g["data_draw"]: g for g in out["groups"]}
    assert set(groups) == {"2826 episodes, mean return 1134.4", "2843 episodes, mean return 1127.4"}
    assert [g["n_seeds"] for g in groups.values()] == [2, 2]
    assert groups["2843 episodes, mean return 1127.4"]["score_mean"] == pytest.approx(0.75 * 50.0)
    text = out["paths"]["results_md"].read_text()
    assert "## Datasets with more than one draw" in text and "- hopper-medium: 2826 episodes" in text
    assert "| data_draw |" in text


def test_one_draw_per_dataset_adds_no_column(sweep_dir):
    text = write_report(sweep_dir, reps=50)["paths"]["results_md"].read_text()
    assert "data_draw" not in text and "more than one draw" not in text


def test_check_draws_names_a_local_dataset_of_another_draw(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    for seed in range(2):
        moved(fake_run(results, "iql", "dense", 0.0, seed, 30.0), dataset_returns={"return_mean": 1134.38, "episodes": 2826})
    meta = tmp_path / "minari" / "sorl" / "hopper" / "medium-v0" / "data" / "metadata.json"
    meta.parent.mkdir(parents=True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    meta.write_text(json.dumps({"total_episodes": 2826, "sorl_return_mean": 1134.376}))
    assert report_main([str(results), "--check-draws"]) == 0  # the same draw
    meta.write_text(json.dumps({"total_episodes": 2843, "sorl_return_mean": 1127.356}))
    assert report_main([str(results), "--check-draws", "walker2d"]) == 0  # hopper not asked for
    assert report_main([str(results), "--check-draws", "hopper,walker2d"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: sorl/hopper/medium-v0: this machine's copy is 2843 episodes, mean return 1127.4")
    assert "used 2826 episodes, mean return 1134.4" in line
