"""sparse-offline-rl: pruning at initialization for offline reinforcement learning.

Writing an algorithm: implement `OfflineAlgorithm`, give the class a dataclass `Config` with a
default for every field, decorate it with `@register_algorithm("name")` (see README, "Adding an
algorithm"). It then trains with `train(...)` / `make_algorithm(...)`, and from the command line
with `python run.py plugins=my_algo.py algo=name`, or as `algo=name` alone once installed with an
entry point in the group `sparse_offline_rl.algorithms`.
"""
from sparse_offline_rl import compat

compat.install()

from sparse_offline_rl.algorithms import (
    OfflineAlgorithm,
    ProblemSpec,
    available_algorithms,
    get_algorithm,
    load_plugins,
    make_algorithm,
    register_algorithm,
)
from sparse_offline_rl.algorithms.base import collect_state, restore_state
from sparse_offline_rl.algorithms.plugins import ENTRY_POINT_GROUP, import_plugin, plugin_errors
from sparse_offline_rl.data.buffer import Batch, TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.errors import ConfigError, DatasetError, UnknownNameError

__version__ = "0.2.0"  # 0.2.0: every random stream derived from (seed, purpose); results at a seed changed

__all__ = [
    "ENTRY_POINT_GROUP",
    "Batch",
    "ConfigError",
    "DatasetError",
    "OfflineAlgorithm",
    "OfflineDataset",
    "ProblemSpec",
    "TransitionBuffer",
    "UnknownNameError",
    "available_algorithms",
    "collect_state",
    "get_algorithm",
    "import_plugin",
    "load_plugins",
    "make_algorithm",
    "plugin_errors",
    "register_algorithm",
    "restore_state",
]
