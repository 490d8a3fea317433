"""Pruning at initialization, the public entry points.

- `saliency(method, module, loss_fn, input_shape, **opts)`: scores for any `nn.Module`.
- `prune_module(module, method, keep, ...)` (from `iterative.py`): masks for one network.
- `prune_at_initialization(algo, sample_batch, pruner, sparsity, seed)`: what the trainer calls: the
  pruner config checked (`config.PrunerConfig`), then unstructured pruning (`weights.prune_weights`)
  or whole units (`units.prune_units`).

The names the package has always exported from here (`PRUNERS`, `DEFAULT_ROUNDS`, `PRUNER_DEFAULTS`,
`per_network`, `load_cost`, `budget_networks`, `BUDGET_COST_TOL`, ...) live in their own modules.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import keep_count, pin_pruned
from sparse_offline_rl.pruning.budgets import (
    BUDGET_COST_MAX_SPARSITY,
    BUDGET_COST_TOL,
    budget_networks,
    least_sparsity_within,
    load_cost,
)
from sparse_offline_rl.pruning.config import PRUNER_DEFAULTS, PrunerConfig, check_sparsity, per_network
from sparse_offline_rl.pruning.iterative import prune_module, prune_rounds
from sparse_offline_rl.pruning.scorers import DATA_DRIVEN, DEFAULT_ROUNDS, PRUNERS, scorer_class
from sparse_offline_rl.pruning.units import prune_units
from sparse_offline_rl.pruning.weights import prune_weights
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.wiring import network_members, try_layer_graph

SALIENCY_OPTIONS = ("masks", "num_batches", "rounds", "scope", "seed", "sparsity")


def saliency(
    method: str,
    module: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    **opts: Any,
) -> dict[str, torch.Tensor]:
    """Scores for every prunable weight of `module` (Linear weights), keyed by parameter name.

    `loss_fn(module)` returns the scalar data-driven loss (snip, grasp); it is called `num_batches`
    times (default 1) and the gradients averaged, so it may draw a fresh batch per call.
    `input_shape` is the shape of SynFlow's all-ones input (default `(1, in_features)`).

    Options: `num_batches`; `seed` (random); `masks` ({name: bool/0-1 tensor}: score the network
    with those weights removed, pruned entries pinned to -inf); `sparsity` with `rounds` and `scope`
    (global|layer|erk): run the iterative schedule (synflow: 100 rounds) and return the scores of
    the final round, pruned entries pinned to -inf. Without `sparsity` one round is scored.
    Higher is better for every method (GraSP scores are signed: rank them, never abs them).
    """
    scorer = scorer_class(method)
    if method == "dense":
        raise ValueError("pruner 'dense' has no scores; it keeps every weight")
    unknown = sorted(set(opts) - set(SALIENCY_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for saliency(); accepted: {', '.join(SALIENCY_OPTIONS)}")
    losses = [] if loss_fn is None else [partial(loss_fn, module) for _ in range(int(opts.get("num_batches", 1)))]
    graph, _ = try_layer_graph(module)
    score = scorer(module, losses, input_shape, int(opts.get("seed", 0)), type(module).__name__, graph).score
    masks = opts.get("masks")
    if masks is not None:
        masks = {n: m.to(torch.bool) for n, m in masks.items()}
        return pin_pruned(score(masks), masks)
    if opts.get("sparsity") is None:
        return score(None)
    sparsity = check_sparsity(opts["sparsity"], type(module).__name__)
    total = sum(p.numel() for p in prunable_parameters(module).values())
    _, scores = prune_rounds(score, keep_count(total, 1 - sparsity), opts.get("scope", "global"), (),
                             scorer.rounds(opts.get("rounds")), network_members(module, graph))
    return scores


def prune_at_initialization(
    algo: Any,
    sample_batch: Callable[..., Any],
    pruner: Mapping[str, Any],
    sparsity: float | Mapping[str, float],
    seed: int = 0,
) -> tuple[MaskSet, dict[str, Any]]:
    """Prune every online network of `algo` once, before training; return the bound MaskSet and a
    JSON-serialisable report.

    Each network is scored on its own loss, `algo.saliency_loss(name, batch)`, over `num_batches`
    batches of `batch_size` transitions drawn once (all networks see the same batches). Target
    networks share their online network's mask. `sparsity` is a float for all networks or a mapping
    {network: sparsity} (key 'default' as fallback); `budget_params` / `budget_flops` in `pruner`
    replace it by the sparsity that meets that per-network budget. `budget_cost` ('module:function')
    with `budget_cost_max` replaces it by the least sparsity s, applied to every network, whose
    cost({name: copy of the network with its pruned weights zeroed}) <= budget_cost_max: bisection on
    s to BUDGET_COST_TOL, re-pruning with the configured pruner at each probe; the cost is assumed not
    to increase with s. `budget_networks` (a list) limits that search to the named networks; the
    others keep their `sparsity`. `structure="units"` removes whole hidden units instead and makes the
    networks narrower (`units.prune_units`, then `weights.prune_weights` for `weight_sparsity`).

    Pruning consumes none of training's randomness: every RNG (torch, numpy and Python globals, and
    every generator reachable from `algo` and `sample_batch`, e.g. CQL's and TD3+BC's noise) is put
    back after scoring, so training after any pruner draws exactly what it draws after `dense`.
    While scoring, the torch RNG is seeded with `seed` so a stochastic saliency loss is reproducible.
    `sparse_init=True` re-draws the kept weights once the masks are final (`fan_init.sparse_init_`,
    from a generator of its own derived from `seed`); off by default, so the dense initialisation stays
    (the SSP protocol's), `structure=units` refuses it.
    """
    cfg = PrunerConfig.from_mapping(pruner, methods=PRUNERS, keys=list(PRUNER_DEFAULTS))
    if cfg.structure == "units":
        return prune_units(algo, sample_batch, cfg, sparsity, seed)
    return prune_weights(algo, sample_batch, cfg, sparsity, seed)


__all__ = ["BUDGET_COST_MAX_SPARSITY", "BUDGET_COST_TOL", "DATA_DRIVEN", "DEFAULT_ROUNDS", "PRUNERS", "PRUNER_DEFAULTS", "budget_networks", "least_sparsity_within",
           "load_cost", "per_network", "prune_at_initialization", "prune_module", "saliency"]
