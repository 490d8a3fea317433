"""AWAC (Nair et al., 2020) as a sparse-offline-rl plug-in: the whole algorithm in one file.

Use it without installing anything:

    python run.py plugins=examples/sorl_awac_plugin/sorl_awac_plugin.py algo=awac sparsity=0.9

or install this folder (`pip install ./examples/sorl_awac_plugin`): its entry point in the group
`sparse_offline_rl.algorithms` makes `algo=awac` available everywhere, no `plugins=` needed.

The algorithm: twin critics trained towards r + gamma * min Q_target(s', pi(s')), and a Gaussian
actor trained by advantage-weighted regression on the dataset actions, with weights
exp(A(s, a) / lam), A(s, a) = min Q(s, a) - min Q(s, pi(s)). For brevity pi(s) is the policy's mean
action (the paper samples it); everything else is as in the paper's offline setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import sparse_offline_rl as sorl
from sparse_offline_rl.algorithms.networks import GaussianActor, TwinQ, adam, frozen_copy, polyak_update


@dataclass
class AWACConfig:
    """Every field needs a default: it becomes `algo.<field>` on the command line."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99  # the trainer also reads it for discounted evaluation returns
    tau: float = 0.005
    lam: float = 1.0  # temperature of the advantage weights
    max_weight: float = 100.0
    normalize_obs: bool = True  # opt in to the shared buffer's observation normalisation
    normalize_reward: bool = False


@sorl.register_algorithm("awac")
class AWAC:
    Config = AWACConfig

    def __init__(self, config: AWACConfig, spec: sorl.ProblemSpec) -> None:
        self.config = config
        self.actor = GaussianActor(spec.obs_dim, spec.act_dim, config.hidden, spec.max_action).to(spec.device)
        self.critic = TwinQ(spec.obs_dim, spec.act_dim, config.hidden).to(spec.device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_opt = adam(self.actor, config.actor_lr)
        self.critic_opt = adam(self.critic, config.critic_lr)

    # What pruning and mask enforcement act on. Targets share the mask of the network they track.
    def networks(self):
        return {"actor": self.actor, "critic": self.critic}

    def target_networks(self):
        return {"critic": self.critic_target}

    def optimizers(self):
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    # Each loss builds a graph through its own network only, so it doubles as the saliency loss.
    def critic_loss(self, b: sorl.Batch) -> torch.Tensor:
        with torch.no_grad():
            next_q = self.critic_target(b.next_observations, self.actor(b.next_observations)).min(0).values
            target = b.rewards + self.config.discount * (1.0 - b.dones) * next_q
        qs = self.critic(b.observations, b.actions)
        return F.mse_loss(qs, target.expand_as(qs))

    def actor_loss(self, b: sorl.Batch) -> torch.Tensor:
        with torch.no_grad():
            q_data = self.critic(b.observations, b.actions).min(0).values
            q_pi = self.critic(b.observations, self.actor(b.observations)).min(0).values
            weights = torch.exp((q_data - q_pi) / self.config.lam).clamp(max=self.config.max_weight)
        return -(weights * self.actor.log_prob(b.observations, b.actions)).mean()

    def saliency_loss(self, network: str, batch: sorl.Batch) -> torch.Tensor:
        losses = {"actor": self.actor_loss, "critic": self.critic_loss}
        if network not in losses:
            raise KeyError(f"AWAC has no network '{network}'; networks: actor, critic")
        return losses[network](batch)

    def update(self, b: sorl.Batch) -> dict[str, torch.Tensor]:
        q_loss = self.critic_loss(b)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_opt.step()
        polyak_update(self.critic_target, self.critic, self.config.tau)

        a_loss = self.actor_loss(b)
        self.actor_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.actor_opt.step()
        return {"critic_loss": q_loss.detach(), "actor_loss": a_loss.detach()}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor(observations)

    _STATE = ["actor", "critic", "critic_target", "actor_opt", "critic_opt"]

    def state_dict(self):
        return sorl.collect_state(self, self._STATE)

    def load_state_dict(self, state):
        sorl.restore_state(self, state)
