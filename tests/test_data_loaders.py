"""Data layer: D4RL HDF5 and Minari loaders, the load_dataset entry point, and dataset generation."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sparse_offline_rl.data import DatasetError, load_d4rl_hdf5, load_dataset, make_dataset
from sparse_offline_rl.generation import generate as gen
from sparse_offline_rl.data.__main__ import main as cli
from sparse_offline_rl.generation.policies import POLICY_DIR, SACActor, actor_to_arrays, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ---------------------------------------------------------------- helpers

def write_d4rl(path: Path, n: int = 10, obs_dim: int = 11, act_dim: int = 3, next_obs: bool = False, **override) -> dict:
    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    data["terminals"][3] = True  # episode 1: rows 0-3, ends by termination
    data["timeouts"][6] = True  # episode 2: rows 4-6, cut by the time limit
    if next_obs:
        data["next_observations"] = rng.normal(size=(n, obs_dim)).astype(np.float32)
    data.update(override)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
        f.create_dataset("infos/qpos", data=np.zeros((n, 2)))
        f.create_dataset("metadata/algorithm", data="SAC")
    return data


@pytest.fixture()
def policy_dir(tmp_path: Path) -> Path:
    """Untrained but seeded actors laid out like datasets/policies/, so generation needs no training."""
    root = tmp_path / "policies"
    (root / "hopper").mkdir(parents=True)
    torch.manual_seed(0)
    names = ["step_0000000", "step_0005000", "step_0010000"]
    arrays = {f"{n}/{k}": v for n in names for k, v in actor_to_arrays(SACActor(11, 3, 32)).items()}
    np.savez(root / "hopper" / "actors.npz", **arrays)
    info = {"policies": {"expert": names[2], "medium": names[1], "medium-replay": names[:2]},
            "ref_min_score": -20.0, "ref_max_score": 3000.0,
            "returns": {"random": {"episodes": 100}}}
    (root / "hopper" / "policies.json").write_text(json.dumps(info))
    return root


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").iterdir())}


# ---------------------------------------------------------------- D4RL HDF5

def test_d4rl_classic_transition_rule(tmp_path: Path) -> None:
    path = tmp_path / "hopper-medium-v2.hdf5"
    raw = write_d4rl(path)
    with pytest.warns(UserWarning, match="v5"):
        ds = load_d4rl_hdf5(path)
    # Row 6 (timeout) and row 9 (no successor) are dropped; next obs is the following row.
    kept = [0, 1, 2, 3, 4, 5, 7, 8]
    np.testing.assert_array_equal(ds.observations, raw["observations"][kept])
    np.testing.assert_array_equal(ds.next_observations, raw["observations"][[k + 1 for k in kept]])
    np.testing.assert_array_equal(ds.rewards, raw["rewards"][kept])
    assert ds.terminals.tolist() == [False, False, False, True, False, False, False, False]
    assert ds.timeouts.tolist() == [False, False, False, False, False, True, False, True]
    assert ds.episode_starts.tolist() == [0, 4, 6]
    assert ds.env_id == "Hopper-v5" and ds.ref_min_score == pytest.approx(-20.272305)
    assert ds.ref_max_score == pytest.approx(3234.3)
    assert ds.metadata["metadata/algorithm"] == "SAC" and ds.metadata["info_keys"] == ["qpos"]


def test_d4rl_next_observations_keep_timeout_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"  # no env in the name: found from the dims (11, 3) -> hopper
    raw = write_d4rl(path, next_obs=True)
    ds = load_dataset(str(path), env="hopper")
    assert len(ds) == 10
    np.testing.assert_array_equal(ds.next_observations, raw["next_observations"])
    assert np.flatnonzero(ds.timeouts).tolist() == [6, 9] and np.flatnonzero(ds.terminals).tolist() == [3]
    assert ds.episode_starts.tolist() == [0, 4, 7]


@pytest.mark.parametrize("chunk", [5, 1 << 14])
@pytest.mark.parametrize("obs_dtype", [np.float32, np.float64])
def test_d4rl_loader_matches_reference_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int,
                                            obs_dtype: type) -> None:
    """The chunked loader against the classic rule written plainly, on random flags (chunk 5 puts
    timeouts on chunk edges); with next_observations every row is kept."""
    from sparse_offline_rl.data import loaders

    monkeypatch.setattr(loaders, "_CHUNK_ROWS", chunk)
    rng = np.random.default_rng(7)
    n = 203
    term, tout = rng.random(n) < 0.05, rng.random(n) < 0.1
    tout[[4, 5, 9, n - 2]] = True  # a timeout on a chunk's last row, two in a row, one before the last row
    obs = rng.normal(size=(n, 11)).astype(obs_dtype)
    raw = write_d4rl(tmp_path / "r.hdf5", n=n, observations=obs, rewards=rng.normal(size=(n, 1)),
                     terminals=term, timeouts=tout)
    ds = load_d4rl_hdf5(tmp_path / "r.hdf5", env="hopper")
    rows = np.array([i for i in range(n - 1) if not tout[i]])  # drop timeout rows and the last row
    ref_term = term[rows]
    ref_tout = (tout[rows + 1] | (rows + 1 == n - 1)) & ~ref_term  # the row before a dropped one ends its episode
    ends = np.flatnonzero(ref_term | ref_tout)
    np.testing.assert_array_equal(ds.observations, obs[rows].astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations, obs[rows + 1].astype(np.float32))
    np.testing.assert_array_equal(ds.actions, raw["actions"][rows])
    np.testing.assert_array_equal(ds.rewards, raw["rewards"][rows, 0].astype(np.float32))
    np.testing.assert_array_equal(ds.terminals, ref_term)
    np.testing.assert_array_equal(ds.timeouts, ref_tout)
    np.testing.assert_array_equal(ds.episode_starts, np.r_[0, ends[ends + 1 < len(rows)] + 1])
    assert {getattr(ds, k).dtype for k in ("observations", "actions", "rewards", "next_observations")} == {np.dtype(np.float32)}
    assert ds.terminals.dtype == ds.timeouts.dtype == np.bool_ and ds.episode_starts.dtype == np.int64

    nxt = rng.normal(size=(n, 11)).astype(obs_dtype)
    write_d4rl(tmp_path / "n.hdf5", n=n, observations=obs, next_observations=nxt, terminals=term, timeouts=tout)
    ds = load_d4rl_hdf5(tmp_path / "n.hdf5", env="hopper")
    ref_tout = tout.copy()
    ref_tout[-1] |= not term[-1]
    ref_tout &= ~term
    np.testing.assert_array_equal(ds.observations, obs.astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations, nxt.astype(np.float32))
    np.testing.assert_array_equal(ds.terminals, term)
    np.testing.assert_array_equal(ds.timeouts, ref_tout)
    ends = np.flatnonzero(term | ref_tout)
    np.testing.assert_array_equal(ds.episode_starts, np.r_[0, ends[ends + 1 < n] + 1])


@pytest.mark.parametrize(
    ("override", "field"),
    [({"timeouts": None}, "timeouts"), ({"rewards": np.zeros(7, np.float32)}, "rewards"),
     ({"observations": np.zeros(10, np.float32)}, "observations")],
)
def test_d4rl_malformed_names_file_and_field(tmp_path: Path, override: dict, field: str) -> None:
    path = tmp_path / "hopper-bad.hdf5"
    write_d4rl(path, **override)
    with pytest.raises(DatasetError, match=rf"hopper-bad\.hdf5.*'{field}'"):
        load_d4rl_hdf5(path)


def test_d4rl_nan_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "hopper-nan.hdf5"
    obs = np.zeros((10, 11), np.float32)
    obs[2, 5] = np.nan
    write_d4rl(path, observations=obs)
    with pytest.raises(DatasetError, match=r"hopper-nan\.hdf5.*'observations'.*NaN"):
        load_d4rl_hdf5(path)


def test_d4rl_wrong_dims_for_env(tmp_path: Path) -> None:
    path = tmp_path / "hopper-medium.hdf5"
    write_d4rl(path)
    with pytest.raises(DatasetError, match=r"hopper-medium\.hdf5.*'observations'.*Walker2d-v5"):
        load_dataset(str(path), env="walker2d")


def test_d4rl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.hdf5: file not found"):
        load_dataset(str(tmp_path / "nope.hdf5"))


# ---------------------------------------------------------------- Minari

def write_tiny_minari(dataset_id: str) -> list:
    """A real two-episode Minari dataset (Hopper dims) in $MINARI_DATASETS_PATH; returns its buffers."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(1)
    lengths, ends = [5, 3], [(True, False), (False, True)]  # one terminated, one truncated
    buffers = [
        EpisodeBuffer(id=i, seed=100 + i, observations=rng.normal(size=(t + 1, 11)).astype(np.float32),
                      actions=rng.uniform(-1, 1, (t, 3)).astype(np.float32), rewards=np.ones(t, np.float32),
                      terminations=np.array([False] * (t - 1) + [term]), truncations=np.array([False] * (t - 1) + [trunc]))
        for i, (t, (term, trunc)) in enumerate(zip(lengths, ends))
    ]
    minari.create_dataset_from_buffers(dataset_id, buffers, env="Hopper-v5", ref_min_score=-20.0,
                                       ref_max_score=3000.0, algorithm_name="x", author="x", author_email="x",
                                       code_permalink="x", description="x")
    return buffers


