"""What a run reports: an evaluation's summary row (`evaluate`, `summarize_episodes`), the scales its
scores are on (`score_scales`), the data's own level on them (`dataset_returns`), and at the end
`summary.json` (`finish_run`, with the generalization suite when `eval.suite` is set).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from sparse_offline_rl.algorithms import OfflineAlgorithm
from sparse_offline_rl.data.buffer import ObsNormalizer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.envs import d4rl_normalized_score, get_task, make_env
from sparse_offline_rl.evaluation.agent import pruner_label
from sparse_offline_rl.evaluation.rollout import AgentPolicy, EpisodeStats, run_episodes
from sparse_offline_rl.io import atomic_write_json, code_version
from sparse_offline_rl.sparse.narrow import network_densities

if TYPE_CHECKING:
    from sparse_offline_rl.training.setup import Run


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


def finish_run(run: Run, final_eval: dict[str, float], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """summary.json (and, with `eval.suite`, the generalization suite) of a trained run."""
    run.sparse_training.final_report(run.pruning_report, run.algo, run.masks)  # the masks the run ended with
    density = network_densities(run.algo.networks(), run.pruning_report)
    summary = {**summary_of(run, final_eval, density), **(extra or {})}
    if run.config.eval.suite:
        summary["generalization"] = run_final_suite(run, density)
    atomic_write_json(run.run_dir / "summary.json", summary)
    return summary


def summary_of(run: Run, final_eval: dict[str, float], density: dict[str, Any]) -> dict[str, Any]:
    """summary.json's entries, in their order."""
    cfg, config, steps = run.cfg, run.config, run.config.steps
    return {
        "algo": config.algo_name,
        "env": config.env,
        "dataset": config.dataset,
        # Measured, not inferred from `sparsity`: a parameter/FLOP budget prunes at sparsity 0 too.
        "pruner": pruner_label(cfg, density),
        "sparsity": config.sparsity,
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
        "score_scales": score_scales(run.train_data, config.env),
        "dataset_returns": dataset_returns(run.dataset, config.env),
        "seed": config.seed,
        "pruning": run.pruning_report,
        "config": cfg,
        "code": code_version(),
    }


def run_final_suite(run: Run, density: dict[str, Any]) -> dict[str, Any]:
    """The generalization suite on the final agent (generalization.json + figure); its summary."""
    from sparse_offline_rl.evaluation.agent import EvalAgent, run_meta
    from sparse_offline_rl.evaluation.suite import run_suite, write_result

    config = run.config
    agent = EvalAgent(run.algo, run.normalizer, config.env, run.train_data, run.val_data, run.discount, run.reward_scale,
                      run.device, meta={**run_meta(run.cfg, density), "step": config.steps, "run_dir": str(run.run_dir)})
    # Default noise seed: every run is scored on the same episodes, whatever its own seed.
    result = run_suite(agent, config.eval.suite, progress=config.progress)
    write_result(run.run_dir, result)
    return result["summary"]
