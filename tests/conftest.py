"""Shared fixtures and helpers: tiny datasets with real MuJoCo dimensions, a fast training config,
interrupting a run at a step, comparing resumed state, and running `python run.py` in a subprocess."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sparse_offline_rl.data.dataset import OfflineDataset, episode_starts_from_flags
from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.training.trainer import StepInfo

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # tests run beside each other on 2 cores; one thread each is fastest overall


@pytest.fixture(autouse=True)
def _no_minari_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches Minari's server: its address is one that never resolves (RFC 2606 .invalid)."""
    monkeypatch.setenv("HF_ENDPOINT", "https://minari-remote.invalid")


def random_dataset(env: str = "hopper", n: int = 2000, episode_len: int = 100, seed: int = 0) -> OfflineDataset:
    """Random transitions with the env's dimensions (enough to exercise every code path quickly)."""
    task = get_task(env)
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, task.obs_dim)).astype(np.float32)
    next_obs = (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[episode_len - 1 :: episode_len] = True
    terminals = np.zeros(n, bool)
    return OfflineDataset(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, task.act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=next_obs,
        terminals=terminals,
        timeouts=timeouts,
        episode_starts=episode_starts_from_flags(terminals, timeouts),
        env_id=task.env_id,
        ref_min_score=task.d4rl_random_score,
        ref_max_score=task.d4rl_expert_score,
        source=f"random-{env}",
    )


def write_d4rl_hdf5(path: Path, dataset: OfflineDataset) -> Path:
    """D4RL's layout: one row per step, `timeouts` marking time-limit ends."""
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            f.create_dataset(key, data=getattr(dataset, key))
    return path


FAST_CONFIG = {
    "algo": {"name": "iql", "hidden": [32, 32]},
    "pruner": {"name": "random"},
    "env": "hopper",
    "dataset": "random-hopper",
    "seed": 0,
    "sparsity": 0.9,
    "steps": 300,
    "batch_size": 64,
    "val_fraction": 0.0,
    "device": "cpu",
    "threads": None,
    "resume": False,
    "checkpoint_every": 100,
    "log_every": 50,
    "eval": {"every": 150, "episodes": 2, "suite": None},
    "tensorboard": False,
    "progress": False,
    "verbose": False,
}


@pytest.fixture
def fast_config() -> dict:
    return copy.deepcopy(FAST_CONFIG)


@pytest.fixture(scope="session")
def hopper_data() -> OfflineDataset:
    return random_dataset("hopper")


class Interrupt(Exception):
    """Raised by a callback to cut a run short, as a kill would (tests of resume)."""


def interrupt_at(step: int):
    """A training callback that raises Interrupt when the run reaches `step`."""
    def callback(info: StepInfo) -> None:
        if info.step == step:
            raise Interrupt

    return callback


def assert_same_state(a, b, where: str = "") -> None:
    """Nested state dicts equal bit for bit (tensors) or by value (everything else)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{where} differs after resume"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def run_cli(*args: str, cwd: Path | str = REPO, pythonpath: list[str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a fresh interpreter at one thread (`pythonpath`: replaces PYTHONPATH)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_cost_module(folder: Path) -> Path:
    """folder/mycosts.py with `actor_kept(networks)`: the actor's nonzero Linear weights, a budget_cost a
    run.py subprocess imports (`mycosts:actor_kept`, with `folder` on its PYTHONPATH)."""
    path = Path(folder) / "mycosts.py"
    path.write_text(
        "import torch\n"
        "def actor_kept(networks):\n"
        "    return float(sum(int(torch.count_nonzero(m.weight)) for m in networks['actor'].modules()\n"
        "                     if isinstance(m, torch.nn.Linear)))\n")
    return path
