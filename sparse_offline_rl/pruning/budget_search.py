"""The two searches behind pruner.budget_cost (pruner.budget_search):

- `bisect` (default): one sparsity, shared by every searched network, the least whose costs all meet
  their limits (`budgets.search`; each cost assumed not to increase with the sparsity).
- `constrained`: one kept count per prunable layer of the searched networks, chosen by the
  constrained-RL allocator of `constrained.search`, whose reward is the pruner's retained score.

`LayerOrder` is the shared piece: each layer's weights ranked once, so masks of any per-layer counts
are a prefix of that ranking (a probe costs no re-scoring). `compress` reuses it with the trained
weights' magnitudes and a reward of its own. `retained_value` is the reward at initialization, of
both searches' masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning.budgets import BUDGET_COST_MAX_SPARSITY, BUDGET_COST_TOL, evaluate_cost, load_cost, search
from sparse_offline_rl.pruning.constrained import Budget, Counts, SearchSettings
from sparse_offline_rl.pruning.constrained import search as constrained_search
from sparse_offline_rl.seeding import Stream, stream_seed
from sparse_offline_rl.sparse.wiring import LayerGraph, effective_masks

NetMasks = dict[str, dict[str, torch.Tensor]]
SEARCHES = ("bisect", "constrained")  # pruner.budget_search


def layer_key(network: str, param: str) -> str:
    return f"{network}/{param}"


@dataclass(frozen=True)
class CostBudget:
    """One entry of pruner.budget_cost / budget_cost_max: the callable, its path and its limit."""

    path: str
    fn: Callable[..., Any]
    limit: float


def budget_entries(cfg: Any) -> tuple[list[str], list[Any]]:
    """pruner.budget_cost and pruner.budget_cost_max as lists, whether each was given as one value or a list."""
    paths = [cfg.budget_cost] if isinstance(cfg.budget_cost, str) else list(cfg.budget_cost)
    limits = list(cfg.budget_cost_max) if isinstance(cfg.budget_cost_max, (list, tuple)) else [cfg.budget_cost_max]
    return paths, limits


def cost_budgets(cfg: Any) -> list[CostBudget]:
    """pruner.budget_cost (a path or a list) with pruner.budget_cost_max (a number or a list as long)."""
    paths, limits = budget_entries(cfg)
    return [CostBudget(p, load_cost(p), float(v)) for p, v in zip(paths, limits)]


def measured(budgets: Sequence[CostBudget], nets: Mapping[str, nn.Module], masks: NetMasks) -> list[float]:
    return [evaluate_cost(b.fn, b.path, nets, masks) for b in budgets]


def one_or_list(values: Sequence[Any], single: bool) -> Any:
    """A report value as the config gave it: one budget's value, or the list of them."""
    return values[0] if single else list(values)


class LayerOrder:
    """Every searched layer's weights ranked once (highest score first); `masks(counts)` keeps the
    first counts[layer] of each. Layers named in `dense` are left out of `sizes` and kept whole."""

    def __init__(self, scores: Mapping[str, Mapping[str, torch.Tensor]], dense: Mapping[str, Sequence[str]]) -> None:
        self.shapes: dict[str, dict[str, torch.Size]] = {}
        self.order: dict[str, torch.Tensor] = {}
        for net, net_scores in scores.items():
            self.shapes[net] = {p: s.shape for p, s in net_scores.items()}
            for param, s in net_scores.items():
                if param in dense.get(net, ()):
                    continue
                flat = s.detach().flatten().double()
                # A stable sort: ties go to the lower index, as `allocation.top_mask`.
                self.order[layer_key(net, param)] = torch.sort(flat, descending=True, stable=True).indices

    @property
    def sizes(self) -> dict[str, int]:
        return {key: order.numel() for key, order in self.order.items()}

    def masks(self, counts: Counts) -> NetMasks:
        out: NetMasks = {}
        for net, shapes in self.shapes.items():
            out[net] = {}
            for param, shape in shapes.items():
                key = layer_key(net, param)
                mask = torch.ones(shape, dtype=torch.bool)
                if key in self.order:
                    flat = torch.zeros(mask.numel(), dtype=torch.bool)
                    flat[self.order[key][: counts[key]]] = True
                    mask = flat.view(shape)
                out[net][param] = mask
        return out


def retained_value(values: Mapping[str, Mapping[str, torch.Tensor]], masks: NetMasks,
                   dense: Mapping[str, Sequence[str]], graphs: Mapping[str, LayerGraph | None] | None = None) -> float:
    """The reward of `masks`: per network, the `values` of its kept weights over the total |value| of
    its layers not kept dense, summed over the networks of `values`. Where a network's wiring is known
    (`graphs`), only its effective weights count (`wiring.effective_masks`): a weight no path from the
    input to an output crosses cannot matter, and an allocator that kept such weights for their score
    (say, most of a hidden layer whose units the next layer no longer reads) would be paid for nothing."""
    total = 0.0
    for net, net_values in values.items():
        layers = [p for p in net_values if p not in dense.get(net, ())]
        mass = float(sum(net_values[p].detach().abs().double().sum() for p in layers)) or 1.0
        kept = {p: masks[net][p] if net in masks else torch.ones_like(net_values[p], dtype=torch.bool) for p in net_values}
        graph = (graphs or {}).get(net)
        if graph is not None:
            kept = {**kept, **effective_masks(graph, kept)}
        total += float(sum((net_values[p].detach().double() * kept[p].to(net_values[p].device)).sum() for p in layers)) / mass
    return total


