"""Overfitting diagnostics logged at every evaluation during training.

- TD error (mean squared, averaged over critics) and BC loss (MSE between the policy's action and
  the dataset action; plus NLL when the actor has `log_prob`) on a fixed probe set of training
  transitions and on the validation split (whole held-out episodes). A widening train/val gap is
  the offline analogue of overfitting.
- Over-estimation: min-critic Q(s0, pi(s0)) against the discounted return the policy actually
  obtains from the same start states (in the critic's reward units, i.e. times the reward scale).
- Policy churn: mean absolute action change on a fixed probe set since the previous evaluation.

Nothing here draws from the torch global RNG or the training buffer's generator (probe sets come from
a private generator; the policy is deterministic), so logging diagnostics never changes training,
and a resumed run logs the same values as an uninterrupted one (the churn reference is persisted).
TD targets: r + gamma * (1 - done) * V(s') when the algorithm has a "value" network (IQL's target),
else min over the target critics of Q'(s', pi(s')) with the deterministic policy (TD3+BC / CQL
without their target noise or entropy term: a policy-evaluation TD error, comparable across steps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sparse_offline_rl.data.buffer import Batch, ObsNormalizer, TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.envs import make_env
from sparse_offline_rl.evaluation.rollout import AgentPolicy, EpisodeStats, run_episodes
from sparse_offline_rl.io import atomic_torch_save
from sparse_offline_rl.seeding import Stream, stream_seed

CHURN_FILE = "diagnostics_churn.pt"


def fixed_rows(n_rows: int, size: int, seed: int) -> torch.Tensor:
    """A fixed random subset of row indices from a private generator (all rows when there are fewer)."""
    if n_rows <= size:
        return torch.arange(n_rows)
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def critic_heads(q: torch.Tensor) -> torch.Tensor:
    """A critic's output as (heads, B): a twin critic's (2, B) as it is, a single critic's (B,) as (1, B)."""
    return q if q.dim() > 1 else q.unsqueeze(0)


@torch.no_grad()
def td_error_rows(algo: Any, batch: Batch, discount: float) -> torch.Tensor | None:
    """Each transition's squared TD error of the online critics (mean over critics), (B,); None
    without a "critic" network."""
    nets, targets = algo.networks(), algo.target_networks()
    critic = nets.get("critic")
    if critic is None:
        return None
    if "value" in nets:
        next_v = nets["value"](batch.next_observations)
    else:
        target_critic = targets.get("critic", critic)
        next_v = critic_heads(target_critic(batch.next_observations, algo.act(batch.next_observations))).min(0).values
    target = batch.rewards + discount * (1.0 - batch.dones) * next_v
    qs = critic_heads(critic(batch.observations, batch.actions))
    return (qs - target).pow(2).mean(0)


def td_errors(algo: Any, batch: Batch, discount: float) -> float | None:
    """Mean squared TD error of the online critics on `batch`; None without a "critic" network."""
    rows = td_error_rows(algo, batch, discount)
    return None if rows is None else float(rows.mean())


@torch.no_grad()
def bc_mse_rows(algo: Any, batch: Batch) -> torch.Tensor:
    """Each transition's squared distance between the policy's action and the data's, per action dim, (B,)."""
    return (algo.act(batch.observations) - batch.actions).pow(2).mean(-1)


@torch.no_grad()
def bc_losses(algo: Any, batch: Batch) -> dict[str, float]:
    out = {"bc_mse": float(bc_mse_rows(algo, batch).mean())}
    actor = algo.networks().get("actor")
    if actor is not None and hasattr(actor, "log_prob"):
        out["bc_nll"] = float(-actor.log_prob(batch.observations, batch.actions).mean())
    return out


class TrainingDiagnostics:
    """Call with the current step at each evaluation; returns a flat dict for `logger.log`."""

    def __init__(
        self,
        algo: Any,
        train_buffer: TransitionBuffer,
        val_data: OfflineDataset | None,
        normalizer: ObsNormalizer,
        reward_scale: float,
        env: str,
        discount: float,
        start_state_seeds: Sequence[int],
        device: str = "cpu",
        run_dir: Path | str | None = None,
        start_step: int = 0,
        probe_size: int = 2048,
        churn_size: int = 512,
        seed: int = 0,
    ) -> None:
        self.algo, self.normalizer, self.reward_scale = algo, normalizer, reward_scale
        self.env, self.discount, self.device = env, discount, device
        self.start_state_seeds = [int(s) for s in start_state_seeds]
        # `seed` is the run seed; each probe set has its own stream of it.
        train_rows = fixed_rows(len(train_buffer), probe_size, stream_seed(seed, Stream.TRAIN_PROBE))
        self.train_probe = train_buffer.gather(train_rows.to(train_buffer.device))
        self.val_probe: Batch | None = None
        if val_data is not None:
            val_buffer = TransitionBuffer(val_data, device=device, normalizer=normalizer, reward_scale=reward_scale)
            val_rows = fixed_rows(len(val_buffer), probe_size, stream_seed(seed, Stream.VAL_PROBE))
            self.val_probe = val_buffer.gather(val_rows.to(val_buffer.device))
        self.churn_obs = self.train_probe.observations[:churn_size]
        self.churn_path = None if run_dir is None else Path(run_dir) / CHURN_FILE
        self.history: dict[int, torch.Tensor] = self._load_history(start_step)

    def _load_history(self, start_step: int) -> dict[int, torch.Tensor]:
        """On resume, probe actions of evaluations up to the checkpoint (later ones were never kept)."""
        if start_step <= 0 or self.churn_path is None or not self.churn_path.exists():
            return {}
        saved = torch.load(self.churn_path, weights_only=True)
        return {int(step): actions for step, actions in saved.items() if int(step) <= start_step}

    @torch.no_grad()
    def __call__(self, step: int, episodes: EpisodeStats | None = None) -> dict[str, float]:
        """`episodes`: the evaluation's own episodes from `start_state_seeds`, reused for the
        over-estimation check instead of running them again."""
        out: dict[str, float] = {}
        for split, batch in (("train", self.train_probe), ("val", self.val_probe)):
            if batch is None:
                continue
            td = td_errors(self.algo, batch, self.discount)
            if td is not None:
                out[f"td_error_{split}"] = td
            for name, value in bc_losses(self.algo, batch).items():
                out[f"{name}_{split}"] = value
        out.update(self.overestimation(episodes))
        out.update(self.churn(step))
        return out

    def overestimation(self, stats: EpisodeStats | None = None) -> dict[str, float]:
        critic = self.algo.networks().get("critic")
        if critic is None or not self.start_state_seeds:
            return {}
        if stats is None:
            stats = run_episodes(AgentPolicy(self.algo, self.normalizer, self.device), lambda: make_env(self.env),
                                 self.start_state_seeds, discount=self.discount)
        obs = self.normalizer(torch.as_tensor(stats.first_observations, dtype=torch.float32, device=self.device))
        q = critic_heads(critic(obs, self.algo.act(obs))).min(0).values.double().cpu().numpy()
        achieved = self.reward_scale * stats.discounted_returns
        return {"q_s0": float(q.mean()), "discounted_return_s0": float(achieved.mean()),
                "overestimation": float((q - achieved).mean())}

    def churn(self, step: int) -> dict[str, float]:
        actions = self.algo.act(self.churn_obs).detach().cpu()
        previous = [s for s in self.history if s < step]
        out = {}
        if previous:
            out["policy_churn"] = float((actions - self.history[max(previous)]).abs().mean())
        self.history[step] = actions
        if self.churn_path is not None:
            atomic_torch_save(self.churn_path, self.history)
        return out
