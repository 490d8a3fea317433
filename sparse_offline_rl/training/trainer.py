"""The training loop every algorithm shares: data -> prune at init -> sparse kernels -> update + enforce
masks -> evaluate.

`train(cfg, run_dir)` is what `run.py` calls; it is also the library entry point. A run directory
holds `checkpoint.pt` (atomic, every `checkpoint_every` steps), `metrics.jsonl`, `eval.csv`,
TensorBoard logs and, at the end, `summary.json`. `resume=true` restarts from the checkpoint and
reproduces the uninterrupted run exactly (all RNG states are checkpointed, and so is the per-layer
choice of kernels, which sets the parameters' shapes).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sparse_offline_rl.algorithms import OfflineAlgorithm, ProblemSpec, algorithm_config, get_algorithm, make_algorithm, prepare_data
from sparse_offline_rl.algorithms.networks import OPTIMIZERS
from sparse_offline_rl.checks import check_value
from sparse_offline_rl.data.buffer import ObsNormalizer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.envs import d4rl_normalized_score, get_task, make_env
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.evaluation.agent import pruner_label
from sparse_offline_rl.evaluation.diagnostics import TrainingDiagnostics
from sparse_offline_rl.evaluation.rollout import MAX_EVAL_EPISODES, SEED_RANGE, AgentPolicy, EpisodeStats, eval_seeds, run_episodes
from sparse_offline_rl.io import atomic_torch_save, atomic_write_json, code_version, load_checkpoint
from sparse_offline_rl.pruning import MaskSet, prune_at_initialization
from sparse_offline_rl.sparse_training.dynamic import SparseTraining
from sparse_offline_rl.sparse.kernels import (
    MODES,
    add_to_report,
    apply_sparse_kernels,
    choose_kernels,
    kernels_of,
)
from sparse_offline_rl.sparse.checkpoint import restore_pruned
from sparse_offline_rl.pruning.units import check_options
from sparse_offline_rl.sparse.narrow import layouts_of, network_densities
from sparse_offline_rl.seeding import Stream, stream_seed
from sparse_offline_rl.training.logger import MetricsLogger


@dataclass
class StepInfo:
    """What callbacks see after every step (d3rlpy-style per-step hook)."""

    step: int
    algo: OfflineAlgorithm
    metrics: dict[str, torch.Tensor]
    masks: MaskSet


Callback = Callable[[StepInfo], None]


def to_dict(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def validate_pruner_options(pruner: Mapping[str, Any]) -> None:
    """The pruner.* keys, checked before the data loads (pruning itself runs after it)."""
    from sparse_offline_rl.sparse_training.dynamic import DYNAMIC_DEFAULTS, options
    from sparse_offline_rl.pruning.prune import PRUNER_DEFAULTS

    unknown = sorted(set(pruner) - {"name", *PRUNER_DEFAULTS, *DYNAMIC_DEFAULTS})
    if unknown:
        raise ConfigError(f"pruner.{unknown[0]} is not a pruner option; accepted: "
                          f"{', '.join([*PRUNER_DEFAULTS, *DYNAMIC_DEFAULTS])}")
    try:
        options(pruner)  # the during-training schedule (pruner=gmp|set|rigl|gibbs), refused for the others
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # null: the method's own (global for PaI, erk for gmp / set / rigl / gibbs, global for gibbs units)
    check_value("pruner.scope", pruner.get("scope"), str, choices=("global", "layer", "erk"), optional=True)
    for key in ("num_batches", "batch_size"):
        check_value(f"pruner.{key}", pruner.get(key, PRUNER_DEFAULTS[key]), int, "[1, inf)")
    check_value("pruner.rounds", pruner.get("rounds"), int, "[1, inf)", optional=True)
    for key in ("keep_first_layer_dense", "keep_last_layer_dense", "allow_layer_collapse"):
        check_value(f"pruner.{key}", pruner.get(key, False), bool)
    for key in ("budget_params", "budget_flops"):
        budget = pruner.get(key)
        for name, value in (budget.items() if isinstance(budget, Mapping) else [(None, budget)]):
            check_value(f"pruner.{key}" + (f".{name}" if name else ""), value, int, "[1, inf)", optional=name is None)
    check_options(pruner)  # structure, weight_sparsity
    check_value("pruner.budget_cost", pruner.get("budget_cost"), str, optional=True)
    check_value("pruner.budget_cost_max", pruner.get("budget_cost_max"), float, optional=True)
    if (pruner.get("budget_cost") is None) != (pruner.get("budget_cost_max") is None):
        raise ConfigError("pruner.budget_cost and pruner.budget_cost_max go together: give both or neither")
    given = [k for k in ("budget_params", "budget_flops", "budget_cost") if pruner.get(k) is not None]
    if len(given) > 1:
        raise ConfigError("give at most one of pruner.budget_params, pruner.budget_flops and pruner.budget_cost; "
                          f"got {', '.join(given)}")
    if pruner.get("budget_cost") is not None:
        from sparse_offline_rl.pruning.prune import load_cost

        try:
            load_cost(pruner["budget_cost"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def check_network_mappings(cfg: Mapping[str, Any]) -> None:
    """Per-network `sparsity` / `pruner.budget_*` mappings name the algorithm's networks: checked on a copy
    built from the env's dimensions (RNG left alone), so a typo fails before data is loaded or downloaded."""
    mappings = {key: value for key, value in (("sparsity", cfg["sparsity"]),
                                                ("pruner.budget_params", cfg["pruner"].get("budget_params")),
                                                ("pruner.budget_flops", cfg["pruner"].get("budget_flops")),
                                                ("pruner.weight_sparsity", cfg["pruner"].get("weight_sparsity")))
                if isinstance(value, Mapping)}
    if not mappings and cfg["pruner"].get("budget_networks") is None:
        return
    task = get_task(cfg["env"])
    with torch.random.fork_rng(devices=[]):
        spec = ProblemSpec(task.obs_dim, task.act_dim, optim=cfg.get("optim", "adam"))  # optim: algo.weight_decay needs lamb
        names = list(make_algorithm(cfg["algo"]["name"], spec, cfg["algo"]).networks())
    from sparse_offline_rl.pruning import per_network
    from sparse_offline_rl.pruning.prune import budget_networks

    try:
        for key, value in mappings.items():
            per_network(value, names, key)
        budget_networks(cfg["pruner"], names)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_weight_decay(cfg: Mapping[str, Any], supported: Sequence[str]) -> None:
    """`algo.weight_decay` (range checked with the other algo keys) is LAMB's: under Adam it would be
    silently ignored. Only for algorithms that build their optimizers with `make_optimizer` (they
    accept lamb); a plug-in's own `weight_decay` means whatever it says."""
    decay, optim = cfg["algo"].get("weight_decay", 0.0), cfg.get("optim", "adam")
    if "lamb" in supported and decay and optim != "lamb":
        raise ConfigError(f"algo.weight_decay={decay!r} is invalid with optim={optim}: it is LAMB's decoupled weight "
                          f"decay; 0 is required unless optim=lamb")


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Fail before any data is loaded on values that can never work: one line naming the key, the
    value and what is accepted."""
    algorithm_config(cfg["algo"])  # a known algorithm (lists them on a miss); every algo.<key>: known, right type, in range
    get_task(cfg["env"])  # lists known envs
    from sparse_offline_rl.sparse_training.dynamic import ALL_PRUNERS

    if cfg["pruner"]["name"] not in ALL_PRUNERS:
        raise ConfigError(f"unknown pruner '{cfg['pruner']['name']}'; available: {', '.join(sorted(ALL_PRUNERS))}")
    validate_pruner_options(cfg["pruner"])
    sparsity = cfg["sparsity"]
    values = [(f"sparsity.{k}", v) for k, v in sparsity.items()] if isinstance(sparsity, Mapping) else [("sparsity", sparsity)]
    for key, value in values:
        check_value(key, value, float, "[0, 1)")
    check_value("dataset", cfg["dataset"], str)
    check_value("seed", cfg["seed"], int, SEED_RANGE)
    check_value("steps", cfg["steps"], int, "[1, inf)")
    check_value("batch_size", cfg["batch_size"], int, "[1, inf)")
    check_value("val_fraction", cfg.get("val_fraction", 0.0), float, "[0, 1)")
    check_value("threads", cfg.get("threads"), int, "[1, inf)", optional=True)
    for key in ("checkpoint_every", "log_every"):
        check_value(key, cfg[key], int, "[1, inf)")
    check_value("eval.every", cfg["eval"]["every"], int, "[1, inf)")
    check_value("eval.episodes", cfg["eval"]["episodes"], int, f"[1, {MAX_EVAL_EPISODES}]")
    check_value("eval.suite", cfg["eval"].get("suite"), str, optional=True)
    check_value("sparse_kernels", cfg.get("sparse_kernels", "auto"), str, choices=MODES)
    check_value("optim", cfg.get("optim", "adam"), str, choices=OPTIMIZERS)
    supported = getattr(get_algorithm(cfg["algo"]["name"]).factory, "supported_optimizers", ("adam",))
    if cfg.get("optim", "adam") not in supported:  # else the run would train with Adam but say otherwise
        raise ConfigError(f"optim={cfg['optim']!r} is invalid for algo={cfg['algo']['name']}: it builds its own "
                          f"optimizers ({', '.join(supported)}); a plug-in opts in by setting `supported_optimizers` "
                          f"and building them with `make_optimizer(..., spec.optim)`")
    check_weight_decay(cfg, supported)
    for key in ("resume", "tensorboard", "progress", "verbose"):
        check_value(key, cfg.get(key, False), bool)
    check_network_mappings(cfg)
    if cfg.get("device", "cpu") not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", str(cfg["device"])):
        raise ConfigError(f"device={cfg['device']!r} is invalid; accepted: cpu, cuda, cuda:N, auto")


def resolve_sparsity(sparsity: float | Mapping[str, float], networks: Sequence[str]) -> dict[str, float]:
    """A float applies to every network; a mapping names networks (plus an optional `default`).
    Checked here, before pruning, so a bad mapping is a config error raised early."""
    from sparse_offline_rl.pruning import per_network

    try:
        return {n: float(v) for n, v in per_network(sparsity, networks, "sparsity").items()}
    except ValueError as err:
        raise ConfigError(str(err)) from None


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} requested but CUDA is not available; use device=cpu")
    return name


def evaluate(algo: OfflineAlgorithm, normalizer: ObsNormalizer, dataset: OfflineDataset, env: str,
             seeds: Sequence[int], device: str, discount: float) -> tuple[dict[str, float], EpisodeStats]:
    """One deterministic episode per reset seed: the summary row and the raw episodes."""
    stats = run_episodes(AgentPolicy(algo, normalizer, device), lambda: make_env(env), seeds=seeds, discount=discount)
    return summarize_episodes(stats, dataset, env), stats


def summarize_episodes(stats: EpisodeStats, dataset: OfflineDataset, env: str) -> dict[str, float]:
    """An evaluation's summary row from its episodes."""
    episodes = len(stats.returns)
    scores = np.asarray(dataset.normalized_score(stats.returns))
    d4rl_scores = d4rl_normalized_score(env, stats.returns)
    return {
        "return_mean": float(stats.returns.mean()),
        "return_std": float(stats.returns.std()),
        "normalized_score_mean": float(scores.mean()),
        "normalized_score_std": float(scores.std()),
        "d4rl_score_mean": float(d4rl_scores.mean()),
        "d4rl_score_std": float(d4rl_scores.std()),
        "episode_length_mean": float(stats.lengths.mean()),
        "episodes": episodes,
    }


