"""The training loop every algorithm shares: data -> prune at init -> sparse kernels -> update + enforce
masks -> evaluate.

`train(cfg, run_dir)` is what `run.py` calls; it is also the library entry point. A run directory
holds `checkpoint.pt` (atomic, every `checkpoint_every` steps), `metrics.jsonl`, `eval.csv`,
TensorBoard logs and, at the end, `summary.json`. `resume=true` restarts from the checkpoint and
reproduces the uninterrupted run exactly (all RNG states are checkpointed, and so is the per-layer
choice of kernels, which sets the parameters' shapes).

The parts live in their own modules: the typed config and its checks (`training.config`), the set-up
(`training.setup`), the loop (`training.loop`) and the reports (`training.summary`); this module
re-exports the names callers import from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig

from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.training.config import (
    DEFAULTS,
    EvalConfig,
    RunConfig,
    check_network_mappings,
    check_optimizer,
    resolve_device,
    resolve_sparsity,
    to_dict,
    validate_config,
    validate_pruner_options,
)
from sparse_offline_rl.training.loop import Callback, StepInfo, run_steps, single_step
from sparse_offline_rl.training.setup import Run, problem_spec, setup_run
from sparse_offline_rl.training.summary import dataset_returns, evaluate, finish_run, score_scales, summarize_episodes

__all__ = [
    "DEFAULTS", "Callback", "ConfigError", "EvalConfig", "Run", "RunConfig", "StepInfo", "check_network_mappings",
    "check_optimizer", "dataset_returns", "evaluate", "finish_run", "problem_spec", "resolve_device",
    "resolve_sparsity", "run_steps", "score_scales", "setup_run", "single_step", "summarize_episodes", "to_dict",
    "train", "validate_config", "validate_pruner_options",
]


def train(
    cfg: Mapping[str, Any] | DictConfig,
    run_dir: Path | str,
    dataset: OfflineDataset | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train one run into `run_dir` (resuming it with `resume=true`); returns its summary.json."""
    threads = torch.get_num_threads()
    try:
        run = setup_run(cfg, run_dir, dataset)
        final_eval = run_steps([run], run.start_step, single_step(run, callbacks), lambda metrics: [metrics],
                               desc=f"{run.config.algo_name} s={run.config.sparsity}")[0]
        return finish_run(run, final_eval)
    finally:
        torch.set_num_threads(threads)  # `threads=` is this run's setting, not one for the caller's process
