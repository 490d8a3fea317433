"""Offline-RL algorithms: one file each, all behind the `OfflineAlgorithm` protocol."""
from __future__ import annotations

from sparse_offline_rl.algorithms.base import (
    OfflineAlgorithm,
    ProblemSpec,
    UnknownNameError,
    available_algorithms,
    build_config,
    get_algorithm,
    make_algorithm,
    register_algorithm,
)

_plugins_loaded = False


def load_plugins() -> None:
    """Register built-ins (and, later, entry-point plug-ins) once, on first use."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from sparse_offline_rl.algorithms import iql  # noqa: F401  (registration side effect)


__all__ = [
    "OfflineAlgorithm",
    "ProblemSpec",
    "UnknownNameError",
    "available_algorithms",
    "build_config",
    "get_algorithm",
    "load_plugins",
    "make_algorithm",
    "register_algorithm",
]
