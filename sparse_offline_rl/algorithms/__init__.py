"""Offline-RL algorithms: one file each, all behind the `OfflineAlgorithm` protocol."""
from __future__ import annotations

from sparse_offline_rl.algorithms.base import (
    OfflineAlgorithm,
    ProblemSpec,
    algorithm_config,
    available_algorithms,
    build_config,
    get_algorithm,
    make_algorithm,
    prepare_data,
    register_algorithm,
)
from sparse_offline_rl.errors import UnknownNameError

_plugins_loaded = False


def load_plugins() -> None:
    """Register, once and on first use: the built-ins, the `d3rlpy:<name>` backend (d3rlpy itself is
    only imported when one is built) and installed entry-point plug-ins (group
    `sparse_offline_rl.algorithms`; a broken one is skipped with a warning naming it)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from sparse_offline_rl.algorithms import cql, iql, td3bc  # noqa: F401  (registration side effect)
    from sparse_offline_rl.algorithms import d3rlpy_backend  # noqa: F401  (registration side effect)
    from sparse_offline_rl.algorithms.plugins import load_entry_points

    load_entry_points()


__all__ = [
    "OfflineAlgorithm",
    "ProblemSpec",
    "UnknownNameError",
    "algorithm_config",
    "available_algorithms",
    "build_config",
    "get_algorithm",
    "load_plugins",
    "make_algorithm",
    "prepare_data",
    "register_algorithm",
]