def test_minari_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    buffers = write_tiny_minari("test/hopper/tiny-v0")
    ds = load_dataset("test/hopper/tiny-v0", env="hopper")
    assert len(ds) == 8 and ds.episode_starts.tolist() == [0, 5]
    np.testing.assert_array_equal(ds.observations[:5], buffers[0].observations[:-1])
    np.testing.assert_array_equal(ds.next_observations[5:], buffers[1].observations[1:])
    assert np.flatnonzero(ds.terminals).tolist() == [4] and np.flatnonzero(ds.timeouts).tolist() == [7]
    assert (ds.ref_min_score, ds.ref_max_score, ds.env_id) == (-20.0, 3000.0, "Hopper-v5")
    assert ds.reset_seeds.tolist() == [100, 101]
    with pytest.raises(DatasetError, match="Walker2d"):
        load_dataset("test/hopper/tiny-v0", env="walker2d")


def test_minari_flat_cache_is_used_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from sparse_offline_rl.data import loaders

    test_minari_round_trip(tmp_path, monkeypatch)  # builds test/hopper/tiny-v0 and loads it once
    first = load_dataset("test/hopper/tiny-v0")
    assert (tmp_path / "minari" / "test/hopper/tiny-v0" / loaders.FLAT_CACHE).exists()
    calls = []
    real = loaders._load_minari_episodes
    monkeypatch.setattr(loaders, "_load_minari_episodes", lambda *a: calls.append(a) or real(*a))
    cached = load_dataset("test/hopper/tiny-v0")
    assert calls == []  # served from the cache
    for field in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                  "episode_starts", "reset_seeds"):
        np.testing.assert_array_equal(getattr(cached, field), getattr(first, field))
    assert (cached.ref_min_score, cached.ref_max_score, cached.env_id) == (first.ref_min_score, first.ref_max_score, first.env_id)
    data_file = next((tmp_path / "minari" / "test/hopper/tiny-v0" / "data").glob("*.hdf5"))
    os.utime(data_file, ns=(1, 1))  # Minari's files changed: the cache must not be trusted
    load_dataset("test/hopper/tiny-v0")
    assert len(calls) == 1


