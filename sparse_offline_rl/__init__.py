"""sparse-offline-rl: pruning at initialization for offline reinforcement learning."""
from sparse_offline_rl.algorithms import (
    OfflineAlgorithm,
    ProblemSpec,
    available_algorithms,
    make_algorithm,
    register_algorithm,
)
from sparse_offline_rl.data.buffer import Batch, TransitionBuffer
from sparse_offline_rl.data.dataset import DatasetError, OfflineDataset

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DatasetError",
    "OfflineAlgorithm",
    "OfflineDataset",
    "ProblemSpec",
    "TransitionBuffer",
    "available_algorithms",
    "make_algorithm",
    "register_algorithm",
]
