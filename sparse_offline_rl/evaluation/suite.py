"""The generalization suite: one agent, many conditions, identical episodes for every agent.

A suite is a list of levels per perturbation group plus an episode count per cell. Rows ("cells"):
- seeds/train, seeds/val, seeds/heldout: nominal env from the initial states the training data was
  collected from, from held-out dataset episodes, and from seeds disjoint from every dataset seed
  (Zhang et al. 2018). Their score difference train - heldout is the generalization gap.
- every perturbation at every level, always on the held-out seeds (so nominal = seeds/heldout).
All episodes of all cells run in one pool of vectorised envs (one policy call per step for all).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sparse_offline_rl.errors import SuiteError
from sparse_offline_rl.evaluation.agent import EvalAgent
from sparse_offline_rl.evaluation.perturbations import ALL_GROUPS, NOMINAL_LEVEL, check_level, env_factory, episode_transforms
from sparse_offline_rl.evaluation.rollout import AgentPolicy, run_episodes
from sparse_offline_rl.data.envs import make_env

# Held-out reset seeds start here and skip any seed the dataset used: shard 900 of reset-seed block 1,
# beyond the shards of the project's datasets (data.rollout.reset_seed) and below the training-time
# evaluation blocks (evaluation.rollout.EVAL_SEED_BLOCK).
HELDOUT_SEED_BASE = 1_900_000_000


@dataclass(frozen=True)
class Suite:
    name: str
    episodes: int  # per cell
    levels: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # group -> levels (nominal excluded)


SUITES: dict[str, Suite] = {
    # A few minutes for one agent on 2 cores: 3 seed rows + 20 perturbed cells, 5 episodes each.
    "generalization": Suite("generalization", 5, {
        "reset_noise": (2.0, 5.0),
        "mass": (0.5, 1.5, 2.0),
        "friction": (0.25, 0.5, 2.0),
        "damping": (0.5, 2.0),
        "gear": (0.8, 1.2),
        "obs_noise": (0.01, 0.05, 0.2),
        "action_noise": (0.05, 0.1, 0.2),
        "sticky": (0.1, 0.25),
    }),
    # Finer curves and tighter means for papers: about 4x the cost.
    "generalization_full": Suite("generalization_full", 10, {
        "reset_noise": (2.0, 5.0, 10.0),
        "mass": (0.5, 0.75, 1.25, 1.5, 2.0),
        "friction": (0.25, 0.5, 0.75, 1.5, 2.0),
        "damping": (0.5, 2.0),
        "gear": (0.8, 0.9, 1.1, 1.2),
        "obs_noise": (0.01, 0.02, 0.05, 0.1, 0.2),
        "action_noise": (0.05, 0.1, 0.15, 0.2),
        "sticky": (0.1, 0.25),
    }),
    # Only the initial-state split (train vs held-out seeds): the cheapest overfitting check.
    "seeds": Suite("seeds", 10, {}),
}


def suite_from_mapping(name: str, spec: Mapping[str, Any]) -> Suite:
    """{"episodes": N, "levels": {group: [levels...]}} -> Suite, validating every entry."""
    unknown = sorted(set(spec) - {"episodes", "levels", "name"})
    if unknown:
        raise SuiteError(f"suite '{name}': unknown key(s) {unknown}; accepted: episodes, levels")
    episodes = spec.get("episodes", 5)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise SuiteError(f"suite '{name}': episodes={episodes!r} is invalid; a positive integer is required")
    levels: dict[str, tuple[float, ...]] = {}
    for group, values in dict(spec.get("levels") or {}).items():
        values = [values] if isinstance(values, (int, float)) else list(values)
        for value in values:
            check_level(group, value)
        levels[group] = tuple(float(v) for v in values)
    return Suite(str(spec.get("name", name)), episodes, levels)


def get_suite(suite: str | Suite | Mapping[str, Any]) -> Suite:
    """A built-in name, a path to a YAML/JSON file with a suite mapping, a mapping, or a Suite."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, Mapping):
        return suite_from_mapping("custom", suite)
    if suite in SUITES:
        return SUITES[suite]
    path = Path(str(suite))
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        import yaml

        return suite_from_mapping(path.stem, yaml.safe_load(path.read_text()) or {})
    raise SuiteError(f"unknown suite '{suite}'; accepted: {', '.join(SUITES)} or a path to a .yaml/.json suite file")


# -- seeds -------------------------------------------------------------------------------------
def spread_pick(values: np.ndarray, n: int) -> list[int]:
    """n values evenly spread over the sorted unique values (all of them when there are fewer)."""
    unique = np.unique(np.asarray(values, dtype=np.int64))
    if len(unique) <= n:
        return [int(v) for v in unique]
    return [int(unique[i]) for i in np.linspace(0, len(unique) - 1, n).round().astype(int)]


