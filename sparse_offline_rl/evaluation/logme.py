"""LogME (You et al. 2021): how well a network's features explain a target, by Bayesian evidence.

For features F (n x D) and targets y (n), the linear model y = F w + noise with prior w ~ N(0, 1/alpha I)
and noise N(0, 1/beta) has the evidence (marginal likelihood; Bishop 2006, eq. 3.86)

    log p(y | F, alpha, beta) = n/2 log beta + D/2 log alpha - n/2 log 2 pi
                                - beta/2 |y - F m|^2 - alpha/2 |m|^2 - 1/2 log |A|,
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y,

which equals log N(y; 0, F F^T / alpha + I / beta). LogME maximises it over (alpha, beta) by MacKay's
fixed point (the paper's Algorithm 1): with sigma_i the eigenvalues of F^T F,
gamma = sum_i beta sigma_i / (alpha + beta sigma_i), alpha <- gamma / |m|^2, beta <- (n - gamma) / |y - F m|^2,
and reports the maximum divided by n. Everything here is computed from the Gram form (F^T W F,
F^T W y, y^T W y for row weights W), so one eigendecomposition of a D x D matrix per evaluation,
and a bootstrap replicate (multinomial row weights) costs the same as the score itself.

In the selection scores (evaluation.selection) F is a network's penultimate features on dataset
rows and y the data's discounted returns-to-go: an agent whose critic (or actor) represents the
data's values linearly gets a higher score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse_offline_rl.data.dataset import OfflineDataset


@dataclass(frozen=True)
class LogME:
    evidence: float  # the maximised log evidence divided by n
    alpha: float
    beta: float
    iterations: int
    converged: bool


def _gram(features: np.ndarray | torch.Tensor, targets: np.ndarray, weights: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    # torch, not numpy, for the linear algebra: it keeps to torch's thread count, while numpy's
    # OpenBLAS starts a thread per core and, on a shared 2-core machine, ran 100x slower (1.2 s for
    # one 256 x 256 eigendecomposition against 7 ms).
    f = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets, np.float64).ravel())
    w = torch.ones(len(y), dtype=torch.float64) if weights is None else torch.as_tensor(np.asarray(weights, np.float64))
    fw = f * w[:, None]
    return fw.T @ f, fw.T @ y, float(w @ (y * y)), float(w.sum())


def logme_from_gram(gram: torch.Tensor, fty: torch.Tensor, yty: float, n: float,
                    max_iter: int = 1000, tol: float = 1e-7) -> LogME:
    """LogME from F^T F, F^T y, y^T y and n (weighted rows: the weighted sums and the total weight)."""
    eigenvalues, vectors = torch.linalg.eigh(torch.as_tensor(gram, dtype=torch.float64))
    # round-off makes a rank-deficient Gram's zero eigenvalues slightly negative
    sigma = eigenvalues.clamp(min=0.0).numpy()
    z = (vectors.T @ torch.as_tensor(fty, dtype=torch.float64)).numpy()  # F^T y in the eigenbasis
    dim = len(sigma)
    alpha, beta, converged, it = 1.0, 1.0, False, 0
    for it in range(1, max_iter + 1):
        m, residual = _posterior(sigma, z, yty, alpha, beta)
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        new_alpha = gamma / max(float(m @ m), 1e-300)
        new_beta = (n - gamma) / max(residual, 1e-300)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = max(new_alpha, 1e-300), max(new_beta, 1e-300)
        if done:
            converged = True
            break
    m, residual = _posterior(sigma, z, yty, alpha, beta)
    evidence = (n / 2 * math.log(beta) + dim / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * residual - alpha / 2 * float(m @ m) - 0.5 * float(np.log(alpha + beta * sigma).sum()))
    return LogME(evidence / n, alpha, beta, it, converged)


def _posterior(sigma: np.ndarray, z: np.ndarray, yty: float, alpha: float, beta: float) -> tuple[np.ndarray, float]:
    """Posterior mean m (eigenbasis) and |y - F m|^2 = m^T F^T F m - 2 m^T F^T y + y^T y."""
    m = beta * z / (alpha + beta * sigma)
    residual = float((sigma * m * m).sum() - 2 * (m @ z) + yty)
    return m, max(residual, 0.0)


def logme(features: np.ndarray | torch.Tensor, targets: np.ndarray, weights: np.ndarray | None = None, **kwargs: Any) -> LogME:
    """LogME of `targets` (n,) given `features` (n, D); `weights` (n,): row multiplicities (bootstrap)."""
    return logme_from_gram(*_gram(features, targets, weights), **kwargs)


def logme_replicates(features: np.ndarray | torch.Tensor, targets: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """`reps` bootstrap replicates of the LogME score: rows resampled with replacement (as weights)."""
    n = len(targets)
    return np.array([logme(features, targets, rng.multinomial(n, np.full(n, 1.0 / n))).evidence for _ in range(reps)])


def returns_to_go(dataset: OfflineDataset, discount: float) -> np.ndarray:
    """Each row's discounted return to the end of its episode in the data, G_t = r_t + discount * G_{t+1}.
    An episode ends where the data's episode ends: nothing is bootstrapped past a time limit or past the
    end of the data, so G is the behaviour's Monte Carlo return as far as the data sees it."""
    bounds = dataset.episode_bounds()
    rewards = dataset.rewards.astype(np.float64)
    out = np.zeros(len(dataset))
    lengths = bounds[:, 1] - bounds[:, 0]
    # Backwards in time, all episodes at once: step k from the end of every episode longer than k.
    for k in range(int(lengths.max())):
        alive = lengths > k
        rows = bounds[alive, 1] - 1 - k
        out[rows] = rewards[rows] + (discount * out[rows + 1] if k > 0 else 0.0)
    return out


@torch.no_grad()
def penultimate_features(network: nn.Module, *inputs: torch.Tensor) -> torch.Tensor | None:
    """The input of the last parameterised layer the network's forward runs (for twin critics: the
    second critic's last hidden layer), or None when no such layer sees a batch of vectors."""
    seen: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
            seen.append(args[0].detach())

    leaves = [m for m in network.modules() if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_pre_hook(record) for m in leaves]
    try:
        network(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen[-1] if seen else None


__all__ = ["LogME", "logme", "logme_from_gram", "logme_replicates", "penultimate_features", "returns_to_go"]
