"""Budgets for a trained agent (`python -m sparse_offline_rl.compress`): which of its weights to keep.

Within a layer the weights are ranked by their trained magnitude |W|. A weight that is already zero
(pruned during training, or trained to exactly zero) is never kept again: each layer can keep at most
its current nonzeros, so the compressed masks are a subset of the trained nonzeros and fine-tuning can
only train weights that were there.

- `constrained`: per-layer kept counts from the constrained-RL allocator (`constrained.search`), the
  layers' sizes capped at their nonzeros, the reward supplied by the caller (fidelity to the trained
  networks, `evaluation.fidelity`), started from bisection's answer.
- `bisect`: one sparsity s shared by the compressed networks, each network pruned by global
  magnitude at s (as pruner=magnitude scope=global: keep_count(total, 1 - s) of its weights, the
  already-zero ones ranked below every other), the least s meeting every budget (`budgets.search`).

`masks` of either are full masks of the compressed networks; the networks not compressed keep theirs.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning.allocation import allocate, keep_count, pin_pruned
from sparse_offline_rl.pruning.budget_search import (
    CostBudget, LayerOrder, NetMasks, layer_key, measured, one_or_list)
from sparse_offline_rl.pruning.budgets import BUDGET_COST_MAX_SPARSITY, BUDGET_COST_TOL, evaluate_cost
from sparse_offline_rl.pruning.budgets import search as bisection
from sparse_offline_rl.pruning.constrained import Budget, Counts, SearchSettings
from sparse_offline_rl.pruning.constrained import search as constrained_search
from sparse_offline_rl.sparse.masks import prunable_parameters

Reward = Callable[[NetMasks], float]  # the quality of the compressed networks under these masks


def trained_weights(nets: Mapping[str, nn.Module], names: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The prunable weights of the named networks, detached copies on the CPU (dense nn.Linear layers)."""
    return {n: {p: w.detach().cpu().clone() for p, w in prunable_parameters(nets[n]).items()} for n in names}


def kept_counts(masks: NetMasks) -> Counts:
    return {layer_key(n, p): int(m.sum()) for n, pm in masks.items() for p, m in pm.items()}


class TrainedOrder:
    """The trained weights of the compressed networks ranked by |W| in each layer; `masks(counts)`
    keeps the counts[layer] largest, never more than the layer's nonzeros (`caps`)."""

    def __init__(self, weights: Mapping[str, Mapping[str, torch.Tensor]], device: torch.device | str = "cpu") -> None:
        self.weights, self.device = weights, torch.device(device)  # ranked on the CPU, masks on `device`
        self.order = LayerOrder({n: {p: w.abs() for p, w in pw.items()} for n, pw in weights.items()}, {})
        self.caps = {layer_key(n, p): int(torch.count_nonzero(w)) for n, pw in weights.items() for p, w in pw.items()}
        # A layer with no nonzero left keeps nothing and is not searched (the allocator keeps >= 1 per layer).
        self.sizes = {k: c for k, c in self.caps.items() if c > 0}
        if not self.sizes:
            raise ConfigError(f"networks={','.join(weights)}: every prunable weight is zero; nothing to compress")

    def masks(self, counts: Counts) -> NetMasks:
        return self.on_device(self.order.masks({**{k: 0 for k in self.caps}, **counts}))

    def on_device(self, masks: NetMasks) -> NetMasks:
        return {n: {p: m.to(self.device) for p, m in pm.items()} for n, pm in masks.items()}

    def at_sparsity(self, sparsity: float) -> NetMasks:
        """Global magnitude within each network at `sparsity` (already-zero weights ranked last, never kept)."""
        out: NetMasks = {}
        for net, pw in self.weights.items():
            scores = pin_pruned({p: w.abs() for p, w in pw.items()}, {p: w != 0 for p, w in pw.items()})
            total = sum(w.numel() for w in pw.values())
            nonzero = sum(self.caps[layer_key(net, p)] for p in pw)
            # One weight at least, so that the sparsest probe is a network still (as the allocator's floor).
            out[net] = allocate(scores, min(nonzero, max(1, keep_count(total, 1 - sparsity))), "global")
        return self.on_device(out)