def heldout_seeds(n: int, exclude: Sequence[int] = ()) -> list[int]:
    """n consecutive seeds from HELDOUT_SEED_BASE, skipping every excluded (dataset) seed."""
    excluded, seeds, candidate = set(int(s) for s in exclude), [], HELDOUT_SEED_BASE
    while len(seeds) < n:
        if candidate not in excluded:
            seeds.append(candidate)
        candidate += 1
    return seeds


def seed_sets(agent: EvalAgent, episodes: int) -> dict[str, list[int]]:
    """train / val (dataset episodes' reset seeds, when recorded) and heldout (disjoint from both)."""
    sets: dict[str, list[int]] = {}
    known: list[int] = []
    for name, data in (("train", agent.train_data), ("val", agent.val_data)):
        if data is not None and data.reset_seeds is not None:
            sets[name] = spread_pick(data.reset_seeds, episodes)
            known += [int(s) for s in data.reset_seeds]
    sets["heldout"] = heldout_seeds(episodes, known)
    return sets


# -- cells -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    group: str  # "seeds" or a perturbation group
    level: float | str  # the seed set name for "seeds" rows
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.group}/{self.level}"


def suite_cells(suite: Suite, seeds: Mapping[str, list[int]]) -> list[Cell]:
    cells = [Cell("seeds", name, tuple(s)) for name, s in seeds.items()]
    for group in ALL_GROUPS:  # fixed group order: reports read the same for every suite
        for level in suite.levels.get(group, ()):
            cells.append(Cell(group, float(level), tuple(seeds["heldout"])))
    return cells


@torch.no_grad()
def q_of_start_states(agent: EvalAgent, first_observations: np.ndarray) -> np.ndarray | None:
    """min over critics of Q(s0, pi(s0)); None when the algorithm has no critic named "critic"."""
    critic = agent.algo.networks().get("critic")
    if critic is None:
        return None
    obs = agent.normalizer(torch.as_tensor(first_observations, dtype=torch.float32, device=agent.device))
    q = critic(obs, agent.algo.act(obs))
    return (q.min(0).values if q.dim() > 1 else q).cpu().numpy().astype(np.float64)


def flat_episodes(agent: EvalAgent, cells: Sequence[Cell], seed: int) -> tuple[list, list, list, list[int]]:
    """One flat list of episodes over all cells (one pool, one policy call per step for all of them):
    per episode its env factory, reset seed, observation / action transforms and owning cell."""
    probe = make_env(agent.env)
    low, high = probe.action_space.low.astype(np.float64), probe.action_space.high.astype(np.float64)
    base_reset_noise = float(probe.unwrapped._reset_noise_scale)
    probe.close()
    obs_std = agent.train_data.observations.std(axis=0, dtype=np.float64)
    factories, episode_seeds, transforms, owner = [], [], [], []
    for c, cell in enumerate(cells):
        group = None if cell.group == "seeds" else cell.group
        level = NOMINAL_LEVEL.get(cell.group, 1.0) if group is None else float(cell.level)
        for s in cell.seeds:
            factories.append(env_factory(agent.env, group, level, base_reset_noise))
            episode_seeds.append(s)
            transforms.append(episode_transforms(group, level, seed, s, obs_std, low, high))
            owner.append(c)
    return factories, episode_seeds, transforms, owner


