"""Fit a trained agent to a budget before it deploys (`python -m sparse_offline_rl.compress`).

`compress_run(run_dir, options)` takes a finished run (dense or sparse), chooses per-layer kept
counts of its `networks` under every budget (`pruning.compression`: the constrained-RL allocator or
a shared-sparsity bisection, weights ranked by their trained |W|, already-zero weights never kept),
the reward being the fidelity to the trained networks (`evaluation.fidelity`), optionally fine-tunes
the masked agent with the run's own algorithm, evaluates it, and writes a run directory that
`load_agent`, `evaluate` and `export` read like any other.

Fine-tuning runs in a fresh algorithm holding the trained networks (online and target copies):
optimizer state, learning-rate schedules and any other state of the algorithm (learned temperatures,
step counters) start fresh, with schedules over `finetune_steps`. The run's own optimizer state
belongs to the end of its training: its schedules are spent (IQL's cosine actor learning rate is 0
at the last step, so the actor would not move) and its Adam moments are those of the denser
weights. The masks are bound to the fresh algorithm's optimizers (`MaskSet.bind`), so every pruned
weight, its target copy and its optimizer state are zero in every forward and after every step.
Every layer of the output is dense-masked (nn.Linear): its checkpoint stores `sparse_kernels` = {}.

Random streams, from the compression seed (`seed=`, default the run's) and their purpose: the
reward's rows (`Stream.COMPRESS_ROWS`), the allocator (`Stream.COMPRESS_SEARCH`), the fresh
algorithm's construction and own generators (`Stream.COMPRESS_INIT`) and the fine-tuning batches
(`Stream.COMPRESS_BATCHES`). The output keeps the run's config (its seed fixes the validation
split, the observation normaliser and the evaluation episodes, so scores compare with the run's).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from sparse_offline_rl.algorithms import make_algorithm
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.prepare import PreparedData
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.evaluation.agent import EvalAgent, load_agent
from sparse_offline_rl.evaluation.fidelity import NETWORKS, Fidelity, fidelity_rows
from sparse_offline_rl.evaluation.rollout import eval_seeds
from sparse_offline_rl.io import atomic_torch_save, atomic_write_json, code_version, load_checkpoint
from sparse_offline_rl.pruning import MaskSet
from sparse_offline_rl.pruning.budget_search import SEARCHES, CostBudget, NetMasks, cost_budgets, measured, one_or_list
from sparse_offline_rl.pruning.compression import TrainedOrder, compress_bisect, compress_constrained, trained_weights
from sparse_offline_rl.pruning.constrained import SearchSettings
from sparse_offline_rl.seeding import Stream, stream_seed
from sparse_offline_rl.sparse.kernels import LayerChoice
from sparse_offline_rl.sparse.linear import densify_algorithm
from sparse_offline_rl.sparse.narrow import layouts_of, narrow_algorithm, network_densities
from sparse_offline_rl.sparse_training.final_report import refresh_report
from sparse_offline_rl.training.config import resolve_device, validate_config
from sparse_offline_rl.training.logger import MetricsLogger
from sparse_offline_rl.training.loop import Callback, StepInfo
from sparse_offline_rl.training.setup import problem_spec
from sparse_offline_rl.training.summary import dataset_returns, evaluate, score_scales


@dataclass(frozen=True)
class CompressOptions:
    """The command's settings (its key=value arguments); `identity()` names the output."""

    budget_cost: str | tuple[str, ...]
    budget_cost_max: float | tuple[float, ...]
    budget_search: str = "constrained"
    networks: tuple[str, ...] = ("actor",)
    finetune_steps: int = 0
    seed: int | None = None  # None: the run's seed
    probes: int = 600
    rows: int = 4096
    eval_episodes: int | None = None  # None: the run's eval.episodes
    device: str = "cpu"

    def __post_init__(self) -> None:
        paths = [self.budget_cost] if isinstance(self.budget_cost, str) else list(self.budget_cost)
        limits = list(self.budget_cost_max) if isinstance(self.budget_cost_max, tuple) else [self.budget_cost_max]
        if not paths or len(paths) != len(limits):
            raise ConfigError(f"budget_cost_max={self.budget_cost_max!r} gives {len(limits)} limit(s) for {len(paths)} "
                              "budget_cost path(s); accepted: one number per path, as lists of the same length")
        if self.budget_search not in SEARCHES:
            raise ConfigError(f"budget_search={self.budget_search!r} is invalid; accepted: one of {', '.join(SEARCHES)}")
        if not self.networks or any(n not in NETWORKS for n in self.networks) or len(set(self.networks)) < len(self.networks):
            raise ConfigError(f"networks={','.join(self.networks)} is invalid; accepted: a comma list of distinct "
                              f"names out of {', '.join(NETWORKS)}")
        for key, low in (("finetune_steps", 0), ("probes", 2), ("rows", 2), ("eval_episodes", 0)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"{key}={value!r} is invalid; accepted: an integer >= {low}")

    @property
    def single(self) -> bool:
        return isinstance(self.budget_cost, str)

    def identity(self) -> dict[str, Any]:
        """Everything that decides the result (`device` aside), JSON-ready."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if k != "device"}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Compression:
    """A compression between its search and its output: the trained reference, the masked agent."""

    source: Path
    out: Path
    options: CompressOptions
    seed: int
    device: str
    ckpt: dict[str, Any]
    agent: EvalAgent  # the trained agent, its networks densified: the reference the reward compares with
    dataset: OfflineDataset
    algo: Any  # the compressed agent's algorithm (fresh state, trained networks, masks bound)
    masks: MaskSet
    fidelity: Fidelity
    search: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)  # the `compress` record of summary.json

    @property
    def cfg(self) -> dict[str, Any]:
        return self.ckpt["config"]


def source_checkpoint(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint.pt there (compress takes a training run's directory)")
    return load_checkpoint(run_dir / "checkpoint.pt")


def source_summary(job: "Compression") -> dict[str, Any]:
    """The source run's summary.json; for a run still training (compressed at its last checkpoint),
    what its checkpoint says: its step and training seconds so far."""
    path = job.source / "summary.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"steps": int(job.ckpt["step"]), "train_seconds": float(job.ckpt.get("train_seconds", 0.0)), "finished": False}


def fresh_algorithm(cfg: Mapping[str, Any], reference: Any, dataset: OfflineDataset, steps: int, device: str,
                    layouts: Mapping[str, Any], seed: int) -> Any:
    """The run's algorithm built anew (schedules over `steps`), narrowed like the run, holding the
    trained networks' weights (online and target); the rest of its state fresh (module docstring)."""
    torch.manual_seed(stream_seed(seed, Stream.COMPRESS_INIT))
    spec = dataclasses.replace(problem_spec(validate_config(cfg), dataset, device), total_steps=max(1, steps))
    algo = make_algorithm(cfg["algo"]["name"], spec, cfg["algo"])
    narrow_algorithm(algo, layouts)
    for get in (lambda a: a.networks(), lambda a: a.target_networks()):
        for name, net in get(algo).items():
            net.load_state_dict(get(reference)[name].state_dict())
    return algo


