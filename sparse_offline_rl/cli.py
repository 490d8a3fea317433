"""Command-line glue: turns bad input into one clear line instead of a traceback."""
from __future__ import annotations

import sys
from typing import Any

from sparse_offline_rl.algorithms.base import UnknownNameError
from sparse_offline_rl.data.dataset import DatasetError
from sparse_offline_rl.training.trainer import ConfigError, train

USER_ERRORS = (ConfigError, DatasetError, UnknownNameError, ValueError, FileNotFoundError)


def run_training(cfg: Any, run_dir: str) -> float:
    """Train and return the final normalised score (the value Hydra sweepers optimise)."""
    try:
        summary = train(cfg, run_dir)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"summary: {run_dir}/summary.json  normalized score {summary['eval']['normalized_score_mean']:.1f}")
    return float(summary["eval"]["normalized_score_mean"])
