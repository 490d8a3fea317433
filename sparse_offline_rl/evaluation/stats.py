"""Aggregate statistics over runs (Agarwal et al. 2021), numpy only.

Scores are given per task (stratum) as 1-D arrays of per-run values; tasks may have different
numbers of runs. 2-D arrays are read as (runs, tasks), rliable's layout.
- `iqm`: interquartile mean, scipy's `trim_mean(x, 0.25)` on all values: sort, drop
  floor(n / 4) values at each end, average the rest (what rliable computes).
- `stratified_bootstrap_ci`: resample runs with replacement within each task, independently,
  recompute the statistic; percentile interval. Seeded: same seed, same interval.
- `probability_of_improvement`: P(X > Y) per task as the Mann-Whitney U statistic over all run
  pairs (ties count 1/2), averaged over tasks.
- `performance_profile`: for each threshold tau, the fraction of runs scoring above tau (per task,
  then averaged over tasks, so every task weighs the same), with stratified-bootstrap bands.
- `spearman`: Spearman's rank correlation, the Pearson correlation of the ranks (ties get their
  average rank, as scipy's `spearmanr`); NaN when either side is constant.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Strata = Sequence[np.ndarray]


def as_strata(scores: np.ndarray | Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Per-task arrays from a (runs, tasks) array or a list of per-task sequences."""
    if isinstance(scores, np.ndarray):
        if scores.ndim == 1:
            return [scores.astype(np.float64)]
        if scores.ndim == 2:
            return [scores[:, j].astype(np.float64) for j in range(scores.shape[1])]
        raise ValueError(f"scores must be 1-D or (runs, tasks) 2-D, got shape {scores.shape}")
    strata = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    if not strata or any(len(s) == 0 for s in strata):
        raise ValueError("every task needs at least one run score")
    return strata


def iqm(values: np.ndarray | Sequence[float]) -> float:
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if len(x) == 0:
        raise ValueError("IQM of no values")
    cut = int(0.25 * len(x))
    return float(x[cut:len(x) - cut].mean())


def mean(values: np.ndarray | Sequence[float]) -> float:
    return float(np.mean(values))


def stratified_resample(strata: Strata, rng: np.random.Generator) -> list[np.ndarray]:
    return [s[rng.integers(0, len(s), len(s))] for s in strata]


def stratified_bootstrap_ci(
    scores: np.ndarray | Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point estimate, low, high) of `statistic` over all runs of all tasks."""
    strata = as_strata(scores)
    rng = np.random.default_rng(seed)
    point = statistic(np.concatenate(strata))
    boot = np.array([statistic(np.concatenate(stratified_resample(strata, rng))) for _ in range(reps)])
    alpha = (1.0 - confidence) / 2
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return point, float(low), float(high)


def probability_of_improvement(x: np.ndarray | Sequence[Sequence[float]], y: np.ndarray | Sequence[Sequence[float]]) -> float:
    """P(X > Y): for each task, the fraction of (x run, y run) pairs where x wins, ties 1/2; mean over tasks."""
    xs, ys = as_strata(x), as_strata(y)
    if len(xs) != len(ys):
        raise ValueError(f"X has {len(xs)} tasks and Y has {len(ys)}; they must share tasks")
    per_task = []
    for a, b in zip(xs, ys):
        diff = a[:, None] - b[None, :]
        per_task.append(float(((diff > 0) + 0.5 * (diff == 0)).mean()))
    return float(np.mean(per_task))


def probability_of_improvement_ci(
    x: np.ndarray | Sequence[Sequence[float]],
    y: np.ndarray | Sequence[Sequence[float]],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(P(X > Y), low, high), resampling the runs of X and of Y within each task."""
    xs, ys = as_strata(x), as_strata(y)
    rng = np.random.default_rng(seed)
    point = probability_of_improvement(xs, ys)
    boot = np.array([probability_of_improvement(stratified_resample(xs, rng), stratified_resample(ys, rng))
                     for _ in range(reps)])
    alpha = (1.0 - confidence) / 2
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return point, float(low), float(high)


def performance_profile(
    scores: np.ndarray | Sequence[Sequence[float]],
    taus: np.ndarray | Sequence[float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fraction > tau, low, high) for every tau: the run-score distribution of Agarwal et al. 2021."""
    strata = as_strata(scores)
    taus = np.asarray(taus, dtype=np.float64)

    def profile(groups: Sequence[np.ndarray]) -> np.ndarray:
        return np.mean([(g[:, None] > taus[None, :]).mean(axis=0) for g in groups], axis=0)

    rng = np.random.default_rng(seed)
    boot = np.stack([profile(stratified_resample(strata, rng)) for _ in range(reps)])
    alpha = (1.0 - confidence) / 2
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return profile(strata), low, high


def ranks(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the average of the ranks they span."""
    x = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values [first, last] gets (first + last) / 2 + 1.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)] - 1
    out = np.empty(len(x))
    out[order] = np.repeat((starts + ends) / 2 + 1, ends - starts + 1)
    return out


def spearman(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    if len(rx) != len(ry):
        raise ValueError(f"spearman needs paired values, got {len(rx)} and {len(ry)}")
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
