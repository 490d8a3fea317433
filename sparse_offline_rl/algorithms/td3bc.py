"""TD3+BC (Fujimoto & Gu, 2021), reference settings of CORL for D4RL MuJoCo.

TD3 (twin critics, target policy smoothing, delayed actor) whose actor loss adds a behaviour-cloning
term: -lambda * Q1(s, pi(s)) + (pi(s) - a)^2 with lambda = alpha / mean|Q1|, so the Q term's scale
does not depend on the reward scale. Per step: critic update; every `policy_freq` steps also the
actor update and the Polyak update of all three target networks (as in TD3 / CORL).

Stacked agents (training.stacked): the losses are the single agent's; every batch mean (the MSEs,
mean|Q1| of lambda) is taken through `self.agents` (networks.AgentRows), which for K stacked agents
is each agent's own mean over its rows (shape (K,)); the networks are stacked by
sparse.stacked_layers and the noise by networks.StackedNoise. The update backpropagates the sum of
the K losses, so each agent gets exactly its own gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_offline_rl.algorithms.base import ProblemSpec, collect_state, register_algorithm, restore_state
from sparse_offline_rl.algorithms.networks import (
    AgentRows,
    DeterministicActor,
    NoiseSource,
    TwinQ,
    frozen_copy,
    frozen_params,
    polyak_update,
)
from sparse_offline_rl.algorithms.optimizers import OPTIMIZERS, make_optimizer
from sparse_offline_rl.checks import within
from sparse_offline_rl.data.buffer import Batch


@dataclass
class TD3BCConfig:
    hidden: list[int] = within("[1, inf)", default_factory=lambda: [256, 256])  # actor and each critic
    actor_lr: float = within("(0, inf)", default=3e-4)
    critic_lr: float = within("(0, inf)", default=3e-4)
    weight_decay: float = within("[0, inf)", default=0.0)  # LAMB's decoupled decay of weight matrices (optim=lamb only)
    discount: float = within("(0, 1]", default=0.99)
    tau: float = within("(0, 1]", default=0.005)  # Polyak rate of the target actor and critic
    alpha: float = within("[0, inf)", default=2.5)  # weight of the Q term relative to BC (after dividing by mean |Q|)
    policy_noise: float = within("[0, inf)", default=0.2)  # std of the target-policy smoothing noise, times max_action
    noise_clip: float = within("[0, inf)", default=0.5)  # clip of that noise, times max_action
    policy_freq: int = within("[1, inf)", default=2)  # actor and target updates once every this many critic updates
    normalize_obs: bool = True  # dataset mean/std state normalisation is part of TD3+BC
    normalize_reward: bool = False


@register_algorithm("td3bc")
class TD3BC:
    supported_optimizers = OPTIMIZERS  # its networks' optimizers come from make_optimizer(..., spec.optim)
    stackable = True  # batch means per agent (self.agents): training.stacked may train several in one object

    Config = TD3BCConfig

    def __init__(self, config: TD3BCConfig, spec: ProblemSpec) -> None:
        self.config = config
        self.agents = AgentRows(spec.members)  # K > 1 stacked agents: each loss below is then (K,)
        self.max_action = spec.max_action
        dev = torch.device(spec.device)
        self.actor = DeterministicActor(spec.obs_dim, spec.act_dim, config.hidden, spec.max_action).to(dev)
        self.critic = TwinQ(spec.obs_dim, spec.act_dim, config.hidden).to(dev)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.actor_opt = make_optimizer(self.actor, config.actor_lr, spec.optim, config.weight_decay)
        self.critic_opt = make_optimizer(self.critic, config.critic_lr, spec.optim, config.weight_decay)
        self.noise = NoiseSource(dev)  # target policy smoothing noise, checkpointed for exact resume
        self.step = 0  # critic updates done; decides when the delayed actor update happens

    # -- protocol -----------------------------------------------------------------------------
    def networks(self):
        return {"actor": self.actor, "critic": self.critic}

    def target_networks(self):
        return {"actor": self.actor_target, "critic": self.critic_target}

    def optimizers(self):
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    # -- losses (each touches only the network it trains) --------------------------------------
    def critic_loss(self, b: Batch) -> torch.Tensor:
        """TD3's: sum over the twin critics of E[(Q_i(s, a) - y)^2], y = r + gamma * (1 - d) * min_j
        Q'_j(s', a'), with a' the target actor's action plus clipped noise."""
        cfg = self.config
        with torch.no_grad():
            # Target policy smoothing: a clipped Gaussian around the target actor's action.
            noise = self.noise.randn(b.actions.shape, like=b.actions) * (cfg.policy_noise * self.max_action)
            noise = noise.clamp(-cfg.noise_clip * self.max_action, cfg.noise_clip * self.max_action)
            next_action = (self.actor_target(b.next_observations) + noise).clamp(-self.max_action, self.max_action)
            next_q = self.critic_target(b.next_observations, next_action).min(0).values
            target = b.rewards + cfg.discount * (1.0 - b.dones) * next_q
        qs = self.critic(b.observations, b.actions)  # (2, B)
        mse = F.mse_loss(qs, target.expand_as(qs), reduction="none")
        return sum(self.agents.mean(q_mse) for q_mse in mse)

    def actor_loss(self, b: Batch) -> torch.Tensor:
        """Fujimoto & Gu 2021, Eq. 3 (as a loss): -lambda * E[Q1(s, pi(s))] + E[(pi(s) - a)^2], with
        lambda = alpha / E|Q1(s, pi(s))| (Eq. 4) not differentiated; the squared error is averaged
        over the action dimensions too (CORL)."""
        pi = self.actor(b.observations)
        with frozen_params(self.critic):  # gradient flows through the action into the actor only
            q = self.critic.q1(b.observations, pi)
        lmbda = self.config.alpha / self.agents.mean(q.abs()).detach()
        bc = self.agents.mean(F.mse_loss(pi, b.actions, reduction="none"), dim=0)
        return -lmbda * self.agents.mean(q) + bc

    def saliency_loss(self, network: str, batch: Batch) -> torch.Tensor:
        if network == "critic":
            return self.critic_loss(batch).sum()
        if network == "actor":
            return self.actor_loss(batch).sum()
        raise KeyError(f"TD3BC has no network '{network}'; networks: actor, critic")

    # -- one gradient step ---------------------------------------------------------------------
    # Stacked agents: each loss is (K,), and its sum gives each agent its own gradient.
    def update(self, b: Batch) -> dict[str, torch.Tensor]:
        q_loss = self.critic_loss(b)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.sum().backward()
        self.critic_opt.step()
        self.step += 1
        metrics = {"critic_loss": q_loss.detach()}

        if self.step % self.config.policy_freq == 0:  # delayed actor and target updates
            a_loss = self.actor_loss(b)
            self.actor_opt.zero_grad(set_to_none=True)
            a_loss.sum().backward()
            self.actor_opt.step()
            polyak_update(self.critic_target, self.critic, self.config.tau)
            polyak_update(self.actor_target, self.actor, self.config.tau)
            metrics["actor_loss"] = a_loss.detach()
        return metrics

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)

    _STATE = ["actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt", "noise", "step"]

    def state_dict(self):
        return collect_state(self, self._STATE)

    def load_state_dict(self, state):
        restore_state(self, state)
