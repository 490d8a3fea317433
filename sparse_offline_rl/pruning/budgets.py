"""Budgets instead of a sparsity: pruner.budget_params, budget_flops and budget_cost.

- `budget_keep`: the kept prunable weights meeting a parameter or FLOP budget (unstructured).
- `least_sparsity_within` / `search`: the least sparsity whose cost is within a limit, by bisection
  (the cost assumed not to increase with the sparsity); `search` also keeps every probe for the report.
  Both the weight sparsity (`weights.py`) and the unit fraction (`units.py`) are searched with it.
- `load_cost`, `evaluate_cost`: the user's cost function named by pruner.budget_cost, and its value on
  copies of the networks with their pruned weights zeroed.
- `budget_networks`: the networks a budget_cost search sets.
"""
from __future__ import annotations

import copy
import importlib
import numbers
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.sparse.density import count_params_flops
from sparse_offline_rl.sparse.masks import prunable_parameters

#: Bisection stops when the least feasible sparsity is bracketed this tightly (pruner.budget_cost).
BUDGET_COST_TOL = 1e-3
#: The sparsest probe of a cost search: no sparsity below 1 meets the budget if this one does not.
BUDGET_COST_MAX_SPARSITY = 1 - 1e-6


def budget_keep(module: nn.Module, kind: str, budget: int, network: str) -> int:
    """Kept prunable weights meeting a parameter or FLOP budget (per forward pass, see count_params_flops)."""
    params = prunable_parameters(module)
    total = sum(p.numel() for p in params.values())
    stats = count_params_flops(module, {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
    if kind == "budget_params":
        fixed = stats["params_dense"] - total  # biases, norms, other non-prunable parameters
        keep = budget - fixed
    else:
        fixed = stats["flops_dense"] - 2 * total  # bias additions
        keep = (budget - fixed) // 2
    if keep < 0:
        raise ValueError(
            f"{kind}={budget} for network '{network}' is below its {fixed} non-prunable {kind.split('_')[1]}"
        )
    return min(total, int(keep))


def least_sparsity_within(cost_at: Callable[[float], float], limit: float, top: float = BUDGET_COST_MAX_SPARSITY,
                          tol: float = BUDGET_COST_TOL) -> float | None:
    """The least s in [0, top] with cost_at(s) <= limit, assuming the cost does not increase with s:
    0 if the unpruned cost fits, None if not even `top` does, else bisection until the least feasible
    probe is bracketed to `tol` (the returned s is always a probed, feasible one)."""
    if cost_at(0.0) <= limit:
        return 0.0
    if cost_at(top) > limit:
        return None
    lo, hi = 0.0, top
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost_at(mid) <= limit else (mid, hi)
    return hi


def search(cost_at: Callable[[float], float], limit: float, top: float = BUDGET_COST_MAX_SPARSITY,
           tol: float = BUDGET_COST_TOL) -> tuple[float | None, list[tuple[float, float]]]:
    """`least_sparsity_within`, and every probe (sparsity, cost) in the order probed."""
    probes: list[tuple[float, float]] = []

    def probe(s: float) -> float:
        value = cost_at(s)
        probes.append((s, value))
        return value

    return least_sparsity_within(probe, limit, top, tol), probes


def cost_of(probes: Sequence[tuple[float, float]], chosen: float) -> float:
    """The cost measured at the chosen sparsity (its last probe)."""
    return next(v for s, v in reversed(probes) if s == chosen)


def load_cost(path: Any) -> Callable[[dict[str, nn.Module]], float]:
    """The callable named by pruner.budget_cost, 'package.module:function' (or 'package.module.function')."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"pruner.budget_cost={path!r} is invalid: a Python path 'module:function' is required")
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"pruner.budget_cost={path!r} is invalid: a Python path 'module:function' is required")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"pruner.budget_cost={path!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"pruner.budget_cost={path!r} is not callable")
    return fn


def evaluate_cost(fn: Callable[..., Any], path: str, nets: Mapping[str, nn.Module],
                  masks: Mapping[str, Mapping[str, torch.Tensor]]) -> float:
    """cost({name: copy of the network with its pruned weights zeroed}) as a float."""
    pruned: dict[str, nn.Module] = {}
    for name, net in nets.items():
        clone = copy.deepcopy(net)
        weights = prunable_parameters(clone)
        with torch.no_grad():
            for pname, mask in masks.get(name, {}).items():
                weights[pname].mul_(mask.to(weights[pname].dtype))
        pruned[name] = clone
    value = fn(pruned)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        raise ValueError(f"pruner.budget_cost={path!r} returned {type(value).__name__} {value!r}, not a number")
    value = float(value)
    if value != value:
        raise ValueError(f"pruner.budget_cost={path!r} returned NaN")
    return value


def budget_networks(cfg: Any, names: Sequence[str]) -> list[str]:
    """The networks whose sparsity a pruner.budget_cost search sets: pruner.budget_networks (a list of
    names), default all; the others keep their configured sparsity. `cfg`: a pruner mapping or a
    `PrunerConfig`."""
    option = cfg.get if isinstance(cfg, Mapping) else lambda key: getattr(cfg, key)
    value = option("budget_networks")
    if value is None:
        return list(names)
    if option("budget_cost") is None:
        raise ConfigError("pruner.budget_networks applies to pruner.budget_cost only (budget_params / budget_flops "
                          "are given per network)")
    chosen = [value] if isinstance(value, str) else list(value)
    unknown = [n for n in chosen if n not in names]
    if not chosen or unknown:
        raise ConfigError(f"pruner.budget_networks={value!r} is invalid: a non-empty list of networks out of "
                          f"{', '.join(names)} is required")
    return chosen


__all__ = ["BUDGET_COST_MAX_SPARSITY", "BUDGET_COST_TOL", "budget_keep", "budget_networks", "cost_of", "evaluate_cost",
           "least_sparsity_within", "load_cost", "search"]