def test_unknown_id_lists_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    from sparse_offline_rl.data import loaders

    # Neither the repo's datasets/minari nor ~/.minari: a machine that made hopper-medium-replay has it there.
    monkeypatch.setattr(loaders, "DEFAULT_ROOT", tmp_path / "root")
    monkeypatch.setattr(loaders, "MINARI_HOME", tmp_path / "home")
    with pytest.raises(DatasetError) as err:
        load_dataset("mujoco/hopper/nothing-v0")
    assert "hopper-medium" in str(err.value) and "walker2d-medium-expert" in str(err.value)
    assert "python -m sparse_offline_rl.data make" in str(err.value)
    with pytest.raises(DatasetError, match="make env=hopper quality=medium-replay size=1000000 seed=0"):
        load_dataset("hopper-medium-replay", generate=False)


def test_remote_minari_id_downloads_once_then_loads_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import minari

    from sparse_offline_rl.data import loaders

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(loaders, "MINARI_HOME", tmp_path / "home")
    monkeypatch.setattr(loaders, "_reachable", lambda url, timeout: True)
    calls = []

    def download_stand_in(dataset_id: str, force_download: bool = False) -> None:
        # Minari's download writes a real dataset under $MINARI_DATASETS_PATH; so does the stand-in.
        calls.append((dataset_id, os.environ["MINARI_DATASETS_PATH"]))
        write_tiny_minari(dataset_id)

    monkeypatch.setattr(minari, "download_dataset", download_stand_in)
    ds = load_dataset("mujoco/hopper/medium-v0", env="hopper")
    assert calls == [("mujoco/hopper/medium-v0", str(tmp_path / "minari"))]
    assert len(ds) == 8 and ds.source == "minari:mujoco/hopper/medium-v0" and ds.ref_max_score == 3000.0
    assert (tmp_path / "minari" / "mujoco/hopper/medium-v0" / loaders.FLAT_CACHE).exists()
    again = load_dataset("mujoco/hopper/medium-v0")
    assert len(calls) == 1  # found locally from now on
    np.testing.assert_array_equal(again.observations, ds.observations)


