"""Fitted Q evaluation (Le et al. 2019): the value of a fixed policy, estimated from the dataset alone.

A fresh critic Q(s, a) (a small MLP) is regressed on the dataset's transitions towards
r + discount * (1 - terminal) * Q_target(s', pi(s')), Q_target a Polyak-averaged copy, for a fixed
budget of gradient steps; the estimate is the mean over the dataset's initial states of
Q(s0, pi(s0)): the policy's discounted return from the data's start states. pi is the agent's
deterministic action (`act`: the mean action of a stochastic actor), so pi(s') and pi(s0) are
computed once. Time limits bootstrap, as in training (only true terminals stop the sum). The critic
has LayerNorm after each hidden layer, bootstrapped values are clipped to the range a return can
have ([min r, max r] / (1 - discount)) and the learning rate decays to 0 (cosine): without these
the estimate of a policy far from the data diverged or jittered (`fqe_critic`).

Rewards are multiplied by c = (1 - discount) / mean|r| while fitting, so Q is of order 1 for any
reward units (a network started near 0 reaches a value of order 1 / (1 - discount) slowly), and the
estimate is divided by c: it is on the scale of the data's rewards, whatever reward scale the agent
trained with.

Randomness: the critic's initialisation and the batches come from torch's global RNG seeded with
the given seed inside `untouched_rngs`, so fitting draws nothing from any generator training uses
and leaves every RNG as it found it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparse_offline_rl.algorithms.networks import frozen_copy, polyak_update
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.pruning.rng import untouched_rngs

Policy = Callable[[torch.Tensor], torch.Tensor]  # normalised observations -> actions


@dataclass(frozen=True)
class FQESettings:
    steps: int = 8_000
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    tau: float = 0.005
    checkpoints: int = 10  # the estimate is recorded this many times along the way (convergence)


@dataclass
class FQEResult:
    value: float  # mean over initial states, on the data's reward scale
    per_state: np.ndarray  # (initial states,) Q(s0, pi(s0)) on the data's reward scale
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, value) along the fit
    seconds: float = 0.0


def fqe_critic(in_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Q(s, a) as an MLP with LayerNorm after every hidden layer: bootstrapping from the policy's
    actions, which the data may not contain, makes a plain MLP's values drift without bound (measured:
    a weak hopper policy's estimate, true value about 87, went to -330 within 5k steps at lr 1e-3, tau
    0.02); normalised features bound how far the network can extrapolate to them (Ball et al. 2023)."""
    layers: list[nn.Module] = []
    for a, b in zip((in_dim, *hidden[:-1]), hidden):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden[-1], 1))


@torch.no_grad()
def in_chunks(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, size: int = 65536) -> torch.Tensor:
    """fn applied to row chunks of the tensors (bounded memory on a million rows), concatenated."""
    n = tensors[0].shape[0]
    return torch.cat([fn(*(t[i:i + size] for t in tensors)) for i in range(0, n, size)])


def fit_fqe(policy: Policy, buffer: TransitionBuffer, initial_obs: torch.Tensor, discount: float,
            settings: FQESettings = FQESettings(), seed: int = 0, owners: tuple[Any, ...] = ()) -> FQEResult:
    """FQE of `policy` on `buffer`'s transitions (normalised as the policy expects them; rewards as the
    buffer holds them) from `initial_obs` (normalised). `owners`: objects whose generators must stay
    untouched (the agent's algorithm)."""
    start = time.perf_counter()
    with untouched_rngs(*owners):
        torch.manual_seed(seed)
        obs, actions, dones = buffer.observations, buffer.actions, buffer.dones
        scale = (1.0 - discount) / max(float(buffer.rewards.abs().mean()), 1e-8)
        rewards = buffer.rewards * scale
        next_q_input = torch.cat([buffer.next_observations, in_chunks(policy, buffer.next_observations)], -1)
        s0 = torch.cat([initial_obs, in_chunks(policy, initial_obs)], -1)
        # The true Q lies in [min r, max r] / (1 - discount): targets outside it are only error.
        low, high = float(rewards.min()) / (1 - discount), float(rewards.max()) / (1 - discount)
        q = fqe_critic(obs.shape[1] + actions.shape[1], settings.hidden).to(obs.device)
        target = frozen_copy(q)
        optimizer = torch.optim.Adam(q.parameters(), lr=settings.lr)
        # Cosine decay to 0: late steps settle the estimate instead of jittering it with the batches.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
        marks = set(np.linspace(0, settings.steps, settings.checkpoints + 1).astype(int)[1:].tolist())
        curve = []
        for step in range(1, settings.steps + 1):
            rows = torch.randint(0, len(buffer), (settings.batch_size,), device=obs.device)
            with torch.no_grad():
                next_q = target(next_q_input[rows]).squeeze(-1).clamp(low, high)
                y = rewards[rows] + discount * (1.0 - dones[rows]) * next_q
            loss = F.mse_loss(q(torch.cat([obs[rows], actions[rows]], -1)).squeeze(-1), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            polyak_update(target, q, settings.tau)
            if step in marks:
                curve.append((step, float(in_chunks(q, s0).mean()) / scale))
        per_state = in_chunks(q, s0).squeeze(-1).double().cpu().numpy() / scale
    return FQEResult(float(per_state.mean()), per_state, curve, time.perf_counter() - start)


__all__ = ["FQEResult", "FQESettings", "fit_fqe"]