def score_scales(dataset: OfflineDataset, env: str) -> dict[str, str]:
    """What each score in summary.json is relative to: results are only comparable on the same scale."""
    task = get_task(env)
    return {"normalized_score": dataset.score_scale(),
            "d4rl_score": f"D4RL's reference returns for {task.name} (0 = {task.d4rl_random_score:g}, "
                          f"100 = {task.d4rl_expert_score:g}), the scale of published D4RL tables"}


def dataset_returns(dataset: OfflineDataset, env: str) -> dict[str, float]:
    """The mean episode return of the data on each score scale: the level an agent is compared with
    (an offline agent "reaches the behaviour policy" when its score gets here)."""
    mean = float(dataset.episode_returns().mean())
    return {"return_mean": mean, "normalized_score": float(dataset.normalized_score(mean)),
            "d4rl_score": float(d4rl_normalized_score(env, mean)), "episodes": int(dataset.num_episodes)}


def train(
    cfg: Mapping[str, Any] | DictConfig,
    run_dir: Path | str,
    dataset: OfflineDataset | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    threads = torch.get_num_threads()
    try:
        return _train(cfg, run_dir, dataset, callbacks)
    finally:
        torch.set_num_threads(threads)  # `threads=` is this run's setting, not one for the caller's process


@dataclass
class Run:
    """One run between its set-up and its summary: what the loop, evaluations and checkpoints use.
    `train` drives one; `training.stacked` drives several members of a group through one algorithm."""

    cfg: dict[str, Any]
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
        result, episodes = evaluate(self.algo, self.normalizer, self.dataset, self.cfg["env"], self.seeds_for_eval,
                                    self.device, self.discount)
        return self.log_eval(step, result, episodes)

    def log_eval(self, step: int, result: dict[str, float], episodes: EpisodeStats) -> dict[str, float]:
        self.logger.log(step, "eval", result)
        self.logger.log(step, "diagnostics", self.diagnostics(step, episodes))
        return result


def setup_run(cfg: Mapping[str, Any] | DictConfig, run_dir: Path | str, dataset: OfflineDataset | None) -> Run:
    """Everything of a run before its first step: checks, data, the algorithm pruned at
    initialization (or restored from the checkpoint with `resume`), logger and diagnostics."""
    cfg = to_dict(cfg)
    validate_config(cfg)
    suite_name = cfg["eval"].get("suite")
    if suite_name:  # an unknown suite fails now, not after training
        from sparse_offline_rl.evaluation.suite import get_suite

        get_suite(suite_name)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(cfg.get("device", "cpu"))
    seed = int(cfg["seed"])
    torch.manual_seed(stream_seed(seed, Stream.TORCH_GLOBAL))
    np.random.seed(stream_seed(seed, Stream.NUMPY_GLOBAL) % 2**32)

    # -- data --------------------------------------------------------------------------------
    if dataset is None:
        from sparse_offline_rl.data import load_dataset

        dataset = load_dataset(cfg["dataset"], env=cfg["env"])
    task = get_task(cfg["env"])
    dataset.check_env((task.obs_dim,), (task.act_dim,), task.env_id)
    data = prepare_data(cfg, dataset, device)
    algo_config = algorithm_config(cfg["algo"])
    buffer = data.buffer(stream_seed(seed, Stream.TRAIN_BATCHES))

    # -- algorithm, then pruning at initialization (or the masks of the run we resume) -----------
    algo = make_algorithm(cfg["algo"]["name"], problem_spec(cfg, dataset, device), algo_config)
    sparsity = resolve_sparsity(cfg["sparsity"], list(algo.networks()))
    # Masks over time (GMP, SET, RigL change them during training) and the training FLOPs, any pruner.
    sparse_training = SparseTraining(cfg["pruner"], int(cfg["steps"]), sparsity, int(cfg["batch_size"]),
                                     stream_seed(seed, Stream.MASK_UPDATES), cfg.get("sparse_kernels", "auto"))
    ckpt_path = run_dir / "checkpoint.pt"
    logger = MetricsLogger(run_dir, tensorboard=bool(cfg.get("tensorboard", True)))
    start_step, train_seconds, last_eval = 0, 0.0, None
    if cfg.get("resume") and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        # The saved kernels, not a new measurement: they fix the parameters' shapes, and one path
        # keeps the resumed run bit-exact.
        kernels = ckpt.get("sparse_kernels") or {}
        masks = restore_pruned(algo, ckpt["algo"], ckpt["masks"], kernels, units=layouts_of(ckpt["pruning_report"]))
        buffer.load_state_dict(ckpt["buffer"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_step, train_seconds, last_eval = ckpt["step"], ckpt["train_seconds"], ckpt["last_eval"]
        pruning_report = ckpt["pruning_report"]
        sparse_training.load_state_dict(ckpt.get("sparse_training"), algo, masks, kernels)
        logger.truncate_after(start_step)
        print(f"resumed from {ckpt_path} at step {start_step}")
    else:
        pruner_cfg = {"batch_size": cfg["batch_size"], **sparse_training.initial_pruner()}
        # Pruning batches come from their own generator so they never shift the training batch stream.
        pruning_buffer = data.buffer(stream_seed(seed, Stream.PRUNING_BATCHES))
        masks, pruning_report = prune_at_initialization(
            algo, lambda: pruning_buffer.sample(int(pruner_cfg["batch_size"])), pruner_cfg, sparsity,
            seed=stream_seed(seed, Stream.PRUNING),
        )
        del pruning_buffer
        # Compressed sparse layers where they are faster (measured per layer at this batch size).
        mode = cfg.get("sparse_kernels", "auto")
        choices = choose_kernels(algo, masks, int(cfg["batch_size"]), mode)
        kernels = kernels_of(choices)
        apply_sparse_kernels(algo, masks, kernels)
        add_to_report(pruning_report, choices, mode, int(cfg["batch_size"]))
        sparse_training.start(algo, masks, kernels)
        if cfg.get("verbose", True):
            from sparse_offline_rl.pruning import format_density_table

            print(format_density_table(pruning_report))

    discount = float(cfg["algo"].get("discount", 0.99))
    # Start states follow the run seed, so the spread over seeds includes the spread over start states.
    seeds_for_eval = eval_seeds(seed, int(cfg["eval"]["episodes"]))
    if start_step == 0:
        logger.log(0, "eval_seeds", {"seeds": seeds_for_eval})
    # Overfitting diagnostics: fixed probe sets and their own generator, so training is unaffected.
    diagnostics = TrainingDiagnostics(
        algo, buffer, data.val, data.normalizer, data.reward_scale, cfg["env"], discount, start_state_seeds=seeds_for_eval,
        device=device, run_dir=run_dir, start_step=start_step, seed=seed,
    )
    return Run(cfg, run_dir, dataset, data.train, data.val, data.normalizer, data.reward_scale, device, algo, masks, kernels, buffer, pruning_report,
               logger, diagnostics, seeds_for_eval, discount, sparse_training, start_step, train_seconds, last_eval)


def problem_spec(cfg: Mapping[str, Any], dataset: OfflineDataset, device: str, members: int = 1) -> ProblemSpec:
    # MuJoCo v5 locomotion actions all lie in [-1, 1].
    return ProblemSpec(dataset.obs_dim, dataset.act_dim, max_action=1.0, total_steps=int(cfg["steps"]), device=device,
                       optim=cfg.get("optim", "adam"), members=members)


def run_steps(runs: Sequence[Run], start_step: int, step_fn: Callable[[int], Any],
              split_metrics: Callable[[Any], Sequence[Mapping[str, torch.Tensor]]],
              sync: Callable[[], None] = lambda: None, evaluate_runs: Callable[[int], list[dict[str, float]]] | None = None,
              desc: str = "", stop_step: int | None = None) -> list[dict[str, float]]:
    """The loop from `start_step` to the runs' `steps` (the same for all of them; `stop_step`: stop
    there, even at `steps`, with no final evaluation, returning []): `step_fn(step)` does
    one gradient step of every run and returns its metrics, which `split_metrics` turns into one dict
    per run (only on logging steps). Every `eval.every` and `checkpoint_every` steps (and at the end)
    `sync()` makes the runs' algorithms current (stacked members), then each run evaluates
    (`evaluate_runs`, default: one after the other) and saves its checkpoint. Returns the final
    evaluations."""
    cfg = runs[0].cfg
    steps, log_every = int(cfg["steps"]), int(cfg["log_every"])
    eval_every, ckpt_every = int(cfg["eval"]["every"]), int(cfg["checkpoint_every"])
    evaluate_runs = evaluate_runs or (lambda step: [run.run_eval(step) for run in runs])
    bar = tqdm(total=steps, initial=start_step, desc=desc, unit="step", disable=not cfg.get("progress", True),
               dynamic_ncols=True)
    tick = time.perf_counter()

    def stop_clock() -> None:
        elapsed = time.perf_counter() - tick
        for run in runs:
            run.train_seconds += elapsed

    partial = stop_step is not None  # bringing a run level with others: no final evaluation, logger kept open
    stop = steps if stop_step is None else stop_step
    try:
        for step in range(start_step + 1, stop + 1):
            metrics = step_fn(step)
            if step % log_every == 0:
                for run, values in zip(runs, split_metrics(metrics)):
                    run.logger.log(step, "train", {k: float(v) for k, v in values.items()})
            if step % eval_every == 0 and step != steps:
                stop_clock()
                sync()
                for run, result in zip(runs, evaluate_runs(step)):
                    run.last_eval = result
                bar.set_postfix(score=f"{runs[0].last_eval['normalized_score_mean']:.1f}")
                tick = time.perf_counter()
            if step % ckpt_every == 0 and step != steps:
                stop_clock()
                sync()
                for run in runs:
                    run.save_checkpoint(step)
                tick = time.perf_counter()
            bar.update(1)
        stop_clock()
        if partial:
            return []
        sync()
        final = evaluate_runs(steps)
    finally:
        bar.close()
        if not partial:
            for run in runs:
                run.logger.close()
    for run in runs:
        run.save_checkpoint(steps)
    return final


def _train(
    cfg: Mapping[str, Any] | DictConfig,
    run_dir: Path | str,
    dataset: OfflineDataset | None,
    callbacks: Sequence[Callback],
) -> dict[str, Any]:
    run = setup_run(cfg, run_dir, dataset)
    final_eval = run_steps([run], run.start_step, single_step(run, callbacks), lambda metrics: [metrics],
                           desc=f"{run.cfg['algo']['name']} s={run.cfg['sparsity']}")[0]
    return finish_run(run, final_eval)


def single_step(run: Run, callbacks: Sequence[Callback] = ()) -> Callable[[int], dict[str, torch.Tensor]]:
    """One gradient step of one run on its own batch (the `step_fn` of `run_steps`)."""
    algo, buffer, masks, batch_size = run.algo, run.buffer, run.masks, int(run.cfg["batch_size"])

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        # No masks.apply() here: the MaskSet re-zeroes pruned entries after every optimizer step.
        batch = buffer.sample(batch_size)
        metrics = algo.update(batch)
        # Mask updates of during-training pruners (new kernels when layers were rebuilt), FLOPs.
        run.kernels = run.sparse_training.after_step(step, algo, masks, batch) or run.kernels
        for callback in callbacks:
            callback(StepInfo(step, algo, metrics, masks))
        return metrics

    return step_fn


def finish_run(run: Run, final_eval: dict[str, float], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """summary.json (and, with `eval.suite`, the generalization suite) of a trained run."""
    cfg, algo, steps = run.cfg, run.algo, int(run.cfg["steps"])
    run.sparse_training.final_report(run.pruning_report, algo, run.masks)  # the masks the run ended with
    density = network_densities(algo.networks(), run.pruning_report)
    summary = {
        "algo": cfg["algo"]["name"],
        "env": cfg["env"],
        "dataset": cfg["dataset"],
        # Measured, not inferred from `sparsity`: a parameter/FLOP budget prunes at sparsity 0 too.
        "pruner": pruner_label(cfg, density),
        "sparsity": cfg["sparsity"],
        "density": density,
        # Measured over every prunable weight of every network, and the cost of getting there
        # (pruning.density.step_flops: the FLOP model), so methods compare at equal sparsity or cost.
        "final_sparsity": run.pruning_report["final_sparsity"],
        "training_flops": run.sparse_training.training_flops,
        "sparse_training": run.sparse_training.report(),
        "steps": steps,
        "steps_per_sec": steps / run.train_seconds if run.train_seconds > 0 else math.nan,
        "train_seconds": run.train_seconds,
        "eval": {**final_eval, "seeds": run.seeds_for_eval},
        "score_scales": score_scales(run.train_data, cfg["env"]),
        "dataset_returns": dataset_returns(run.dataset, cfg["env"]),
        "seed": int(cfg["seed"]),
        "pruning": run.pruning_report,
        "config": cfg,
        "code": code_version(),
        **(extra or {}),
    }
    suite_name = cfg["eval"].get("suite")
    if suite_name:  # the generalization suite on the final agent: generalization.json + figure
        from sparse_offline_rl.evaluation.agent import EvalAgent, run_meta
        from sparse_offline_rl.evaluation.suite import run_suite, write_result

        agent = EvalAgent(algo, run.normalizer, cfg["env"], run.train_data, run.val_data, run.discount, run.reward_scale, run.device,
                          meta={**run_meta(cfg, density), "step": steps, "run_dir": str(run.run_dir)})
        # Default noise seed: every run is scored on the same episodes, whatever its own seed.
        result = run_suite(agent, suite_name, progress=bool(cfg.get("progress", True)))
        write_result(run.run_dir, result)
        summary["generalization"] = result["summary"]
    atomic_write_json(run.run_dir / "summary.json", summary)
    return summary