def run_suite(
    agent: EvalAgent,
    suite: str | Suite | Mapping[str, Any] = "generalization",
    episodes: int | None = None,
    seed: int = 0,
    max_parallel: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `agent` on every cell of `suite`. `seed` seeds the noise draws (not the reset seeds,
    which are fixed by the dataset and HELDOUT_SEED_BASE), so any two agents given the same suite,
    episodes, seed and dataset are scored on exactly the same episodes."""
    suite = get_suite(suite)
    episodes = suite.episodes if episodes is None else int(episodes)
    if episodes < 1:
        raise SuiteError(f"episodes={episodes} is invalid; a positive integer is required")
    seeds = seed_sets(agent, episodes)
    cells = suite_cells(suite, seeds)
    factories, episode_seeds, transforms, owner = flat_episodes(agent, cells, seed)

    def obs_transform(obs: np.ndarray, i: int) -> np.ndarray:
        fn = transforms[i].obs
        return obs if fn is None else fn(obs)

    def action_transform(action: np.ndarray, i: int) -> np.ndarray:
        fn = transforms[i].action
        return action if fn is None else fn(action)

    bar = tqdm(total=len(episode_seeds), desc=f"suite {suite.name}", unit="ep", disable=not progress, dynamic_ncols=True)
    tick = time.perf_counter()
    try:
        stats = run_episodes(AgentPolicy(agent.algo, agent.normalizer, agent.device), factories, episode_seeds,
                             discount=agent.discount, obs_transform=obs_transform, action_transform=action_transform,
                             max_parallel=max_parallel, on_episode_end=lambda i: bar.update(1))
    finally:
        bar.close()
    seconds = time.perf_counter() - tick

    owner_arr = np.asarray(owner)
    rows = []
    for c, cell in enumerate(cells):
        rows.append(cell_row(agent, cell, stats, np.flatnonzero(owner_arr == c)))
    return {
        "suite": suite.name,
        "episodes_per_cell": episodes,
        "noise_seed": seed,
        "env": agent.env,
        "meta": dict(agent.meta),
        "seeds": seeds,
        "levels": {g: list(v) for g, v in suite.levels.items()},
        "nominal_levels": {g: NOMINAL_LEVEL[g] for g in suite.levels},
        "cells": rows,
        "score_scale": agent.train_data.score_scale(),
        "summary": summarize(rows),
        "seconds": seconds,
        "env_steps": int(stats.lengths.sum()),
    }


def cell_row(agent: EvalAgent, cell: Cell, stats: Any, idx: np.ndarray) -> dict[str, Any]:
    returns = stats.returns[idx]
    scores = np.asarray(agent.train_data.normalized_score(returns), dtype=np.float64)
    row: dict[str, Any] = {
        "key": cell.key, "group": cell.group, "level": cell.level, "seeds": list(cell.seeds),
        "episodes": int(len(idx)),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "score_mean": float(scores.mean()), "score_std": float(scores.std()),
        "length_mean": float(stats.lengths[idx].mean()),
        "returns": returns.tolist(), "scores": scores.tolist(),
    }
    if cell.group == "seeds":  # over-estimation at the start states, in the critic's reward units
        q = q_of_start_states(agent, stats.first_observations[idx])
        if q is not None:
            achieved = agent.reward_scale * stats.discounted_returns[idx]
            row.update(q_s0_mean=float(q.mean()), discounted_return_mean=float(achieved.mean()),
                       overestimation_mean=float((q - achieved).mean()))
    return row


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Headline numbers per run: the seed rows, the gap, and the mean score of each perturbation group.
    Uses normalised scores when the dataset has reference scores, else raw returns (says which)."""
    use_scores = all(np.isfinite(r["score_mean"]) for r in rows)
    metric = "score_mean" if use_scores else "return_mean"
    by_key = {r["key"]: r[metric] for r in rows}
    out: dict[str, Any] = {"metric": "normalized_score" if use_scores else "return"}
    for name in ("train", "val", "heldout"):
        out[f"seeds_{name}"] = by_key.get(f"seeds/{name}")
    gap = lambda a: None if out[a] is None else out[a] - out["seeds_heldout"]  # noqa: E731
    out["generalization_gap"] = gap("seeds_train")  # train seeds - held-out seeds (Zhang et al. 2018)
    out["val_gap"] = gap("seeds_val")
    perturbed = []
    for group in ALL_GROUPS:
        values = [r[metric] for r in rows if r["group"] == group]
        out[f"{group}_mean"] = float(np.mean(values)) if values else None
        perturbed += values
    out["perturbed_mean"] = float(np.mean(perturbed)) if perturbed else None
    nominal = out["seeds_heldout"]
    # Fraction of the nominal score kept under perturbation (undefined when nominal is ~0).
    out["retention"] = (out["perturbed_mean"] / nominal) if perturbed and nominal and abs(nominal) > 1e-8 else None
    overestimation = [r["overestimation_mean"] for r in rows if "overestimation_mean" in r]
    out["overestimation_mean"] = float(np.mean(overestimation)) if overestimation else None
    return out


# -- run directories ---------------------------------------------------------------------------
def write_result(run_dir: Path | str, result: Mapping[str, Any]) -> tuple[Path, Path]:
    """generalization.json and generalization.png (degradation curves, gap, training diagnostics)."""
    from sparse_offline_rl.evaluation.figures import plot_run
    from sparse_offline_rl.io import atomic_write_json

    run_dir = Path(run_dir)
    json_path, fig_path = run_dir / "generalization.json", run_dir / "generalization.png"
    atomic_write_json(json_path, result)
    plot_run(result, run_dir / "metrics.jsonl", fig_path)
    return json_path, fig_path


def evaluate_run(
    run_dir: Path | str,
    suite: str | Suite | Mapping[str, Any] = "generalization",
    episodes: int | None = None,
    dataset: Any = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Library entry point: load the run's agent, run the suite, write generalization.json and .png into the run dir."""
    from sparse_offline_rl.evaluation.agent import load_agent

    suite = get_suite(suite)  # fail on a bad suite before loading anything
    agent = load_agent(run_dir, dataset=dataset, device=device)
    result = run_suite(agent, suite, episodes=episodes, seed=seed, progress=progress)
    if write:
        write_result(run_dir, result)
    return result


def load_result(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / "generalization.json" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no generalization results; run `python -m sparse_offline_rl.evaluate run_dir={run_dir}` first")
    return json.loads(path.read_text())
