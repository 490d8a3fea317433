"""Offline selection scores: LogME against a hand-computed evidence, FQE against a known value,
reproducibility, no training randomness consumed, the select command and report --select."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from conftest import write_d4rl_hdf5
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset, episode_starts_from_flags
from sparse_offline_rl.evaluate import main as evaluate_main
from sparse_offline_rl.evaluation import ranking
from sparse_offline_rl.evaluation.agent import load_agent
from sparse_offline_rl.evaluation.fqe import FQESettings, fit_fqe
from sparse_offline_rl.evaluation.logme import logme, penultimate_features, returns_to_go
from sparse_offline_rl.evaluation.selection import SCORES_FILE, SelectionSettings, score_agent, select_runs
from sparse_offline_rl.evaluation.stats import spearman
from sparse_offline_rl.io import atomic_write_json
from sparse_offline_rl.pruning.rng import find_generators
from sparse_offline_rl.report.__main__ import main as report_main
from sparse_offline_rl.training.trainer import train

from test_report import fake_run


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta), written out (the marginal likelihood of the linear model)."""
    cov = f @ f.T / alpha + np.eye(len(y)) / beta
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (y @ np.linalg.solve(cov, y) + logdet + len(y) * math.log(2 * math.pi)))


@pytest.mark.parametrize("n, d, rank", [(40, 3, 3), (6, 9, 4)])  # more rows than features; fewer (rank < n:
def test_logme_is_the_maximum_of_the_gaussian_evidence(n, d, rank):  # else y fits exactly and beta has no maximum)
    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d))
    y = f @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    fit = logme(f, y)
    assert fit.converged
    assert fit.evidence * n == pytest.approx(gaussian_log_evidence(f, y, fit.alpha, fit.beta), rel=1e-9, abs=1e-9)
    # No point of a grid around the optimum (a factor e^2 each way) has a higher evidence.
    grid = [gaussian_log_evidence(f, y, fit.alpha * math.exp(a), fit.beta * math.exp(b))
            for a in np.linspace(-2, 2, 41) for b in np.linspace(-2, 2, 41)]
    assert max(grid) <= fit.evidence * n + 1e-9


def test_logme_weights_are_repeated_rows():
    rng = np.random.default_rng(2)
    f, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    weights = rng.integers(0, 3, 12)
    repeated = np.repeat(np.arange(12), weights)
    assert logme(f, y, weights).evidence == pytest.approx(logme(f[repeated], y[repeated]).evidence, rel=1e-10)


def test_returns_to_go_stop_at_each_episode_end():
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 20.0], np.float32)
    terminals, timeouts = np.array([0, 0, 1, 0, 0], bool), np.array([0, 0, 0, 0, 1], bool)
    data = OfflineDataset(np.zeros((5, 2), np.float32), np.zeros((5, 1), np.float32), rewards, np.zeros((5, 2), np.float32),
                          terminals, timeouts, episode_starts_from_flags(terminals, timeouts))
    assert returns_to_go(data, 0.5) == pytest.approx([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 10 + 0.5 * 20, 20])


def test_penultimate_features_are_the_last_layers_input():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    x = torch.randn(4, 3)
    assert torch.equal(penultimate_features(net, x), torch.relu(net[0](x)).detach())


def chain(length: int = 6, episodes: int = 150, seed: int = 0) -> OfflineDataset:
    """One-hot states 0..L-1, every action moves one state on, the last state terminates; the
    reward (s + 1) / L * (1 + a) depends on the action, which the data draws uniformly."""
    rng = np.random.default_rng(seed)
    states = np.tile(np.arange(length), episodes)
    actions = rng.uniform(-1, 1, (len(states), 1)).astype(np.float32)
    eye = np.eye(length, dtype=np.float32)
    return OfflineDataset(eye[states], actions, ((states + 1) / length * (1 + actions[:, 0])).astype(np.float32),
                          eye[np.minimum(states + 1, length - 1)], states == length - 1, np.zeros(len(states), bool),
                          np.arange(0, len(states), length))


CHAIN_FQE = FQESettings(steps=1000, batch_size=128, hidden=(64, 64), lr=1e-3, tau=0.05)


def chain_fqe(seed: int = 0, length: int = 6, discount: float = 0.9):
    data = chain(length)
    weights = torch.linspace(-0.8, 0.8, length)  # pi(s_k) = weights[k]
    buffer = TransitionBuffer(data)
    s0 = buffer.observations[torch.as_tensor(data.episode_starts)]
    true = sum(discount ** k * (k + 1) / length * (1 + float(weights[k])) for k in range(length))
    return fit_fqe(lambda obs: (obs @ weights)[:, None], buffer, s0, discount, CHAIN_FQE, seed=seed), true


def test_fqe_recovers_the_value_of_a_known_policy_on_a_chain():
    result, true = chain_fqe()
    assert result.value == pytest.approx(true, rel=0.02)  # measured: within 0.1%
    assert len(result.curve) == CHAIN_FQE.checkpoints and result.curve[-1][1] == pytest.approx(result.value)


