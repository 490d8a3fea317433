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
from sparse_offline_rl.data.pool import run_pool
from sparse_offline_rl.data.project import SEED_STRIDE, reset_seed

# Training-time evaluation: run seed r resets its episode k with reset_seed(EVAL_SEED_BLOCK + r, k). Each run
# seed owns a block of SEED_STRIDE reset seeds, so two run seeds never share a start state, and the blocks lie
# above every block used elsewhere: datasets made with seed s use block s (s < EVAL_SEED_BLOCK), behaviour
# policy training blocks 500+, reference returns block 900, the suite's held-out seeds block 1.
EVAL_SEED_BLOCK = 1_000_000
SEED_RANGE = "[0, 4294967295]"  # numpy's seed range; the largest evaluation reset seed stays below 2**63
MAX_EVAL_EPISODES = SEED_STRIDE

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


class MembersPolicy:
    """The policies of K stacked members as one batched call (training.stacked): episode i belongs to
    member i // `episodes_per_member`. Each call gives every member the same number of rows (its live
    episodes, padded with zeros), since the stacked actor takes K * M member-major rows, normalises
    each member's rows with its own normaliser and returns the live episodes' actions. Used with
    `run_episodes(..., policy_gets_episodes=True)`."""

    def __init__(self, algo: Any, normalizers: Sequence[ObsNormalizer], episodes_per_member: int,
                 device: torch.device | str = "cpu") -> None:
        self.algo, self.episodes_per_member, self.device = algo, episodes_per_member, torch.device(device)
        self.mean = torch.stack([n.mean for n in normalizers]).to(self.device).unsqueeze(1)  # (K, 1, obs_dim)
        self.std = torch.stack([n.std for n in normalizers]).to(self.device).unsqueeze(1)

    @torch.no_grad()
    def __call__(self, observations: np.ndarray, episodes: Sequence[int]) -> np.ndarray:
        members = len(self.mean)
        member = np.asarray(episodes) // self.episodes_per_member
        # Episodes come sorted, so each member's rows are contiguous: a row's place among its member's.
        first = np.searchsorted(member, np.arange(members))
        place = np.arange(len(member)) - first[member]
        padded = torch.zeros((members, max(1, int(place.max()) + 1), observations.shape[1]), device=self.device)
        padded[member, place] = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        actions = self.algo.act(((padded - self.mean) / self.std).flatten(0, 1))
        return actions.view(members, padded.shape[1], -1)[member, place].cpu().numpy()


def eval_seeds(run_seed: int, episodes: int) -> list[int]:
    """The reset seeds of a run's evaluation episodes (the same at every evaluation of the run)."""
    if not 0 <= episodes <= MAX_EVAL_EPISODES:
        raise ValueError(f"episodes={episodes} is invalid: an integer in [0, {MAX_EVAL_EPISODES}] is required")
    return [reset_seed(EVAL_SEED_BLOCK + int(run_seed), k) for k in range(episodes)]


def run_episodes(
    policy: Policy,
    make_env: EnvFactory | Sequence[EnvFactory],
    seeds: Sequence[int],
    discount: float = 0.99,
    obs_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    action_transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
    max_parallel: int = 16,
    on_episode_end: Callable[[int], None] | None = None,
    policy_gets_episodes: bool = False,
) -> EpisodeStats:
    """Run one episode per seed.

    `make_env` is one factory for every episode, or a sequence with one factory per episode (the
    generalization suite runs all its perturbed environments in one pool this way).
    `obs_transform(obs, episode_index)` / `action_transform(action, episode_index)` let the harness
    add noise or stickiness per episode without touching the policy; each is called exactly once per
    step of its episode. `on_episode_end(episode_index)` is called as each episode finishes
    (progress bars). `policy_gets_episodes`: the policy is called as `policy(observations, episode
    indices)` (sorted), for policies that act differently per episode (`MembersPolicy`).
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    factories = list(make_env) if isinstance(make_env, Sequence) else [make_env] * n
    if len(factories) != n:
        raise ValueError(f"make_env has {len(factories)} factories for {n} seeds; give one per seed or a single one")
    returns, disc_returns = np.zeros(n), np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    first_obs: list[np.ndarray] = [np.zeros(0)] * n
    discount_now = np.ones(n)
    pending = iter(range(n))

    def start(_: int) -> tuple[int, gym.Env, np.ndarray] | None:
        i = next(pending, None)
        if i is None:
            return None
        env = factories[i]()  # a fresh env per episode: episodes may run differently perturbed simulators
        obs, _ = env.reset(seed=seeds[i])
        first_obs[i] = np.array(obs, copy=True)
        return i, env, obs

    def act(live: list[int], observations: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        seen = observations if obs_transform is None else [obs_transform(o, i) for o, i in zip(observations, live)]
        actions = policy(np.stack(seen), live) if policy_gets_episodes else policy(np.stack(seen))
        if action_transform is None:
            return actions
        # Transformed here, so before this step's env.step calls: still once per step of each episode and
        # in batch order; per-episode transforms (the suite's) do not share state with the envs.
        return [action_transform(actions[k], i) for k, i in enumerate(live)]

    def on_step(i: int, _: np.ndarray, __: np.ndarray, reward: float, terminated: bool, truncated: bool) -> None:
        returns[i] += reward
        disc_returns[i] += discount_now[i] * reward
        discount_now[i] *= discount
        lengths[i] += 1

    def on_end(i: int, env: gym.Env) -> None:
        env.close()
        if on_episode_end is not None:
            on_episode_end(i)

    # Episode order: the batch composition depends only on the episodes, whatever slot each one landed in.
    run_pool(min(n, max(1, max_parallel)), start, act, on_step, on_end, order="episode")
    return EpisodeStats(returns, disc_returns, lengths, np.stack(first_obs))