def test_remote_minari_id_without_network_fails_fast_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from sparse_offline_rl.data import loaders

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setattr(loaders, "MINARI_HOME", tmp_path / "home")
    t0 = time.monotonic()
    with pytest.raises(DatasetError) as err:
        load_dataset("mujoco/hopper/medium-v0")  # the conftest points Minari's server at an address that never resolves
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and "'mujoco/hopper/medium-v0'" in msg and "could not be downloaded" in msg
    assert "python -m sparse_offline_rl.data make" in msg and "MINARI_DATASETS_PATH" in msg
    assert not (tmp_path / "mujoco").exists()


def _load_length(name: str, results) -> None:
    try:
        results.put(len(load_dataset(name)))
    except Exception as e:  # reported to the parent, which asserts on it
        results.put(repr(e))


def test_concurrent_first_use_makes_the_dataset_once(tmp_path: Path, policy_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel sweep jobs on a fresh machine all ask for the same missing dataset at once."""
    import multiprocessing
    import os

    from sparse_offline_rl.data import loaders
    from sparse_offline_rl.data.project import policy_info

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    monkeypatch.setattr(loaders, "DEFAULT_ROOT", tmp_path / "root")  # not the repo's datasets/minari
    monkeypatch.setattr(loaders, "MINARI_HOME", tmp_path / "home")
    monkeypatch.setattr(loaders, "policy_info", lambda env: policy_info(env, policy_dir))
    made = tmp_path / "made.log"

    def small_make(env: str, quality: str, out=None, **_) -> Path:
        with open(made, "a") as f:
            f.write(f"{os.getpid()}\n")
        return make_dataset(env, quality, size=600, out=out, dataset_id=gen.minari_id(env, quality),
                            policy_dir=policy_dir, progress=False, workers=1)

    monkeypatch.setattr(loaders, "make_dataset", small_make)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_load_length, args=("hopper-medium", results)) for _ in range(3)]
    for p in procs:
        p.start()
    lengths = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert lengths == [600, 600, 600]
    assert len(made.read_text().split()) == 1  # one process made it, the others waited and reused it


# ---------------------------------------------------------------- generation

def test_generation_is_deterministic_and_loadable(tmp_path: Path, policy_dir: Path) -> None:
    paths = [make_dataset("hopper", "medium-replay", size=1500, seed=3, out=tmp_path / r, policy_dir=policy_dir,
                          progress=False) for r in ("a", "b")]
    assert digest(paths[0]) == digest(paths[1])  # same command + seed -> same bytes
    a = gen_load(tmp_path / "a", "sorl/hopper/medium-replay-n1500-s3-v0")
    assert len(a) == 1500 and a.env_id == "Hopper-v5"
    assert (a.ref_min_score, a.ref_max_score) == (-20.0, 3000.0)
    assert len(set(a.reset_seeds.tolist())) == a.num_episodes and a.reset_seeds.min() >= 3 * 10**9
    assert a.metadata["sorl_behaviour_policies"] == ["step_0000000", "step_0005000"]
    other = make_dataset("hopper", "medium-replay", size=1500, seed=4, out=tmp_path / "c", policy_dir=policy_dir,
                         progress=False)
    assert digest(other) != digest(paths[0])
    train, val = a.split_episodes(0.2, seed=0)
    assert len(train) + len(val) == len(a)


def test_sharded_generation_matches_in_process(tmp_path: Path, policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "SHARD_SIZE", 700)  # 3 shards for 1600 transitions
    kw = dict(size=1600, seed=0, policy_dir=policy_dir, progress=False)
    one = make_dataset("hopper", "random", out=tmp_path / "one", workers=1, **kw)
    two = make_dataset("hopper", "random", out=tmp_path / "two", workers=2, **kw)
    assert digest(one) == digest(two)


def test_interrupted_generation_leaves_nothing(tmp_path: Path, policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = gen.write_episodes

    def crash(path: Path, episodes: list) -> None:
        real(path, episodes[:1])  # half-written file, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "write_episodes", crash)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("hopper", "medium", size=500, out=tmp_path / "root", policy_dir=policy_dir, progress=False)
    assert list((tmp_path / "root").iterdir()) == []  # no temp folder, no dataset folder
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("sorl/hopper/medium-n500-v0")


def test_cli_make_and_list(tmp_path: Path, policy_dir: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture) -> None:
    import sparse_offline_rl.data.__main__ as main_mod

    monkeypatch.setattr(main_mod, "make_dataset", _with_policy_dir(make_dataset, policy_dir))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert cli(["make", "env=hopper", "quality=expert", "size=300", "seed=2"]) == 0
    assert cli(["list"]) == 0
    out = capsys.readouterr().out
    assert "sorl/hopper/expert-n300-s2-v0" in out and "halfcheetah-medium-replay" in out
    assert cli(["make", "env=hopper", "quality=expert", "size=300", "seed=2"]) == 1  # refuses to overwrite


def _with_policy_dir(fn, policy_dir: Path):
    return lambda *a, **k: fn(*a, **{**k, "policy_dir": policy_dir, "progress": False})


def gen_load(root: Path, dataset_id: str):
    from sparse_offline_rl.data.loaders import load_minari

    return load_minari(dataset_id, root=root)


# ---------------------------------------------------------------- shipped artefacts

@pytest.mark.parametrize("env", ["hopper", "walker2d", "halfcheetah"])
def test_shipped_policies_load(env: str) -> None:
    path = POLICY_DIR / env / "policies.json"
    if not path.exists():
        pytest.skip(f"no shipped policies for {env}")
    info = json.loads(path.read_text())
    from sparse_offline_rl.data.envs import get_task

    task = get_task(env)
    for quality in ("medium", "expert"):
        policy = load_checkpoint(env, info["policies"][quality], task.obs_dim, task.act_dim)
        act = policy.act(np.zeros((4, task.obs_dim), np.float32), np.random.default_rng(0))
        assert act.shape == (4, task.act_dim) and np.abs(act).max() <= 1.0
    assert info["ref_max_score"] > info["ref_min_score"]


def test_stats_table_counts_episodes_and_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse_offline_rl.data.__main__ import stats_table

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    write_tiny_minari("test/hopper/tiny-v0")  # episodes of 5 and 3 steps, reward 1 per step
    d4rl = 100 * (4.0 + 20.272305) / (3234.3 + 20.272305)
    assert f"| `test/hopper/tiny-v0` | 8 | 2 | 4 | 4.0 ± 1.0 | {d4rl:.1f} |" in stats_table(["test/hopper/tiny-v0"])


def test_a_project_dataset_made_by_earlier_policies_is_refused(tmp_path: Path, policy_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse_offline_rl.data import loaders
    from sparse_offline_rl.data.project import policy_info

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    monkeypatch.setattr(loaders, "DEFAULT_ROOT", tmp_path / "root")
    monkeypatch.setattr(loaders, "MINARI_HOME", tmp_path / "home")
    monkeypatch.setattr(loaders, "policy_info", lambda env: policy_info(env, policy_dir))
    make_dataset("hopper", "medium", size=300, dataset_id=gen.minari_id("hopper", "medium"), out=tmp_path / "root",
                 policy_dir=policy_dir, progress=False)
    assert len(load_dataset("hopper-medium")) == 300
    info = json.loads((policy_dir / "hopper" / "policies.json").read_text())
    (policy_dir / "hopper" / "policies.json").write_text(json.dumps({**info, "ref_max_score": 3300.0}))  # retrained
    with pytest.raises(DatasetError, match=r"earlier behaviour policies .* 3000.0; the shipped policies' are -20.0 / 3300.0"):
        load_dataset("hopper-medium")


def test_old_generation_paths_import_the_moved_modules() -> None:
    import importlib
    import warnings

    from sparse_offline_rl.generation import behavior, collect, generate, policies

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for old, new in (("generate", generate), ("policies", policies), ("rollout", collect), ("behavior", behavior)):
            assert importlib.import_module(f"sparse_offline_rl.data.{old}") is new
    # the shipped actors.npz keys: the class's name is in none of them
    assert list(SACActor(11, 3, 8).state_dict()) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias",
                                                     "head.weight", "head.bias"]
