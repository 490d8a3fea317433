"""Behaviour policies that generate datasets: the behaviour SAC's tanh-Gaussian MLP actor (`SACActor`) and
the uniform random policy.

Shipped actors are stored as plain `.npz` arrays (no pickle) under `datasets/policies/<env>/`, next to a
JSON sidecar that records how they were trained and how well they do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from sparse_offline_rl.data.project import POLICY_DIR, REPO_ROOT, policy_info
from sparse_offline_rl.errors import DatasetError

# POLICY_DIR, REPO_ROOT and policy_info live in data.project (loading reads the policies' reference
# scores); they stay importable from here, where they were before generation moved out of data.
__all__ = ["POLICY_DIR", "REPO_ROOT", "ActorPolicy", "Policy", "RandomPolicy", "SACActor", "actor_from_arrays",
           "actor_to_arrays", "load_checkpoint", "policy_info"]

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Policy(Protocol):
    """Maps a batch of observations (n, obs_dim) to a batch of actions (n, act_dim) in [-1, 1]."""

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class SACActor(nn.Module):
    """The behaviour SAC's actor: MLP -> (mean, log_std); actions are tanh(mean + std * noise). (IQL's
    actor is `algorithms.networks.GaussianActor`, a different network.)"""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2 * act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.net(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-probability (with the tanh correction)."""
        mean, log_std = self(obs)
        std = log_std.exp()
        pre = mean + std * torch.randn_like(mean)
        action = torch.tanh(pre)
        log_prob = (-0.5 * ((pre - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        log_prob = log_prob - (2 * (np.log(2) - pre - nn.functional.softplus(-2 * pre))).sum(-1)
        return action, log_prob


class ActorPolicy:
    """A trained actor acting stochastically, with noise from the caller's numpy generator.

    Noise comes from numpy (not torch's global RNG) so a rollout is reproducible from its seed alone.
    D4RL also collected its SAC datasets with the stochastic policy.
    """

    def __init__(self, actor: SACActor, deterministic: bool = False) -> None:
        self.actor = actor.eval()
        self.deterministic = deterministic

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mean, log_std = self.actor(torch.as_tensor(obs, dtype=torch.float32))
        mean, std = mean.numpy().astype(np.float64), np.exp(log_std.numpy().astype(np.float64))
        noise = rng.standard_normal(mean.shape)
        pre = mean if self.deterministic else mean + std * noise
        return np.tanh(pre).astype(np.float32)


class RandomPolicy:
    """Uniform actions in [-1, 1] (all three tasks have symmetric unit action bounds)."""

    def __init__(self, act_dim: int) -> None:
        self.act_dim = act_dim

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(obs.shape[0], self.act_dim)).astype(np.float32)


def actor_to_arrays(actor: SACActor) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()}


def actor_from_arrays(arrays: dict[str, np.ndarray], obs_dim: int, act_dim: int) -> SACActor:
    hidden = int(arrays["net.0.weight"].shape[0])
    actor = SACActor(obs_dim, act_dim, hidden)
    actor.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    return actor


def load_checkpoint(env: str, name: str, obs_dim: int, act_dim: int, policy_dir: Path = POLICY_DIR) -> ActorPolicy:
    """A shipped actor by checkpoint name (e.g. "step_050000"), as stored in `<env>/actors.npz`."""
    path = policy_dir / env / "actors.npz"
    if not path.exists():
        raise DatasetError(f"{path}: file missing; train with `python -m sparse_offline_rl.data.behavior train env={env}`")
    with np.load(path) as data:
        arrays = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(name + "/")}
    if not arrays:
        raise DatasetError(f"{path}: field '{name}' (checkpoint) not found")
    return ActorPolicy(actor_from_arrays(arrays, obs_dim, act_dim))
