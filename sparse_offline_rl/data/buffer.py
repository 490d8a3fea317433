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
    per-step arithmetic beyond the gather. All fields live side by side in one contiguous (N, D)
    tensor, columns [obs | action | reward | next_obs | done], so a batch is a single row gather
    (`index_select`) whose column slices are the batch's fields; `observations`, `actions`, ...
    are column views of that tensor.
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
        obs_dim, act_dim = dataset.obs_dim, dataset.act_dim
        n = len(dataset)
        # Column layout; filled on the host one field at a time (no full-size temporaries), then moved.
        o, a = obs_dim, obs_dim + act_dim
        self._slices = (slice(0, o), slice(o, a), a, slice(a + 1, a + 1 + obs_dim), a + 1 + obs_dim)
        packed = torch.empty((n, a + 2 + obs_dim), dtype=torch.float32)
        mean, std = self.normalizer.mean.cpu(), self.normalizer.std.cpu()
        for col, values in ((self._slices[0], dataset.observations), (self._slices[3], dataset.next_observations)):
            view = packed[:, col]
            view.copy_(torch.from_numpy(np.asarray(values)))
            view.sub_(mean).div_(std)  # the normalizer's (obs - mean) / std
        packed[:, self._slices[1]].copy_(torch.from_numpy(np.asarray(dataset.actions)))
        rewards = packed[:, a]
        rewards.copy_(torch.from_numpy(np.asarray(dataset.rewards)))
        rewards.mul_(reward_scale).add_(reward_shift)
        packed[:, self._slices[4]].copy_(torch.from_numpy(np.asarray(dataset.terminals)))
        self.data = packed.to(self.device)
        self.size = n
        self.generator = torch.Generator(device=self.device)

    def _fields(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(rows[:, s] for s in self._slices)

    # Each field is a column view of `data`: writing into it (or assigning a whole new tensor of the
    # same shape, which is copied in) changes what `sample` / `gather` return.
    def _column(i: int) -> property:  # type: ignore[misc]
        def get(self: "TransitionBuffer") -> torch.Tensor:
            return self.data[:, self._slices[i]]

        def put(self: "TransitionBuffer", value: torch.Tensor) -> None:
            get(self).copy_(torch.as_tensor(value, dtype=self.data.dtype, device=self.data.device))

        return property(get, put)

    observations, actions, rewards, next_observations, dones = _column(0), _column(1), _column(2), _column(3), _column(4)
    del _column

    def __len__(self) -> int:
        return self.size

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def sample(self, batch_size: int) -> Batch:
        return self.gather(self.sample_indices(batch_size))

    def sample_indices(self, batch_size: int) -> torch.Tensor:
        """The rows `sample` gathers (drawn from this buffer's generator)."""
        return torch.randint(0, self.size, (batch_size,), generator=self.generator, device=self.device)

    def gather(self, idx: torch.Tensor) -> Batch:
        return Batch(*self._fields(self.data.index_select(0, idx)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
