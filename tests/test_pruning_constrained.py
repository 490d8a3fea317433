"""pruner.budget_search=constrained (pruning/constrained.py): the constrained-RL allocator of layer
densities, on synthetic problems whose best allocation is known in closed form."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning.constrained import Budget, SearchSettings, search

SIZES = {"a": 1000, "b": 4000, "c": 2000, "d": 500}
N = np.array(list(SIZES.values()), float)
WEIGHT = np.array([3.0, 1.0, 2.0, 0.5]) * N / 1000


def reward(counts):
    """Concave and separable: sum_l w_l sqrt(d_l), so the best allocation under a linear cost has a closed form."""
    return float(WEIGHT @ np.sqrt(np.array(list(counts.values())) / N))


def best_under_params(limit):
    """KKT: w_l / (2 sqrt(d_l)) = mu n_l, so d_l = (w_l / (2 mu n_l))^2 with sum_l n_l d_l = limit."""
    lo, hi = 1e-9, 1e3
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if (N * np.minimum(1, (WEIGHT / (2 * mid * N)) ** 2)).sum() > limit else (lo, mid)
    return float(WEIGHT @ np.sqrt(np.minimum(1, (WEIGHT / (2 * hi * N)) ** 2)))


def params(counts):
    return float(sum(counts.values()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_search_finds_the_known_best_allocation_within_tolerance(seed):
    limit = 0.1 * N.sum()
    result = search(SIZES, reward, [Budget("params", params, limit)], seed=seed)
    uniform = float(WEIGHT @ np.sqrt(np.full(len(N), limit / N.sum())))  # what one shared sparsity gives
    assert result.costs["params"] <= limit
    assert result.reward >= 0.95 * best_under_params(limit)
    assert result.reward > uniform + 0.5 * (best_under_params(limit) - uniform)
    assert len(result.probes) <= SearchSettings().probes


def test_several_budgets_are_all_met():
    latency_per_weight = {"a": 5.0, "b": 1.0, "c": 0.5, "d": 4.0}

    def latency(counts):
        return sum(latency_per_weight[k] * v for k, v in counts.items())

    budgets = [Budget("params", params, 0.15 * N.sum()), Budget("latency", latency, 1500.0)]
    result = search(SIZES, reward, budgets, seed=0)
    assert result.costs["params"] <= budgets[0].limit and result.costs["latency"] <= budgets[1].limit
    assert all(entry["costs"].keys() == {"params", "latency"} for entry in result.probes)
    assert result.updates and len(result.updates[-1]["lambdas"]) == 2


def test_the_same_seed_reproduces_and_another_seed_explores_elsewhere():
    budget = [Budget("params", params, 0.1 * N.sum())]
    first, again, other = (search(SIZES, reward, budget, seed=s) for s in (0, 0, 1))
    assert first.probes == again.probes and first.counts == again.counts
    assert first.probes != other.probes


def test_the_search_consumes_none_of_trainings_randomness():
    torch.manual_seed(7)
    np.random.seed(7)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(7)
    np.random.seed(7)
    search(SIZES, reward, [Budget("params", params, 0.1 * N.sum())], seed=0)
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)


def test_an_infeasible_budget_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"no allocation keeping a weight in every layer meets the budget \(params 4 > 3\)"):
        search(SIZES, reward, [Budget("params", params, 3.0)], seed=0)


def test_no_layer_ever_collapses():
    result = search(SIZES, reward, [Budget("params", params, 20.0)], seed=0)
    assert all(entry["counts"][k] >= 1 for entry in result.probes for k in SIZES)


def test_a_noisy_cost_near_its_limit_is_measured_again():
    calls = []

    def noisy(counts):
        calls.append(1)
        return params(counts) * (1 + 0.01 * (-1) ** len(calls))

    settings = SearchSettings(probes=60, repeats=3, near_limit=0.05)
    result = search(SIZES, reward, [Budget("params", noisy, 0.1 * N.sum())], seed=0, settings=settings)
    near = [e for e in result.probes if abs(e["costs"]["params"] / (0.1 * N.sum()) - 1) < 0.05]
    assert near and len(calls) > len(result.probes)  # the near ones took three measurements each


@pytest.mark.parametrize("change, words", [({"population": 3}, "even"), ({"probes": 1}, ">= 2"), ({"lr": 0}, "> 0")])
def test_bad_settings_fail_early_naming_the_key(change, words):
    with pytest.raises(ConfigError, match=words):
        SearchSettings(**change)


def test_a_feasible_start_is_probed_first_and_never_beaten_an_infeasible_one_is_dropped():
    limit = 0.1 * N.sum()
    budget = [Budget("params", params, limit)]
    start = {"a": 100, "b": 400, "c": 200, "d": 50}  # uniform 10%, feasible
    result = search(SIZES, reward, budget, seed=0, start=start)
    assert result.probes[1]["counts"] == start and result.reward >= reward(start)
    assert result.reward >= 0.95 * best_under_params(limit)
    over = {"a": 1000, "b": 4000, "c": 2000, "d": 500}  # dense: over the limit, so the uniform start is used
    fallback = search(SIZES, reward, budget, seed=0, start=over)
    assert fallback.probes[1]["counts"] == over and not fallback.probes[1]["feasible"]
    assert fallback.costs["params"] <= limit and fallback.reward >= 0.95 * best_under_params(limit)
