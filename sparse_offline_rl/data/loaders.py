"""Loaders that turn D4RL HDF5 files and Minari datasets (local, or downloaded on first use) into an
`OfflineDataset`, and the one entry point the trainer uses, `load_dataset(name, env=None)`.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.errors import DatasetError, UnknownNameError
from sparse_offline_rl.io import atomic_write_bytes_with, file_lock
from sparse_offline_rl.data.envs import TASKS, Task, get_task
from sparse_offline_rl.data.project import (
    DEFAULT_ROOT,
    ENVS,
    NAMESPACE,
    QUALITIES,
    datasets_root,
    make_command,
    minari_id,
    policy_info,
)
# The one arrow up from loading to making: a project dataset is made on its first use.
from sparse_offline_rl.generation.generate import make_dataset

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
PROJECT_ID = re.compile(rf"^({'|'.join(ENVS)})-({'|'.join(QUALITIES)})$")
MINARI_ID = re.compile(r"^[\w.-]+(/[\w.-]+)*-v\d+$")  # namespace/name-vN, e.g. mujoco/hopper/medium-v0
MINARI_HOME = Path.home() / ".minari" / "datasets"  # Minari's own default location
REMOTE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------- D4RL HDF5

def load_d4rl_hdf5(path: str | os.PathLike, env: str | None = None) -> OfflineDataset:
    """A D4RL-layout HDF5 file with D4RL's transition rule.

    Without `next_observations` (classic D4RL): next obs = observations[i + 1], rows with timeouts[i] are
    dropped (their successor belongs to the next episode) and so is the last row; the row before a dropped
    timeout becomes the episode's last one (timeouts=True, so it still bootstraps). With
    `next_observations` every row has a true next obs, so timeout rows are kept as timeouts.

    The large fields are read in row chunks straight into the float32 output arrays (each chunk once,
    feeding both `observations` and `next_observations` in the classic layout), so the peak memory is
    the output plus a few MiB rather than several full-size copies of the raw arrays.
    """
    import h5py

    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DatasetError(f"{source}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{source}: not a readable HDF5 file ({e})") from e
    with f:
        for name in D4RL_REQUIRED:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise DatasetError(f"{source}: field '{name}' missing")
        metadata = {f"metadata/{k}": _plain(v[()]) for k, v in f.get("metadata", {}).items() if isinstance(v, h5py.Dataset)}
        info_keys = sorted(f["infos"].keys()) if "infos" in f else []
        flat_rewards = _check_d4rl_shapes(f, source)
        keep, term, t_out = _d4rl_transitions(f, source)
        task = _task_for_file(path, f["observations"].shape[1], f["actions"].shape[1], env)
        warnings.warn(f"{source}: D4RL (mujoco-py v2) data is evaluated on gymnasium {task.env_id} dynamics, "
                      "which are close to but not equal to v2", stacklevel=2)
        arrays = _read_d4rl_arrays(f, source, keep, len(term), flat_rewards)
    del keep

    ends = np.flatnonzero(term | t_out)
    starts = np.concatenate([[0], ends + 1])
    ds = OfflineDataset(
        **arrays,
        terminals=term,
        timeouts=t_out,
        episode_starts=starts[starts < len(term)].astype(np.int64),
        env_id=task.env_id,
        ref_min_score=task.d4rl_random_score,
        ref_max_score=task.d4rl_expert_score,
        source=source,
        metadata={"format": "d4rl-hdf5", "info_keys": info_keys, **metadata},
    )
    return ds


def _check_d4rl_shapes(f, source: str) -> bool:
    """Checks that every field has one row per observation; says whether the rewards are N flat values."""
    obs_d, act_d, rew_d = f["observations"], f["actions"], f["rewards"]
    next_d = f["next_observations"] if "next_observations" in f else None
    if obs_d.ndim != 2:
        raise DatasetError(f"{source}: field 'observations' must be (N, obs_dim), got shape {obs_d.shape}")
    if act_d.ndim != 2:
        raise DatasetError(f"{source}: field 'actions' must be (N, act_dim), got shape {act_d.shape}")
    n = obs_d.shape[0]
    flat_rewards = rew_d.size == n  # (N,), (N, 1) or any other layout of exactly N values
    rew_shape = (n,) if flat_rewards else rew_d.shape
    for name, shape in (("actions", act_d.shape), ("rewards", rew_shape), ("terminals", f["terminals"].shape),
                        ("timeouts", f["timeouts"].shape)):
        if len(shape) == 0 or shape[0] != n or (name != "actions" and len(shape) != 1):
            raise DatasetError(f"{source}: field '{name}' has shape {shape}, expected {n} rows to match 'observations'")
    if next_d is not None and next_d.shape != obs_d.shape:
        raise DatasetError(f"{source}: field 'next_observations' has shape {next_d.shape}, 'observations' has {obs_d.shape}")
    if n == 0:
        raise DatasetError(f"{source}: dataset is empty (0 transitions)")
    return flat_rewards


def _d4rl_transitions(f, source: str) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(rows kept or None for all, terminals, timeouts) of the kept rows, by D4RL's transition rule."""
    terminals, timeouts = _read_flag(f["terminals"], source, "terminals"), _read_flag(f["timeouts"], source, "timeouts")
    # Boolean bookkeeping in place (a & ~b is a > b for bools): no full-size temporaries beyond the flags.
    if "next_observations" not in f:
        keep = np.logical_not(timeouts)
        keep[-1] = False  # no successor row
        ends_by_drop = timeouts  # reused: the row before a dropped row ends its episode
        np.logical_not(keep[1:], out=ends_by_drop[:-1])
        ends_by_drop[-1] = False
        np.greater(ends_by_drop, terminals, out=ends_by_drop)  # ... unless it terminates
        t_out = ends_by_drop[keep]
        term = terminals[keep]
    else:
        keep = None  # every row
        t_out = timeouts
        t_out[-1] |= not terminals[-1]  # the file may end mid-episode: treat it as cut
        term = terminals
    del terminals, timeouts
    if len(term) == 0:
        raise DatasetError(f"{source}: no transitions left after dropping timeout rows")
    np.greater(t_out, term, out=t_out)  # t_out &= ~term
    return keep, term, t_out


