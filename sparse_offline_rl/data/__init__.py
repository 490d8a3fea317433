"""Offline datasets: loaders (project ids, local Minari, D4RL HDF5) and dataset generation.

The loaders are imported lazily: `sparse_offline_rl.algorithms` imports `data.buffer`, and loading
minari/gymnasium there would slow every import of the package.
"""
from __future__ import annotations

import importlib
from typing import Any

from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.errors import DatasetError

_LAZY = {
    "QUALITIES": "generate",
    "make_dataset": "generate",
    "minari_id": "generate",
    "available_ids": "loaders",
    "load_d4rl_hdf5": "loaders",
    "load_dataset": "loaders",
    "load_minari": "loaders",
}

__all__ = ["DatasetError", "OfflineDataset", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sparse_offline_rl.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sparse_offline_rl.data' has no attribute '{name}'")
