"""Fidelity of a compressed agent to the trained one it came from: the reward `compress` maximises.

Offline, no environment step. The rows: `rows` transitions (s_i, a_i) of the run's held-out split
(its training split when it has none), drawn without replacement by a generator seeded from the run
seed and `Stream.COMPRESS_ROWS` (all of them when the split is smaller), observations normalised as
the agent sees them. pi, Q are the trained actor and critic, pi~, Q~ the compressed ones (Q~ = Q
when the critic is not compressed). Per compressed network, one dimensionless term:

  actor:   E_act = sum_ij (pi~(s_i)_j - pi(s_i)_j)^2 / sum_ij (pi(s_i)_j - mean_i pi(s_i)_j)^2
           (the action error relative to the trained actions' spread: 0 exact, 1 as far off as
           always taking the trained mean action), plus, when the algorithm has a critic,
           E_val = mean_i max(0, Q(s_i, pi(s_i)) - Q(s_i, pi~(s_i))) / std_i Q(s_i, pi(s_i))
           (the value the trained critic loses on the compressed actions, in units of the spread of
           the trained policy's values over the rows; Q the minimum over a twin critic's heads; a
           row where the compressed action scores higher counts 0, so gains on some states never
           offset losses on others and the critic's own errors are not exploited);
  critic:  E_crit = mean_hi (Q~_h(s_i, a_i) - Q_h(s_i, a_i))^2 / var_hi Q_h(s_i, a_i)
           (over every head h and row, on the dataset's actions).

reward = -(sum of the terms), 0 for the trained networks themselves. Each spread is floored at 1e-8
(a constant trained output: the error is then in absolute units). Dimensionless, so the allocator's
Lagrangian (reward over |reward at its start| minus the multipliers times the relative violations)
compares like with like.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

from sparse_offline_rl.data.buffer import Batch, ObsNormalizer, TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.evaluation.diagnostics import critic_heads, fixed_rows
from sparse_offline_rl.sparse.masks import prunable_parameters

#: The networks whose fidelity is defined (the deployed policy, and the critic that judges it).
NETWORKS = ("actor", "critic")
SPREAD_FLOOR = 1e-8


def fidelity_rows(train: OfflineDataset, val: OfflineDataset | None, normalizer: ObsNormalizer, rows: int,
                  seed: int, device: str = "cpu") -> tuple[Batch, str]:
    """The rows the reward is measured on (see the module docstring) and the split they come from;
    `seed`: stream_seed(run seed, Stream.COMPRESS_ROWS)."""
    split, data = ("val", val) if val is not None and len(val) > 0 else ("train", train)
    buffer = TransitionBuffer(data, device=device, normalizer=normalizer)
    return buffer.gather(fixed_rows(len(buffer), rows, seed).to(buffer.device)), split


def _relative_mse(got: torch.Tensor, want: torch.Tensor, spread: torch.Tensor) -> float:
    return float((got - want).double().pow(2).sum() / spread.double().pow(2).sum().clamp_min(SPREAD_FLOOR))


class Fidelity:
    """reward(masks) of the compressed `networks` of `reference` (a trained algorithm, never changed):
    the masks are applied to a private copy of it, the probe."""

    def __init__(self, reference: Any, rows: Batch, networks: Sequence[str]) -> None:
        unknown = [n for n in networks if n not in NETWORKS]
        if unknown:
            raise ValueError(f"networks={','.join(networks)}: fidelity is defined for {', '.join(NETWORKS)} only")
        self.rows, self.networks = rows, list(networks)
        self.critic = reference.networks().get("critic")
        if "critic" in self.networks and self.critic is None:
            raise ValueError("networks=critic: this algorithm has no network named 'critic'")
        with torch.no_grad():
            self.actions = reference.act(rows.observations)
            self.q_policy = self.min_q(self.critic, self.actions) if self.critic is not None else None
            self.q_data = critic_heads(self.critic(rows.observations, rows.actions)) if self.critic is not None else None
        self.probe = copy.deepcopy(reference)
        self.trained = {n: {p: w.detach().clone() for p, w in prunable_parameters(reference.networks()[n]).items()}
                        for n in self.networks}

    def min_q(self, critic: Any, actions: torch.Tensor) -> torch.Tensor:
        return critic_heads(critic(self.rows.observations, actions)).min(0).values

    @torch.no_grad()
    def terms(self, algo: Any) -> dict[str, float]:
        """The terms of `algo`'s networks against the trained ones (the module docstring's formulas)."""
        out: dict[str, float] = {}
        if "actor" in self.networks:
            actions = algo.act(self.rows.observations)
            out["actor_action"] = _relative_mse(actions, self.actions, self.actions - self.actions.mean(0))
            if self.q_policy is not None:
                lost = (self.q_policy - self.min_q(self.critic, actions)).clamp_min(0).double().mean()
                out["actor_value"] = float(lost / self.q_policy.double().std().clamp_min(SPREAD_FLOOR))
        if "critic" in self.networks:
            q = critic_heads(algo.networks()["critic"](self.rows.observations, self.rows.actions))
            out["critic_value"] = _relative_mse(q, self.q_data, self.q_data - self.q_data.mean())
        return out

    def reward_of(self, algo: Any) -> float:
        return -sum(self.terms(algo).values())

    @torch.no_grad()
    def __call__(self, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> float:
        """The reward of the trained networks with `masks` applied (pruned weights zeroed)."""
        nets = self.probe.networks()
        for net, layers in self.trained.items():
            weights = prunable_parameters(nets[net])
            for param, trained in layers.items():
                weights[param].copy_(trained * masks[net][param].to(trained.dtype))
        return self.reward_of(self.probe)


__all__ = ["Fidelity", "NETWORKS", "fidelity_rows"]
