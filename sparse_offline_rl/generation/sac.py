"""The compact online SAC that trains the behaviour policies: twin critics in one batched matmul, a
replay buffer in one memory-mapped file, and the update with an automatic entropy temperature.
`generation.behavior` runs it (stop, resume, checkpoints, snapshots)."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse_offline_rl.generation.policies import SACActor


class VectorLinear(nn.Module):
    """`n` independent linear layers applied in one batched matmul (the twin critics)."""

    def __init__(self, n: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n: int = 2) -> None:
        super().__init__()
        self.n = n
        self.net = nn.Sequential(
            VectorLinear(n, obs_dim + act_dim, hidden), nn.ReLU(),
            VectorLinear(n, hidden, hidden), nn.ReLU(),
            VectorLinear(n, hidden, 1),
        )

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(self.n, -1, -1)
        return self.net(x).squeeze(-1)  # (n, B)


class ReplayBuffer:
    """Transitions in one memory-mapped float32 file (obs, act, reward, next_obs, terminal per row).

    Rows are only ever appended, so the file written up to a checkpoint is exactly the buffer of that
    checkpoint; rows written after it are simply overwritten when training resumes."""

    def __init__(self, path: Path, capacity: int, obs_dim: int, act_dim: int) -> None:
        self.obs_dim, self.act_dim = obs_dim, act_dim
        width = 2 * obs_dim + act_dim + 2
        if path.exists():  # keep what is there; grow the file if training now runs longer
            capacity = max(capacity, path.stat().st_size // (width * 4))
            with open(path, "r+b") as f:
                f.truncate(capacity * width * 4)
            self.rows = np.memmap(path, dtype=np.float32, mode="r+", shape=(capacity, width))
        else:
            self.rows = np.memmap(path, dtype=np.float32, mode="w+", shape=(capacity, width))
        self.size = 0

    def add(self, obs: np.ndarray, act: np.ndarray, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        if self.size == len(self.rows):
            raise RuntimeError(f"replay buffer full ({self.size} rows): raise steps= to train longer")
        o, a = self.obs_dim, self.act_dim
        row = self.rows[self.size]
        row[:o], row[o:o + a], row[o + a], row[o + a + 1:2 * o + a + 1], row[-1] = obs, act, reward, next_obs, terminal
        self.size += 1

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        batch = torch.from_numpy(self.rows[np.sort(rng.integers(0, self.size, batch_size))])
        o, a = self.obs_dim, self.act_dim
        return batch[:, :o], batch[:, o:o + a], batch[:, o + a], batch[:, o + a + 1:2 * o + a + 1], batch[:, -1]


class SAC:
    """Twin critics, automatic entropy temperature (target -|A|), Polyak targets: SB3 / rl-zoo's MuJoCo
    settings, with this project's tanh-Gaussian actor (log-std clamped to [-5, 2])."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, lr: float, gamma: float, tau: float) -> None:
        self.actor = SACActor(obs_dim, act_dim, hidden)
        self.critic = TwinCritic(obs_dim, act_dim, hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=lr, fused=True)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=True)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=lr)
        self.target_entropy, self.gamma, self.tau = -float(act_dim), gamma, tau

    def update(self, o: torch.Tensor, a: torch.Tensor, r: torch.Tensor, no: torch.Tensor, d: torch.Tensor) -> None:
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            na, nlogp = self.actor.sample(no)
            target = r + self.gamma * (1 - d) * (self.critic_target(no, na).min(0).values - alpha * nlogp)
        critic_loss = ((self.critic(o, a) - target) ** 2).mean(1).sum()
        self.opt_critic.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.opt_critic.step()

        self.critic.requires_grad_(False)  # the actor loss differentiates through Q into actions only
        pa, logp = self.actor.sample(o)
        actor_loss = (alpha * logp - self.critic(o, pa).min(0).values).mean()
        self.opt_actor.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.opt_actor.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.opt_alpha.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.opt_alpha.step()
        with torch.no_grad():
            tp, p = list(self.critic_target.parameters()), list(self.critic.parameters())
            torch._foreach_mul_(tp, 1 - self.tau)
            torch._foreach_add_(tp, p, alpha=self.tau)

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def state_dict(self) -> dict[str, Any]:
        return {**{k: m.state_dict() for k, m in self.modules().items()}, "log_alpha": self.log_alpha.detach().clone(),
                "opt_actor": self.opt_actor.state_dict(), "opt_critic": self.opt_critic.state_dict(),
                "opt_alpha": self.opt_alpha.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for k in ("opt_actor", "opt_critic", "opt_alpha"):
            if k in state:
                getattr(self, k).load_state_dict(state[k])

    def compact_arrays(self) -> dict[str, np.ndarray]:
        """Half-precision networks and temperature: what a committed snapshot needs to resume."""
        out = {f"{k}/{n}": v.detach().numpy().astype(np.float16)
               for k in ("actor", "critic") for n, v in self.modules()[k].state_dict().items()}
        out["log_alpha"] = self.log_alpha.detach().numpy().astype(np.float32)
        return out

    def load_compact(self, arrays: dict[str, np.ndarray]) -> None:
        for k in ("actor", "critic"):
            self.modules()[k].load_state_dict(
                {n[len(k) + 1:]: torch.as_tensor(v.astype(np.float32)) for n, v in arrays.items() if n.startswith(k + "/")})
        self.critic_target.load_state_dict(self.critic.state_dict())
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(arrays["log_alpha"]))
