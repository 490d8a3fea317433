"""Pruning at initialization: score every prunable weight, keep the top ones, enforce the masks.

Layout (as in Synaptic-Flow):
- `prune.py`: the entry points: `saliency(method, module, loss_fn, input_shape, **opts)` (scores for
  any `nn.Module`), `prune_at_initialization(algo, sample_batch, pruner, sparsity, seed)` (what the
  trainer calls: checks the config and dispatches to unstructured pruning or whole units).
- `config.py`: `PrunerConfig`, the typed pruner.* config (every key of configs/pruner/*.yaml, each
  value checked once in `PrunerConfig.from_mapping`), and values given per network.
- `scorers.py`: the scorer registry, one small class per method (name, needs data, default rounds,
  `score(masks)`); `PRUNERS` and `DEFAULT_ROUNDS` are read from it. `scores.py`: the score functions.
- `iterative.py`: `prune_module(module, method, keep, ...)`: masks for one network, the scoring
  rounds of iterative schedules per ensemble member, the layer-collapse check.
- `allocation.py`: scores -> exact per-layer counts and boolean masks (global / layer / ERK scope,
  per ensemble member), the layers kept dense (`keep_dense_layers`), the layer-collapse check.
- `budgets.py`: parameter / FLOP / cost budgets: the bisection on the sparsity, the user's cost function.
- `batches.py`: the scoring batches (drawn once) and each network's seed.
- `weights.py`: unstructured pruning of an algorithm (per-network targets, budgets, the report).
- `units.py`: `pruner.structure=units`: whole hidden units scored (the pruner's weight scores
  summed per unit, or for SNIP / GraSP a unit gate's saliency), removed, and the networks made
  physically narrower, then `weights.py` on the narrow layers for `weight_sparsity`.
- `rng.py`: scoring leaves every RNG of training where it was.

The mechanism the masks live in (masks, wiring, CSR layers, kernels, density, fan init, narrowing,
checkpoint layouts) is `sparse/`; masks that change during training are `sparse_training/`.

Prunable weights are the weight matrices of `nn.Linear` layers (biases and norms are never pruned),
named as in `module.named_parameters()`. After pruning, a layer may be a `SparseLinear` storing only
its kept weights under the same name ("<layer>.weight"); `layer_weights` reads either kind.
"""
from __future__ import annotations

from sparse_offline_rl.pruning.allocation import LayerCollapseError
from sparse_offline_rl.sparse.density import count_params_flops, format_density_table
from sparse_offline_rl.sparse.masks import MaskSet, layer_weights, network_density, prunable_parameters
from sparse_offline_rl.pruning.config import PrunerConfig
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
    "PrunerConfig",
    "count_params_flops",
    "format_density_table",
    "layer_weights",
    "network_density",
    "prunable_parameters",
    "prune_at_initialization",
    "prune_module",
    "saliency",
]
