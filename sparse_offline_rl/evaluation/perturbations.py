"""Ways to move an environment away from the one the data came from, each reproducible from seeds.

Dynamics: scale MuJoCo model parameters of a freshly made env (mass and inertia together, friction of
every geom, joint damping, actuator gear). A scale of exactly 1.0 leaves the model untouched, so the
nominal env is bit-identical to `make_env(...)`.
Initial states: larger `reset_noise_scale` (a multiple of the env's own default).
Noise: Gaussian observation noise in units of the dataset's per-dimension std, Gaussian action noise
clipped to the action bounds, and sticky actions (the previous action repeats with probability p).
Each noisy episode owns a generator seeded by (suite seed, noise kind, episode reset seed), so two
agents see the same noise draws at the same time steps, and every level of one kind reuses the same
draws (common random numbers: degradation curves are not jittered by resampling).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import gymnasium as gym
import mujoco
import numpy as np

from sparse_offline_rl.errors import PerturbationError
from sparse_offline_rl.data.envs import make_env

# What each dynamics perturbation multiplies (mass also scales inertia: the bodies keep their shape).
DYNAMICS_GROUPS = ("mass", "friction", "damping", "gear")
NOISE_GROUPS = ("obs_noise", "action_noise", "sticky")
INITIAL_STATE_GROUPS = ("reset_noise",)
ALL_GROUPS = INITIAL_STATE_GROUPS + DYNAMICS_GROUPS + NOISE_GROUPS
# The unperturbed level of each group: a multiplier of 1 or a noise level of 0.
NOMINAL_LEVEL = {**{g: 1.0 for g in INITIAL_STATE_GROUPS + DYNAMICS_GROUPS}, **{g: 0.0 for g in NOISE_GROUPS}}
# Separate random streams per noise kind, so adding a kind never shifts the draws of another.
_NOISE_STREAM = {"obs_noise": 1, "action_noise": 2, "sticky": 3}


def check_level(group: str, level: float) -> None:
    """One clear line naming the bad group/level and what is accepted."""
    if group not in ALL_GROUPS:
        raise PerturbationError(f"unknown perturbation '{group}'; accepted: {', '.join(ALL_GROUPS)}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not np.isfinite(level):
        raise PerturbationError(f"{group} level {level!r} is invalid: a finite number is required")
    if group in INITIAL_STATE_GROUPS + DYNAMICS_GROUPS and level <= 0:
        raise PerturbationError(f"{group} level {level} is invalid: a scale factor > 0 is required (1.0 = nominal)")
    if group == "sticky" and not 0.0 <= level < 1.0:
        raise PerturbationError(f"sticky level {level} is invalid: a probability in [0, 1) is required")
    if group in ("obs_noise", "action_noise") and level < 0:
        raise PerturbationError(f"{group} level {level} is invalid: a noise std >= 0 is required")


def scale_dynamics(env: gym.Env, group: str, scale: float) -> None:
    """Scale one group of MuJoCo model parameters of `env` in place (no-op at exactly 1.0)."""
    check_level(group, scale)
    if group not in DYNAMICS_GROUPS:
        raise PerturbationError(f"'{group}' is not a dynamics perturbation; accepted: {', '.join(DYNAMICS_GROUPS)}")
    if scale == 1.0:
        return  # untouched model: bit-identical to the nominal env (mj_setConst could round differently)
    unwrapped = env.unwrapped
    model = unwrapped.model
    if group == "mass":
        model.body_mass[:] *= scale
        model.body_inertia[:] *= scale
        mujoco.mj_setConst(model, unwrapped.data)  # derived quantities (subtree masses, inverse weights)
    elif group == "friction":
        # Contacts use the element-wise max of both geoms' friction: scaling only the floor may do nothing.
        model.geom_friction[:, 0] *= scale
    elif group == "damping":
        model.dof_damping[:] *= scale
    elif group == "gear":
        model.actuator_gear[:, 0] *= scale


def default_reset_noise_scale(env_name: str) -> float:
    env = make_env(env_name)
    try:
        return float(env.unwrapped._reset_noise_scale)
    finally:
        env.close()


def make_perturbed_env(env_name: str, group: str | None = None, level: float = 1.0, base_reset_noise: float | None = None) -> gym.Env:
    """A fresh env with one dynamics or initial-state perturbation (or none when `group` is None or a
    noise group: those act on observations/actions, not on the simulator)."""
    if group == "reset_noise":
        check_level(group, level)
        base = default_reset_noise_scale(env_name) if base_reset_noise is None else base_reset_noise
        return make_env(env_name, reset_noise_scale=base * level) if level != 1.0 else make_env(env_name)
    env = make_env(env_name)
    if group in DYNAMICS_GROUPS:
        scale_dynamics(env, group, level)
    return env


def env_factory(env_name: str, group: str | None, level: float, base_reset_noise: float | None = None) -> Callable[[], gym.Env]:
    return partial(make_perturbed_env, env_name, group, level, base_reset_noise)


def noise_rng(suite_seed: int, group: str, episode_seed: int) -> np.random.Generator:
    return np.random.default_rng([int(suite_seed), _NOISE_STREAM[group], int(episode_seed)])


class ObservationNoise:
    """obs + sigma * dataset_std * N(0, 1), one draw per step from the episode's own generator."""

    def __init__(self, sigma: float, obs_std: np.ndarray, rng: np.random.Generator) -> None:
        self.sigma, self.obs_std, self.rng = float(sigma), np.asarray(obs_std, dtype=np.float64), rng

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return obs + self.sigma * self.obs_std * self.rng.standard_normal(obs.shape)


class ActionNoise:
    """clip(action + sigma * N(0, 1), low, high)."""

    def __init__(self, sigma: float, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> None:
        self.sigma, self.low, self.high, self.rng = float(sigma), low, high, rng

    def __call__(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action + self.sigma * self.rng.standard_normal(action.shape), self.low, self.high)


class StickyActions:
    """With probability p the env receives the previous executed action instead of the new one.
    One uniform draw every step (also the first), so draws stay aligned across agents."""

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        self.p, self.rng = float(p), rng
        self.previous: np.ndarray | None = None

    def __call__(self, action: np.ndarray) -> np.ndarray:
        stick = self.rng.random() < self.p
        if stick and self.previous is not None:
            action = self.previous
        self.previous = np.array(action, copy=True)
        return action


@dataclass
class EpisodeTransforms:
    """The observation/action transforms of one episode (None: untouched)."""

    obs: Callable[[np.ndarray], np.ndarray] | None = None
    action: Callable[[np.ndarray], np.ndarray] | None = None


def episode_transforms(
    group: str | None, level: float, suite_seed: int, episode_seed: int,
    obs_std: np.ndarray, action_low: np.ndarray, action_high: np.ndarray,
) -> EpisodeTransforms:
    """Fresh per-episode transforms for a noise group (level 0 means none, so nominal is exact)."""
    if group not in NOISE_GROUPS or level == 0.0:
        return EpisodeTransforms()
    check_level(group, level)
    rng = noise_rng(suite_seed, group, episode_seed)
    if group == "obs_noise":
        return EpisodeTransforms(obs=ObservationNoise(level, obs_std, rng))
    if group == "action_noise":
        return EpisodeTransforms(action=ActionNoise(level, action_low, action_high, rng))
    return EpisodeTransforms(action=StickyActions(level, rng))
