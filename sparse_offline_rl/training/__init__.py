"""Training runs: the typed run config (`config`), the set-up of a run (`setup`), the loop (`loop`),
its reports (`summary`), `train` (`trainer`) and K agents trained as one stacked group (`stacked`).

The names of `training.trainer` are importable from here too; they load on first use, so importing
one module of the package (e.g. `training.logger`) does not import all of them.
"""
from __future__ import annotations

import importlib
from typing import Any

#: names importable from the package -> the module that holds them
EXPORTS = {"train_stacked": "sparse_offline_rl.training.stacked"}


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        return getattr(importlib.import_module(EXPORTS[name]), name)
    if not name.startswith("_"):
        trainer = importlib.import_module("sparse_offline_rl.training.trainer")
        if name in trainer.__all__:
            return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
