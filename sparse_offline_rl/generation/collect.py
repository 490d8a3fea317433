"""Collecting episodes for datasets: a policy run in the shared env pool (`data.pool.run_pool`), one
policy call per step for all episodes, every step kept. (Evaluation's rollouts, which keep only returns,
are `evaluation.rollout`.)

Determinism: episode k of a rollout with `seed` is reset with `reset_seed(seed, k)` and the policy's
noise comes from one numpy generator seeded by `seed`, so the same call gives the same episodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.data.pool import run_pool
from sparse_offline_rl.data.project import SEED_STRIDE, SHARD_STRIDE, reset_seed
from sparse_offline_rl.generation.policies import Policy

# The reset-seed rule lives in data.project (evaluation keeps off it); importable here as before the move.
__all__ = ["SEED_STRIDE", "SHARD_STRIDE", "Episode", "reset_seed", "rollout"]


@dataclass
class Episode:
    observations: np.ndarray  # (T+1, obs_dim) float32, Minari layout
    actions: np.ndarray  # (T, act_dim) float32
    rewards: np.ndarray  # (T,) float32
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    seed: int  # env.reset seed

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def ret(self) -> float:
        return float(self.rewards.astype(np.float64).sum())

    def cut(self, length: int) -> "Episode":
        """The first `length` steps, marked truncated at the cut (as D4RL cut its last episode)."""
        trunc = self.truncations[:length].copy()
        trunc[-1] = not self.terminations[length - 1]
        return Episode(self.observations[: length + 1], self.actions[:length], self.rewards[:length],
                       self.terminations[:length], trunc, self.seed)


def rollout(
    env: str,
    policy: Policy,
    seed: int,
    *,
    episodes: int | None = None,
    transitions: int | None = None,
    n_envs: int = 16,
    first_episode: int = 0,
    progress: str | None = None,
) -> list[Episode]:
    """Runs `policy` until `episodes` episodes finish, or until finished episodes hold `transitions` steps
    (the last one is then cut to hit the count exactly). Episodes are returned in start order.

    Episode k resets with reset_seed(seed, first_episode + k), so consecutive parts of one dataset
    (medium-replay, medium-expert) keep distinct reset seeds."""
    if (episodes is None) == (transitions is None):
        raise ValueError("give exactly one of episodes= or transitions=")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batched forwards: extra threads only spin against the envs on a busy machine
    try:
        return _rollout(env, policy, seed, episodes, transitions, n_envs, first_episode, progress)
    finally:
        torch.set_num_threads(threads)


def _rollout(env: str, policy: Policy, seed: int, episodes: int | None, transitions: int | None, n_envs: int,
             first_episode: int, progress: str | None) -> list[Episode]:
    task = get_task(env)
    n_envs = max(1, min(n_envs, episodes or n_envs))
    envs = [gym.make(task.env_id, disable_env_checker=True) for _ in range(n_envs)]  # one per slot, reused
    rng = np.random.default_rng([seed, 1, first_episode])
    started = 0
    buffers: dict[int, dict[str, list]] = {}
    done: dict[int, Episode] = {}
    done_steps = 0
    by_episode = episodes is not None
    bar = tqdm(total=episodes or transitions, desc=progress, unit="ep" if episodes else "step",
               disable=progress is None, mininterval=1.0)

    def start(slot: int) -> tuple[int, gym.Env, np.ndarray] | None:
        nonlocal started
        # Stop launching when enough finished; for a transition budget, the episodes already running still
        # finish, so the kept set does not depend on which ones happened to be short.
        if (episodes is not None and started >= episodes) or (transitions is not None and done_steps >= transitions):
            return None
        o, _ = envs[slot].reset(seed=reset_seed(seed, first_episode + started))
        buffers[started] = {"obs": [o], "act": [], "rew": [], "term": [], "trunc": []}
        started += 1
        return started - 1, envs[slot], o

    def act(_: list[int], observations: list[np.ndarray]) -> np.ndarray:
        return policy.act(np.stack(observations).astype(np.float32), rng)

    def on_step(ep: int, action: np.ndarray, o: np.ndarray, r: float, term: bool, trunc: bool) -> None:
        buf = buffers[ep]
        buf["obs"].append(o), buf["act"].append(action), buf["rew"].append(r)
        buf["term"].append(term), buf["trunc"].append(trunc)

    def on_end(ep: int, _: gym.Env) -> None:
        nonlocal done_steps
        done[ep] = _to_episode(buffers.pop(ep), reset_seed(seed, first_episode + ep))
        done_steps += len(done[ep])
        bar.update(1 if by_episode else min(len(done[ep]), max(0, transitions - done_steps + len(done[ep]))))

    # Slot order: the policy draws its noise row by row, so the batch order is part of the dataset's bytes.
    run_pool(n_envs, start, act, on_step, on_end, order="slot")
    bar.close()
    for e in envs:
        e.close()
    ordered = [done[k] for k in sorted(done)]
    if transitions is not None:
        ordered = _take(ordered, transitions)
    return ordered


def _take(episodes: list[Episode], transitions: int) -> list[Episode]:
    kept, total = [], 0
    for ep in episodes:
        if total + len(ep) >= transitions:
            kept.append(ep.cut(transitions - total) if total + len(ep) > transitions else ep)
            return kept
        kept.append(ep)
        total += len(ep)
    return kept


def _to_episode(buf: dict[str, list], seed: int) -> Episode:
    return Episode(
        observations=np.asarray(buf["obs"], dtype=np.float32),
        actions=np.asarray(buf["act"], dtype=np.float32),
        rewards=np.asarray(buf["rew"], dtype=np.float32),
        terminations=np.asarray(buf["term"], dtype=bool),
        truncations=np.asarray(buf["trunc"], dtype=bool),
        seed=seed,
    )
