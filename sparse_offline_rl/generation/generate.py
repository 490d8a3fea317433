"""Makes the project's datasets as local Minari datasets from the shipped behaviour policies.

    python -m sparse_offline_rl.data make env=hopper quality=medium size=1000000 seed=0 [out=DIR] [id=...]

Quality levels (D4RL's, carried over): random (uniform actions), medium (a SAC checkpoint at about a
third of the expert's return), expert (the best checkpoint reached), medium-replay (every checkpoint from
the start of training up to medium, equal shares) and medium-expert (half medium, half expert).
Data is written into a hidden temp folder and renamed into place in one step, so an interrupted run never
leaves a folder that loads as a whole dataset.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import minari
import numpy as np
from tqdm import tqdm
from minari.dataset.minari_storage import MinariStorage

from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.data.project import (
    DEFAULT_ROOT,
    DEFAULT_SIZE,
    ENVS,
    NAMESPACE,
    POLICY_DIR,
    QUALITIES,
    SEED_STRIDE,
    SHARD_STRIDE,
    datasets_root,
    make_command,
    minari_id,
    policy_info,
)
from sparse_offline_rl.errors import DatasetError
from sparse_offline_rl.generation.collect import Episode, rollout
from sparse_offline_rl.generation.policies import Policy, RandomPolicy, load_checkpoint

# The ids, roots and the make command live in data.project (loading names a dataset before it is made);
# they stay importable from here as before the move.
__all__ = ["DEFAULT_ROOT", "DEFAULT_SIZE", "ENVS", "NAMESPACE", "QUALITIES", "SHARD_SIZE", "behaviour_plan", "collect",
           "dataset_metadata", "datasets_root", "make_command", "make_dataset", "minari_id", "shards", "write_episodes"]

SHARD_SIZE = 125_000  # transitions per shard: the unit of parallel generation


def behaviour_plan(env: str, quality: str, size: int, policy_dir: Path = POLICY_DIR) -> list[tuple[str, int]]:
    """(policy name, transitions) parts, collected in this order; "random" is the uniform policy."""
    if quality not in QUALITIES:
        raise DatasetError(f"unknown quality '{quality}'; available: {', '.join(QUALITIES)}")
    if quality == "random":
        return [("random", size)]
    names = policy_info(env, policy_dir)["policies"]
    if quality in ("medium", "expert"):
        return [(names[quality], size)]
    parts = names["medium-replay"] if quality == "medium-replay" else [names["medium"], names["expert"]]
    shares = [size // len(parts)] * len(parts)
    shares[-1] += size - sum(shares)
    return [(p, n) for p, n in zip(parts, shares) if n > 0]


def shards(env: str, quality: str, size: int, policy_dir: Path = POLICY_DIR) -> list[tuple[str, int]]:
    """(policy, transitions) shards of at most SHARD_SIZE, in dataset order. They depend only on the
    request, never on the worker count, so the data is the same however many processes make it."""
    out = []
    for name, n in behaviour_plan(env, quality, size, policy_dir):
        out += [(name, min(SHARD_SIZE, n - start)) for start in range(0, n, SHARD_SIZE)]
    return out


def _collect_shard(job: tuple[str, str, int, int, int, int, str]) -> list[Episode]:
    env, name, n, seed, index, n_envs, policy_dir = job
    task = get_task(env)
    policy: Policy = (RandomPolicy(task.act_dim) if name == "random"
                      else load_checkpoint(env, name, task.obs_dim, task.act_dim, Path(policy_dir)))
    # Shard i numbers its episodes from i * SHARD_STRIDE, so reset seeds never repeat within a dataset.
    return rollout(env, policy, seed, transitions=n, n_envs=n_envs, first_episode=index * SHARD_STRIDE)


def collect(env: str, quality: str, size: int, seed: int = 0, n_envs: int = 16, progress: bool = True,
            policy_dir: Path = POLICY_DIR, workers: int | None = None) -> tuple[list[Episode], list[str]]:
    """Episodes of a dataset (and the policy that made each one), shards run over `workers` processes."""
    task = get_task(env)
    plan = shards(task.name, quality, size, policy_dir)
    jobs = [(task.name, name, n, seed, i, n_envs, str(policy_dir)) for i, (name, n) in enumerate(plan)]
    # Small datasets stay in-process: starting workers costs more than it saves.
    workers = 1 if size <= SHARD_SIZE else min(len(jobs), workers or min(2, os.cpu_count() or 1))
    bar = tqdm(total=size, desc=f"{task.name}-{quality}", unit="step", disable=not progress, mininterval=1.0)
    episodes: list[Episode] = []
    made_by: list[str] = []
    with (multiprocessing.get_context("fork").Pool(workers) if workers > 1 else nullcontext()) as pool:
        results = pool.imap(_collect_shard, jobs) if pool is not None else map(_collect_shard, jobs)
        for (name, n), part in zip(plan, results):
            episodes += part
            made_by += [name] * len(part)
            bar.update(n)
    bar.close()
    return episodes, made_by


def make_dataset(env: str, quality: str, size: int = DEFAULT_SIZE, seed: int = 0, out: str | os.PathLike | None = None,
                 dataset_id: str | None = None, n_envs: int = 16, progress: bool = True,
                 policy_dir: Path = POLICY_DIR, workers: int | None = None) -> Path:
    """Generates and writes one dataset; returns its folder. Refuses to overwrite an existing one."""
    task = get_task(env)
    root = datasets_root(out)
    dataset_id = dataset_id or minari_id(task.name, quality, size, seed)
    final = root / dataset_id
    if final.exists():
        raise DatasetError(f"{final}: dataset '{dataset_id}' already exists; delete it to make it again")
    if size <= 0:
        raise DatasetError(f"size must be positive, got {size}")
    info = policy_info(task.name, policy_dir)  # reference scores live there, even for "random"
    episodes, made_by = collect(task.name, quality, size, seed, n_envs, progress, policy_dir, workers)

    tmp = root / f".tmp-{uuid.uuid4().hex}"  # hidden: Minari's listing skips it, and it is not at the id path
    try:
        tmp.mkdir(parents=True)
        env_spec = gym.spec(task.env_id)
        probe = gym.make(task.env_id, disable_env_checker=True)
        storage = MinariStorage.new(tmp / "data", observation_space=probe.observation_space,
                                    action_space=probe.action_space, env_spec=env_spec, data_format="hdf5")
        probe.close()
        storage.update_metadata(dataset_metadata(dataset_id, task.name, quality, size, seed, info, episodes, made_by))
        write_episodes(tmp / "data" / "main_data.hdf5", episodes)
        storage.update_metadata({"total_steps": sum(len(e) for e in episodes), "total_episodes": len(episodes),
                                 "dataset_size": storage.get_size()})
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)  # atomic: the dataset appears whole or not at all
        except OSError as e:
            if final.exists():  # another process finished the same dataset first
                raise DatasetError(f"{final}: dataset '{dataset_id}' was made by another process meanwhile") from e
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def dataset_metadata(dataset_id: str, env: str, quality: str, size: int, seed: int, info: dict[str, Any],
                     episodes: list[Episode], made_by: list[str]) -> dict[str, Any]:
    returns = np.array([e.ret for e in episodes])
    return {
        "dataset_id": dataset_id,
        "minari_version": minari.__version__,
        "algorithm_name": "SAC behaviour policies (sparse_offline_rl.data.behavior)" if quality != "random" else "uniform random",
        "author": {"sparse-offline-rl"},
        "description": f"{env} {quality}: {size} transitions from the project's {quality} behaviour policy on "
                       f"{get_task(env).env_id}, made by `{make_command(env, quality, size, seed)}`",
        "ref_min_score": info["ref_min_score"],  # random policy, 100 episodes
        "ref_max_score": info["ref_max_score"],  # expert policy, 100 episodes
        "num_episodes_average_score": int(info["returns"]["random"]["episodes"]),
        "sorl_quality": quality,
        "sorl_size": size,
        "sorl_seed": seed,
        "sorl_command": make_command(env, quality, size, seed),
        "sorl_reset_seed_rule": f"episode k of shard i resets with seed {seed} * {SEED_STRIDE} + i * {SHARD_STRIDE} + k "
                                "(each episode's seed is also in its metadata 'seed')",
        "sorl_behaviour_policies": sorted(set(made_by), key=made_by.index),
        "sorl_return_mean": float(returns.mean()),
        "sorl_return_min": float(returns.min()),
        "sorl_return_max": float(returns.max()),
    }


def write_episodes(path: Path, episodes: list[Episode]) -> None:
    """Episodes in Minari's HDF5 layout (episode_<i> groups, attrs id/seed/total_steps).

    Contiguous datasets: chunking (what Minari uses, to allow appends) costs ~13 kB of index per episode,
    more than compression saves on float state data. No HDF5 timestamps, so the same seed gives the same bytes.
    """
    with h5py.File(path, "w", track_order=True) as f:
        for i, ep in enumerate(episodes):
            g = f.create_group(f"episode_{i}", track_order=True)
            g.attrs["id"], g.attrs["seed"], g.attrs["total_steps"] = i, ep.seed, len(ep)
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                g.create_dataset(key, data=getattr(ep, key), track_times=False)
