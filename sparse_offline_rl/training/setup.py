"""Everything of a run before its first step: `setup_run` checks the config, loads and prepares the
data, builds the algorithm and prunes it at initialization (choosing its sparse kernels), or restores
all of it from `checkpoint.pt` with `resume`, and returns the `Run` that the loop, evaluations,
checkpoints and the summary use.

The order of the steps is part of the result: every random draw (network initialisation, batch
streams, pruning batches) happens in the same order for a new run and the run it resumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig

from sparse_offline_rl.algorithms import OfflineAlgorithm, ProblemSpec, algorithm_config, make_algorithm, prepare_data
from sparse_offline_rl.data.buffer import ObsNormalizer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.evaluation.diagnostics import TrainingDiagnostics
from sparse_offline_rl.evaluation.rollout import EpisodeStats, eval_seeds
from sparse_offline_rl.io import atomic_torch_save, load_checkpoint
from sparse_offline_rl.pruning import MaskSet, prune_at_initialization
from sparse_offline_rl.seeding import Stream, stream_seed
from sparse_offline_rl.sparse.checkpoint import restore_pruned
from sparse_offline_rl.sparse.kernels import add_to_report, apply_sparse_kernels, choose_kernels, kernels_of
from sparse_offline_rl.sparse.narrow import layouts_of
from sparse_offline_rl.sparse_training.dynamic import SparseTraining
from sparse_offline_rl.training.config import RunConfig, resolve_device, resolve_sparsity, to_dict, validate_config
from sparse_offline_rl.training.logger import MetricsLogger
from sparse_offline_rl.training.summary import evaluate


@dataclass(kw_only=True)
class Run:
    """One run between its set-up and its summary: what the loop, evaluations and checkpoints use.
    `train` drives one; `training.stacked` drives several members of a group through one algorithm.
    `cfg` is the config dict (saved in the checkpoint and summary), `config` the same typed."""

    cfg: dict[str, Any]
    config: RunConfig
    run_dir: Path
    dataset: OfflineDataset
    train_data: OfflineDataset
    val_data: OfflineDataset | None
    normalizer: ObsNormalizer
    reward_scale: float
    device: str
    algo: OfflineAlgorithm
    masks: MaskSet
    kernels: dict[str, dict[str, str]]
    buffer: Any
    pruning_report: dict[str, Any]
    logger: MetricsLogger
    diagnostics: TrainingDiagnostics
    seeds_for_eval: list[int]
    discount: float
    sparse_training: SparseTraining
    start_step: int = 0
    train_seconds: float = 0.0
    last_eval: dict[str, float] | None = None

    def save_checkpoint(self, step: int) -> None:
        atomic_torch_save(self.run_dir / "checkpoint.pt", {
            "step": step, "algo": self.algo.state_dict(), "masks": self.masks.state_dict(), "sparse_kernels": self.kernels,
            "buffer": self.buffer.state_dict(), "sparse_training": self.sparse_training.state_dict(),
            "torch_rng": torch.get_rng_state(), "train_seconds": self.train_seconds, "last_eval": self.last_eval,
            "pruning_report": self.pruning_report, "config": self.cfg,
        })

    def run_eval(self, step: int) -> dict[str, float]:
        result, episodes = evaluate(self.algo, self.normalizer, self.dataset, self.config.env, self.seeds_for_eval,
                                    self.device, self.discount)
        return self.log_eval(step, result, episodes)

    def log_eval(self, step: int, result: dict[str, float], episodes: EpisodeStats) -> dict[str, float]:
        self.logger.log(step, "eval", result)
        self.logger.log(step, "diagnostics", self.diagnostics(step, episodes))
        return result


@dataclass
class Start:
    """Where training starts: a new run pruned at initialization (step 0), or the checkpoint's state."""

    masks: MaskSet
    kernels: dict[str, dict[str, str]]
    pruning_report: dict[str, Any]
    step: int = 0
    train_seconds: float = 0.0
    last_eval: dict[str, float] | None = None


def setup_run(cfg: Mapping[str, Any] | DictConfig, run_dir: Path | str, dataset: OfflineDataset | None) -> Run:
    """Everything of a run before its first step: checks, data, the algorithm pruned at
    initialization (or restored from the checkpoint with `resume`), logger and diagnostics."""
    cfg = to_dict(cfg)
    config = validate_config(cfg)
    check_suite(config.eval.suite)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = start_process(config)
    dataset = run_dataset(config, dataset)
    data = prepare_data(cfg, dataset, device)
    buffer = data.buffer(stream_seed(config.seed, Stream.TRAIN_BATCHES))
    algo = make_algorithm(config.algo_name, problem_spec(config, dataset, device), algorithm_config(config.algo))
    sparsity = resolve_sparsity(config.sparsity, list(algo.networks()))
    # Masks over time (GMP, SET, RigL change them during training) and the training FLOPs, any pruner.
    sparse_training = SparseTraining(config.pruner, config.steps, sparsity, config.batch_size,
                                     stream_seed(config.seed, Stream.MASK_UPDATES), config.sparse_kernels)
    logger = MetricsLogger(run_dir, tensorboard=config.tensorboard)
    ckpt_path = run_dir / "checkpoint.pt"
    if config.resume and ckpt_path.exists():
        start = resume_run(ckpt_path, device, algo, buffer, sparse_training, logger)
    else:
        start = prune_new_run(config, data, algo, sparsity, sparse_training)
        search = start.pruning_report.get("budget_cost")
        if isinstance(search, dict) and search.get("search") == "constrained":
            from sparse_offline_rl.evaluation.figures import plot_budget_search

            plot_budget_search(search, run_dir / "budget_search.png")
    discount = float(config.algo.get("discount", 0.99))
    # Start states follow the run seed, so the spread over seeds includes the spread over start states.
    seeds_for_eval = eval_seeds(config.seed, config.eval.episodes)
    if start.step == 0:
        logger.log(0, "eval_seeds", {"seeds": seeds_for_eval})
    # Overfitting diagnostics: fixed probe sets and their own generator, so training is unaffected.
    diagnostics = TrainingDiagnostics(
        algo, buffer, data.val, data.normalizer, data.reward_scale, config.env, discount, start_state_seeds=seeds_for_eval,
        device=device, run_dir=run_dir, start_step=start.step, seed=config.seed,
    )
    return Run(cfg=cfg, config=config, run_dir=run_dir, dataset=dataset, train_data=data.train, val_data=data.val,
               normalizer=data.normalizer, reward_scale=data.reward_scale, device=device, algo=algo, masks=start.masks,
               kernels=start.kernels, buffer=buffer, pruning_report=start.pruning_report, logger=logger,
               diagnostics=diagnostics, seeds_for_eval=seeds_for_eval, discount=discount,
               sparse_training=sparse_training, start_step=start.step, train_seconds=start.train_seconds,
               last_eval=start.last_eval)


