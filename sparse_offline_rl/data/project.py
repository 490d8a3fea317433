"""The project's own datasets as loading sees them: their ids, where they and their behaviour policies
live, the command that makes one, and the reset-seed rule their episodes follow.

Making them is `sparse_offline_rl.generation`; these names sit here because loading needs them too
(an id names a dataset before it exists, and evaluation keeps its reset seeds off the datasets').
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.errors import DatasetError

QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")
ENVS = ("halfcheetah", "hopper", "walker2d")
DEFAULT_SIZE = 1_000_000
NAMESPACE = "sorl"  # Minari namespace of the project's datasets: sorl/<env>/<quality>-v0
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / "datasets" / "minari"
POLICY_DIR = REPO_ROOT / "datasets" / "policies"

# Episode k of a rollout seeded `seed` resets with seed * SEED_STRIDE + k: readable, and disjoint
# across rollout seeds (evaluation harnesses can hold out whole seed ranges). Dataset shards start at
# multiples of SHARD_STRIDE episodes inside that range (see generation/generate.py).
SEED_STRIDE = 1_000_000_000
SHARD_STRIDE = 1_000_000


def reset_seed(seed: int, episode: int) -> int:
    return seed * SEED_STRIDE + episode


def datasets_root(out: str | os.PathLike | None = None) -> Path:
    """Where datasets are written: `out`, else $MINARI_DATASETS_PATH, else the repo's datasets/minari."""
    if out is not None:
        return Path(out)
    env_path = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env_path) if env_path else DEFAULT_ROOT


def minari_id(env: str, quality: str, size: int = DEFAULT_SIZE, seed: int = 0) -> str:
    """sorl/hopper/medium-v0 for the defaults; non-default size/seed get their own id so they never shadow it."""
    name = quality + (f"-n{size}" if size != DEFAULT_SIZE else "") + (f"-s{seed}" if seed != 0 else "")
    return f"{NAMESPACE}/{get_task(env).name}/{name}-v0"


def make_command(env: str, quality: str, size: int = DEFAULT_SIZE, seed: int = 0) -> str:
    return f"python -m sparse_offline_rl.data make env={env} quality={quality} size={size} seed={seed}"


def policy_info(env: str, policy_dir: Path = POLICY_DIR) -> dict[str, Any]:
    """The JSON sidecar of an environment's shipped policies."""
    path = policy_dir / env / "policies.json"
    if not path.exists():
        raise DatasetError(
            f"{path}: no behaviour policies for '{env}'; train them with "
            f"`python -m sparse_offline_rl.data.behavior train env={env}`"
        )
    return json.loads(path.read_text())
