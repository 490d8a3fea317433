"""Implicit Q-Learning (Kostrikov et al., "Offline Reinforcement Learning with Implicit Q-Learning",
2021; ICLR 2022), reference settings of CORL for D4RL MuJoCo.

Update order per step: value (expectile regression on min target-Q, Eq. 5), twin Q (to
r + gamma * V(s'), Eq. 6, with V as it was before this step's value update, as in CORL), Polyak
target update, then advantage-weighted actor (Eq. 7).

Stacked agents (training.stacked): the losses are the single agent's; every batch mean is taken
through `self.agents` (networks.AgentRows), which for K stacked agents is each agent's own mean over
its rows (shape (K,)), and the networks are stacked by sparse.stacked_layers, so one object trains K
agents. The update backpropagates the sum of the K losses: each agent gets exactly its own gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_offline_rl.algorithms.base import ProblemSpec, collect_state, register_algorithm, restore_state
from sparse_offline_rl.algorithms.networks import (
    AgentRows,
    DeterministicActor,
    GaussianActor,
    TwinQ,
    ValueNet,
    frozen_copy,
    polyak_update,
)
from sparse_offline_rl.algorithms.optimizers import OPTIMIZERS, make_optimizer
from sparse_offline_rl.checks import within
from sparse_offline_rl.data.buffer import Batch


@dataclass
class IQLConfig:
    hidden: list[int] = within("[1, inf)", default_factory=lambda: [256, 256])
    actor_lr: float = within("(0, inf)", default=3e-4)
    critic_lr: float = within("(0, inf)", default=3e-4)
    value_lr: float = within("(0, inf)", default=3e-4)
    weight_decay: float = within("[0, inf)", default=0.0)  # LAMB's decoupled decay of weight matrices (optim=lamb only)
    discount: float = within("(0, 1]", default=0.99)
    tau: float = within("(0, 1]", default=0.005)  # Polyak rate of the target critic
    expectile: float = within("(0, 1)", default=0.7)
    beta: float = within("[0, inf)", default=3.0)  # inverse temperature of the advantage weights
    max_exp_adv: float = within("(0, inf)", default=100.0)
    actor_cosine_schedule: bool = True  # actor lr cosine-annealed over the whole run
    # CORL's IQL for hopper-medium(-replay): a tanh MLP actor trained by advantage-weighted squared error
    deterministic_actor: bool = False
    normalize_obs: bool = True
    normalize_reward: bool = True  # r * 1000 / (max episode return - min episode return)


def expectile_l2(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """L_2^tau(u) = |tau - 1(u < 0)| u^2, elementwise (Eq. 5's asymmetric square)."""
    weight = torch.where(u > 0, expectile, 1.0 - expectile)
    return weight * u.pow(2)


def expectile_loss(diff: torch.Tensor, expectile: float, members: int = 1) -> torch.Tensor:
    """The batch mean of `expectile_l2`, per stacked agent (`members` of them)."""
    return AgentRows(members).mean(expectile_l2(diff, expectile))


@register_algorithm("iql")
class IQL:
    supported_optimizers = OPTIMIZERS  # its networks' optimizers come from make_optimizer(..., spec.optim)
    stackable = True  # batch means per agent (self.agents): training.stacked may train several in one object

    Config = IQLConfig

    def __init__(self, config: IQLConfig, spec: ProblemSpec) -> None:
        self.config = config
        self.agents = AgentRows(spec.members)  # K > 1 stacked agents: each loss below is then (K,)
        dev = torch.device(spec.device)
        actor = DeterministicActor if config.deterministic_actor else GaussianActor
        self.actor = actor(spec.obs_dim, spec.act_dim, config.hidden, spec.max_action).to(dev)
        self.critic = TwinQ(spec.obs_dim, spec.act_dim, config.hidden).to(dev)
        self.value = ValueNet(spec.obs_dim, config.hidden).to(dev)
        self.critic_target = frozen_copy(self.critic)
        self.actor_opt = make_optimizer(self.actor, config.actor_lr, spec.optim, config.weight_decay)
        self.critic_opt = make_optimizer(self.critic, config.critic_lr, spec.optim, config.weight_decay)
        self.value_opt = make_optimizer(self.value, config.value_lr, spec.optim, config.weight_decay)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.actor_opt, T_max=max(1, spec.total_steps) if config.actor_cosine_schedule else 10**12
        )

    # -- protocol -----------------------------------------------------------------------------
    def networks(self):
        return {"actor": self.actor, "critic": self.critic, "value": self.value}

    def target_networks(self):
        return {"critic": self.critic_target}

    def optimizers(self):
        return {"actor": self.actor_opt, "critic": self.critic_opt, "value": self.value_opt}

    # -- losses (each touches only the network it trains) --------------------------------------
    def value_loss(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5: E[L_2^tau(min_i Q'_i(s, a) - V(s))]; also the advantages, for the actor."""
        with torch.no_grad():
            target_q = self.critic_target(b.observations, b.actions).min(0).values
        adv = target_q - self.value(b.observations)
        return self.agents.mean(expectile_l2(adv, self.config.expectile)), adv.detach()

    @torch.no_grad()
    def td_target(self, b: Batch) -> torch.Tensor:
        """r + gamma * (1 - d) * V(s')."""
        return b.rewards + self.config.discount * (1.0 - b.dones) * self.value(b.next_observations)

    def critic_loss(self, b: Batch, target: torch.Tensor) -> torch.Tensor:
        """Eq. 6: E[(r + gamma V(s') - Q_i(s, a))^2], averaged over the two critics."""
        qs = self.critic(b.observations, b.actions)
        return self.agents.mean(F.mse_loss(qs, target.expand_as(qs), reduction="none"))

    def actor_loss(self, b: Batch, adv: torch.Tensor) -> torch.Tensor:
        """Eq. 7: -E[exp(beta * (Q(s, a) - V(s))) log pi(a|s)], the weights clipped at max_exp_adv."""
        weights = torch.exp(self.config.beta * adv).clamp(max=self.config.max_exp_adv)
        if self.config.deterministic_actor:  # -log-likelihood of a unit-variance Gaussian, up to constants
            return self.agents.mean(weights * (self.actor(b.observations) - b.actions).pow(2).sum(-1))
        return -self.agents.mean(weights * self.actor.log_prob(b.observations, b.actions))

    def saliency_loss(self, network: str, batch: Batch) -> torch.Tensor:
        if network == "value":
            return self.value_loss(batch)[0].sum()
        if network == "critic":
            return self.critic_loss(batch, self.td_target(batch)).sum()
        if network == "actor":
            with torch.no_grad():
                _, adv = self.value_loss(batch)
            return self.actor_loss(batch, adv).sum()
        raise KeyError(f"IQL has no network '{network}'; networks: actor, critic, value")

    # -- one gradient step ---------------------------------------------------------------------
    # Stacked agents: each loss is (K,), and its sum gives each agent its own gradient.
    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        q_target = self.td_target(b)  # before the value step (CORL)
        v_loss, adv = self.value_loss(b)
        self.value_opt.zero_grad(set_to_none=True)
        v_loss.sum().backward()
        self.value_opt.step()

        q_loss = self.critic_loss(b, q_target)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.sum().backward()
        self.critic_opt.step()
        polyak_update(self.critic_target, self.critic, self.config.tau)

        a_loss = self.actor_loss(b, adv)
        self.actor_opt.zero_grad(set_to_none=True)
        a_loss.sum().backward()
        self.actor_opt.step()
        self.actor_schedule.step()
        return {"value_loss": v_loss.detach(), "critic_loss": q_loss.detach(), "actor_loss": a_loss.detach()}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)

    _STATE = ["actor", "critic", "value", "critic_target", "actor_opt", "critic_opt", "value_opt", "actor_schedule"]

    def state_dict(self):
        return collect_state(self, self._STATE)

    def load_state_dict(self, state):
        restore_state(self, state)