def _read_d4rl_arrays(f, source: str, keep: np.ndarray | None, m: int, flat_rewards: bool) -> dict[str, np.ndarray]:
    """The kept rows of the float fields, as float32 arrays of `m` rows."""
    obs_d, act_d, rew_d = f["observations"], f["actions"], f["rewards"]
    next_d = f["next_observations"] if "next_observations" in f else None
    n = obs_d.shape[0]
    for name, d in (("observations", obs_d), ("actions", act_d), ("rewards", rew_d), ("next_observations", next_d)):
        if d is not None:
            _check_numeric(d.dtype, source, name)
    observations = np.empty((m, obs_d.shape[1]), np.float32)
    next_observations = np.empty((m, obs_d.shape[1]), np.float32)
    actions = np.empty((m, act_d.shape[1]), np.float32)
    rewards = np.empty(m, np.float32)
    if flat_rewards and (rew_d.ndim == 0 or rew_d.shape[0] != n):  # e.g. (1, N): not row-aligned
        _take_rows(rew_d[()].reshape(n), keep, rewards)
    else:
        _take_rows(rew_d, keep, rewards)
    _take_rows(act_d, keep, actions)
    if next_d is None:
        _take_rows(obs_d, keep, observations, next_observations)
    else:
        _take_rows(obs_d, keep, observations)
        _take_rows(next_d, keep, next_observations)
    return {"observations": observations, "actions": actions, "rewards": rewards,
            "next_observations": next_observations}


_CHUNK_ROWS = 1 << 14


