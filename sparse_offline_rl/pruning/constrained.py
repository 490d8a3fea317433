"""`pruner.budget_search=constrained`: per-layer densities chosen by a constrained-RL agent.

Bisection (`budgets.least_sparsity_within`) searches one sparsity shared by every layer. Measured
cost depends on which layers go sparse (a layer switches kernels, a narrow layer is cheap), so this
search lets an agent decide each layer's kept count: the per-layer pruning of AMC (He et al. 2018),
with the constraint handled as in constrained RL (the Lagrangian method of Ray et al. 2019).

The problem is a one-step bandit: an action is a vector of layer-density logits z, the layers keep
d = d_min + (1 - d_min) * sigmoid(z) of their weights (d_min: one weight, so no layer ever
collapses), the reward R(counts) is the quality of that allocation, and each budget j is a black-box
cost c_j(counts) with a limit b_j. The policy is a Gaussian N(mu, sigma^2) over z. Each update draws
`population` antithetic allocations and ascends the Lagrangian
    L = R / |R_0| - sum_j lambda_j (c_j / b_j - 1)
by the score-function (REINFORCE) gradient with standardized advantages (Adam on mu and log sigma),
then the multipliers take a dual-ascent step lambda_j <- max(0, lambda_j + eta * mean_j(c_j / b_j - 1)).
PPO's clipped surrogate is left out: it exists to reuse a batch of multi-step episodes for several
epochs, and each batch here is used once. The start mean is a given allocation when it is feasible
(the callers pass bisection's answer, so the search starts where bisection ends), else the uniform
density that meets every budget; either way the start is one of the probes.

Every distinct allocation costs one probe (a repeated one is read from a cache); a cost within
`near_limit` of its limit is measured `repeats` times and the median kept (noisy latencies). The
answer is the best feasible probe, its costs measured again against every limit. The search draws
only from its own generator, seeded from the run seed and `Stream.BUDGET_SEARCH`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sparse_offline_rl.errors import ConfigError

Counts = dict[str, int]  # layer name -> weights kept


@dataclass(frozen=True)
class Budget:
    """A cost the allocation must keep at or below `limit`; `cost(counts)` may be noisy."""

    name: str
    cost: Callable[[Counts], float]
    limit: float


@dataclass(frozen=True)
class SearchSettings:
    """The allocator's knobs (`pruner.budget_search_*`); defaults are the documented settings."""

    probes: int = 600  # distinct allocations whose costs may be evaluated, bisection's included
    population: int = 8  # allocations per policy update (antithetic pairs)
    lr: float = 0.1  # Adam step on the policy's mean and log-std
    lambda_lr: float = 2.0  # dual-ascent step on the Lagrange multipliers
    init_std: float = 0.6  # of the logits
    min_std: float = 0.02
    near_limit: float = 0.02  # relative distance to a limit under which a cost is re-measured
    repeats: int = 3  # measurements of a cost near its limit (the median is kept)

    def __post_init__(self) -> None:
        for key, low in (("probes", 2), ("population", 2), ("repeats", 1)):
            if int(getattr(self, key)) < low:
                raise ConfigError(f"pruner.budget_search_{key}={getattr(self, key)!r}: accepted: an integer >= {low}")
        if self.population % 2:
            raise ConfigError(f"pruner.budget_search_population={self.population}: accepted: an even integer "
                              "(samples are drawn in antithetic pairs)")
        for key in ("lr", "lambda_lr", "init_std", "min_std", "near_limit"):
            if not float(getattr(self, key)) > 0:
                raise ConfigError(f"pruner.budget_search_{key}={getattr(self, key)!r}: accepted: a number > 0")


@dataclass
class SearchResult:
    counts: Counts
    reward: float
    costs: dict[str, float]
    probes: list[dict[str, Any]] = field(default_factory=list)  # every evaluated allocation, in order
    updates: list[dict[str, Any]] = field(default_factory=list)  # per policy update: lambdas, mean L, std
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        """The JSON form summary.json keeps."""
        return {"method": "constrained", "counts": self.counts, "reward": self.reward, "costs": self.costs,
                "probes": self.probes, "updates": self.updates, "seconds": self.seconds}


class _Probes:
    """Cost and reward evaluations, cached per allocation and counted against the probe budget."""

    def __init__(self, reward: Callable[[Counts], float], budgets: Sequence[Budget], settings: SearchSettings):
        self.reward, self.budgets, self.settings = reward, list(budgets), settings
        self.cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []

    @property
    def left(self) -> int:
        return self.settings.probes - len(self.cache)

    def measure(self, budget: Budget, counts: Counts) -> float:
        value = float(budget.cost(counts))
        if abs(value / budget.limit - 1) < self.settings.near_limit and self.settings.repeats > 1:
            value = float(np.median([value] + [float(budget.cost(counts)) for _ in range(self.settings.repeats - 1)]))
        return value

    def __call__(self, counts: Counts) -> dict[str, Any]:
        key = tuple(counts.values())
        if key not in self.cache:
            costs = {b.name: self.measure(b, counts) for b in self.budgets}
            entry = {"counts": dict(counts), "reward": float(self.reward(counts)), "costs": costs,
                     "feasible": all(costs[b.name] <= b.limit for b in self.budgets)}
            self.cache[key] = entry
            self.log.append(entry)
        return self.cache[key]


def _counts(sizes: Mapping[str, int], z: np.ndarray) -> Counts:
    n = np.array(list(sizes.values()), dtype=float)
    density = 1 / n + (1 - 1 / n) / (1 + np.exp(-z))
    return {name: int(min(size, max(1, round(d * size)))) for (name, size), d in zip(sizes.items(), density)}


