"""Sparsity-aware initialisation (`pruner.sparse_init`): once the masks are chosen, the kept weights
are re-drawn with a variance scaled to the fans each unit has *under the mask*.

A masked layer keeps the dense initialisation's per-weight variance but only a fraction d of the
weights, so a unit's pre-activation variance shrinks to about d times a dense unit's (1/20 at 95%
sparsity). The google-research rigl code for sparse training in RL (`init_masks.fixed_sparse_init`
in `rigl/rl/sparse_utils.py`, drawing with `rigl/rigl_tf2/init_utils.py: unit_scaled_init_tf1`,
its default `fanavg_uniform`, scale 1) re-draws every masked layer instead: the kept weight from
input unit i to output unit o is drawn from U(-a, a),

    a = sqrt(3 * scale / max(1, (fan_in(o) + fan_out(i)) / 2)),

fan_in(o) the weights into o the mask keeps (its row), fan_out(i) the weights out of i it keeps (its
column), so per connection, not per layer; its variance a^2 / 3 = scale / fan_avg. At density 1
this is Glorot (fan-avg) uniform, the reference's dense initialisation (Keras'), not PyTorch's
nn.Linear default (variance 1 / (3 fan_in)). Biases are left as they are (the reference re-draws
only the masked kernels). An algorithm's own weight initialisation of a masked layer (CQL's scaled-
down output layer) is replaced too, as the reference replaces every masked kernel.

The draws come from a generator of their own, derived from the seed and its purpose (`seeding.Stream.SPARSE_INIT`),
so they consume none of training's randomness: a run with sparse_init draws the same batches and
noise as one without. Target networks get the same values (they start equal to the online ones).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.seeding import Stream, stream_seed

#: The reference's `unit_scaled_init` scale (variance = scale / fan_avg).
SCALE = 1.0


def check(pruner: Mapping[str, Any]) -> bool:
    """`pruner.sparse_init` (None: off) as a bool; ValueError in one line when it is not one, or is
    asked for with structure=units (narrowed layers without weight masks: there is nothing to re-draw
    under a mask, and a silent no-op would mislead)."""
    value = pruner.get("sparse_init")
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"pruner.sparse_init={value!r} is invalid: true or false is required")
    if value and (pruner.get("structure") or "unstructured") != "unstructured":
        raise ValueError("pruner.sparse_init is not offered with pruner.structure=units: it re-draws weights under "
                         "weight masks (structure=unstructured)")
    return bool(value)


def init_generator(seed: int) -> torch.Generator:
    """The re-draw's own generator: seeded from (seed, its purpose), never from a stream training reads."""
    return torch.Generator().manual_seed(stream_seed(seed, Stream.SPARSE_INIT))


def unit_scaled_limits(mask: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """Per entry of an (..., out, in) mask the bound a of its uniform draw (see the module doc):
    fan_in of the entry's output unit = kept entries of its row, fan_out of its input unit = kept
    entries of its column; a leading member dimension (stacked (K, out, in) weights) is per member."""
    m = mask.detach().double()
    fan_avg = (m.sum(-1, keepdim=True) + m.sum(-2, keepdim=True)) / 2
    return torch.sqrt(3.0 * scale / fan_avg.clamp(min=1.0))


def unit_scaled_init(mask: torch.Tensor, generator: torch.Generator, scale: float = SCALE) -> torch.Tensor:
    """New values for a masked weight: U(-a, a) per kept entry, 0 where the mask prunes. Drawn on the
    CPU in float64 for every entry (kept or not), so a draw does not depend on the device."""
    u = torch.rand(mask.shape, generator=generator, dtype=torch.float64)
    return (2 * u - 1) * unit_scaled_limits(mask.cpu(), scale) * mask.detach().cpu().bool()


def sparse_init_(algo: Any, masks: MaskSet, seed: int, scale: float = SCALE) -> None:
    """Re-draw the kept weights of every masked layer of `algo` (networks in `masks` order, layers in
    their order) and copy them into the target networks. Call after pruning, before the first
    optimizer step (optimizer state is not touched). The layers must be dense-masked nn.Linear."""
    generator = init_generator(seed)
    nets, targets = algo.networks(), algo.target_networks()
    with torch.no_grad():
        for name, layer_masks in masks.masks.items():
            online = prunable_parameters(nets[name])
            target = prunable_parameters(targets[name]) if name in targets else {}
            for pname, mask in layer_masks.items():
                if pname not in online:
                    raise ValueError(f"'{name}.{pname}' is not a dense-masked nn.Linear weight: sparse_init runs "
                                     "before layers are compressed")
                weight = online[pname]
                new = unit_scaled_init(mask, generator, scale).to(device=weight.device, dtype=weight.dtype)
                weight.copy_(new)
                if pname in target:
                    target[pname].copy_(new)


__all__ = ["SCALE", "check", "init_generator", "sparse_init_", "unit_scaled_init", "unit_scaled_limits"]