def _read_flag(d, source: str, name: str) -> np.ndarray:
    arr = d[()]
    if arr.dtype != np.bool_:  # a bool array is 0/1 by construction
        if not np.isin(arr, (0, 1)).all():
            raise DatasetError(f"{source}: field '{name}' must be boolean (0/1)")
        arr = arr.astype(bool)
    return arr


def _take_rows(src, keep: np.ndarray | None, out: np.ndarray, out_next: np.ndarray | None = None) -> None:
    """out[j] = src[rows[j]] (and out_next[j] = src[rows[j] + 1]) for rows = flatnonzero(keep), all rows
    when `keep` is None, cast to out's dtype like `astype`. `src` (an h5py dataset or an array) is read
    once, chunk by chunk into one reused buffer, so no temporary is larger than a chunk and the allocator
    is not left holding freed chunks. With `out_next`, keep[-1] must be False (the last row has no successor)."""
    n = src.shape[0]
    extra = 1 if out_next is not None else 0
    is_array = isinstance(src, np.ndarray)
    buf = None if is_array else np.empty((min(_CHUNK_ROWS + extra, n),) + src.shape[1:], src.dtype)
    pos = 0
    for c0 in range(0, n, _CHUNK_ROWS):
        c1 = min(c0 + _CHUNK_ROWS, n)
        ce = min(c1 + extra, n)
        if is_array:
            v = src[c0:ce]
        else:
            src.read_direct(buf, np.s_[c0:ce], np.s_[0:ce - c0])
            v = buf[:ce - c0]
        if v.ndim > out.ndim:  # rewards stored as (N, 1)
            v = v.reshape(v.shape[0], -1)[:, 0]
        if keep is None:
            out[c0:c1] = v
            continue
        idx = np.flatnonzero(keep[c0:c1])
        cnt = len(idx)
        for dest in (out, out_next):
            if dest is None:
                break
            if cnt:
                if v.dtype == dest.dtype:
                    np.take(v, idx, axis=0, out=dest[pos:pos + cnt], mode="clip")  # indices valid: no checks, no copy
                else:
                    dest[pos:pos + cnt] = v[idx]
            idx += 1  # next row, for out_next; the last row is never kept, so it stays inside v
        pos += cnt
    if keep is not None and pos != out.shape[0]:
        raise AssertionError(f"_take_rows wrote {pos} rows into {out.shape[0]}")


def _check_numeric(dtype: np.dtype, source: str, name: str) -> None:
    if not np.issubdtype(dtype, np.number):
        raise DatasetError(f"{source}: field '{name}' must be numeric, got dtype {dtype}")


def _float(arr: np.ndarray, source: str, name: str) -> np.ndarray:
    _check_numeric(arr.dtype, source, name)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _plain(v: object) -> object:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 16 else f"array{v.shape}"
    return v.item() if isinstance(v, np.generic) else v


def _task_for_file(path: Path, obs_dim: int, act_dim: int, env: str | None) -> Task:
    """The v5 task a D4RL file belongs to: `env` if given, else the file name, else unique dims."""
    if env is not None:
        task = _task(env)
        if (obs_dim, act_dim) != (task.obs_dim, task.act_dim):
            raise DatasetError(f"{path}: field 'observations'/'actions' have dims ({obs_dim}, {act_dim}) but "
                               f"{task.env_id} expects ({task.obs_dim}, {task.act_dim})")
        return task
    for task in TASKS.values():
        if task.name in path.name.lower():
            if (obs_dim, act_dim) != (task.obs_dim, task.act_dim):
                raise DatasetError(f"{path}: field 'observations'/'actions' have dims ({obs_dim}, {act_dim}) but the "
                                   f"file name says {task.env_id} with ({task.obs_dim}, {task.act_dim})")
            return task
    matches = [t for t in TASKS.values() if (t.obs_dim, t.act_dim) == (obs_dim, act_dim)]
    if len(matches) == 1:
        return matches[0]
    raise DatasetError(f"{path}: cannot tell the environment from dims (obs {obs_dim}, act {act_dim}) "
                       f"{'(ambiguous: ' + ', '.join(t.name for t in matches) + ')' if matches else ''}; pass env=")


