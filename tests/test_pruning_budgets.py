"""pruner.budget_cost: the least sparsity (one for every network) whose user-supplied cost meets
budget_cost_max, found by bisection; impossible budgets and bad callables fail in one line."""
from __future__ import annotations

import random
import sys
import types

import numpy as np
import pytest
import torch

from conftest import random_dataset
from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning import prunable_parameters, prune_at_initialization
from sparse_offline_rl.pruning.allocation import keep_count
from sparse_offline_rl.pruning.prune import BUDGET_COST_TOL
from sparse_offline_rl.training.trainer import validate_pruner_options


def actor_kept(networks):
    """Closed form: the actor's nonzero prunable weights."""
    return float(sum(int(torch.count_nonzero(w)) for w in prunable_parameters(networks["actor"]).values()))


@pytest.fixture(autouse=True)
def cost_module(monkeypatch):
    module = types.ModuleType("budget_cost_fixture")
    module.actor_kept = actor_kept
    module.not_a_number = lambda networks: "cheap"
    module.consumes_rng = lambda networks: actor_kept(networks) + 0 * float(torch.rand(1)) + 0 * np.random.rand()
    monkeypatch.setitem(sys.modules, "budget_cost_fixture", module)


@pytest.fixture(scope="module")
def dataset():
    return random_dataset("hopper")


def setup(dataset, seed: int = 0, hidden=(16, 16)):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    algo = make_algorithm("iql", ProblemSpec(11, 3, total_steps=10), {"hidden": list(hidden)})
    buffer = TransitionBuffer(dataset)
    buffer.seed(0)
    return algo, buffer


@pytest.mark.parametrize("method", ["magnitude", "snip"])
def test_cost_budget_reaches_the_least_sparsity(method, dataset) -> None:
    algo, buffer = setup(dataset)
    total = sum(p.numel() for p in prunable_parameters(algo.networks()["actor"]).values())
    budget = total // 4 + 7
    cfg = {"name": method, "batch_size": 16, "budget_cost": "budget_cost_fixture:actor_kept", "budget_cost_max": budget}
    mask_set, report = prune_at_initialization(algo, buffer.sample, cfg, 0.0, seed=0)
    cost = report["budget_cost"]
    s = cost["sparsity"]
    kept = sum(int(m.sum()) for m in mask_set.masks["actor"].values())
    assert cost["cost"] == kept <= budget
    # the least sparsity to BUDGET_COST_TOL: one tolerance less keeps too many weights
    assert keep_count(total, 1 - (s - BUDGET_COST_TOL)) > budget
    assert cost["tolerance"] == BUDGET_COST_TOL and cost["budget_cost_max"] == budget
    # the same sparsity for every network
    for info in report["networks"].values():
        assert info["target_sparsity"] == pytest.approx(s) and info["target_from"] == "budget_cost"
    # a budget the dense networks meet prunes nothing
    algo, buffer = setup(dataset)
    mask_set, report = prune_at_initialization(algo, buffer.sample, {**cfg, "budget_cost_max": total}, 0.0)
    assert report["budget_cost"]["sparsity"] == 0.0 and not mask_set


def test_budget_networks_searches_only_the_named_networks(dataset) -> None:
    """A cost of the actor alone: only the actor's sparsity is searched, the others keep `sparsity`."""
    algo, buffer = setup(dataset)
    total = sum(p.numel() for p in prunable_parameters(algo.networks()["actor"]).values())
    cfg = {"name": "magnitude", "budget_cost": "budget_cost_fixture:actor_kept", "budget_cost_max": total // 2,
           "budget_networks": ["actor"]}
    _, report = prune_at_initialization(algo, buffer.sample, cfg, {"actor": 0.0, "critic": 0.3, "value": 0.0})
    nets = report["networks"]
    assert report["budget_cost"]["networks"] == ["actor"] and report["budget_cost"]["cost"] <= total // 2
    assert nets["actor"]["target_sparsity"] == report["budget_cost"]["sparsity"] > 0.4
    assert nets["critic"]["target_sparsity"] == 0.3 and nets["value"]["target_sparsity"] == 0.0
    assert nets["actor"]["target_from"] == "budget_cost" and nets["critic"]["target_from"] == "sparsity"
    with pytest.raises(ValueError, match="pruner.budget_networks=.*a non-empty list of networks out of actor"):
        prune_at_initialization(setup(dataset)[0], buffer.sample, {**cfg, "budget_networks": ["policy"]}, 0.0)


