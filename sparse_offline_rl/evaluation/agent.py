"""An evaluable agent: the algorithm plus everything needed to feed it and to score it.

`load_agent(run_dir)` rebuilds a trained agent from a run directory's checkpoint; the trainer builds
an `EvalAgent` from its live objects. Both derive data preprocessing (validation split, observation
normaliser, reward scale) from the same config values through `algorithms.prepare_data`, so the
agent sees exactly the inputs it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sparse_offline_rl.algorithms import OfflineAlgorithm, ProblemSpec, make_algorithm, prepare_data
from sparse_offline_rl.data.buffer import ObsNormalizer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.io import load_checkpoint
from sparse_offline_rl.sparse.checkpoint import restore_pruned
from sparse_offline_rl.sparse.narrow import layouts_of, network_densities


@dataclass
class EvalAgent:
    algo: OfflineAlgorithm
    normalizer: ObsNormalizer  # raw observations -> the algorithm's inputs
    env: str
    train_data: OfflineDataset  # the episodes it was trained on (their reset seeds are "train" seeds)
    val_data: OfflineDataset | None = None  # whole episodes held out from training
    discount: float = 0.99
    reward_scale: float = 1.0  # the critic's reward units per env reward unit
    device: str = "cpu"
    meta: dict[str, Any] = field(default_factory=dict)  # algo, sparsity, seed... (for comparisons)


def pruner_label(cfg: Mapping[str, Any], density: Mapping[str, float]) -> str:
    """The pruner a run is labelled with, from what was pruned (measured densities), not from the configured
    sparsity: a parameter/FLOP budget prunes at sparsity 0 too."""
    if not any(d < 1.0 for d in density.values()):
        return "dense"
    # Units removed is another method than weights removed at the same sparsity: kept apart in comparisons.
    return cfg["pruner"]["name"] + ("-units" if cfg["pruner"].get("structure") == "units" else "")


def run_meta(cfg: Mapping[str, Any], density: Mapping[str, float]) -> dict[str, Any]:
    """What identifies a run in comparisons: the configuration (label) and the task (stratum)."""
    return {
        "algo": cfg["algo"]["name"],
        "env": cfg["env"],
        "dataset": cfg.get("dataset"),
        "pruner": pruner_label(cfg, density),
        "sparsity": cfg.get("sparsity", 0.0),
        "seed": cfg.get("seed"),
    }


def load_agent(run_dir: Path | str, dataset: OfflineDataset | None = None, device: str = "cpu") -> EvalAgent:
    """Rebuild the agent of a finished (or checkpointed) run. `dataset` defaults to loading the run's
    configured dataset; pass it when it is not loadable by id (tests, ad-hoc datasets)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint.pt there (train the run first, or check the path)")
    ckpt = load_checkpoint(path, map_location=device)
    cfg = ckpt["config"]
    if dataset is None:
        from sparse_offline_rl.data import load_dataset

        dataset = load_dataset(cfg["dataset"], env=cfg["env"])
    data = prepare_data(cfg, dataset, device)
    # The run's optimizer kind, so the checkpoint's optimizer state loads into its own kind.
    spec = ProblemSpec(dataset.obs_dim, dataset.act_dim, max_action=1.0, total_steps=int(cfg["steps"]), device=device,
                       optim=cfg.get("optim", "adam"))
    algo = make_algorithm(cfg["algo"]["name"], spec, cfg["algo"])
    report = ckpt.get("pruning_report")
    restore_pruned(algo, ckpt["algo"], ckpt["masks"], ckpt.get("sparse_kernels"), units=layouts_of(report))
    density = network_densities(algo.networks(), report)
    meta = {**run_meta(cfg, density), "step": ckpt.get("step"), "run_dir": str(run_dir)}
    return EvalAgent(algo, data.normalizer, cfg["env"], data.train, data.val,
                     discount=float(cfg["algo"].get("discount", 0.99)), reward_scale=data.reward_scale,
                     device=device, meta=meta)
