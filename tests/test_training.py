"""The shared training loop: summary contents, masks through training, resume, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from sparse_offline_rl.algorithms import UnknownNameError
from sparse_offline_rl.pruning import prunable_parameters
from sparse_offline_rl.training.trainer import ConfigError, StepInfo, train


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    def callback(info: StepInfo) -> None:
        if info.step == step:
            raise Interrupt

    return callback


def test_summary_has_documented_fields(tmp_path, fast_config, hopper_data):
    summary = train(fast_config, tmp_path, dataset=hopper_data)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("algo", "env", "dataset", "pruner", "sparsity", "density", "steps", "steps_per_sec", "eval", "seed", "config"):
        assert key in on_disk, key
    for key in ("normalized_score_mean", "normalized_score_std", "return_mean"):
        assert key in on_disk["eval"], key
    assert on_disk["steps"] == 300 and on_disk["algo"] == "iql" and on_disk["sparsity"] == 0.9
    assert set(summary["density"]) == {"actor", "critic", "value"}
    for density in summary["density"].values():
        assert density == pytest.approx(0.1, abs=0.01)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "eval.csv").exists()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [150, 300]


# GraSP's signed scores under one global threshold empty one of CQL's twin critics at 95% here (layer
# collapse, reported as an error), so that case prunes layer by layer.
@pytest.mark.parametrize("algo, pruner, scope", [("iql", "snip", "global"), ("cql", "grasp", "layer"), ("td3bc", "synflow", "global")])
def test_pruned_weights_stay_exactly_zero_in_online_and_target_nets(tmp_path, fast_config, hopper_data, algo, pruner, scope):
    fast_config = {**fast_config, "algo": {"name": algo, "hidden": [32, 32]},
                   "pruner": {"name": pruner, "rounds": 10, "scope": scope}, "sparsity": 0.95}
    seen_steps = []

    def check(info: StepInfo) -> None:
        if info.step % 50:
            return
        seen_steps.append(info.step)
        nets, targets = info.algo.networks(), info.algo.target_networks()
        for net_name, param_masks in info.masks.masks.items():
            online = prunable_parameters(nets[net_name])
            target = prunable_parameters(targets[net_name]) if net_name in targets else {}
            for pname, mask in param_masks.items():
                assert (online[pname][mask == 0] == 0).all()
                if pname in target:
                    assert (target[pname][mask == 0] == 0).all()
        for opt in info.algo.optimizers().values():
            for p, state in opt.state.items():
                for net_name, param_masks in info.masks.masks.items():
                    for pname, w in prunable_parameters(nets[net_name]).items():
                        if w is p:
                            assert (state["exp_avg"][param_masks[pname] == 0] == 0).all()

    summary = train(fast_config, tmp_path, dataset=hopper_data, callbacks=[check])
    assert seen_steps == [50, 100, 150, 200, 250, 300]
    # Achieved density, counted on the trained weights, equals the target within one weight per network.
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm

    nets = make_algorithm(algo, ProblemSpec(11, 3), fast_config["algo"]).networks()
    for name, density in summary["density"].items():
        total = sum(w.numel() for w in prunable_parameters(nets[name]).values())
        assert abs(density * total - 0.05 * total) <= 1, (name, density * total, 0.05 * total)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, fast_config, hopper_data):
    full = train(fast_config, tmp_path / "full", dataset=hopper_data)
    with pytest.raises(Interrupt):
        train(fast_config, tmp_path / "cut", dataset=hopper_data, callbacks=[interrupt_at(250)])
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["step"] == 200
    resumed = train({**fast_config, "resume": True}, tmp_path / "cut", dataset=hopper_data)

    assert resumed["eval"] == full["eval"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["algo"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["algo"]
    for name in ("actor", "critic", "value", "critic_target"):
        for key, tensor in a[name].items():
            assert torch.equal(tensor, b[name][key]), f"{name}.{key} differs after resume"
    metrics = lambda run: [l for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert metrics("full") == metrics("cut")


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"sparsity": 1.0}, ConfigError, "[0, 1)"),
        ({"sparsity": -0.1}, ConfigError, "[0, 1)"),
        ({"algo": {"name": "sac"}}, UnknownNameError, "available: "),
        ({"env": "pong"}, UnknownNameError, "hopper"),
        ({"pruner": {"name": "lottery"}}, ConfigError, "snip"),
        ({"steps": 0}, ConfigError, "positive integer"),
        ({"sparsity": {"actor": 0.9}}, ConfigError, "sparsity.default"),
    ],
)
def test_bad_config_fails_early_with_a_clear_message(tmp_path, fast_config, hopper_data, change, error, words):
    with pytest.raises(error, match=None) as info:
        train({**fast_config, **change}, tmp_path, dataset=hopper_data)
    assert words in str(info.value)
    assert not (tmp_path / "summary.json").exists()


def test_dataset_that_does_not_fit_the_env_is_rejected(tmp_path, fast_config, hopper_data):
    from sparse_offline_rl.data.dataset import DatasetError

    with pytest.raises(DatasetError, match="Walker2d-v5 expects"):
        train({**fast_config, "env": "walker2d"}, tmp_path, dataset=hopper_data)


def test_per_network_sparsity(tmp_path, fast_config, hopper_data):
    cfg = {**fast_config, "steps": 20, "eval": {**fast_config["eval"], "every": 1000, "episodes": 1},
           "sparsity": {"actor": 0.5, "default": 0.9}}
    summary = train(cfg, tmp_path, dataset=hopper_data)
    assert summary["density"]["actor"] == pytest.approx(0.5, abs=0.01)
    assert summary["density"]["critic"] == pytest.approx(0.1, abs=0.01)


def test_summary_pruner_is_measured_not_inferred(tmp_path, fast_config, hopper_data):
    """A parameter budget prunes at sparsity 0; sparsity 0 with no budget is the dense reference."""
    quick = {**fast_config, "steps": 10, "eval": {**fast_config["eval"], "every": 1000, "episodes": 1}, "sparsity": 0.0}
    budget = train({**quick, "pruner": {"name": "magnitude", "scope": "layer", "budget_params": 1000}}, tmp_path / "budget",
                   dataset=hopper_data)
    assert budget["pruner"] == "magnitude" and all(d < 1.0 for d in budget["density"].values())
    dense = train({**quick, "pruner": {"name": "snip"}}, tmp_path / "dense", dataset=hopper_data)
    assert dense["pruner"] == "dense" and all(d == 1.0 for d in dense["density"].values())
