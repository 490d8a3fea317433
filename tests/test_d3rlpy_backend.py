"""`algo=d3rlpy:<name>`: registered without d3rlpy, a clear install message when it is missing, and
(when d3rlpy is installed) the cross-check against the built-in IQL through the same training loop."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

import sparse_offline_rl as sorl
from conftest import REPO
from sparse_offline_rl.algorithms.d3rlpy_backend import VARIANTS, D3rlpyNotInstalledError, d3rlpy_available
from sparse_offline_rl.algorithms.plugins import config_defaults
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset, episode_starts_from_flags
from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.pruning import prunable_parameters, prune_at_initialization
from sparse_offline_rl.training.trainer import StepInfo, train
from test_plugins import masks_hold, run_cli

SPEC = sorl.ProblemSpec(obs_dim=11, act_dim=3)


def test_variants_are_registered_and_composable_without_importing_d3rlpy():
    names = sorl.available_algorithms()
    for variant in ("iql", "cql", "td3plusbc", "awac"):
        assert f"d3rlpy:{variant}" in names
    defaults = config_defaults("d3rlpy:iql")
    assert defaults["expectile"] == 0.7 and defaults["normalize_reward"] is True and defaults["discount"] == 0.99


def test_missing_d3rlpy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "d3rlpy", None)  # makes `import d3rlpy` fail as if absent
    with pytest.raises(D3rlpyNotInstalledError, match=r"algo=d3rlpy:iql needs the optional dependency d3rlpy.*pip install"):
        sorl.make_algorithm("d3rlpy:iql", SPEC)


@pytest.mark.skipif(d3rlpy_available(), reason="d3rlpy is installed here")
def test_cli_without_d3rlpy_is_one_line_before_loading_data():
    result = run_cli("algo=d3rlpy:iql", "dataset=/nonexistent.hdf5", "steps=1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: algo=d3rlpy:iql needs the optional dependency d3rlpy")


# -- with d3rlpy installed -----------------------------------------------------------------------
def test_defaults_match_the_installed_d3rlpy():
    d3rlpy = pytest.importorskip("d3rlpy")
    for variant, (config_name, ours) in VARIANTS.items():
        theirs = {f.name: f.default for f in dataclasses.fields(getattr(d3rlpy.algos, config_name))}
        assert {k: theirs[k] for k in ours} == ours, variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_prunes_trains_acts_and_checkpoints(variant, hopper_data):
    pytest.importorskip("d3rlpy")
    torch.manual_seed(0)
    algo = sorl.make_algorithm(f"d3rlpy:{variant}", SPEC, {"hidden": [16, 16]})
    buffer = TransitionBuffer(hopper_data)
    buffer.seed(0)
    masks, report = prune_at_initialization(algo, lambda: buffer.sample(32), {"name": "snip"}, 0.8, seed=0)
    assert "actor" in algo.networks() and "critic" in algo.networks() and "critic" in algo.target_networks()
    for _ in range(3):
        metrics = algo.update(buffer.sample(32))
        masks.apply()
    assert all(torch.is_tensor(v) and torch.isfinite(v) for v in metrics.values())
    masks_hold(StepInfo(3, algo, metrics, masks))
    obs = buffer.sample(4).observations
    assert algo.act(obs).shape == (4, 3)
    clone = sorl.make_algorithm(f"d3rlpy:{variant}", SPEC, {"hidden": [16, 16]})
    clone.load_state_dict(algo.state_dict())
    assert torch.equal(clone.act(obs), algo.act(obs)) and clone.grad_step == 3


def learnable_dataset(n: int = 2000, seed: int = 0) -> OfflineDataset:
    """A behaviour policy a = tanh(obs @ W) + noise: an actor that learns must come to imitate it."""
    task = get_task("hopper")
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, task.obs_dim)).astype(np.float32)
    w = rng.normal(scale=0.5, size=(task.obs_dim, task.act_dim))
    actions = np.clip(np.tanh(obs @ w) + 0.05 * rng.normal(size=(n, task.act_dim)), -0.99, 0.99).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[99::100] = True
    terminals = np.zeros(n, bool)
    return OfflineDataset(
        observations=obs, actions=actions, rewards=(-np.abs(actions).sum(1)).astype(np.float32),
        next_observations=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
        terminals=terminals, timeouts=timeouts, episode_starts=episode_starts_from_flags(terminals, timeouts),
        env_id=task.env_id, ref_min_score=task.d4rl_random_score, ref_max_score=task.d4rl_expert_score, source="learnable-hopper",
    )


def test_cross_check_builtin_iql_and_d3rlpy_iql_both_learn_and_keep_masks(tmp_path, fast_config):
    pytest.importorskip("d3rlpy")
    data = learnable_dataset()
    obs, actions = torch.from_numpy(data.observations[:512]), torch.from_numpy(data.actions[:512])
    results = {}
    # A faster actor than the paper's 3e-4 so 300 steps suffice (the same for both implementations).
    lr = {"iql": {"actor_lr": 1e-3, "actor_cosine_schedule": False}, "d3rlpy:iql": {"actor_learning_rate": 1e-3}}
    for name in ("iql", "d3rlpy:iql"):
        errors: dict[int, float] = {}

        def imitation_error(info: StepInfo) -> None:
            masks_hold(info)
            if info.step in (1, 300):
                errors[info.step] = float((info.algo.act(obs) - actions).pow(2).mean())

        cfg = {**fast_config, "algo": {"name": name, "hidden": [64, 64], "normalize_obs": False, "normalize_reward": False, **lr[name]},
               "pruner": {"name": "snip"}, "sparsity": 0.8, "steps": 300, "eval": {**fast_config["eval"], "every": 300, "episodes": 1}}
        summary = train(cfg, tmp_path / name.replace(":", "_"), dataset=data, callbacks=[imitation_error])
        results[name] = (errors, summary)
        assert summary["algo"] == name and np.isfinite(summary["eval"]["return_mean"])
        for density in summary["density"].values():
            assert density == pytest.approx(0.2, abs=0.01)
        assert errors[300] < 0.25 * errors[1], f"{name} did not learn: imitation error {errors}"
    assert set(results["iql"][1]["density"]) == set(results["d3rlpy:iql"][1]["density"]) == {"actor", "critic", "value"}
