"""Training diagnostics, the suite at the end of training, loading runs, the CLI and comparisons."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.data.buffer import ObsNormalizer, TransitionBuffer
from sparse_offline_rl.evaluate import main
from sparse_offline_rl.evaluation.agent import load_agent
from sparse_offline_rl.evaluation.compare import compare_results
from sparse_offline_rl.evaluation.diagnostics import TrainingDiagnostics, td_errors
from sparse_offline_rl.evaluation.rollout import AgentPolicy, run_episodes
from sparse_offline_rl.sparse.linear import sparse_layers
from sparse_offline_rl.data.envs import make_env
from sparse_offline_rl.training.trainer import train

from conftest import Interrupt, interrupt_at


def make_diagnostics(algo_name: str, data, val=None, **kwargs):
    algo = make_algorithm(algo_name, ProblemSpec(11, 3, total_steps=100), {"hidden": [16, 16]})
    normalizer = ObsNormalizer.from_dataset(data)
    buffer = TransitionBuffer(data, normalizer=normalizer)
    buffer.seed(0)
    diag = TrainingDiagnostics(algo, buffer, val, normalizer, 1.0, "hopper", 0.99, start_state_seeds=[1, 2], **kwargs)
    return algo, buffer, diag


@pytest.mark.parametrize("algo_name", ["iql", "td3bc", "cql"])
def test_diagnostics_use_no_shared_randomness_and_log_every_column(algo_name, hopper_data):
    train_data, val_data = hopper_data.split_episodes(0.2, 0)
    algo, buffer, diag = make_diagnostics(algo_name, train_data, val_data)
    torch_state, buffer_state = torch.get_rng_state(), buffer.generator.get_state()
    first = diag(10)
    assert torch.equal(torch.get_rng_state(), torch_state) and torch.equal(buffer.generator.get_state(), buffer_state)
    expected = {"td_error_train", "td_error_val", "bc_mse_train", "bc_mse_val", "q_s0", "discounted_return_s0", "overestimation"}
    assert expected <= set(first) and "policy_churn" not in first  # nothing to compare with yet
    assert ("bc_nll_train" in first) == (algo_name == "iql")  # only IQL's Gaussian actor has log_prob
    assert first["overestimation"] == pytest.approx(first["q_s0"] - first["discounted_return_s0"])
    assert diag(20)["policy_churn"] == 0.0  # no update in between
    for _ in range(3):
        algo.update(buffer.sample(32))
    after = diag(30)
    assert after["policy_churn"] > 0 and after["td_error_train"] != first["td_error_train"]


def test_td_error_is_iqls_critic_loss(hopper_data):
    algo, buffer, _ = make_diagnostics("iql", hopper_data)
    batch = buffer.sample(64)
    assert td_errors(algo, batch, 0.99) == pytest.approx(algo.critic_loss(batch, algo.td_target(batch)).item(), rel=1e-6)


def test_bc_mse_is_zero_when_the_dataset_actions_are_the_policy(hopper_data):
    algo, buffer, diag = make_diagnostics("td3bc", hopper_data)
    with torch.no_grad():
        buffer.actions.copy_(algo.act(buffer.observations))  # in place: a view into the packed rows
    diag = TrainingDiagnostics(algo, buffer, None, diag.normalizer, 1.0, "hopper", 0.99, start_state_seeds=[])
    out = diag(1)
    assert out["bc_mse_train"] == 0.0 and "td_error_val" not in out and "q_s0" not in out


def diagnostics_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "diagnostics"]


def test_resumed_run_logs_the_same_diagnostics(tmp_path, fast_config, hopper_data):
    cfg = {**fast_config, "val_fraction": 0.2, "eval": {**fast_config["eval"], "every": 100}}
    train(cfg, tmp_path / "full", dataset=hopper_data)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=hopper_data, callbacks=[interrupt_at(250)])
    train({**cfg, "resume": True}, tmp_path / "cut", dataset=hopper_data)
    full, resumed = diagnostics_rows(tmp_path / "full"), diagnostics_rows(tmp_path / "cut")
    assert [r["step"] for r in full] == [100, 200, 300]
    assert full == resumed  # churn at 300 compares with the step-200 actions saved before the cut
    assert {"td_error_val", "bc_mse_val", "policy_churn"} <= set(full[-1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, hopper_data):
    from conftest import FAST_CONFIG

    data = hopper_data.select_episodes(np.arange(hopper_data.num_episodes))
    data.reset_seeds = np.arange(data.num_episodes) * 3
    suite = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    suite.write_text("episodes: 2\nlevels:\n  friction: [0.5]\n  action_noise: [0.1]\n")
    run_dir = tmp_path_factory.mktemp("run")
    # Every pruned layer a compressed SparseLinear: the suite, load_agent and the command below must
    # work on converted networks (tiny layers would mostly stay dense-masked under "auto").
    cfg = {**FAST_CONFIG, "steps": 100, "val_fraction": 0.2, "eval": {**FAST_CONFIG["eval"], "every": 50, "suite": str(suite)},
           "sparse_kernels": "sparse"}
    summary = train(cfg, run_dir, dataset=data)
    return run_dir, data, summary, suite


def test_suite_at_end_of_training_writes_report(trained_run):
    run_dir, _, summary, _ = trained_run
    result = json.loads((run_dir / "generalization.json").read_text())
    assert [c["key"] for c in result["cells"]] == ["seeds/train", "seeds/val", "seeds/heldout", "friction/0.5", "action_noise/0.1"]
    assert summary["generalization"] == result["summary"] and result["meta"]["sparsity"] == 0.9
    assert (run_dir / "generalization.png").stat().st_size > 10_000


def test_loaded_agent_reproduces_the_trainers_evaluation(trained_run):
    run_dir, data, summary, _ = trained_run
    agent = load_agent(run_dir, dataset=data)
    assert all(sparse_layers(net) for net in agent.algo.networks().values())  # rebuilt converted, then loaded
    # from the recorded start states: they are the ones the trainer evaluated on
    stats = run_episodes(AgentPolicy(agent.algo, agent.normalizer), lambda: make_env("hopper"), summary["eval"]["seeds"])
    assert float(stats.returns.mean()) == summary["eval"]["return_mean"]
    assert agent.val_data is not None and agent.val_data.num_episodes == 4


def test_cli_errors_are_one_line(trained_run, capsys):
    run_dir, _, _, _ = trained_run
    cases = [
        ([f"run_dir={run_dir}", "suite=nope"], "unknown suite 'nope'; accepted: generalization"),
        ([f"run_dir={run_dir}", "episodes=zero"], "episodes=zero is invalid; an integer >= 1 is required"),
        (["run_dir=/nonexistent"], "no checkpoint.pt there"),
        (["suite=generalization"], "run_dir=PATH is required"),
        ([f"run_dir={run_dir}", "episode=3"], "unknown option 'episode'; accepted: device, episodes"),
        (["compare", "/nonexistent"], "no generalization results"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def fake_result(sparsity: float, seed: int, heldout: float, env: str = "hopper") -> dict:
    return {"meta": {"algo": "iql", "pruner": "snip" if sparsity else "dense", "sparsity": sparsity, "seed": seed,
                     "env": env, "dataset": f"{env}-medium"},
            "summary": {"seeds_heldout": heldout, "generalization_gap": 10.0 - heldout / 10, "perturbed_mean": None}}


def test_compare_groups_configurations_and_tasks(tmp_path, capsys):
    results = [fake_result(0.0, s, v) for s, v in enumerate([40, 50, 60, 70])]
    results += [fake_result(0.95, s, v) for s, v in enumerate([65, 75, 85, 95])]
    results += [fake_result(0.0, 0, 10, "walker2d"), fake_result(0.95, 0, 5, "walker2d")]
    out = compare_results(results, reps=300)
    dense, sparse = "algo=iql pruner=dense sparsity=0.0", "algo=iql pruner=snip sparsity=0.95"
    assert out["baseline"] == dense
    heldout = out["metrics"]["seeds_heldout"]
    assert heldout["iqm"][dense]["value"] == pytest.approx(np.mean([40, 50, 60]))  # 5 values: drop 10 and 70
    assert heldout["iqm"][sparse]["runs"] == 5
    # hopper: 65 beats 40, 50, 60 and loses to 70 (3); 75, 85, 95 beat all four (12): 15/16; walker2d: 5 < 10 -> 0
    assert heldout["p_improvement"][sparse]["value"] == pytest.approx((15 / 16 + 0.0) / 2)
    # lower gap is better: the sparse runs have the smaller gaps on hopper, the larger one on walker2d
    assert out["metrics"]["generalization_gap"]["p_improvement"][sparse]["value"] == pytest.approx((15 / 16 + 0.0) / 2)
    assert "perturbed_mean" not in out["metrics"]  # no run has it
    profile = heldout["profile"]  # thresholds span 5..95; at tau=5 every dense run and 4 of 5 sparse runs are above
    assert profile["tau"][0] == 5 and profile["tau"][-1] == 95
    assert profile[dense]["fraction"][0] == pytest.approx(1.0)
    assert profile[sparse]["fraction"][0] == pytest.approx((1.0 + 0.0) / 2)  # walker2d's only sparse run is 5, not > 5
    for i, result in enumerate(results[:2] + results[4:6]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "generalization.json").write_text(json.dumps(result))
    assert main(["compare", *(str(tmp_path / str(i)) for i in range(4)), "reps=100", f"out={tmp_path / 'c.json'}"]) == 0
    assert "P(improves on baseline)" in capsys.readouterr().out and (tmp_path / "c.json").exists()
    assert (tmp_path / "c.png").stat().st_size > 0  # the performance-profile figure
