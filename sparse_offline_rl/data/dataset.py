"""The one in-memory form every loader produces: flat transitions plus episode bookkeeping.

Loaders (D4RL HDF5, Minari, the project's own datasets) all return an `OfflineDataset`; everything
downstream (buffer, pruning batches, validation split, generalization harness) reads only this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparse_offline_rl.errors import DatasetError

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@dataclass
class OfflineDataset:
    """Transitions in time order, one row each.

    `terminals[i]` is a true environment termination (no bootstrap); `timeouts[i]` marks the last
    transition of an episode cut by a time limit (bootstrap from next_observations[i]).
    `episode_starts` holds the row index where each episode begins (sorted, first is 0).
    """

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    episode_starts: np.ndarray  # (E,) int64
    env_id: str | None = None  # gymnasium id the data belongs to, e.g. "Hopper-v5"
    ref_min_score: float | None = None  # random-policy return (normalised score 0)
    ref_max_score: float | None = None  # expert-policy return (normalised score 100)
    source: str = ""  # file or dataset id, used in every error message
    reset_seeds: np.ndarray | None = None  # (E,) env.reset seed of each episode, when known
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0])

    def episode_bounds(self) -> np.ndarray:
        """(E, 2) array of [start, end) rows per episode."""
        ends = np.append(self.episode_starts[1:], len(self))
        return np.stack([self.episode_starts, ends], axis=1)

    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts) if len(self) else np.zeros(0)

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray | float:
        """D4RL's 100 * (R - random) / (expert - random); NaN when reference scores are unknown."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return np.asarray(returns, dtype=np.float64) * np.nan
        return 100.0 * (np.asarray(returns, dtype=np.float64) - self.ref_min_score) / (
            self.ref_max_score - self.ref_min_score
        )

    def score_scale(self) -> str:
        """What `normalized_score` is relative to, for labels in results, tables and figures."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return f"{self.source}: no reference returns (scores are NaN)"
        return f"{self.source} reference returns (0 = {self.ref_min_score:.1f}, 100 = {self.ref_max_score:.1f})"

    def select_episodes(self, episode_indices: np.ndarray) -> "OfflineDataset":
        """A new dataset holding only the given whole episodes (in the given order)."""
        bounds = self.episode_bounds()[np.asarray(episode_indices, dtype=np.int64)]
        rows = np.concatenate([np.arange(s, e) for s, e in bounds]) if len(bounds) else np.zeros(0, np.int64)
        lengths = bounds[:, 1] - bounds[:, 0]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(bounds) else np.zeros(0, np.int64)
        return OfflineDataset(
            observations=self.observations[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            next_observations=self.next_observations[rows],
            terminals=self.terminals[rows],
            timeouts=self.timeouts[rows],
            episode_starts=starts,
            env_id=self.env_id,
            ref_min_score=self.ref_min_score,
            ref_max_score=self.ref_max_score,
            source=self.source,
            reset_seeds=None if self.reset_seeds is None else self.reset_seeds[np.asarray(episode_indices)],
            metadata=dict(self.metadata),
        )

    def split_episodes(self, val_fraction: float, seed: int = 0) -> tuple["OfflineDataset", "OfflineDataset"]:
        """(train, validation) split by whole episodes, reproducible for a seed."""
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if self.num_episodes < 2:
            raise DatasetError(f"{self.source}: a validation split needs at least 2 episodes, found {self.num_episodes}")
        order = np.random.default_rng(seed).permutation(self.num_episodes)
        n_val = min(max(1, int(round(val_fraction * self.num_episodes))), self.num_episodes - 1)
        return self.select_episodes(np.sort(order[n_val:])), self.select_episodes(np.sort(order[:n_val]))

    def validate(self) -> None:
        """Fail early, naming the source and the field, on anything downstream code would misread."""
        where = self.source or "dataset"
        n = self.rewards.shape[0] if self.rewards.ndim >= 1 else -1
        expected = {
            "observations": 2,
            "actions": 2,
            "rewards": 1,
            "next_observations": 2,
            "terminals": 1,
            "timeouts": 1,
        }
        for name, ndim in expected.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                raise DatasetError(f"{where}: field '{name}' must be a numpy array, got {type(arr).__name__}")
            if arr.ndim != ndim:
                raise DatasetError(f"{where}: field '{name}' must have {ndim} dimension(s), got shape {arr.shape}")
            if arr.shape[0] != n:
                raise DatasetError(f"{where}: field '{name}' has {arr.shape[0]} rows, 'rewards' has {n}")
        if n == 0:
            raise DatasetError(f"{where}: dataset is empty (0 transitions)")
        if self.next_observations.shape != self.observations.shape:
            raise DatasetError(
                f"{where}: field 'next_observations' has shape {self.next_observations.shape}, "
                f"'observations' has {self.observations.shape}"
            )
        for name in ("observations", "actions", "rewards", "next_observations"):
            arr = getattr(self, name)
            if not np.issubdtype(arr.dtype, np.floating):
                raise DatasetError(f"{where}: field '{name}' must be floating point, got dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).any(axis=tuple(range(1, arr.ndim))).argmax())
                raise DatasetError(f"{where}: field '{name}' contains NaN or inf (first at row {bad})")
        for name in ("terminals", "timeouts"):
            arr = getattr(self, name)
            if arr.dtype != np.bool_:
                if not np.isin(arr, (0, 1)).all():
                    raise DatasetError(f"{where}: field '{name}' must be boolean (0/1), got values outside {{0, 1}}")
                setattr(self, name, arr.astype(bool))
        starts = np.asarray(self.episode_starts, dtype=np.int64)
        if starts.ndim != 1 or len(starts) == 0 or starts[0] != 0 or (np.diff(starts) <= 0).any() or starts[-1] >= n:
            raise DatasetError(f"{where}: field 'episode_starts' must be strictly increasing row indices starting at 0")
        self.episode_starts = starts
        if self.reset_seeds is not None and len(self.reset_seeds) != len(starts):
            raise DatasetError(
                f"{where}: field 'reset_seeds' has {len(self.reset_seeds)} entries for {len(starts)} episodes"
            )

    def check_env(self, observation_shape: tuple[int, ...], action_shape: tuple[int, ...], env_id: str) -> None:
        """Obs/action dims must match the environment the agent is evaluated in."""
        if tuple(self.observations.shape[1:]) != tuple(observation_shape):
            raise DatasetError(
                f"{self.source}: observations have shape {tuple(self.observations.shape[1:])} but {env_id} "
                f"expects {tuple(observation_shape)}"
            )
        if tuple(self.actions.shape[1:]) != tuple(action_shape):
            raise DatasetError(
                f"{self.source}: actions have shape {tuple(self.actions.shape[1:])} but {env_id} "
                f"expects {tuple(action_shape)}"
            )


def episode_starts_from_flags(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Rows that begin an episode: row 0 and every row after a terminal or timeout."""
    ends = np.flatnonzero(np.logical_or(terminals, timeouts))
    starts = np.concatenate([[0], ends + 1])
    return starts[starts < len(terminals)].astype(np.int64)