def test_fqe_is_seeded_and_leaves_every_rng_as_it_was():
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first, _ = chain_fqe(seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    again, _ = chain_fqe(seed=3)
    other, _ = chain_fqe(seed=4)
    assert again.value == first.value and other.value != first.value


def test_spearman_averages_tied_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486833, rel=1e-6)  # scipy.stats.spearmanr
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


TINY = SelectionSettings(rows=400, logme_rows=200, reps=20, fqe=FQESettings(steps=60, batch_size=64, hidden=(32, 32)))


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, hopper_data):
    """Two tiny IQL runs on an HDF5 file: one with a validation split, one without."""
    from conftest import FAST_CONFIG

    root = tmp_path_factory.mktemp("select")
    path = write_d4rl_hdf5(root / "data.hdf5", hopper_data)
    runs = []
    for val_fraction, sparsity in ((0.2, 0.9), (0.0, 0.0)):
        cfg = {**FAST_CONFIG, "dataset": str(path), "val_fraction": val_fraction, "sparsity": sparsity, "steps": 100,
               "eval": {**FAST_CONFIG["eval"], "every": 100}}
        train(cfg, root / f"run{len(runs)}")
        runs.append(root / f"run{len(runs)}")
    return runs


def test_scores_are_reproducible_and_consume_none_of_trainings_randomness(trained_runs, hopper_data):
    agent = load_agent(trained_runs[0], dataset=hopper_data)
    generators = find_generators(agent.algo)
    saved = [g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state for g in generators]
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first = score_agent(agent, hopper_data, TINY)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    for g, state in zip(generators, saved):
        now = g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state
        assert torch.equal(now, state) if isinstance(g, torch.Generator) else now == state
    again = score_agent(agent, hopper_data, TINY)
    strip = lambda r: {k: {f: v for f, v in e.items() if f != "seconds"} for k, e in r["scores"].items()}  # noqa: E731
    assert strip(first) == strip(again) and first["eval_split"] == "val"
    other = score_agent(agent, hopper_data, SelectionSettings(**{**TINY.__dict__, "seed": 1}))
    assert other["scores"]["fqe"]["value"] != first["scores"]["fqe"]["value"]
    assert set(first["scores"]) == set(ranking.SCORES)
    assert all(math.isfinite(e["value"]) and len(e["replicates"]) == TINY.reps for e in first["scores"].values())


def test_select_labels_the_held_out_data_and_carries_the_true_return(trained_runs, hopper_data):
    records = select_runs(trained_runs, TINY, load=lambda name, env: hopper_data)
    assert [r["eval_split"] for r in records] == ["val", "train"]
    assert "val split" in records[0]["scores"]["td_error"]["data"] and "train split" in records[1]["scores"]["bc_mse"]["data"]
    summary = json.loads((trained_runs[1] / "summary.json").read_text())
    assert records[1]["true"]["return_mean"] == summary["eval"]["return_mean"]
    assert json.loads((trained_runs[1] / SCORES_FILE).read_text())["scores"]["fqe"]["value"] == records[1]["scores"]["fqe"]["value"]
    assert "not comparable" in "\n".join(ranking.summary_lines(records, ["td_error"]))


def test_select_command_writes_table_and_figure_and_refuses_bad_input(trained_runs, tmp_path, capsys):
    out = tmp_path / "sel.json"
    args = ["select", *map(str, trained_runs), f"out={out}", "fqe_steps=30", "rows=300", "logme_rows=100", "reps=10"]
    assert evaluate_main(args) == 0
    assert out.exists() and out.with_suffix(".csv").exists() and out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    first = json.loads(out.read_text())["runs"]
    assert len(first) == 2
    capsys.readouterr()
    assert evaluate_main(args) == 0  # the same checkpoints and settings: read back, not scored again
    assert capsys.readouterr().out.count("reused its offline_scores.json") == 2
    assert [r["scores"] for r in json.loads(out.read_text())["runs"]] == [r["scores"] for r in first]
    assert evaluate_main(args[:-1] + ["reps=11"]) == 0  # other settings: scored again
    assert "reused" not in capsys.readouterr().out
    for bad, message in ((["select", str(trained_runs[0]), "fqe_steps=0"], "fqe_steps=0 is invalid"),
                         (["select", str(trained_runs[0]), "scores=fqe,nope"], "scores=fqe,nope is invalid"),
                         (["select", str(tmp_path)], "no checkpoint.pt"), (["select", "x", "steps=3"], "unknown option 'steps'")):
        assert evaluate_main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def fake_scores(run, value: float, reps: list[float], true: float | None) -> None:
    atomic_write_json(run / SCORES_FILE, {
        "run_dir": str(run), "meta": {"algo": "iql", "pruner": "snip", "sparsity": 0.9, "seed": 0}, "eval_split": "val",
        "scores": {"fqe": {"value": value, "replicates": reps}}, "true": {"normalized_score_mean": true}})


