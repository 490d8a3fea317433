"""Generalization suite: perturbations really change the simulator, seeds, noise, rollouts, reports."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from sparse_offline_rl.data.envs import make_env
from sparse_offline_rl.evaluation.agent import EvalAgent
from sparse_offline_rl.algorithms import prepare_data
from sparse_offline_rl.evaluation.perturbations import (
    DYNAMICS_GROUPS, ActionNoise, ObservationNoise, PerturbationError, StickyActions, episode_transforms,
    make_perturbed_env, noise_rng,
)
from sparse_offline_rl.data.project import SEED_STRIDE, reset_seed
from sparse_offline_rl.generation.behavior import REFERENCE_SEED, TRAIN_SEED_OFFSET
from sparse_offline_rl.evaluation.rollout import EVAL_SEED_BLOCK, eval_seeds, run_episodes
from sparse_offline_rl.evaluation.suite import (
    HELDOUT_SEED_BASE, SuiteError, get_suite, heldout_seeds, run_suite, seed_sets,
)

PERTURBED = {"mass": 2.0, "friction": 0.25, "damping": 2.0, "gear": 0.8}


def trajectory(env, seed: int = 3, steps: int = 60) -> np.ndarray:
    """Observations under a fixed, seeded action sequence (no policy in the loop)."""
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, env.action_space.shape[0]))
    obs = [env.reset(seed=seed)[0]]
    for a in actions:
        o, _, terminated, _, _ = env.step(a)
        obs.append(o)
        if terminated:
            break
    env.close()
    return np.stack(obs)


@pytest.fixture(scope="module")
def nominal_trajectory() -> np.ndarray:
    return trajectory(make_env("hopper"))


@pytest.mark.parametrize("group", DYNAMICS_GROUPS + ("reset_noise",))
def test_scale_one_is_bit_identical_and_other_scales_change_the_rollout(group, nominal_trajectory):
    same = trajectory(make_perturbed_env("hopper", group, 1.0))
    assert same.shape == nominal_trajectory.shape and np.array_equal(same, nominal_trajectory)
    changed = trajectory(make_perturbed_env("hopper", group, PERTURBED.get(group, 5.0)))
    n = min(len(changed), len(nominal_trajectory))
    assert not np.allclose(changed[:n], nominal_trajectory[:n]), f"{group} did not change the simulation"


def test_dynamics_scale_the_documented_model_fields():
    nominal, env = make_env("hopper").unwrapped.model, make_perturbed_env("hopper", "mass", 2.0).unwrapped.model
    assert np.allclose(env.body_mass, 2 * nominal.body_mass) and np.allclose(env.body_inertia, 2 * nominal.body_inertia)
    assert np.allclose(env.body_subtreemass, 2 * nominal.body_subtreemass)  # mj_setConst ran
    env = make_perturbed_env("hopper", "friction", 0.5).unwrapped.model
    assert np.allclose(env.geom_friction[:, 0], 0.5 * nominal.geom_friction[:, 0])  # every geom, not only the floor
    assert np.array_equal(env.geom_friction[:, 1:], nominal.geom_friction[:, 1:])
    env = make_perturbed_env("hopper", "gear", 1.2).unwrapped.model
    assert np.allclose(env.actuator_gear[:, 0], 1.2 * nominal.actuator_gear[:, 0])
    env = make_perturbed_env("hopper", "damping", 0.5).unwrapped.model
    assert np.allclose(env.dof_damping, 0.5 * nominal.dof_damping)


def test_bad_levels_and_suites_fail_with_one_clear_line():
    with pytest.raises(PerturbationError, match="unknown perturbation 'gravity'; accepted: reset_noise, mass"):
        get_suite({"levels": {"gravity": [2.0]}})
    with pytest.raises(PerturbationError, match=r"sticky level 1.5 is invalid: a probability in \[0, 1\)"):
        get_suite({"levels": {"sticky": [1.5]}})
    with pytest.raises(PerturbationError, match="mass level -1 is invalid: a scale factor > 0"):
        make_perturbed_env("hopper", "mass", -1)
    with pytest.raises(SuiteError, match="unknown suite 'generalisation'; accepted: generalization"):
        get_suite("generalisation")
    with pytest.raises(SuiteError, match="episodes=0 is invalid"):
        get_suite({"episodes": 0})


def test_noise_is_seeded_per_episode_scaled_by_std_and_clipped():
    std = np.array([0.0, 1.0, 10.0])
    a = ObservationNoise(0.1, std, noise_rng(0, "obs_noise", 5))
    b = ObservationNoise(0.1, std, noise_rng(0, "obs_noise", 5))
    c = ObservationNoise(0.1, std, noise_rng(0, "obs_noise", 6))
    obs = np.ones(3)
    draws = np.stack([a(obs) for _ in range(200)])
    assert np.array_equal(draws[0], b(obs)) and not np.array_equal(draws[0], c(obs))
    assert np.all(draws[:, 0] == 1.0)  # a constant dimension gets no noise
    assert 0.05 < draws[:, 1].std() < 0.15 and 0.5 < draws[:, 2].std() < 1.5  # sigma * std
    noisy = ActionNoise(5.0, -np.ones(2), np.ones(2), noise_rng(0, "action_noise", 1))
    out = np.stack([noisy(np.zeros(2)) for _ in range(50)])
    assert out.min() == -1.0 and out.max() == 1.0  # clipped to the action bounds
    assert episode_transforms("obs_noise", 0.0, 0, 1, std, -np.ones(2), np.ones(2)).obs is None  # level 0 is nominal


def test_sticky_actions_repeat_the_previous_action():
    never, always = StickyActions(0.0, noise_rng(0, "sticky", 1)), StickyActions(0.999999, noise_rng(0, "sticky", 1))
    actions = [np.full(2, float(t)) for t in range(5)]
    assert [never(a)[0] for a in actions] == [0, 1, 2, 3, 4]
    assert [always(a)[0] for a in actions] == [0, 0, 0, 0, 0]  # the first action has nothing to repeat
    half = StickyActions(0.5, noise_rng(0, "sticky", 2))
    executed = [half(np.full(1, float(t)))[0] for t in range(200)]
    repeats = np.mean([x == y for x, y in zip(executed[1:], executed[:-1])])
    assert 0.35 < repeats < 0.65


def test_pool_rollouts_match_one_at_a_time_and_accept_per_episode_envs():
    policy = lambda obs: np.tanh(obs[:, :3] * 0.5)  # noqa: E731  (row-wise: batch composition cannot matter)
    seeds = [4, 8, 15, 16, 23]
    pooled = run_episodes(policy, lambda: make_env("hopper"), seeds, max_parallel=2)
    for i, s in enumerate(seeds):
        single = run_episodes(policy, lambda: make_env("hopper"), [s])
        assert single.returns[0] == pooled.returns[i] and single.lengths[0] == pooled.lengths[i]
    heavy = run_episodes(policy, [lambda: make_env("hopper"), lambda: make_perturbed_env("hopper", "mass", 2.0)], [4, 4])
    assert np.array_equal(heavy.first_observations[0], heavy.first_observations[1])  # same start state
    assert heavy.returns[0] != heavy.returns[1]
    with pytest.raises(ValueError, match="2 factories for 3 seeds"):
        run_episodes(policy, [lambda: make_env("hopper")] * 2, [1, 2, 3])


def with_seeds(dataset, seeds):
    dataset.reset_seeds = np.asarray(seeds, dtype=np.int64)
    return dataset


def test_seed_sets_are_disjoint_and_come_from_the_right_episodes(hopper_data, fast_config):
    data = with_seeds(hopper_data.select_episodes(np.arange(hopper_data.num_episodes)),
                      HELDOUT_SEED_BASE + np.arange(hopper_data.num_episodes))  # collide on purpose
    prepared = prepare_data({**fast_config, "val_fraction": 0.25}, data)
    agent = EvalAgent(None, prepared.normalizer, "hopper", prepared.train, prepared.val)
    sets = seed_sets(agent, 5)
    assert set(sets["train"]) <= set(prepared.train.reset_seeds.tolist())
    assert set(sets["val"]) <= set(prepared.val.reset_seeds.tolist())
    assert len(sets["heldout"]) == 5 and not set(sets["heldout"]) & set(data.reset_seeds.tolist())
    assert not set(sets["train"]) & set(sets["val"])
    no_seeds = EvalAgent(None, prepared.normalizer, "hopper", hopper_data, None)
    assert set(seed_sets(no_seeds, 3)) == {"heldout"}  # unknown collection seeds: no train row, no gap


def test_evaluation_seeds_follow_the_run_seed_and_avoid_dataset_and_suite_seeds():
    runs = {seed: eval_seeds(seed, 10) for seed in (0, 1, 2, 999, 2**32 - 1)}
    assert eval_seeds(3, 2) == [1_000_003_000_000_000, 1_000_003_000_000_001]
    for a, b in itertools.combinations(runs, 2):
        assert not set(runs[a]) & set(runs[b]), (a, b)
    used = [s for seeds in runs.values() for s in seeds]
    assert all(len(set(seeds)) == 10 for seeds in runs.values()) and max(used) < 2**63  # int64-safe
    # Dataset episode k of shard i, made with seed s, resets with reset_seed(s, i * SHARD_STRIDE + k): for any
    # s below EVAL_SEED_BLOCK that lies below every evaluation seed. So do the behaviour-policy training
    # and reference-return blocks (500+, 900) and the suite's held-out seeds.
    assert min(used) > reset_seed(EVAL_SEED_BLOCK - 1, SEED_STRIDE - 1)
    assert TRAIN_SEED_OFFSET + 1000 < EVAL_SEED_BLOCK and REFERENCE_SEED < EVAL_SEED_BLOCK
    assert not set(used) & set(heldout_seeds(1000))


def test_normalized_score_by_hand(hopper_data):
    data = hopper_data.select_episodes(np.arange(2))
    data.ref_min_score, data.ref_max_score = -20.0, 180.0
    assert data.normalized_score(80.0) == pytest.approx(50.0)
    assert np.allclose(data.normalized_score(np.array([-20.0, 180.0, 380.0, -120.0])), [0.0, 100.0, 200.0, -50.0])
    data.ref_max_score = None
    assert np.isnan(data.normalized_score(80.0))


def test_validation_split_holds_out_whole_episodes(hopper_data, fast_config):
    data = with_seeds(hopper_data.select_episodes(np.arange(hopper_data.num_episodes)), np.arange(hopper_data.num_episodes))
    prepared = prepare_data({**fast_config, "val_fraction": 0.25}, data)
    train_ids, val_ids = prepared.train.reset_seeds.tolist(), prepared.val.reset_seeds.tolist()
    assert sorted(train_ids + val_ids) == list(range(data.num_episodes)) and len(val_ids) == 5
    bounds = data.episode_bounds()
    for k, episode in enumerate(val_ids):  # each validation episode is a whole source episode, in order
        start, end = bounds[episode]
        v_start, v_end = prepared.val.episode_bounds()[k]
        assert np.array_equal(prepared.val.observations[v_start:v_end], data.observations[start:end])
    # the normaliser only saw training episodes
    assert torch.allclose(prepared.normalizer.mean, torch.as_tensor(prepared.train.observations.mean(0)), atol=1e-5)


class ZeroCritic(torch.nn.Module):
    def forward(self, obs, act):
        return torch.zeros(2, obs.shape[0])


class TinyAlgo:
    """A linear deterministic policy: enough to drive the suite without training."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        self.w = torch.randn(obs_dim, act_dim, generator=torch.Generator().manual_seed(0)) * 0.3
        self.critic = ZeroCritic()

    def networks(self):
        return {"critic": self.critic}

    def act(self, obs):
        return torch.tanh(obs @ self.w)


