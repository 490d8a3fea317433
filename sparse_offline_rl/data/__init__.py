"""Offline datasets: loaders (project ids, local Minari, D4RL HDF5), the dataset type, replay buffers,
environments. Making the project's datasets is `sparse_offline_rl.generation`; `make_dataset` is
re-exported here, where it was before.

The loaders are imported lazily: `sparse_offline_rl.algorithms` imports `data.buffer`, and loading
minari/gymnasium there would slow every import of the package.
"""
from __future__ import annotations

import importlib
from typing import Any

from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.errors import DatasetError

_LAZY = {  # name -> its module
    "QUALITIES": "sparse_offline_rl.data.project",
    "make_dataset": "sparse_offline_rl.generation.generate",
    "minari_id": "sparse_offline_rl.data.project",
    "available_ids": "sparse_offline_rl.data.loaders",
    "load_d4rl_hdf5": "sparse_offline_rl.data.loaders",
    "load_dataset": "sparse_offline_rl.data.loaders",
    "load_minari": "sparse_offline_rl.data.loaders",
}

__all__ = ["DatasetError", "OfflineDataset", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_offline_rl.data' has no attribute '{name}'")
