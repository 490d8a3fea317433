"""The benchmark tasks: short names, their gymnasium MuJoCo v5 ids and D4RL's reference scores."""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from sparse_offline_rl.errors import UnknownNameError


@dataclass(frozen=True)
class Task:
    name: str  # short name used in configs and dataset ids
    env_id: str  # gymnasium id
    obs_dim: int
    act_dim: int
    # D4RL's reference returns (random / expert), used for D4RL files; project datasets carry their own.
    d4rl_random_score: float
    d4rl_expert_score: float


TASKS: dict[str, Task] = {
    "halfcheetah": Task("halfcheetah", "HalfCheetah-v5", 17, 6, -280.178953, 12135.0),
    "hopper": Task("hopper", "Hopper-v5", 11, 3, -20.272305, 3234.3),
    "walker2d": Task("walker2d", "Walker2d-v5", 17, 6, 1.629008, 4592.3),
    "ant": Task("ant", "Ant-v5", 105, 8, -325.6, 3879.7),
}


def get_task(name: str) -> Task:
    """Accepts a short name ("hopper") or a gymnasium id ("Hopper-v5")."""
    key = name.lower()
    if key in TASKS:
        return TASKS[key]
    for task in TASKS.values():
        if task.env_id.lower() == key:
            return task
    raise UnknownNameError(f"unknown env '{name}'; available: {', '.join(TASKS)}")


def make_env(name: str, **kwargs) -> gym.Env:
    return gym.make(get_task(name).env_id, **kwargs)


def d4rl_normalized_score(env: str, returns: np.ndarray | float) -> np.ndarray:
    """Returns on D4RL's scale: 100 * (R - random) / (expert - random) with D4RL's reference returns for
    the task, whatever the dataset. This is the scale of published D4RL tables (those used v2 dynamics
    and D4RL's own data, so the numbers are comparable, not identical)."""
    task = get_task(env)
    return 100.0 * (np.asarray(returns, dtype=np.float64) - task.d4rl_random_score) / (
        task.d4rl_expert_score - task.d4rl_random_score)
