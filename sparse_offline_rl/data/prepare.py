"""A run's data preprocessing, the same for training and for reloading a trained agent: the episode
split (whole episodes held out for validation), the observation normaliser and the reward scale from
the training split, and the replay buffers that feed the algorithm.

Which of these an algorithm wants is its own choice (config fields `normalize_obs`,
`normalize_reward`); `algorithms.prepare_data(cfg, dataset)` reads them and calls
`PreparedData.from_dataset` here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym

from sparse_offline_rl.data.buffer import ObsNormalizer, TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.envs import get_task


def reward_scale_for(dataset: OfflineDataset, max_episode_steps: float) -> float:
    """IQL's reward normalisation for locomotion: 1000 / (max episode return - min episode return).

    A dataset of a fixed number of transitions usually ends inside an episode. That cut episode's
    return is not an episode return and would stretch the range (CORL's return_reward_range leaves it
    out too), so the last episode counts only if it terminated or ran to the time limit."""
    returns = dataset.episode_returns()
    last_length = len(dataset) - int(dataset.episode_starts[-1])
    if not dataset.terminals[-1] and last_length < max_episode_steps:
        returns = returns[:-1]
    spread = float(returns.max() - returns.min()) if len(returns) > 1 else 0.0
    return 1000.0 / spread if spread > 0 else 1.0


@dataclass
class PreparedData:
    train: OfflineDataset
    val: OfflineDataset | None  # whole episodes held out for validation losses
    normalizer: ObsNormalizer
    reward_scale: float
    device: str = "cpu"

    @classmethod
    def from_dataset(cls, dataset: OfflineDataset, env: str, *, val_fraction: float = 0.0, seed: int = 0,
                     normalize_obs: bool = False, normalize_reward: bool = False, device: str = "cpu") -> "PreparedData":
        """Episode split by (val_fraction, seed); normaliser and reward scale from the training split
        when asked for, identity and 1 otherwise. `env` gives the time limit that tells a complete last
        episode from one cut by the end of the data."""
        train, val = dataset.split_episodes(val_fraction, seed) if val_fraction > 0 else (dataset, None)
        normalizer = (ObsNormalizer.from_dataset(train, device=device) if normalize_obs
                      else ObsNormalizer.identity(dataset.obs_dim, device))
        time_limit = gym.spec(get_task(env).env_id).max_episode_steps or math.inf
        reward_scale = reward_scale_for(train, time_limit) if normalize_reward else 1.0
        return cls(train, val, normalizer, reward_scale, device)

    def buffer(self, seed: int) -> TransitionBuffer:
        """The training split on the device, normalised and reward-scaled, drawing batches from its own
        generator seeded with `seed`."""
        buffer = TransitionBuffer(self.train, device=self.device, normalizer=self.normalizer, reward_scale=self.reward_scale)
        buffer.seed(seed)
        return buffer
