"""Networks shared by the built-in algorithms: plain Linear MLPs, so pruning sees every weight.

The Linear layers `mlp` builds are marked eligible for compressed sparse kernels
(`sparse.linear.allow_sparse_kernels`): after pruning, the trainer may replace them by
SparseLinear layers where that is faster. So a network built from `mlp` (as every network here is,
and a plug-in's that uses them) must only call its layers, never read their `weight` after pruning.

Stacked agents (training.stacked) live here and in sparse.stacked_layers, not in the losses: the
stacked layers compute K agents' networks as one on a batch of K agents' rows (agent-major); a
network's own per-agent parameter (a log-std) is lined up with the rows by the network
(`per_agent_rows`, with the count K that stack_network writes into its `members`); `StackedNoise`
gives each agent its own noise; and `AgentRows` is all a loss written for one agent needs to
become a stacked one (each agent's batch means, row blocks joined agent by agent).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterator, Sequence

import torch
from torch import nn

from sparse_offline_rl.algorithms.optimizers import (  # noqa: F401  (their home before optimizers.py)
    OPTIMIZERS,
    FusedAdam,
    Lamb,
    adam,
    lamb_groups,
    make_optimizer,
)
from sparse_offline_rl.sparse.linear import allow_sparse_kernels


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        # In place: the Linear before it does not keep its output for backward, and the
        # activation is not allocated anew each forward.
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True) if activation is nn.ReLU else activation()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return allow_sparse_kernels(nn.Sequential(*layers))


@torch.no_grad()
def cql_reference_init(net: nn.Sequential, orthogonal: bool) -> nn.Sequential:
    """The CQL initialisation of CORL (from the original CQL code): the output layer scaled down to gain
    1e-2 (orthogonal, else Xavier-uniform) with a zero bias; with `orthogonal`, hidden layers orthogonal
    with gain sqrt(2) and zero biases, else PyTorch's default for them."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    if orthogonal:
        for layer in linears[:-1]:
            nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
            nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(linears[-1].weight, gain=1e-2)
    else:
        nn.init.xavier_uniform_(linears[-1].weight, gain=1e-2)
    nn.init.zeros_(linears[-1].bias)
    return net


class TwinQ(nn.Module):
    """Independent Q-networks over (obs, action); `forward` returns (n_critics, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], n_critics: int = 2) -> None:
        super().__init__()
        self.qs = nn.ModuleList(mlp(obs_dim + act_dim, 1, hidden) for _ in range(n_critics))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([q(x).squeeze(-1) for q in self.qs])

    def q1(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The first critic only, (B,): TD3's actor is trained against Q1 alone."""
        return self.qs[0](torch.cat([obs, action], dim=-1)).squeeze(-1)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class DeterministicActor(nn.Module):
    """TD3-style actor: tanh-squashed output scaled to the action bound."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], max_action: float) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.max_action


class GaussianActor(nn.Module):
    """IQL's actor: Normal with tanh-squashed mean and a state-independent, clamped log-std."""

    # The stacked agents' count K (sparse.stacked_layers.stack_network sets it, by this name): log_std is
    # then (K, act_dim), each agent's lined up with its rows.
    members = 1

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], max_action: float) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.max_action = max_action

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.max_action

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Sum over action dims of the Normal log-density (written out: faster than torch.distributions)."""
        mean = self.mean(obs)
        log_std = per_agent_rows(self.log_std, mean, self.members).clamp(-20.0, 2.0)
        z = (action - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean(obs)


class TanhGaussianActor(nn.Module):
    """SAC/CQL actor: state-dependent Normal squashed by tanh, with the change-of-variables log-prob.

    The log-std is `multiplier * head + offset` before clamping, both learned scalars (CORL's CQL
    actor, which starts them at 1 and -1: a smaller initial std); None keeps the plain head."""

    members = 1  # stacked agents' count K (set by sparse.stacked_layers.stack_network): the two scalars are then (K,)

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], max_action: float,
                 log_std_multiplier: float | None = None, log_std_offset: float | None = None) -> None:
        super().__init__()
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden)
        self.act_dim = act_dim
        self.max_action = max_action
        self.log_std_multiplier = None if log_std_multiplier is None else Scalar(log_std_multiplier)
        self.log_std_offset = None if log_std_offset is None else Scalar(log_std_offset)

    def _mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.trunk(obs).split(self.act_dim, dim=-1)
        if self.log_std_multiplier is not None:
            log_std = per_agent_rows(self.log_std_multiplier(), log_std, self.members) * log_std
        if self.log_std_offset is not None:
            log_std = log_std + per_agent_rows(self.log_std_offset(), log_std, self.members)
        return mean, log_std.clamp(-20.0, 2.0)

    def sample(self, obs: torch.Tensor, noise: "NoiseSource | StackedNoise | None" = None,
               n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-probability (summed over action dims), with the noise
        drawn from `noise` (None: torch's global RNG).

        `n > 1` draws n actions per state, rows ordered like `obs.repeat_interleave(n, 0)` (same
        noise stream as sampling that repeated batch) with the network run once per state."""
        mean, log_std = self._mean_log_std(obs)
        if n > 1:
            mean, log_std = mean.repeat_interleave(n, 0), log_std.repeat_interleave(n, 0)
        std = log_std.exp()
        if noise is None:
            noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        else:
            noise = noise.randn(mean.shape, like=mean)
        pre_tanh = mean + std * noise
        action = torch.tanh(pre_tanh)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = 2 * (log 2 - u - softplus(-2u)), numerically stable form
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - nn.functional.softplus(-2 * pre_tanh))).sum(-1)
        return action * self.max_action, log_prob

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self._mean_log_std(obs)
        return torch.tanh(mean) * self.max_action


