"""Episodes of a policy in several environments at once, one batched policy call per time step.

Every episode i starts from `env.reset(seed=seeds[i])`, so two agents evaluated with the same seeds
face exactly the same initial states (and, with seeded noise, the same perturbations).

Episodes run in a pool of at most `max_parallel` live environments: when one ends, the next
pending episode takes its slot, so short (early-terminating) episodes never leave the batch idle
while a long one finishes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from sparse_offline_rl.data.buffer import ObsNormalizer

Policy = Callable[[np.ndarray], np.ndarray]
EnvFactory = Callable[[], gym.Env]


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
    make_env: EnvFactory | Sequence[EnvFactory],
    seeds: Sequence[int],
    discount: float = 0.99,
    obs_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    action_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    max_parallel: int = 16,
    on_episode_end: Callable[[int], None] | None = None,
) -> EpisodeStats:
    """Run one episode per seed.

    `make_env` is one factory for every episode, or a sequence with one factory per episode (the
    generalization suite runs all its perturbed environments in one pool this way).
    `obs_transform(obs, episode_index)` / `action_transform(action, episode_index)` let the harness
    add noise or stickiness per episode without touching the policy; each is called exactly once per
    step of its episode. `on_episode_end(episode_index)` is called as each episode finishes
    (progress bars).
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    factories = list(make_env) if isinstance(make_env, Sequence) else [make_env] * n
    if len(factories) != n:
        raise ValueError(f"make_env has {len(factories)} factories for {n} seeds; give one per seed or a single one")
    returns, disc_returns = np.zeros(n), np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    first_obs: list[np.ndarray] = [np.zeros(0)] * n
    envs: dict[int, gym.Env] = {}  # episode index -> its live env
    current: dict[int, np.ndarray] = {}  # episode index -> latest raw observation
    discount_now = np.ones(n)
    pending = iter(range(n))

    def start_next() -> None:
        i = next(pending, None)
        if i is None:
            return
        envs[i] = factories[i]()
        obs, _ = envs[i].reset(seed=seeds[i])
        current[i] = obs
        first_obs[i] = np.array(obs, copy=True)

    for _ in range(min(n, max(1, max_parallel))):
        start_next()
    while envs:
        live = sorted(envs)  # fixed order: the batch composition depends only on the episodes
        seen = [current[i] if obs_transform is None else obs_transform(current[i], i) for i in live]
        actions = policy(np.stack(seen))
        for k, i in enumerate(live):
            action = actions[k] if action_transform is None else action_transform(actions[k], i)
            next_obs, reward, terminated, truncated, _ = envs[i].step(action)
            returns[i] += reward
            disc_returns[i] += discount_now[i] * reward
            discount_now[i] *= discount
            lengths[i] += 1
            current[i] = next_obs
            if terminated or truncated:
                envs.pop(i).close()
                del current[i]
                if on_episode_end is not None:
                    on_episode_end(i)
                start_next()
    return EpisodeStats(returns, disc_returns, lengths, np.stack(first_obs))
