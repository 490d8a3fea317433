"""Pruning at initialization: score every prunable weight, keep the top ones, enforce the masks.

Layout (as in Synaptic-Flow):
- `prune.py`: the entry points: `saliency(method, module, loss_fn, input_shape, **opts)` (scores for
  any `nn.Module`), `prune_module(module, method, keep, ...)` (masks for one network, iterative
  schedules included), `prune_at_initialization(algo, sample_batch, pruner, sparsity, seed)` (what
  the trainer calls: options, per-network targets and budgets, scoring batches, the report).
- `scores.py`: one small function per saliency method.
- `allocation.py`: scores -> exact per-layer counts and boolean masks (global / layer / ERK scope,
  per ensemble member), the layer-collapse check.
- `graph.py`: how a network's Linear layers are wired, read from its `forward`.
- `density.py`: what pruning kept: params and FLOPs, the per-network report, the density table.
- `masks.py`: the masks during training (re-applied by optimizer hooks, changed by `set_masks`).
- `dynamic.py`: sparsity during training (GMP, SET, RigL, Gibbs): schedules, mask updates, training FLOPs.
- `rng.py`: scoring leaves every RNG of training where it was.
- `sparse_init.py`: `pruner.sparse_init`, the kept weights re-drawn to their fans under the mask.
- `sparse_linear.py`, `sparse_choice.py`: compressed sparse layers for pruned networks, and the
  measured per-layer choice between them and dense-masked layers.
- `structured.py`: `pruner.structure=units`: whole hidden units scored (the pruner's weight scores
  summed per unit, or for SNIP / GraSP a unit gate's saliency), removed, and the networks made
  physically narrower (`narrow_algorithm`).

Prunable weights are the weight matrices of `nn.Linear` layers (biases and norms are never pruned),
named as in `module.named_parameters()`. After pruning, a layer may be a `SparseLinear` storing only
its kept weights under the same name ("<layer>.weight"); `layer_weights` reads either kind.
"""
from __future__ import annotations

from sparse_offline_rl.pruning.allocation import LayerCollapseError
from sparse_offline_rl.sparse.density import count_params_flops, format_density_table
from sparse_offline_rl.sparse.masks import MaskSet, layer_weights, network_density, prunable_parameters
from sparse_offline_rl.pruning.prune import (
    DEFAULT_ROUNDS,
    PRUNER_DEFAULTS,
    PRUNERS,
    per_network,
    prune_at_initialization,
    prune_module,
    saliency,
)



__all__ = [
    "per_network",
    "DEFAULT_ROUNDS",
    "LayerCollapseError",
    "MaskSet",
    "PRUNERS",
    "PRUNER_DEFAULTS",
    "count_params_flops",
    "format_density_table",
    "layer_weights",
    "network_density",
    "prunable_parameters",
    "prune_at_initialization",
    "prune_module",
    "saliency",
]
