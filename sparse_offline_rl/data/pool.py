"""The one pooled-rollout loop: a few live environments stepped in lockstep, one batched policy call per step.

Dataset generation (`generation.collect.rollout`) and evaluation (`evaluation.rollout.run_episodes`) both run
episodes this way. Each slot of the pool runs one episode at a time; when its episode ends the slot at once
starts the next pending one, so short (early-terminating) episodes never leave the batch idle while a long
one finishes. What an episode is (which env, which reset seed), how actions are chosen and what is recorded
are the callers' business, passed in as callbacks; this module only owns the stepping order, so both
callers stay deterministic in the same way.

It lives in `data/`, below both generation and evaluation in the package layout; it needs nothing but
gymnasium's env API.
"""
from __future__ import annotations

from typing import Callable, Literal

import gymnasium as gym
import numpy as np

# slot -> (episode id, its env already reset, first observation), or None to leave the slot idle for good.
Start = Callable[[int], tuple[int, gym.Env, np.ndarray] | None]
# (episode ids, their current observations), in batch order -> the actions to execute, one row each.
Act = Callable[[list[int], list[np.ndarray]], np.ndarray | list[np.ndarray]]
# (episode id, executed action, next observation, reward, terminated, truncated), after every env step.
OnStep = Callable[[int, np.ndarray, np.ndarray, float, bool, bool], None]
# (episode id, its env), when the episode ends and before its slot starts the next one.
OnEnd = Callable[[int, gym.Env], None]


def run_pool(n_slots: int, start: Start, act: Act, on_step: OnStep, on_end: OnEnd,
             order: Literal["slot", "episode"] = "slot") -> None:
    """Runs episodes in `n_slots` slots until every slot is idle (its `start` returned None).

    Every slot is started once up front, in slot order. Each step makes one `act` call for all running
    episodes, then steps them one by one in the same order. `order` fixes that batch order: by slot, or
    by episode id. Both are deterministic, but they differ once a slot is refilled, and callers whose
    policy draws noise row by row (dataset generation) get different data from a different order, so each
    caller keeps the order its outputs were made with.
    """
    running: list[tuple[int, gym.Env] | None] = [None] * n_slots
    latest: dict[int, np.ndarray] = {}  # episode id -> its current observation

    def fill(slot: int) -> None:
        started = start(slot)
        if started is None:
            running[slot] = None
            return
        episode, env, obs = started
        running[slot] = (episode, env)
        latest[episode] = obs

    for slot in range(n_slots):
        fill(slot)
    while any(r is not None for r in running):
        live = [(r[0], r[1], slot) for slot, r in enumerate(running) if r is not None]
        if order == "episode":
            live.sort(key=lambda r: r[0])
        actions = act([episode for episode, _, _ in live], [latest[episode] for episode, _, _ in live])
        for row, (episode, env, slot) in enumerate(live):
            obs, reward, terminated, truncated, _ = env.step(actions[row])
            on_step(episode, actions[row], obs, reward, terminated, truncated)
            latest[episode] = obs
            if terminated or truncated:
                del latest[episode]
                on_end(episode, env)
                fill(slot)