def search_masks(order: TrainedOrder, agent: EvalAgent, reward: Fidelity, budgets: Sequence[CostBudget],
                 options: CompressOptions, seed: int, fixed: NetMasks) -> tuple[NetMasks, dict[str, Any]]:
    nets = agent.algo.networks()
    if options.budget_search == "bisect":
        return compress_bisect(order, nets, reward, budgets, fixed, options.single)
    settings = SearchSettings(probes=options.probes)
    return compress_constrained(order, nets, reward, budgets, stream_seed(seed, Stream.COMPRESS_SEARCH), settings,
                                fixed, options.single)


def start(run_dir: Path | str, options: CompressOptions, out: Path, dataset: OfflineDataset | None = None) -> Compression:
    """Load the run, search the masks under the budgets, and build the masked agent (not fine-tuned)."""
    source = Path(run_dir)
    ckpt = source_checkpoint(source)
    cfg, seed = ckpt["config"], int(ckpt["config"]["seed"] if options.seed is None else options.seed)
    budgets, device = cost_budgets(options), resolve_device(options.device)
    if dataset is None:
        from sparse_offline_rl.data import load_dataset

        dataset = load_dataset(cfg["dataset"], env=cfg["env"])
    agent = load_agent(source, dataset=dataset, device=device)
    missing = [n for n in options.networks if n not in agent.algo.networks()]
    if missing:
        raise ConfigError(f"networks={','.join(options.networks)}: algo '{cfg['algo']['name']}' has no network "
                          f"{', '.join(missing)}; its networks: {', '.join(agent.algo.networks())}")
    densify_algorithm(agent.algo, list(agent.algo.networks()))  # plain nn.Linear layers, zeros where pruned
    rows, split = fidelity_rows(agent.train_data, agent.val_data, agent.normalizer, options.rows,
                                stream_seed(seed, Stream.COMPRESS_ROWS), device)
    fidelity = Fidelity(agent.algo, rows, options.networks)
    fixed = {n: {p: m.to(device) for p, m in pm.items()} for n, pm in ckpt["masks"].items() if n not in options.networks}
    order = TrainedOrder(trained_weights(agent.algo.networks(), options.networks), device)
    begin = time.perf_counter()
    chosen, search = search_masks(order, agent, fidelity, budgets, options, seed, fixed)
    search["seconds"] = time.perf_counter() - begin
    search.update(rows=len(rows.observations), rows_split=split)
    algo = fresh_algorithm(cfg, agent.algo, dataset, options.finetune_steps, device,
                           layouts_of(ckpt.get("pruning_report")), seed)
    masks = MaskSet({**fixed, **chosen}).bind(algo)
    return Compression(source, out, options, seed, device, ckpt, agent, dataset, algo, masks, fidelity, search)


