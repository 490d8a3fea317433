"""Episodes of a policy in several environments at once, one batched policy call per time step.

Every episode i starts from `env.reset(seed=seeds[i])`, so two agents evaluated with the same seeds
face exactly the same initial states (and, with seeded noise, the same perturbations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from sparse_offline_rl.data.buffer import ObsNormalizer

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class EpisodeStats:
    returns: np.ndarray  # (N,) undiscounted return of each episode
    discounted_returns: np.ndarray  # (N,) with the given discount, for Q(s0) vs. return comparisons
    lengths: np.ndarray  # (N,)
    first_observations: np.ndarray  # (N, obs_dim) raw initial observations


class AgentPolicy:
    """Raw env observations in, deterministic actions out (normalises like the training buffer)."""

    def __init__(self, algo: Any, normalizer: ObsNormalizer, device: torch.device | str = "cpu") -> None:
        self.algo, self.normalizer, self.device = algo, normalizer, torch.device(device)

    @torch.no_grad()
    def __call__(self, observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        return self.algo.act(self.normalizer(obs)).cpu().numpy()


def run_episodes(
    policy: Policy,
    make_env: Callable[[], gym.Env],
    seeds: Sequence[int],
    discount: float = 0.99,
    obs_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    action_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    max_parallel: int = 16,
) -> EpisodeStats:
    """Run one episode per seed. `obs_transform(obs, env_index)` / `action_transform(action, env_index)`
    let the generalization harness add noise or stickiness per episode without touching the policy."""
    seeds = list(seeds)
    n = len(seeds)
    returns = np.zeros(n)
    disc_returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    first_obs: list[np.ndarray] = [np.zeros(0)] * n
    for start in range(0, n, max_parallel):
        idx = list(range(start, min(n, start + max_parallel)))
        envs = [make_env() for _ in idx]
        obs = np.stack([env.reset(seed=int(seeds[i]))[0] for env, i in zip(envs, idx)])
        for j, i in enumerate(idx):
            first_obs[i] = obs[j].copy()
        alive = np.ones(len(idx), dtype=bool)
        discount_now = np.ones(len(idx))
        while alive.any():
            live = np.flatnonzero(alive)
            seen = obs[live]
            if obs_transform is not None:
                seen = np.stack([obs_transform(seen[k], idx[j]) for k, j in enumerate(live)])
            actions = policy(seen)
            for k, j in enumerate(live):
                action = actions[k] if action_transform is None else action_transform(actions[k], idx[j])
                next_obs, reward, terminated, truncated, _ = envs[j].step(action)
                i = idx[j]
                returns[i] += reward
                disc_returns[i] += discount_now[j] * reward
                discount_now[j] *= discount
                lengths[i] += 1
                obs[j] = next_obs
                if terminated or truncated:
                    alive[j] = False
        for env in envs:
            env.close()
    return EpisodeStats(returns, disc_returns, lengths, np.stack(first_obs))
