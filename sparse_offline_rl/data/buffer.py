"""Transitions as contiguous torch tensors on the training device, sampled with one index gather."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from sparse_offline_rl.data.dataset import OfflineDataset


class Batch(NamedTuple):
    observations: torch.Tensor  # (B, obs_dim)
    actions: torch.Tensor  # (B, act_dim)
    rewards: torch.Tensor  # (B,)
    next_observations: torch.Tensor  # (B, obs_dim)
    dones: torch.Tensor  # (B,) 1.0 where the episode truly terminated (no bootstrap)


@dataclass
class ObsNormalizer:
    """(obs - mean) / std with the dataset's statistics; identity when disabled."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def identity(cls, obs_dim: int, device: torch.device | str = "cpu") -> "ObsNormalizer":
        return cls(torch.zeros(obs_dim, device=device), torch.ones(obs_dim, device=device))

    @classmethod
    def from_dataset(cls, dataset: OfflineDataset, eps: float = 1e-3, device: torch.device | str = "cpu") -> "ObsNormalizer":
        mean = dataset.observations.mean(axis=0, dtype=np.float64)
        std = dataset.observations.std(axis=0, dtype=np.float64) + eps
        return cls(torch.as_tensor(mean, dtype=torch.float32, device=device), torch.as_tensor(std, dtype=torch.float32, device=device))

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean = state["mean"].to(self.mean.device)
        self.std = state["std"].to(self.std.device)


class TransitionBuffer:
    """Holds a dataset on `device`; `sample` draws a batch with replacement using its own generator.

    Observations are stored already normalised (when a normalizer is given) so the hot loop does no
    per-step arithmetic beyond the gather.
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        device: torch.device | str = "cpu",
        normalizer: ObsNormalizer | None = None,
        reward_scale: float = 1.0,
        reward_shift: float = 0.0,
    ) -> None:
        self.device = torch.device(device)
        self.normalizer = normalizer or ObsNormalizer.identity(dataset.obs_dim, self.device)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

        self.observations = self.normalizer(tensor(dataset.observations))
        self.next_observations = self.normalizer(tensor(dataset.next_observations))
        self.actions = tensor(dataset.actions)
        self.rewards = tensor(dataset.rewards) * reward_scale + reward_shift
        self.dones = tensor(dataset.terminals)
        self.size = len(dataset)
        self.generator = torch.Generator(device=self.device)

    def __len__(self) -> int:
        return self.size

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), generator=self.generator, device=self.device)
        return self.gather(idx)

    def gather(self, idx: torch.Tensor) -> Batch:
        return Batch(
            self.observations[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_observations[idx],
            self.dones[idx],
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