def finetune(job: Compression, logger: MetricsLogger, callbacks: Sequence[Callback] = ()) -> float:
    """`finetune_steps` updates of the run's algorithm on batches of the run's training split (its
    normaliser and reward scale, batch size and logging cadence); returns the seconds it took."""
    agent, cfg = job.agent, job.cfg
    data = PreparedData(agent.train_data, agent.val_data, agent.normalizer, agent.reward_scale, job.device)
    buffer = data.buffer(stream_seed(job.seed, Stream.COMPRESS_BATCHES))
    batch_size, log_every = int(cfg["batch_size"]), int(cfg.get("log_every", 1000))
    begin = time.perf_counter()
    for step in range(1, job.options.finetune_steps + 1):
        # No masks.apply() here: the bound MaskSet re-zeroes pruned entries after every optimizer step.
        metrics = job.algo.update(buffer.sample(batch_size))
        if step % log_every == 0:
            logger.log(step, "train", {k: float(v) for k, v in metrics.items()})
        for callback in callbacks:
            callback(StepInfo(step, job.algo, metrics, job.masks))
    return time.perf_counter() - begin


def final_eval(job: Compression) -> dict[str, Any]:
    """The run's evaluation episodes (their reset seeds from the run's seed), `eval_episodes` of them
    when given; 0 skips it (the scores are then NaN)."""
    cfg = job.cfg
    episodes = int(cfg.get("eval", {}).get("episodes", 10)) if job.options.eval_episodes is None else job.options.eval_episodes
    seeds = eval_seeds(int(cfg["seed"]), episodes)
    if not seeds:
        nan = float("nan")
        return {"return_mean": nan, "return_std": nan, "normalized_score_mean": nan, "normalized_score_std": nan,
                "d4rl_score_mean": nan, "d4rl_score_std": nan, "episode_length_mean": nan, "episodes": 0, "seeds": []}
    result, _ = evaluate(job.algo, job.agent.normalizer, job.dataset, cfg["env"], seeds, job.device,
                         job.agent.discount)
    return {**result, "seeds": seeds}


def final_report(job: Compression) -> dict[str, Any]:
    """The run's pruning report brought to the compressed masks (per layer kept and density, params,
    FLOPs; every layer dense-masked), `final_sparsity` over every prunable weight of every network."""
    report = copy.deepcopy(job.ckpt.get("pruning_report") or {})
    dense = {net: {p: LayerChoice("dense", "forced by mode") for p in layers} for net, layers in job.masks.masks.items()}
    refresh_report(report, f"compress-{job.options.budget_search}", job.algo, job.masks, dense, "dense",
                   int(job.cfg["batch_size"]))
    kept = sum(info["kept_weights"] for info in report["networks"].values())
    total = sum(info["prunable_weights"] for info in report["networks"].values())
    report["final_sparsity"] = 1 - kept / total if total else 0.0
    return report