def _task(env: str) -> Task:
    try:
        return get_task(env)
    except UnknownNameError as e:
        raise DatasetError(str(e)) from e


# ---------------------------------------------------------------- Minari

def search_roots() -> list[Path]:
    """$MINARI_DATASETS_PATH (if set), then the repo's datasets/minari, then Minari's ~/.minari/datasets."""
    roots = [datasets_root()]
    for root in (DEFAULT_ROOT, MINARI_HOME):
        if root not in roots:
            roots.append(root)
    return roots


@contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """minari reads MINARI_DATASETS_PATH at call time; point it at `root` for one call."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def find_minari(dataset_id: str) -> Path | None:
    """The datasets root holding `dataset_id`, if any."""
    for root in search_roots():
        if (root / dataset_id / "data").is_dir():
            return root
    return None


FLAT_CACHE = "sorl_flat_cache.npz"
_ARRAY_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "episode_starts")


def _data_stamp(data_dir: Path) -> np.ndarray:
    """Size and mtime of every file Minari wrote: the cache is valid only for exactly these files."""
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    return np.array([[p.stat().st_size, p.stat().st_mtime_ns] for p in files], dtype=np.int64).reshape(-1, 2)


def _read_flat_cache(path: Path, stamp: np.ndarray) -> OfflineDataset | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["stamp"], stamp):
                return None
            info = json.loads(str(z["info"]))
            arrays = {k: z[k] for k in _ARRAY_FIELDS}
            seeds = z["reset_seeds"] if "reset_seeds" in z.files else None
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache: rebuild it from the Minari files
    return OfflineDataset(**arrays, reset_seeds=seeds, **info)


def _write_flat_cache(path: Path, stamp: np.ndarray, ds: OfflineDataset) -> None:
    info = {"env_id": ds.env_id, "ref_min_score": ds.ref_min_score, "ref_max_score": ds.ref_max_score,
            "source": ds.source, "metadata": ds.metadata}
    arrays = {k: getattr(ds, k) for k in _ARRAY_FIELDS}
    if ds.reset_seeds is not None:
        arrays["reset_seeds"] = ds.reset_seeds
    try:
        atomic_write_bytes_with(path, lambda f: np.savez(f, stamp=stamp, info=json.dumps(info), **arrays))
    except OSError:
        pass  # a read-only dataset folder just means no cache


def load_minari(dataset_id: str, root: str | os.PathLike | None = None) -> OfflineDataset:
    """A local Minari dataset (flat Box observations/actions) via `minari.load_dataset`.

    Reading Minari episode by episode takes ~17 s for 1M transitions; the flat arrays are therefore
    cached beside the dataset (`sorl_flat_cache.npz`, tied to the size and mtime of Minari's files)
    and later loads take well under a second.
    """
    root_path = Path(root) if root is not None else find_minari(dataset_id)
    if root_path is None or not (root_path / dataset_id / "data").is_dir():
        raise DatasetError(_missing_message(dataset_id))
    cache = root_path / dataset_id / FLAT_CACHE
    stamp = _data_stamp(root_path / dataset_id / "data")
    ds = _read_flat_cache(cache, stamp)
    if ds is None:
        ds = _load_minari_episodes(dataset_id, root_path)
        _write_flat_cache(cache, stamp, ds)
    return ds


def _load_minari_episodes(dataset_id: str, root_path: Path) -> OfflineDataset:
    import gymnasium as gym
    import minari

    source = f"minari:{dataset_id}"
    with _minari_root(root_path):
        try:
            ds = minari.load_dataset(dataset_id)
        except Exception as e:  # minari raises several types for unreadable folders
            raise DatasetError(f"{source}: cannot be opened ({e})") from e
    for name, space in (("observations", ds.observation_space), ("actions", ds.action_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise DatasetError(f"{source}: field '{name}' must be a flat Box space, got {space}")
    obs, nxt, act, rew, term, trunc, lengths = [], [], [], [], [], [], []
    for ep in ds.iterate_episodes():
        t = len(ep.rewards)
        if t == 0:
            continue
        if ep.observations.shape[0] != t + 1:
            raise DatasetError(f"{source}: field 'observations' of episode {ep.id} has {ep.observations.shape[0]} rows, "
                               f"expected {t + 1} (T+1)")
        obs.append(ep.observations[:-1]), nxt.append(ep.observations[1:]), act.append(ep.actions)
        rew.append(ep.rewards), term.append(ep.terminations), trunc.append(ep.truncations), lengths.append(t)
    if not lengths:
        raise DatasetError(f"{source}: dataset has no transitions")
    terminals = np.concatenate(term).astype(bool)
    timeouts = np.concatenate(trunc).astype(bool) & ~terminals
    ends = np.cumsum(lengths) - 1
    timeouts[ends] |= ~terminals[ends]  # every episode ends with one of the two flags
    meta = ds.storage.metadata
    seeds = [m.get("seed") for m in ds.storage.get_episode_metadata(range(ds.total_episodes))]
    env_spec = ds.spec.env_spec
    return OfflineDataset(
        observations=_float(np.concatenate(obs), source, "observations"),
        actions=_float(np.concatenate(act), source, "actions"),
        rewards=_float(np.concatenate(rew), source, "rewards"),
        next_observations=_float(np.concatenate(nxt), source, "next_observations"),
        terminals=terminals,
        timeouts=timeouts,
        episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        env_id=env_spec.id if env_spec is not None else None,
        ref_min_score=_opt_float(meta.get("ref_min_score")),
        ref_max_score=_opt_float(meta.get("ref_max_score")),
        source=source,
        reset_seeds=np.asarray(seeds, dtype=np.int64) if all(s is not None for s in seeds) and len(seeds) == len(lengths) else None,
        metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list))} | {"format": "minari"},
    )


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


# ---------------------------------------------------------------- entry point

def available_ids() -> list[str]:
    """Project ids (made on first use from the shipped policies) and every local Minari id."""
    import minari

    ids = [f"{e}-{q}" for e in ENVS for q in QUALITIES]
    for root in search_roots():
        if root.is_dir():
            with _minari_root(root), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ids += [i for i in minari.list_local_datasets() if i not in ids]
    return ids


def _missing_message(name: str, reason: str | None = None) -> str:
    m = re.match(rf"^sorl/({'|'.join(ENVS)})/({'|'.join(QUALITIES)})(?:-n(\d+))?(?:-s(\d+))?-v0$", name)
    how = (make_command(m[1], m[2], int(m[3] or 1_000_000), int(m[4] or 0)) if m else
           "python -m sparse_offline_rl.data make env=ENV quality=QUALITY size=N seed=S")
    what = f"Minari dataset '{name}' is not on this machine and could not be downloaded ({reason})" if reason else \
        f"unknown dataset '{name}'"
    return (f"{what} (searched {', '.join(map(str, search_roots()))}); available: {', '.join(available_ids())}; "
            f"make a missing one with `{how}`, or set MINARI_DATASETS_PATH to a folder that holds it")


def _remote_endpoint() -> str:
    """The server behind Minari's default remote (its Hugging Face organisation); HF_ENDPOINT overrides it."""
    try:
        from huggingface_hub import constants
    except ImportError as e:
        raise DatasetError("downloading Minari datasets needs Minari's remote extra: pip install 'minari[hf]'") from e
    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _reachable(url: str, timeout: float) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def download_minari(dataset_id: str, root: Path | None = None) -> Path:
    """Fetches a remote Minari dataset with Minari's own `download_dataset` into `root` (default: where
    datasets are written, see `datasets_root`) and returns that root.

    Checks first, with a 5 s limit, that Minari's server answers: without a network Minari's client
    retries for about half a minute before giving up."""
    import minari

    root = Path(root) if root is not None else datasets_root()
    endpoint = _remote_endpoint()
    if not _reachable(endpoint, REMOTE_TIMEOUT_S):
        raise DatasetError(_missing_message(dataset_id, f"{endpoint} did not answer within {REMOTE_TIMEOUT_S:.0f} s"))
    print(f"dataset '{dataset_id}' not found locally: downloading it with minari.download_dataset into {root}", flush=True)
    with _minari_root(root):
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:  # minari raises ValueError for unknown ids, network errors for the rest
            raise DatasetError(_missing_message(dataset_id, f"{type(e).__name__}: {e}")) from e
    if not (root / dataset_id / "data").is_dir():
        raise DatasetError(f"Minari dataset '{dataset_id}': the download left no data under {root / dataset_id}")
    return root


def _ensure_local(name: str, target: str, generate: bool) -> None:
    """Makes (project id) or downloads (Minari id) `target` if no local copy exists, once across processes."""
    project = PROJECT_ID.match(name)
    remote = MINARI_ID.match(target) and not target.startswith(NAMESPACE + "/")  # our own ids are made, never fetched
    if find_minari(target) is not None or not (project or remote):
        return
    if not generate:
        raise DatasetError(_missing_message(target))
    root = datasets_root()
    lock = root / ".locks" / (target.replace("/", "__") + ".lock")
    with file_lock(lock, waiting_message=f"dataset '{target}' is being made by another process: waiting for it"):
        if find_minari(target) is not None:  # made while we waited
            return
        if project:
            print(f"dataset '{name}' not found locally: generating it once from the shipped policies "
                  f"({make_command(project[1], project[2])})", flush=True)
            make_dataset(project[1], project[2], out=root)
        else:
            download_minari(target, root)


def _check_made_by_shipped_policies(ds: OfflineDataset, env: str, dataset_id: str) -> None:
    """A project dataset cached before the behaviour policies were retrained keeps its id: without this
    check a run would silently train on the old data and score it on the old scale."""
    info = policy_info(env)
    now = (float(info["ref_min_score"]), float(info["ref_max_score"]))
    if (ds.ref_min_score, ds.ref_max_score) != now:
        raise DatasetError(
            f"{ds.source}: made from earlier behaviour policies (reference returns {ds.ref_min_score:.1f} / "
            f"{ds.ref_max_score:.1f}; the shipped policies' are {now[0]:.1f} / {now[1]:.1f}); delete "
            f"{find_minari(dataset_id) / dataset_id} and it is made again from the shipped policies on next use")


def load_dataset(name: str, env: str | None = None, generate: bool = True) -> OfflineDataset:
    """The trainer's single entry point.

    `name` is a project id (`hopper-medium`, `walker2d-medium-expert`; made from the shipped policies on
    first use when `generate`, then cached), a Minari id (`mujoco/hopper/medium-v0`; downloaded with
    Minari's API on first use when `generate` and not found locally), or a path to a D4RL-layout
    `.hdf5`/`.h5` file. First use is safe when several processes ask at once: one makes or downloads
    the dataset while the others wait for it. With `env`, dims are checked against that environment.
    """
    if name.endswith((".hdf5", ".h5")) or os.sep in name and Path(name).exists():
        ds = load_d4rl_hdf5(name, env)
    else:
        m = PROJECT_ID.match(name)
        target = minari_id(m[1], m[2]) if m else name
        _ensure_local(name, target, generate)
        ds = load_minari(target)
        if m:
            _check_made_by_shipped_policies(ds, m[1], target)
    if env is not None:
        task = _task(env)
        ds.check_env((task.obs_dim,), (task.act_dim,), task.env_id)
        if ds.env_id is not None and ds.env_id.split("-v")[0].lower() != task.env_id.split("-v")[0].lower():
            raise DatasetError(f"{ds.source}: dataset was collected on {ds.env_id}, not {task.env_id}")
    return ds