def test_recommendation_expected_regret_and_agreement_by_hand(tmp_path):
    records = []
    for i, (value, reps, true) in enumerate([(10.0, [10, 9, 11], 50.0), (9.0, [9, 12, 8], 60.0), (1.0, [1, 1, 1], 5.0)]):
        fake_scores(tmp_path / str(i), value, reps, true)
        records.append(json.loads((tmp_path / str(i) / SCORES_FILE).read_text()))
    rec = ranking.recommend(records, "fqe")
    assert rec["run"] == str(tmp_path / "0") and rec["ranking"][-1] == str(tmp_path / "2")
    assert rec["p_best"] == pytest.approx(2 / 3) and rec["expected_regret"] == pytest.approx((0 + 3 + 0) / 3)
    agr = ranking.agreement(records, "fqe", reps=200)
    assert agr["regret_at_1"] == 10.0 and agr["spearman"] == pytest.approx(0.5)
    assert agr["regret_at_1_ci"][0] <= 10.0 <= agr["regret_at_1_ci"][1] + 1e-12


def test_report_select_ranks_a_sweep_and_recommends_a_run(tmp_path, capsys):
    root = tmp_path / "sweep"
    for seed, (value, true) in enumerate([(3.0, 40.0), (5.0, 45.0), (4.0, 50.0)]):
        run = fake_run(root, "iql", "snip", 0.9, seed, true)
        fake_scores(run, value, [value, value + 0.5, value - 0.5], true)
    assert report_main([str(root), "--reps", "50", "--select", "fqe"]) == 0
    markdown = (root / "report" / "select.md").read_text()
    assert "recommend" in markdown
    assert markdown.index("0.9-1- |") < markdown.index("0.9-2- |") < markdown.index("0.9-0- |")  # by fqe: seeds 1, 2, 0
    assert "regret@1 5.00" in markdown and (root / "report" / "select.csv").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse's one line, status 2
        report_main([str(root), "--select", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_top_k_precision_seed_bootstrap_and_cells_by_hand():
    scores, truth = np.array([5.0, 4.0, 3.0, 2.0]), np.array([1.0, 9.0, 8.0, 0.0])
    assert ranking.top_k_precision(scores, truth, 2) == 0.5  # picks runs 0, 1; truly best are 1, 2
    assert ranking.top_k_precision(scores, truth, 4) == 1.0
    boot, unit = ranking.resamples([0, 0, 1, 1, 2, 2], 50, np.random.default_rng(0))
    assert unit == "seeds" and all(len(b) == 6 for b in boot)
    for b in boot:  # whole seeds: runs of one seed come together
        assert all(sorted(b[j:j + 2].tolist()) in ([0, 1], [2, 3], [4, 5]) for j in range(0, 6, 2))
    assert ranking.resamples([0, 0, 0], 5, np.random.default_rng(0))[1] == "runs"
    records = [{"run_dir": f"{algo}{i}", "meta": {"algo": algo, "dataset": "hopper-medium", "seed": i},
                "scores": {"fqe": {"value": float(i)}}, "true": {"normalized_score_mean": float(sign * i)}}
               for algo, sign in (("iql", 1), ("td3bc", -1)) for i in range(4)]
    cells = ranking.agreement_by_cell(records, "fqe", reps=100)
    assert set(cells) == {"iql/hopper-medium", "td3bc/hopper-medium"}
    assert cells["iql/hopper-medium"]["spearman"] == pytest.approx(1.0) and cells["iql/hopper-medium"]["regret_at_1"] == 0
    assert cells["td3bc/hopper-medium"]["spearman"] == pytest.approx(-1.0)
    assert cells["td3bc/hopper-medium"]["top_k_precision"] == pytest.approx(2 / 3) and cells["iql/hopper-medium"]["bootstrap"] == "seeds"


def test_configuration_choice_averages_seeds_by_hand():
    truth = {"snip": [50.0, 30.0], "grasp": [40.0, 44.0], "random": [5.0, 7.0]}  # means 40, 42, 6
    score = {"snip": [9.0, 9.0], "grasp": [8.0, 8.0], "random": [1.0, 1.0]}
    records = [{"run_dir": f"{p}{s}", "meta": {"pruner": p, "sparsity": 0.95, "seed": s},
                "scores": {"fqe": {"value": score[p][s]}}, "true": {"normalized_score_mean": truth[p][s]}}
               for p in truth for s in (0, 1)]
    agr = ranking.config_agreement(records, "fqe", reps=200)
    assert agr["picked"] == "snip@0.95" and agr["true_best"] == "grasp@0.95"
    assert agr["regret_at_1"] == pytest.approx(2.0) and agr["spearman"] == pytest.approx(0.5)
    assert agr["regret_at_1_ci"][0] >= 0 and ranking.config_agreement(records[:4], "fqe") is None