def search_record(budgets: Sequence[CostBudget], single: bool, costs: Sequence[float]) -> dict[str, Any]:
    return {"budget_cost": one_or_list([b.path for b in budgets], single),
            "budget_cost_max": one_or_list([b.limit for b in budgets], single), "cost": one_or_list(costs, single)}


def compress_constrained(order: TrainedOrder, nets: Mapping[str, nn.Module], reward: Reward,
                         budgets: Sequence[CostBudget], seed: int, settings: SearchSettings,
                         fixed: NetMasks, single: bool) -> tuple[NetMasks, dict[str, Any]]:
    """Per-layer counts by the constrained-RL allocator; the reward `reward(masks)` of the compressed
    networks' masks; `fixed`: the other networks' masks, part of every cost call."""
    def cost(b: CostBudget) -> Callable[[Counts], float]:
        return lambda counts: evaluate_cost(b.fn, b.path, nets, {**fixed, **order.masks(counts)})

    # Start where bisection ends: its answer is then a probe, so the allocator never returns less reward.
    try:
        start_masks, start_report = compress_bisect(order, nets, reward, budgets, fixed, single)
        start = {k: c for k, c in kept_counts(start_masks).items() if k in order.sizes}
        start_record = {k: start_report[k] for k in ("search", "sparsity", "reward", "cost")}
        start_record["probes"] = len(start_report["probes"])
    except ConfigError as err:
        start, start_record = None, {"search": "bisect", "infeasible": str(err)}
    try:
        result = constrained_search(order.sizes, lambda counts: reward(order.masks(counts)),
                                    [Budget(b.path, cost(b), b.limit) for b in budgets], seed, settings, start=start)
    except ConfigError as err:
        # The allocator's lines name pruning at initialization's keys; this command's are budget_cost, probes.
        raise ConfigError(str(err).replace("pruner.budget_search_probes", "probes").replace("pruner.", "")) from None
    report = {"search": "constrained", **search_record(budgets, single, [result.costs[b.path] for b in budgets]),
              "settings": vars(settings), "caps": order.caps, "start": start_record, **result.report()}
    return order.masks(result.counts), report


def compress_bisect(order: TrainedOrder, nets: Mapping[str, nn.Module], reward: Reward,
                    budgets: Sequence[CostBudget], fixed: NetMasks, single: bool) -> tuple[NetMasks, dict[str, Any]]:
    """The least shared sparsity of the compressed networks (global magnitude in each) meeting every
    budget; ConfigError when not even the sparsest probe does."""
    probes: dict[float, dict[str, Any]] = {}

    def worst(s: float) -> float:
        masks = order.at_sparsity(s)
        costs = measured(budgets, nets, {**fixed, **masks})
        probes[s] = {"sparsity": s, "cost": one_or_list(costs, single), "reward": reward(masks),
                     "feasible": all(c <= b.limit for c, b in zip(costs, budgets))}
        return 0.0 if probes[s]["feasible"] else 1.0

    chosen, order_probed = bisection(worst, 0.5)
    if chosen is None:
        top = probes[BUDGET_COST_MAX_SPARSITY]["cost"]
        top = [top] if single else top
        raise ConfigError("; ".join(
            f"budget_cost={b.path!r}: no sparsity below 1 meets budget_cost_max={b.limit:g} (cost {t:g} at "
            f"sparsity {BUDGET_COST_MAX_SPARSITY}, keeping one weight per network at least)"
            for b, t in zip(budgets, top) if t > b.limit))
    masks = order.at_sparsity(chosen)
    costs = [probes[chosen]["cost"]] if single else probes[chosen]["cost"]
    report = {"search": "bisect", **search_record(budgets, single, costs), "sparsity": chosen,
              "reward": probes[chosen]["reward"], "counts": kept_counts(masks), "tolerance": BUDGET_COST_TOL,
              "probes": [probes[s] for s, _ in order_probed]}
    return masks, report


__all__ = ["Reward", "TrainedOrder", "compress_bisect", "compress_constrained", "kept_counts", "search_record",
           "trained_weights"]