def per_agent_mean(x: torch.Tensor, agents: int, dim: int = -1) -> torch.Tensor:
    """Each stacked agent's mean of `x`, whose dimension `dim` holds the agents' rows agent-major
    (agents * B of them, see `ProblemSpec.members`): shape (agents,). A stacked loss is the sum of
    these, so each agent gets exactly its own gradient (a plain mean over all rows would scale it
    by 1 / agents, which Adam's eps does not ignore). One agent: exactly `x.mean()`, a 0-dim
    tensor, so a single run computes what it always did."""
    if agents == 1:
        return x.mean()
    dim = dim % x.dim()
    return x.unflatten(dim, (agents, -1)).movedim(dim, 0).flatten(1).mean(1)


def per_agent_rows(value: torch.Tensor, rows: torch.Tensor, agents: int) -> torch.Tensor:
    """A per-agent value lined up with `rows` ((agents * B, ...), agent-major), for elementwise
    use. Stacked, `value` is (agents, *shape) and each agent's copy is repeated over its B rows
    (shape (agents * B, *shape, 1, ...) to broadcast against `rows`); a single run's value is
    returned as it is. `agents` is a plain int (a module's `members`), so torch.fx can still trace
    the networks that call this."""
    if agents == 1:
        return value
    repeated = value.repeat_interleave(rows.shape[0] // agents, dim=0)
    return repeated.view(*repeated.shape, *[1] * (rows.dim() - value.dim()))


# The names the README gives plug-ins (from before stacked agents and ensemble members were told apart).
member_mean = per_agent_mean
member_rows = per_agent_rows


class AgentRows:
    """How the K stacked agents of one algorithm object share its batches, for losses written for
    one agent (`ProblemSpec.members`, training.stacked): each agent's B rows in turn,
    ((K * B, ...), agent-major). A loss takes its batch means with `mean` (each agent's own),
    joins row blocks with `cat` and lines a per-agent learned number up with rows with `align`;
    `split` shows the agents as a dimension (K, B) before the rows, for reductions over a part of
    an agent's rows (CQL's proposals). With K = 1 each is the plain single-agent operation (and
    `split` does nothing), so a single run computes exactly what the paper's loss does."""

    def __init__(self, agents: int = 1) -> None:
        self.count = agents

    def mean(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """E over the batch, per agent: () for one agent, (K,) stacked (`per_agent_mean`)."""
        return per_agent_mean(x, self.count, dim)

    def align(self, value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A per-agent value (a temperature) lined up with `rows` (`per_agent_rows`)."""
        return per_agent_rows(value, rows, self.count)

    def cat(self, *parts: torch.Tensor) -> torch.Tensor:
        """Row blocks (each agent-major) joined agent by agent: `torch.cat(parts)` for one agent."""
        if self.count == 1:
            return torch.cat(parts)
        return torch.cat([part.view(self.count, -1, *part.shape[1:]) for part in parts], 1).flatten(0, 1)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """The last dimension (agent-major rows) as (K, rows per agent); one agent: `x` itself."""
        return x if self.count == 1 else x.unflatten(-1, (self.count, -1))


class Scalar(nn.Module):
    """One learnable number (e.g. SAC's log-alpha) as a module, so it checkpoints like a network."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.value


class NoiseSource:
    """A torch.Generator owned by an algorithm, for its sampling noise (target smoothing, policy samples).

    Seeded from the global RNG at construction, so `torch.manual_seed` before building the algorithm
    fixes it; its state is checkpointed (`state_dict`) so a resumed run draws the very same noise.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))

    def randn(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=like.device, dtype=like.dtype)

    def uniform(self, shape: Sequence[int], low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(tuple(shape), generator=self.generator, device=like.device, dtype=like.dtype)
        return low + (high - low) * u

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class StackedNoise:
    """The NoiseSources of stacked agents as one: a draw of shape (K * B, ...) is each agent's own
    draw of (B, ...) from its own generator, in agent order, so every agent sees the noise its
    separate run would. The generators are the agents' objects (not copies)."""

    def __init__(self, sources: Sequence[NoiseSource]) -> None:
        self.sources = list(sources)

    def _draw(self, shape: Sequence[int], draw) -> torch.Tensor:
        rows, *rest = shape
        per_agent = (rows // len(self.sources), *rest)
        return torch.cat([draw(per_agent, s) for s in self.sources])

    def randn(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        return self._draw(shape, lambda s, src: src.randn(s, like))

    def uniform(self, shape: Sequence[int], low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        return self._draw(shape, lambda s, src: src.uniform(s, low, high, like))


@contextlib.contextmanager
def frozen_params(*modules: nn.Module) -> Iterator[None]:
    """Use `modules` as fixed functions: gradients still flow through them to their inputs (e.g. the
    actor's action), but none reach or accumulate in their own parameters."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def frozen_copy(module: nn.Module) -> nn.Module:
    """Target network: a copy that never receives gradients."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in one fused call over all parameters."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
