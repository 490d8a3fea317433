"""Conservative Q-Learning (Kumar et al., 2020) on a SAC backbone: CORL's D4RL MuJoCo settings,
with d3rlpy's actor learning rate (see `CQLConfig.actor_lr`).

Critic loss per Q-network i (both summed):
    TD:  (Q_i(s, a) - [r + gamma * (1 - d) * min_j Q'_j(s', a'~pi(s'))])^2
    CQL: cql_alpha * ( logsumexp_{a~mu} [Q_i(s, a) - log mu(a)] - Q_i(s, a_data) )
where the importance-sampled logsumexp pools `cql_n_actions` actions from each of three proposals
mu: uniform over the action box, the current policy at s and the current policy at s' (all scored
at s, as in the original CQL code and CORL). Actor: SAC, alpha * log pi(a|s) - min_j Q_j(s, a), with
alpha tuned towards entropy -|A|. Per step (CORL order): losses on the current networks, then the
alpha, actor and critic steps, then the Polyak update of the target critic.

Stacked agents (training.stacked): the losses are the single agent's. Batch means are taken through
`self.agents` (networks.AgentRows): for K stacked agents, each agent's own mean over its rows, so
each loss is (K,); row blocks are joined agent by agent (`agents.cat`), the temperature is lined up
with each agent's rows (`agents.align`) and, for the logsumexp over each state's proposals,
`agents.split` puts a K dimension before the rows (a shape (..., B) in the docstrings below is then
(..., K, B)). The networks, the temperature and the multiplier are stacked by sparse.stacked_layers,
the noise by networks.StackedNoise; the update backpropagates the sum of the K losses, so each
agent gets exactly its own gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparse_offline_rl.algorithms.base import ProblemSpec, collect_state, register_algorithm, restore_state
from sparse_offline_rl.algorithms.networks import (
    AgentRows,
    NoiseSource,
    Scalar,
    TanhGaussianActor,
    TwinQ,
    cql_reference_init,
    frozen_copy,
    frozen_params,
    polyak_update,
)
from sparse_offline_rl.algorithms.optimizers import OPTIMIZERS, adam, make_optimizer
from sparse_offline_rl.checks import within
from sparse_offline_rl.data.buffer import Batch


@dataclass
class CQLConfig:
    hidden: list[int] = within("[1, inf)", default_factory=lambda: [256, 256, 256])  # actor and each critic
    # d3rlpy's default and the CQL paper's Gym setting; CORL uses 3e-5 (set actor_lr=3e-5 to match it).
    # Chosen for short CPU runs; its effect on sparse actors has not been measured here.
    actor_lr: float = within("(0, inf)", default=1e-4)
    critic_lr: float = within("(0, inf)", default=3e-4)
    weight_decay: float = within("[0, inf)", default=0.0)  # LAMB's decoupled decay of weight matrices (optim=lamb only)
    # SAC temperature; None: the actor's lr, as CORL does (its temperature optimizer uses policy_lr).
    alpha_lr: float | None = within("(0, inf)", default=None)
    discount: float = within("(0, 1]", default=0.99)
    tau: float = within("(0, 1]", default=0.005)  # Polyak rate of the target critic
    init_log_alpha: float = 0.0  # SAC temperature starts at 1
    target_entropy: float | None = None  # None: -|A|
    # CORL's value for MuJoCo (its scores are the reference table); d3rlpy uses 5.0.
    cql_alpha: float = within("[0, inf)", default=10.0)
    cql_n_actions: int = within("[1, inf)", default=10)  # actions per proposal (uniform, pi(s), pi(s')) in the logsumexp
    cql_temperature: float = within("(0, inf)", default=1.0)
    # Lagrange variant: when set, cql_alpha is scaled by a learned multiplier that drives the
    # penalty (logsumexp - Q(s, a_data)) towards this threshold; null keeps the fixed weight. The
    # multiplier learns at the critic's lr (CORL).
    lagrange_threshold: float | None = None
    backup_entropy: bool = False  # subtract alpha * log pi(a'|s') in the TD target (off in CORL)
    # CORL's initialisation: output layers of actor and critics at gain 1e-2, critics orthogonal
    # (networks.cql_reference_init). Off by default: output layers 100x smaller than the rest lose every
    # weight to pruners that rank weights across layers (magnitude and GraSP at 95%, global scope:
    # layer collapse). Fine for dense runs and scope=layer / erk.
    reference_init: bool = False
    # Actor log-std = multiplier * head + offset, both learned, starting here (CORL: 1 and -1); null: none.
    log_std_multiplier: float | None = 1.0
    log_std_offset: float | None = -1.0
    normalize_obs: bool = True
    normalize_reward: bool = False


@register_algorithm("cql")
class CQL:
    supported_optimizers = OPTIMIZERS  # its networks' optimizers come from make_optimizer(..., spec.optim)
    stackable = True  # batch means per agent (self.agents): training.stacked may train several in one object

    Config = CQLConfig

    def __init__(self, config: CQLConfig, spec: ProblemSpec) -> None:
        self.config = config
        self.agents = AgentRows(spec.members)  # K > 1 stacked agents: each loss below is then (K,)
        self.act_dim = spec.act_dim
        self.max_action = spec.max_action
        dev = torch.device(spec.device)
        self.actor = TanhGaussianActor(spec.obs_dim, spec.act_dim, config.hidden, spec.max_action,
                                       config.log_std_multiplier, config.log_std_offset).to(dev)
        self.critic = TwinQ(spec.obs_dim, spec.act_dim, config.hidden).to(dev)
        if config.reference_init:
            cql_reference_init(self.actor.trunk, orthogonal=False)
            for q in self.critic.qs:
                cql_reference_init(q, orthogonal=True)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = Scalar(config.init_log_alpha).to(dev)
        self.actor_opt = make_optimizer(self.actor, config.actor_lr, spec.optim, config.weight_decay)
        self.critic_opt = make_optimizer(self.critic, config.critic_lr, spec.optim, config.weight_decay)
        # The temperature and the Lagrange multiplier are single numbers, to which LAMB would give
        # Adam's step anyway (no trust ratio below 2-D): they keep Adam, without weight decay.
        self.alpha_opt = adam(self.log_alpha, config.actor_lr if config.alpha_lr is None else config.alpha_lr)
        self.target_entropy = -float(spec.act_dim) if config.target_entropy is None else config.target_entropy
        # CORL initialises the Lagrange multiplier's log at 1.0.
        self.log_alpha_prime = Scalar(1.0).to(dev)
        self.alpha_prime_opt = adam(self.log_alpha_prime, config.critic_lr)
        self.noise = NoiseSource(dev)  # policy samples and uniform proposals, checkpointed

    # -- protocol -----------------------------------------------------------------------------
    def networks(self):
        return {"actor": self.actor, "critic": self.critic}

    def target_networks(self):
        return {"critic": self.critic_target}

    def optimizers(self):
        opts = {"actor": self.actor_opt, "critic": self.critic_opt, "alpha": self.alpha_opt}
        if self.config.lagrange_threshold is not None:
            opts["alpha_prime"] = self.alpha_prime_opt
        return opts

    # -- losses (each touches only the network it trains) --------------------------------------
    def actor_loss(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC's actor loss E[alpha * log pi(a|s) - min_i Q_i(s, a)], a ~ pi(.|s), with the critic
        frozen; also returns log pi for the temperature loss."""
        action, log_pi = self.actor.sample(b.observations, self.noise)
        with frozen_params(self.critic):
            q = self.critic(b.observations, action).min(0).values
        alpha = self.agents.align(self.log_alpha().exp().detach(), log_pi)
        return self.agents.mean(alpha * log_pi - q), log_pi.detach()

    def alpha_loss(self, log_pi: torch.Tensor) -> torch.Tensor:
        """SAC's temperature loss: -E[log alpha * (log pi(a|s) + target entropy)]."""
        log_alpha = self.agents.align(self.log_alpha(), log_pi)
        return -self.agents.mean(log_alpha * (log_pi + self.target_entropy))

    @torch.no_grad()
    def td_target(self, b: Batch) -> torch.Tensor:
        """r + gamma * (1 - d) * min_j Q'_j(s', a'), a' ~ pi(.|s') (minus alpha * log pi(a'|s') with
        backup_entropy)."""
        next_action, next_log_pi = self.actor.sample(b.next_observations, self.noise)
        next_q = self.critic_target(b.next_observations, next_action).min(0).values
        if self.config.backup_entropy:
            next_q = next_q - self.agents.align(self.log_alpha().exp(), next_log_pi) * next_log_pi
        return b.rewards + self.config.discount * (1.0 - b.dones) * next_q

    @torch.no_grad()
    def proposals(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The out-of-distribution actions, n per state from each proposal mu (uniform, pi(.|s),
        pi(.|s'), in that order; 3 * B * n rows, row j * B * n + b * n + i for proposal j and state
        b), and their log-densities log mu(a), shaped (3, B, n)."""
        n, act_dim, m = self.config.cql_n_actions, self.act_dim, self.max_action
        rows = b.actions.shape[0] * n
        uniform = self.noise.uniform((rows, act_dim), -m, m, like=b.actions)
        # The actor runs once per state (not per proposal): n samples of each of the 2B states.
        policy, policy_log_pi = self.actor.sample(self.agents.cat(b.observations, b.next_observations), self.noise, n=n)
        # Uniform on [-m, m]^|A|; the actor's log pi is that of the tanh sample, so the scaling by
        # max_action (m) adds -|A| log m.
        uniform_log_mu = torch.full((rows,), -act_dim * math.log(2.0 * m), device=b.actions.device)
        log_mu = self.agents.cat(uniform_log_mu, policy_log_pi - act_dim * math.log(m))
        return self.agents.cat(uniform, policy), self.agents.split(log_mu).unflatten(-1, (3, -1, n))

    def q_values(self, b: Batch, proposals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_i(s, a) of the data actions, (2, B), and of the proposals (all scored at s), (2, 3, B, n):
        one critic forward for both."""
        n = self.config.cql_n_actions
        obs_rep = b.observations.repeat_interleave(n, 0)  # row b * n + i is state b
        q = self.critic(self.agents.cat(b.observations, obs_rep, obs_rep, obs_rep), self.agents.cat(b.actions, proposals))
        q = self.agents.split(q)
        batch = q.shape[-1] // (1 + 3 * n)
        return q[..., :batch], q[..., batch:].unflatten(-1, (3, batch, n))

    def critic_loss(self, b: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Kumar et al. 2020, Eq. 4 (CQL(H)) with the logsumexp importance-sampled (their appendix F),
        summed over the twin critics: the TD error (without the paper's 1/2, as CORL) plus cql_alpha
        times the gap."""
        t = self.config.cql_temperature
        target = self.agents.split(self.td_target(b))
        proposals, log_mu = self.proposals(b)
        q_data, q_ood = self.q_values(b, proposals)
        td_loss = (q_data - target).pow(2).mean(-1).sum(0)  # sum over the critics of each one's MSE
        # logsumexp over the 3 * n proposals of each state, each weighted by 1 / mu(a).
        logsumexp = t * torch.logsumexp((q_ood - log_mu) / t, dim=(-3, -1))  # (2, B)
        gap = (logsumexp - q_data).mean(-1)  # (2,): how far above the data the OOD values sit
        cql_loss, alpha_prime_loss = self.conservative_penalty(gap)
        info = {"td_loss": td_loss.detach(), "cql_gap": gap.detach().mean(0), "q_data": q_data.detach().mean((0, -1))}
        if alpha_prime_loss is not None:
            info["alpha_prime_loss"] = alpha_prime_loss
        return td_loss + cql_loss, info

    def conservative_penalty(self, gap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cql_alpha * the critics' summed gap; in the Lagrange variant scaled by the multiplier
        alpha', whose own loss (returned, else None) grows it while the gap exceeds the threshold
        (dual ascent, CORL's form)."""
        cfg = self.config
        if cfg.lagrange_threshold is None:
            return cfg.cql_alpha * gap.sum(0), None
        alpha_prime = self.log_alpha_prime().exp().clamp(0.0, 1e6)
        cql_loss = alpha_prime.detach() * cfg.cql_alpha * (gap - cfg.lagrange_threshold).sum(0)
        return cql_loss, -alpha_prime * cfg.cql_alpha * (gap.detach() - cfg.lagrange_threshold).sum(0) * 0.5

    def saliency_loss(self, network: str, batch: Batch) -> torch.Tensor:
        if network == "critic":
            return self.critic_loss(batch)[0].sum()
        if network == "actor":
            return self.actor_loss(batch)[0].sum()
        raise KeyError(f"CQL has no network '{network}'; networks: actor, critic")

    # -- one gradient step ---------------------------------------------------------------------
    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        # All losses are computed on the networks as they are at the start of the step (CORL).
        a_loss, log_pi = self.actor_loss(b)
        alpha_loss = self.alpha_loss(log_pi)
        q_loss, info = self.critic_loss(b)
        alpha_prime_loss = info.pop("alpha_prime_loss", None)

        # Stacked agents: each loss is (K,), and its sum gives each agent its own gradient.
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.sum().backward()
        self.alpha_opt.step()

        self.actor_opt.zero_grad(set_to_none=True)
        a_loss.sum().backward()
        self.actor_opt.step()

        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.sum().backward()
        self.critic_opt.step()

        if alpha_prime_loss is not None:
            self.alpha_prime_opt.zero_grad(set_to_none=True)
            alpha_prime_loss.sum().backward()
            self.alpha_prime_opt.step()
            info["alpha_prime"] = self.log_alpha_prime().detach().exp()

        polyak_update(self.critic_target, self.critic, self.config.tau)
        return {
            "critic_loss": q_loss.detach(),
            "actor_loss": a_loss.detach(),
            "alpha": self.log_alpha().detach().exp(),
            **info,
        }

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)

    _STATE = [
        "actor", "critic", "critic_target", "log_alpha", "log_alpha_prime",
        "actor_opt", "critic_opt", "alpha_opt", "alpha_prime_opt", "noise",
    ]

    def state_dict(self):
        return collect_state(self, self._STATE)

    def load_state_dict(self, state):
        restore_state(self, state)
