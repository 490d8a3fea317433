"""Checkpoint layouts: how a saved pruned algorithm is rebuilt before its state is loaded.

A pruned network's parameters may not have the shapes a freshly built one has: layers narrowed by
structure=units (`narrow.py`, the layout kept in the pruning report) and layers converted to CSR
`SparseLinear` (`kernels.py`, the choice kept as `kernels_of`). `restore_pruned` redoes both on a
fresh algorithm, in that order, and then loads the state (resume, evaluation, export, stacking).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from sparse_offline_rl.sparse.kernels import apply_sparse_kernels
from sparse_offline_rl.sparse.masks import MaskSet
from sparse_offline_rl.sparse.narrow import narrow_algorithm


def restore_pruned(algo, state: Mapping[str, Any], masks_state: Mapping[str, Mapping[str, torch.Tensor]],
                   kernels: Mapping[str, Mapping[str, str]] | None,
                   units: Mapping[str, Mapping[str, Any]] | None = None) -> MaskSet:
    """Load a saved pruned algorithm into a freshly built `algo`: networks pruned by units are narrowed
    first (`units`: {network: layout}, `narrow.layouts_of(report)`), then its layers are converted
    as the saved `kernels` say (None: all dense-masked, as before sparse kernels existed), before the
    state is loaded, since narrow and sparse layers' parameters have other shapes. Returns the bound masks."""
    narrow_algorithm(algo, units)
    masks = apply_sparse_kernels(algo, MaskSet.from_state_dict(masks_state), kernels or {})
    algo.load_state_dict(state)
    return masks


__all__ = ["restore_pruned"]