def summary_of(job: Compression, evaluation: dict[str, Any], source: Mapping[str, Any],
               report: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the fields every run's summary has (training.summary.summary_of's), then `compress`.
    steps and train_seconds add the fine-tuning to the run's; training_flops are the run's alone."""
    cfg, record, sparsity = job.cfg, job.record, report["final_sparsity"]
    steps = int(source.get("steps", cfg["steps"])) + job.options.finetune_steps
    seconds = float(source.get("train_seconds", 0.0)) + record["finetune_seconds"]
    return {
        "algo": cfg["algo"]["name"], "env": cfg["env"], "dataset": cfg.get("dataset"),
        "pruner": f"compress-{job.options.budget_search}", "sparsity": sparsity,
        "density": network_densities(job.algo.networks(), report),
        "final_sparsity": sparsity, "training_flops": source.get("training_flops", float("nan")),
        "sparse_training": source.get("sparse_training"), "steps": steps,
        "steps_per_sec": steps / seconds if seconds > 0 else float("nan"), "train_seconds": seconds,
        "eval": evaluation, "score_scales": score_scales(job.agent.train_data, cfg["env"]),
        "dataset_returns": dataset_returns(job.dataset, cfg["env"]), "seed": cfg["seed"], "pruning": report,
        # The run's config, and what made this one of it (report tables list it as a setting).
        "config": {**cfg, "compress": job.options.identity()}, "code": code_version(), "compress": record,
    }


def write_outputs(job: Compression, logger: MetricsLogger, begin: float) -> dict[str, Any]:
    """checkpoint.pt (what load_agent reads), budget_search.png (constrained), the evaluation, and
    summary.json last: its presence marks a finished output."""
    source = source_summary(job)
    job.record["source_finished"] = source.get("finished", True)
    step = int(job.ckpt.get("step") or job.cfg["steps"]) + job.options.finetune_steps
    report = final_report(job)
    atomic_torch_save(job.out / "checkpoint.pt", {
        "step": step, "algo": job.algo.state_dict(), "masks": job.masks.state_dict(), "sparse_kernels": {},
        "pruning_report": report, "config": job.cfg, "compressed_from": str(job.source),
    })
    if job.search["search"] == "constrained":
        from sparse_offline_rl.evaluation.figures import plot_budget_search

        plot_budget_search(job.search, job.out / "budget_search.png")
    evaluation = final_eval(job)
    logger.log(job.options.finetune_steps, "eval", {k: v for k, v in evaluation.items() if k != "seeds"})
    job.record["seconds"] = time.perf_counter() - begin  # everything: loading, search, fine-tuning, evaluation
    summary = summary_of(job, evaluation, source, report)
    atomic_write_json(job.out / "summary.json", summary)
    return summary


def output_dir(run_dir: Path | str, options: CompressOptions, out: Path | str | None) -> Path:
    return Path(out) if out is not None else Path(run_dir) / f"compressed-{options.digest()}"


def finished(out: Path, options: CompressOptions) -> dict[str, Any] | None:
    """The summary of a finished output of these options; None when there is none yet. Another
    compression's output in `out` is an error (it is never overwritten)."""
    path = out / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    done = (summary.get("compress") or {}).get("options")
    if done != options.identity():
        raise ConfigError(f"out={out} already holds {'a compression with other options' if done else 'a run'} "
                          f"({done or 'no compress record'}); accepted: a new or empty directory")
    return summary


def compress_run(run_dir: Path | str, options: CompressOptions, out: Path | str | None = None,
                 dataset: OfflineDataset | None = None, callbacks: Sequence[Callback] = ()) -> tuple[dict[str, Any], bool]:
    """Compress a finished run into `out` (default RUN/compressed-<hash of the options>); returns its
    summary and whether it was already there (then nothing is done)."""
    out = output_dir(run_dir, options, out)
    done = finished(out, options)
    if done is not None:
        return done, True
    begin = time.perf_counter()
    job = start(run_dir, options, out, dataset)
    out.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out, tensorboard=False)
    logger.truncate_after(-1)  # a restart after a crash starts over
    budgets = cost_budgets(options)
    before = job.fidelity.reward_of(job.algo)
    costs_before = measured(budgets, job.algo.networks(), job.masks.masks)
    finetune_seconds = finetune(job, logger, callbacks)
    costs = measured(budgets, job.algo.networks(), job.masks.masks)
    job.record = {
        "source": str(Path(run_dir)), "options": options.identity(), "seed": job.seed, "search": job.search,
        "reward": {"before_finetune": before, "after_finetune": job.fidelity.reward_of(job.algo),
                   "terms_after_finetune": job.fidelity.terms(job.algo)},
        "cost": {"before_finetune": one_or_list(costs_before, options.single), "after_finetune": one_or_list(costs, options.single)},
        "within_budget": all(c <= b.limit for c, b in zip(costs, budgets)),
        "optimizer_state": "fresh (the module docstring of training.compress says why)", "sparse_kernels": "all dense-masked",
        "finetune_steps": options.finetune_steps, "finetune_seconds": finetune_seconds,
    }
    try:
        return write_outputs(job, logger, begin), False
    finally:
        logger.close()


__all__ = ["CompressOptions", "Compression", "compress_run", "finetune", "output_dir", "start"]