def bisect_targets(run: Any, targets: dict[str, float], searched: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """pruner.budget_search=bisect: the least sparsity of the `searched` networks whose costs all meet
    their limits (the others keep their target), and the search's report."""
    cfg, seed, budgets = run.cfg, run.seed, cost_budgets(run.cfg)
    single = isinstance(cfg.budget_cost, str)

    def at(s: float) -> dict[str, float]:
        return {n: s if n in searched else targets[n] for n in targets}

    costs: dict[float, list[float]] = {}

    def worst(s: float) -> float:
        # Every probe starts from the same torch RNG state, so the chosen probe's masks are the final
        # masks (re-pruned after with the configured collapse check).
        torch.manual_seed(seed)
        costs[s] = measured(budgets, run.nets, run.prune_all(at(s), True)[0])
        return 0.0 if all(c <= b.limit for c, b in zip(costs[s], budgets)) else 1.0

    chosen, probes = search(worst, 0.5)
    if chosen is None:
        dense, top = costs[0.0], costs[BUDGET_COST_MAX_SPARSITY]
        raise ValueError("; ".join(
            f"pruner.budget_cost={b.path!r}: no sparsity below 1 meets budget_cost_max={b.limit:g} "
            f"(cost {t:g} at sparsity {BUDGET_COST_MAX_SPARSITY}, {d:g} dense)"
            for b, t, d in zip(budgets, top, dense) if t > b.limit))
    report = {"search": "bisect", "budget_cost": cfg.budget_cost if single else list(cfg.budget_cost),
              "budget_cost_max": one_or_list([b.limit for b in budgets], single),
              "cost": one_or_list(costs[chosen], single), "sparsity": chosen, "networks": searched,
              "tolerance": BUDGET_COST_TOL,
              "probes": [{"sparsity": s, "cost": one_or_list(costs[s], single)} for s, _ in probes]}
    return at(chosen), report


def search_settings(cfg: Any) -> SearchSettings:
    fields = SearchSettings.__dataclass_fields__
    given = {k: getattr(cfg, f"budget_search_{k}") for k in fields if getattr(cfg, f"budget_search_{k}", None) is not None}
    return SearchSettings(**given)


def constrained_masks(run: Any, scores: Mapping[str, Mapping[str, torch.Tensor]],
                      values: Mapping[str, Mapping[str, torch.Tensor]], fixed: NetMasks,
                      searched: list[str], start: Counts | None = None) -> tuple[NetMasks, dict[str, Any]]:
    """pruner.budget_search=constrained: the searched networks' masks at the allocator's per-layer
    counts, each layer keeping its best-ranked weights by `scores` (its network's dense layers whole),
    the reward being the kept effective `values` (`retained_value`); `fixed`: the masks of the networks
    not searched, part of every cost call; `start`: the allocation the search begins from."""
    cfg, budgets = run.cfg, cost_budgets(run.cfg)
    dense = {n: run.setup(n).dense_layers for n in searched}
    order = LayerOrder({n: scores[n] for n in searched}, dense)
    if not order.sizes:
        raise ConfigError(f"pruner.budget_search=constrained: networks {', '.join(searched)} have no prunable "
                          "layer left to search (every layer is kept dense)")

    def all_masks(counts: Counts) -> NetMasks:
        return {**fixed, **order.masks(counts)}

    def cost(b: CostBudget) -> Callable[[Counts], float]:
        return lambda counts: evaluate_cost(b.fn, b.path, run.nets, all_masks(counts))

    graphs = {n: run.setup(n).graph for n in searched}
    result = constrained_search(order.sizes, lambda counts: retained_value(values, order.masks(counts), dense, graphs),
                                [Budget(b.path, cost(b), b.limit) for b in budgets],
                                stream_seed(run.seed, Stream.BUDGET_SEARCH), search_settings(cfg), start=start)
    single = isinstance(cfg.budget_cost, str)
    report = {"search": "constrained", "budget_cost": cfg.budget_cost if single else list(cfg.budget_cost),
              "budget_cost_max": one_or_list([b.limit for b in budgets], single),
              "cost": one_or_list([result.costs[b.path] for b in budgets], single), "networks": searched,
              "reward_is": "retained score of the effective weights (|W| for magnitude and random), per network "
                           "over its total |score|",
              "settings": vars(search_settings(cfg)), **result.report()}
    return order.masks(result.counts), report


__all__ = ["CostBudget", "budget_entries", "LayerOrder", "NetMasks", "SEARCHES", "bisect_targets", "constrained_masks", "cost_budgets",
           "retained_value",
           "layer_key", "measured", "search_settings"]