def test_impossible_budget_and_bad_callables_fail_in_one_line(dataset) -> None:
    cfg = {"name": "magnitude", "budget_cost": "budget_cost_fixture:actor_kept", "budget_cost_max": -1}
    with pytest.raises(ValueError, match="no sparsity below 1 meets budget_cost_max=-1") as err:
        prune_at_initialization(*setup(dataset)[:1], None, cfg, 0.0)
    assert "\n" not in str(err.value)
    for path, match in [("no_such_module_xyz:cost", "cannot be imported"),
                        ("budget_cost_fixture:missing", "cannot be imported"),
                        ("budget_cost_fixture:not_a_number", "not a number"),
                        ("nocolon", "Python path")]:
        with pytest.raises(ValueError, match=match) as err:
            cfg_path = {**cfg, "budget_cost": path, "budget_cost_max": 10}
            prune_at_initialization(setup(dataset)[0], None, cfg_path, 0.0)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="go together"):
        prune_at_initialization(setup(dataset)[0], None, {"name": "magnitude", "budget_cost_max": 3}, 0.0)
    with pytest.raises(ValueError, match="at most one"):
        prune_at_initialization(setup(dataset)[0], None, {**cfg, "budget_params": 100}, 0.0)


def test_trainer_validation() -> None:
    validate_pruner_options({"name": "snip", "budget_cost": "budget_cost_fixture:actor_kept", "budget_cost_max": 3.5})
    with pytest.raises(ConfigError, match="cannot be imported"):
        validate_pruner_options({"name": "snip", "budget_cost": "no_such_module_xyz:f", "budget_cost_max": 3})
    with pytest.raises(ConfigError, match="go together"):
        validate_pruner_options({"name": "snip", "budget_cost": "budget_cost_fixture:actor_kept"})
    with pytest.raises(ConfigError, match="budget_cost_max"):
        validate_pruner_options({"name": "snip", "budget_cost": "budget_cost_fixture:actor_kept", "budget_cost_max": "x"})


def test_cost_search_leaves_every_rng_untouched(dataset) -> None:
    def after(cfg):
        algo, buffer = setup(dataset)
        prune_at_initialization(algo, buffer.sample, cfg, 0.0, seed=0)
        return [torch.get_rng_state(), torch.from_numpy(np.random.get_state()[1].copy()),
                torch.tensor(random.getstate()[1]), buffer.sample(4).observations]

    dense = after({"name": "dense"})
    cost = after({"name": "snip", "batch_size": 16, "budget_cost": "budget_cost_fixture:consumes_rng",
                  "budget_cost_max": 100})
    assert all(map(torch.equal, dense, cost))


@pytest.mark.slow  # a subprocess: python run.py / a standalone interpreter
def test_cli_reports_the_cost_in_the_summary(tmp_path) -> None:
    import json
    import os
    import subprocess

    from conftest import REPO, write_cost_module, write_d4rl_hdf5

    data = write_d4rl_hdf5(tmp_path / "hopper.hdf5", random_dataset("hopper", n=2000))
    write_cost_module(tmp_path)
    pythonpath = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    args = [sys.executable, str(REPO / "run.py"), "algo=iql", f"dataset={data}", "pruner=magnitude", "steps=20",
            "batch_size=32", "algo.hidden=[16,16]", "eval.every=20", "eval.episodes=1", "tensorboard=false",
            "progress=false", f"hydra.run.dir={tmp_path}/run", "pruner.budget_cost=mycosts:actor_kept",
            "pruner.budget_cost_max=150"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    cost = json.loads((tmp_path / "run" / "summary.json").read_text())["pruning"]["budget_cost"]
    assert cost["cost"] <= 150 and 0 < cost["sparsity"] < 1 and cost["budget_cost"] == "mycosts:actor_kept"
    bad = subprocess.run(args[:-3] + [f"hydra.run.dir={tmp_path}/bad", "pruner.budget_cost=mycosts:nope",
                                      "pruner.budget_cost_max=150"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "cannot be imported" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_builtin_costs_exported_bytes_and_latency(dataset) -> None:
    from sparse_offline_rl.export import actor_bytes, actor_latency_ms

    algo, _ = setup(dataset, hidden=(64, 64))  # at 16x16 CSR storage is never smaller than dense
    dense_bytes = actor_bytes(dict(algo.networks()))
    assert dense_bytes > 0 and actor_latency_ms(dict(algo.networks())) > 0
    limit = 0.8 * dense_bytes
    cfg = {"name": "magnitude", "scope": "erk", "budget_cost": "sparse_offline_rl.export:actor_bytes",
           "budget_cost_max": limit, "allow_layer_collapse": True}
    mask_set, report = prune_at_initialization(algo, None, cfg, 0.0)
    cost = report["budget_cost"]
    assert cost["cost"] <= limit and 0 < cost["sparsity"] < 1
    # the masks now applied to the actor itself; TorchScript's name mangling moves the size by a few bytes
    assert actor_bytes(dict(algo.networks())) == pytest.approx(cost["cost"], rel=0.01)
