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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparse_offline_rl.algorithms.base import ProblemSpec, collect_state, register_algorithm, restore_state
from sparse_offline_rl.algorithms.networks import (
    OPTIMIZERS,
    NoiseSource,
    Scalar,
    TanhGaussianActor,
    TwinQ,
    adam,
    cql_reference_init,
    frozen_copy,
    frozen_params,
    make_optimizer,
    member_mean,
    member_rows,
    polyak_update,
)
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
    stackable = True  # losses per member (member_mean): training.stacked may train several in one object

    Config = CQLConfig

    def __init__(self, config: CQLConfig, spec: ProblemSpec) -> None:
        self.config = config
        self.members = spec.members  # > 1: stacked agents, each loss below is one per member (shape (members,))
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
        """SAC actor loss with the critic frozen; also returns log pi for the temperature loss."""
        action, log_pi = self.actor.sample(b.observations, self.noise)
        with frozen_params(self.critic):
            q = self.critic(b.observations, action).min(0).values
        alpha = member_rows(self.log_alpha().exp().detach(), log_pi, self.members)
        return member_mean(alpha * log_pi - q, self.members), log_pi.detach()

    def alpha_loss(self, log_pi: torch.Tensor) -> torch.Tensor:
        log_alpha = member_rows(self.log_alpha(), log_pi, self.members)
        return -member_mean(log_alpha * (log_pi + self.target_entropy), self.members)

    def critic_loss(self, b: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, n, k = self.config, self.config.cql_n_actions, self.members
        batch, act_dim = b.actions.shape
        batch //= k  # rows per member: stacked members' rows come one member after the other

        def per_member(*parts: torch.Tensor) -> torch.Tensor:
            """Row blocks (each member-major) joined member by member, keeping the rows member-major."""
            return torch.cat([part.view(k, -1, *part.shape[1:]) for part in parts], 1).flatten(0, 1)

        with torch.no_grad():
            next_action, next_log_pi = self.actor.sample(b.next_observations, self.noise)
            next_q = self.critic_target(b.next_observations, next_action).min(0).values
            if cfg.backup_entropy:
                next_q = next_q - member_rows(self.log_alpha().exp(), next_log_pi, k) * next_log_pi
            target = b.rewards + cfg.discount * (1.0 - b.dones) * next_q

            # Out-of-distribution proposals, n per state: uniform, pi(.|s) and pi(.|s'), in that order.
            obs_rep = b.observations.repeat_interleave(n, 0)  # row b * n + j is state b
            rand_a = self.noise.uniform((k * batch * n, act_dim), -self.max_action, self.max_action, like=b.actions)
            # The actor runs once per state (not per proposal): n samples of each of the 2B states.
            pol_a, pol_log_pi = self.actor.sample(per_member(b.observations, b.next_observations), self.noise, n=n)
            # Log-densities of the proposals: uniform on [-m, m]^|A|; the actor's log pi is that of
            # the tanh sample, so the scaling by max_action (m) adds -|A| log m.
            rand_log_mu = torch.full((k * batch * n,), -act_dim * math.log(2.0 * self.max_action), device=b.actions.device)
            log_mu = per_member(rand_log_mu, pol_log_pi - act_dim * math.log(self.max_action)).view(k, 3, batch, n)

        # One critic forward for the data actions and all 3 * B * n proposals (all scored at s).
        q_all = self.critic(per_member(b.observations, obs_rep, obs_rep, obs_rep),
                            per_member(b.actions, rand_a, pol_a)).view(2, k, -1)  # (2, K, B + 3 * B * n)
        q_data, q_ood = q_all[:, :, :batch], q_all[:, :, batch:].view(2, k, 3, batch, n)
        td_loss = (q_data - target.view(k, batch)).pow(2).mean(-1).sum(0)  # (K,): sum over the critics of each one's MSE

        q_ood = q_ood - log_mu  # importance weights for the logsumexp
        t = cfg.cql_temperature
        logsumexp = t * torch.logsumexp(q_ood / t, dim=(2, 4))  # (2, K, B): over the 3 * n proposals
        gap = (logsumexp - q_data).mean(-1)  # (2, K): how far above the data the OOD values sit

        if cfg.lagrange_threshold is None:
            cql_loss = cfg.cql_alpha * gap.sum(0)
            alpha_prime_loss = None
        else:
            alpha_prime = self.log_alpha_prime().exp().clamp(0.0, 1e6)
            cql_loss = alpha_prime.detach() * cfg.cql_alpha * (gap - cfg.lagrange_threshold).sum(0)
            # The multiplier grows while the gap exceeds the threshold (dual ascent, CORL's form).
            alpha_prime_loss = -alpha_prime * cfg.cql_alpha * (gap.detach() - cfg.lagrange_threshold).sum(0) * 0.5
        info = {"td_loss": td_loss.detach(), "cql_gap": gap.detach().mean(0), "q_data": q_data.detach().mean((0, 2))}
        if alpha_prime_loss is not None:
            info["alpha_prime_loss"] = alpha_prime_loss
        # One value per member; a single run's are scalars, as the protocol's metrics are.
        shape = () if k == 1 else (k,)
        return (td_loss + cql_loss).reshape(shape), {name: v.reshape(shape) for name, v in info.items()}

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

        # Stacked members: each loss is (members,), and its sum gives each member its own gradient.
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