def check_suite(suite_name: str | None) -> None:
    """An unknown `eval.suite` fails now, not after training."""
    if suite_name:
        from sparse_offline_rl.evaluation.suite import get_suite

        get_suite(suite_name)


def start_process(config: RunConfig) -> str:
    """This run's torch threads and global RNG seeds; returns the device it trains on."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(stream_seed(config.seed, Stream.TORCH_GLOBAL))
    np.random.seed(stream_seed(config.seed, Stream.NUMPY_GLOBAL) % 2**32)
    return device


def run_dataset(config: RunConfig, dataset: OfflineDataset | None) -> OfflineDataset:
    """The run's dataset (loaded unless given), checked against the env's dimensions."""
    if dataset is None:
        from sparse_offline_rl.data import load_dataset

        dataset = load_dataset(config.dataset, env=config.env)
    task = get_task(config.env)
    dataset.check_env((task.obs_dim,), (task.act_dim,), task.env_id)
    return dataset


def problem_spec(config: RunConfig, dataset: OfflineDataset, device: str, members: int = 1) -> ProblemSpec:
    # MuJoCo v5 locomotion actions all lie in [-1, 1].
    return ProblemSpec(dataset.obs_dim, dataset.act_dim, max_action=1.0, total_steps=config.steps, device=device,
                       optim=config.optim, members=members)


def resume_run(ckpt_path: Path, device: str, algo: OfflineAlgorithm, buffer: Any, sparse_training: SparseTraining,
               logger: MetricsLogger) -> Start:
    """The checkpoint's state into the freshly built run (algorithm, masks, buffer and RNG streams)."""
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    # The saved kernels, not a new measurement: they fix the parameters' shapes, and one path
    # keeps the resumed run bit-exact.
    kernels = ckpt.get("sparse_kernels") or {}
    masks = restore_pruned(algo, ckpt["algo"], ckpt["masks"], kernels, units=layouts_of(ckpt["pruning_report"]))
    buffer.load_state_dict(ckpt["buffer"])
    torch.set_rng_state(ckpt["torch_rng"])
    start = Start(masks, kernels, ckpt["pruning_report"], ckpt["step"], ckpt["train_seconds"], ckpt["last_eval"])
    sparse_training.load_state_dict(ckpt.get("sparse_training"), algo, masks, kernels)
    logger.truncate_after(start.step)
    print(f"resumed from {ckpt_path} at step {start.step}")
    return start


def prune_new_run(config: RunConfig, data: Any, algo: OfflineAlgorithm, sparsity: dict[str, float],
                  sparse_training: SparseTraining) -> Start:
    """Pruning at initialization, then the layers' kernels (compressed sparse where faster)."""
    pruner_cfg = {"batch_size": config.batch_size, **sparse_training.initial_pruner()}
    # Pruning batches come from their own generator so they never shift the training batch stream.
    pruning_buffer = data.buffer(stream_seed(config.seed, Stream.PRUNING_BATCHES))
    masks, pruning_report = prune_at_initialization(
        algo, lambda: pruning_buffer.sample(int(pruner_cfg["batch_size"])), pruner_cfg, sparsity,
        seed=stream_seed(config.seed, Stream.PRUNING),
    )
    del pruning_buffer
    kernels = set_kernels(config, algo, masks, pruning_report)
    sparse_training.start(algo, masks, kernels)
    if config.verbose:
        from sparse_offline_rl.pruning import format_density_table

        print(format_density_table(pruning_report))
    return Start(masks, kernels, pruning_report)


def set_kernels(config: RunConfig, algo: OfflineAlgorithm, masks: MaskSet,
                pruning_report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Compressed sparse layers where they are faster (measured per layer at this batch size), recorded
    in the pruning report."""
    choices = choose_kernels(algo, masks, config.batch_size, config.sparse_kernels)
    kernels = kernels_of(choices)
    apply_sparse_kernels(algo, masks, kernels)
    add_to_report(pruning_report, choices, config.sparse_kernels, config.batch_size)
    return kernels