def _logits(sizes: Mapping[str, int], density: float | np.ndarray) -> np.ndarray:
    n = np.array(list(sizes.values()), dtype=float)
    p = np.clip((density - 1 / n) / (1 - 1 / n), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _uniform_start(sizes: Mapping[str, int], probes: _Probes, steps: int = 12) -> float:
    """Bisection on one density shared by every layer, meeting every budget: the search's start."""
    lo, hi = 0.0, 1.0  # densities; costs assumed not to decrease with density
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if probes(_counts(sizes, _logits(sizes, mid)))["feasible"] else (lo, mid)
    return max(lo, 1e-4)


class _Adam:
    def __init__(self, lr: float, shape: tuple[int, ...]):
        self.lr, self.m, self.v, self.t = lr, np.zeros(shape), np.zeros(shape), 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        """The ascent step for gradient `grad`."""
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad ** 2
        return self.lr * (self.m / (1 - 0.9 ** self.t)) / (np.sqrt(self.v / (1 - 0.999 ** self.t)) + 1e-8)


def _lagrangian(entry: Mapping[str, Any], budgets: Sequence[Budget], lambdas: np.ndarray, scale: float) -> float:
    violations = np.array([entry["costs"][b.name] / b.limit - 1 for b in budgets])
    return entry["reward"] / scale - float(lambdas @ violations)


def _start(sizes: Mapping[str, int], probes: _Probes, start: Counts | None) -> np.ndarray:
    """The policy's first mean: the logits of `start` (e.g. bisection's answer) when that allocation
    meets every budget, else of the uniform density that does (`_uniform_start`)."""
    if start is not None:
        counts = {name: int(min(size, max(1, start.get(name, size)))) for name, size in sizes.items()}
        if probes(counts)["feasible"]:
            return _logits(sizes, np.array([counts[name] / size for name, size in sizes.items()]))
    return _logits(sizes, _uniform_start(sizes, probes))


def search(sizes: Mapping[str, int], reward: Callable[[Counts], float], budgets: Sequence[Budget],
           seed: int, settings: SearchSettings = SearchSettings(), start: Counts | None = None) -> SearchResult:
    """The best feasible per-layer kept counts found within `settings.probes` evaluations;
    ConfigError (one line) when no probed allocation meets every limit. `start`: an allocation to
    begin from (it is probed, so a feasible start is never beaten by the answer's reward)."""
    if not budgets:
        raise ConfigError("pruner.budget_search=constrained needs at least one budget; accepted: budget_cost with "
                          "budget_cost_max (one or a list)")
    start_time, rng = time.perf_counter(), np.random.default_rng(seed)
    probes = _Probes(reward, budgets, settings)
    floor = probes({name: 1 for name in sizes})
    if not floor["feasible"]:
        missed = ", ".join(f"{b.name} {floor['costs'][b.name]:g} > {b.limit:g}" for b in budgets
                           if floor["costs"][b.name] > b.limit)
        raise ConfigError(f"pruner.budget_cost: no allocation keeping a weight in every layer meets the budget ({missed})")
    mu = _start(sizes, probes, start)
    log_std = np.full(len(sizes), np.log(settings.init_std))
    opt_mu, opt_std = _Adam(settings.lr, mu.shape), _Adam(settings.lr, mu.shape)
    lambdas, scale = np.zeros(len(budgets)), abs(probes(_counts(sizes, mu))["reward"]) or 1.0
    updates: list[dict[str, Any]] = []
    while probes.left >= settings.population:  # at most `probes` evaluations, never a partial update
        eps = rng.standard_normal((settings.population // 2, len(sizes)))
        eps = np.concatenate([eps, -eps])
        entries = [probes(_counts(sizes, mu + np.exp(log_std) * e)) for e in eps]
        values = np.array([_lagrangian(e, budgets, lambdas, scale) for e in entries])
        advantage = (values - values.mean()) / (values.std() + 1e-8)
        mu = mu + opt_mu.step(advantage @ eps / (len(eps) * np.exp(log_std)))
        log_std = np.maximum(log_std + opt_std.step(advantage @ (eps ** 2 - 1) / len(eps)), np.log(settings.min_std))
        violation = np.array([np.mean([e["costs"][b.name] / b.limit - 1 for e in entries]) for b in budgets])
        lambdas = np.maximum(0.0, lambdas + settings.lambda_lr * violation)
        updates.append({"lambdas": lambdas.tolist(), "lagrangian": float(values.mean()),
                        "std": float(np.exp(log_std).mean()), "probes": len(probes.cache)})
    return _verified_best(probes, budgets, updates, time.perf_counter() - start_time)


def _verified_best(probes: _Probes, budgets: Sequence[Budget], updates: list, seconds: float) -> SearchResult:
    """The best feasible probe whose costs, measured again, still meet every limit."""
    for entry in sorted((e for e in probes.log if e["feasible"]), key=lambda e: -e["reward"]):
        costs = {b.name: probes.measure(b, entry["counts"]) for b in budgets}
        if all(costs[b.name] <= b.limit for b in budgets):
            return SearchResult(entry["counts"], entry["reward"], costs, probes.log, updates, seconds)
    raise ConfigError("pruner.budget_search=constrained: no probed allocation meets every budget when measured again "
                      f"({', '.join(f'{b.name} <= {b.limit:g}' for b in budgets)}); raise the limits or "
                      "pruner.budget_search_probes")


__all__ = ["Budget", "Counts", "SearchResult", "SearchSettings", "search"]
