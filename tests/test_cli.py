"""`python run.py ...` end to end: every built-in algorithm trains and writes summary.json; bad input is
one line on stderr with exit status 2."""
from __future__ import annotations

import json

import pytest

from conftest import random_dataset, run_cli, write_d4rl_hdf5


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory):
    return write_d4rl_hdf5(tmp_path_factory.mktemp("data") / "hopper.hdf5", random_dataset("hopper", n=3000))


@pytest.mark.slow  # a subprocess: python run.py
@pytest.mark.parametrize("algo", ["iql", "cql", "td3bc"])
def test_cli_trains_each_algorithm_and_writes_the_summary(tmp_path, hopper_file, algo):
    result = run_cli(f"algo={algo}", f"dataset={hopper_file}", "sparsity=0.9", "pruner=snip", "steps=200",
                     "batch_size=64", "algo.hidden=[32,32]", "eval.every=100", "eval.episodes=2",
                     "tensorboard=false", "progress=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algo"] == algo and summary["steps"] == 200 and summary["pruner"] == "snip"
    assert set(summary["density"]) >= {"actor", "critic"}
    for density in summary["density"].values():
        assert density == pytest.approx(0.1, abs=0.01)
    assert summary["config"]["algo"]["hidden"] == [32, 32]
    assert "per-layer" in result.stdout or "density" in result.stdout  # the density table is printed


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo=sac", "unknown algorithm 'sac'; available: cql"),
        ("pruner=lottery", "unknown pruner 'lottery'; available: dense, gibbs, gmp, grasp"),
        ("env=pong", "unknown env 'pong'; available: halfcheetah, hopper, walker2d"),
        ("sparsity=1.0", "sparsity=1.0 is invalid: a number in [0, 1) is required"),
        ("sparsity={actor:1.5,default:0.9}", "sparsity.actor=1.5 is invalid: a number in [0, 1) is required"),
        ("eval.every=0", "eval.every=0 is invalid: a positive integer is required"),
        ("eval.every=-1", "eval.every=-1 is invalid: a positive integer is required"),
        ("eval.episodes=0", "eval.episodes=0 is invalid: an integer in [1, 1000000000] is required"),
        ("batch_size=0", "batch_size=0 is invalid: a positive integer is required"),
        ("seed=abc", "seed='abc' is invalid: an integer in [0, 4294967295] is required"),
        ("val_fraction=1", "val_fraction=1 is invalid: a number in [0, 1) is required"),
        ("resume=maybe", "resume='maybe' is invalid: true or false is required"),
        ("sparse_kernels=fast", "sparse_kernels='fast' is invalid: one of auto, sparse, dense is required"),
        ("optim=sgd", "optim='sgd' is invalid: one of adam, lamb is required"),
        ("pruner.scope=local", "pruner.scope='local' is invalid: one of global, layer, erk or null is required"),
        ("pruner.rounds=0", "pruner.rounds=0 is invalid: a positive integer or null is required"),
        ("sparsity={actr:0.9,default:0.5}", "sparsity given for unknown network(s) actr; networks: actor, critic, value"),
        ("pruner.budget_params={actor:500}", "pruner.budget_params mapping has no entry for network(s) critic, value"),
        ("algo.expectile=1.5", "algo.expectile=1.5 is invalid: a number in (0, 1) is required"),
        ("algo.beta=abc", "algo.beta='abc' is invalid: a number >= 0 is required"),
        ("algo.weight_decay=-0.1", "algo.weight_decay=-0.1 is invalid: a number >= 0 is required"),
        ("algo.weight_decay=0.01", "algo.weight_decay=0.01 is invalid with optim=adam: it is LAMB's decoupled weight decay"),
        ("algo.hidden=[32,0]", "algo.hidden=[32, 0] is invalid: a non-empty list, each item a positive integer, is required"),
        ("+algo.lr=0.1", "unknown option(s) lr for IQLConfig; accepted: actor_cosine_schedule"),
        ("dataset=/nonexistent/d.hdf5", "/nonexistent/d.hdf5: file not found"),
        ("env=walker2d", "have dims (11, 3) but Walker2d-v5 expects (17, 6)"),
    ],
)
@pytest.mark.slow  # a subprocess: python run.py
def test_cli_bad_input_is_one_clear_line(tmp_path, hopper_file, override, message):
    args = [f"dataset={hopper_file}", override] if not override.startswith("dataset=") else [override]
    result = run_cli(*args, "steps=10", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line and "warn(" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess: python run.py
def test_cli_shows_the_composed_config(tmp_path):
    result = run_cli("algo=td3bc", "pruner=synflow", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0
    assert "name: td3bc" in result.stdout and "name: synflow" in result.stdout and "rounds: 100" in result.stdout


def test_network_mappings_are_checked_before_any_data_is_loaded(fast_config):
    """A typo in a per-network mapping must not wait for a dataset to be made or downloaded."""
    import torch

    from sparse_offline_rl.errors import ConfigError
    from sparse_offline_rl.training.trainer import validate_config

    state = torch.get_rng_state()
    with pytest.raises(ConfigError, match="unknown network"):
        validate_config({**fast_config, "sparsity": {"actr": 0.9, "default": 0.5}})
    with pytest.raises(ConfigError, match="no entry for network"):
        validate_config({**fast_config, "pruner": {**fast_config["pruner"], "budget_flops": {"actor": 500}}})
    validate_config({**fast_config, "sparsity": {"actor": 0.9, "default": 0.5}})
    assert torch.equal(torch.get_rng_state(), state)  # building the networks to read their names draws nothing