def test_suite_runs_the_same_episodes_twice_and_reports_every_cell(hopper_data, fast_config):
    data = with_seeds(hopper_data.select_episodes(np.arange(hopper_data.num_episodes)), np.arange(hopper_data.num_episodes))
    prepared = prepare_data({**fast_config, "val_fraction": 0.25}, data)
    agent = EvalAgent(TinyAlgo(11, 3), prepared.normalizer, "hopper", prepared.train, prepared.val, reward_scale=2.0)
    suite = {"episodes": 2, "levels": {"mass": [0.5, 2.0], "obs_noise": [0.2], "sticky": [0.25], "reset_noise": [5.0]}}
    first = run_suite(agent, suite, progress=False)
    second = run_suite(agent, suite, progress=False)
    assert [c["returns"] for c in first["cells"]] == [c["returns"] for c in second["cells"]]
    keys = [c["key"] for c in first["cells"]]
    assert keys == ["seeds/train", "seeds/val", "seeds/heldout", "reset_noise/5.0", "mass/0.5", "mass/2.0",
                    "obs_noise/0.2", "sticky/0.25"]
    cells = {c["key"]: c for c in first["cells"]}
    for cell in cells.values():
        assert cell["episodes"] == 2 and {"return_mean", "return_std", "score_mean", "score_std"} <= set(cell)
        # by hand: 100 * (R - random) / (expert - random) with D4RL's hopper references (conftest's data)
        assert cell["score_mean"] == pytest.approx(100 * (np.mean(cell["returns"]) + 20.272305) / 3254.572305)
    assert cells["mass/2.0"]["seeds"] == cells["seeds/heldout"]["seeds"]
    assert cells["mass/2.0"]["returns"] != cells["seeds/heldout"]["returns"]
    # Q = 0 everywhere, so over-estimation is minus the (reward-scaled) discounted return
    assert cells["seeds/train"]["overestimation_mean"] == pytest.approx(-cells["seeds/train"]["discounted_return_mean"])
    summary = first["summary"]
    assert summary["generalization_gap"] == pytest.approx(cells["seeds/train"]["score_mean"] - cells["seeds/heldout"]["score_mean"])
    assert summary["mass_mean"] == pytest.approx((cells["mass/0.5"]["score_mean"] + cells["mass/2.0"]["score_mean"]) / 2)
    json.dumps(first)  # the result is what generalization.json holds
    other_noise = run_suite(agent, suite, seed=1, progress=False)
    assert [c["returns"] for c in other_noise["cells"][:4]] == [c["returns"] for c in first["cells"][:4]]
    assert other_noise["cells"][6]["returns"] != first["cells"][6]["returns"]  # obs noise draws follow the seed


def test_comparisons_label_the_pruner_from_what_was_pruned():
    """A budget prunes at sparsity 0: the label must come from the densities, as summary.json's does."""
    from sparse_offline_rl.evaluation.agent import run_meta

    cfg = {"algo": {"name": "iql"}, "env": "hopper", "dataset": "hopper-medium", "seed": 0, "sparsity": 0.0,
           "pruner": {"name": "snip", "budget_params": 5000}}
    assert run_meta(cfg, {"actor": 0.4, "critic": 1.0})["pruner"] == "snip"
    assert run_meta({**cfg, "pruner": {"name": "snip"}}, {"actor": 1.0, "critic": 1.0})["pruner"] == "dense"
