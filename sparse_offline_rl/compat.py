"""Old module paths keep importing after the package redesign (0.3): each warns once and gives the
module at its new home. Pickled objects and user code that name an old path keep working."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old dotted path -> new dotted path
MOVED = {
    "sparse_offline_rl.pruning.masks": "sparse_offline_rl.sparse.masks",
    "sparse_offline_rl.pruning.graph": "sparse_offline_rl.sparse.wiring",
    "sparse_offline_rl.pruning.sparse_linear": "sparse_offline_rl.sparse.linear",
    "sparse_offline_rl.pruning.sparse_choice": "sparse_offline_rl.sparse.kernels",
    "sparse_offline_rl.pruning.stacked": "sparse_offline_rl.sparse.stacked_layers",
    "sparse_offline_rl.pruning.density": "sparse_offline_rl.sparse.density",
    "sparse_offline_rl.pruning.sparse_init": "sparse_offline_rl.sparse.fan_init",
    "sparse_offline_rl.pruning.dynamic": "sparse_offline_rl.sparse_training.dynamic",
    "sparse_offline_rl.pruning.structured": "sparse_offline_rl.pruning.units",
    "sparse_offline_rl.data.generate": "sparse_offline_rl.generation.generate",
    "sparse_offline_rl.data.policies": "sparse_offline_rl.generation.policies",
    "sparse_offline_rl.data.rollout": "sparse_offline_rl.generation.collect",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib's protocol)
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path will go in a later release",
                      FutureWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module is already executed


def install() -> None:
    """Called once by the package's `__init__`."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
