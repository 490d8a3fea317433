"""Exporting a trained actor: standalone artefacts that take raw observations and reproduce the
framework's actions, the measured storage choice, the records written, bad input."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST_CONFIG, random_dataset, write_d4rl_hdf5
from sparse_offline_rl import export
from sparse_offline_rl.evaluation.agent import load_agent
from sparse_offline_rl.export import MAX_ABS_DIFF, dataset_observations, export_agent, export_run, main, runtime
from sparse_offline_rl.sparse.linear import SparseLinear, sparsify_
from sparse_offline_rl.training.trainer import train

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx / onnxruntime not installed (pip install -e '.[export]'): format=onnx untested")
FORMATS = ["torchscript", pytest.param("onnx", marks=needs_onnx)]

# Each artefact loaded in a fresh interpreter where the framework (and, for ONNX, torch) cannot be
# imported: argv = artefact, observations .npy, actions .npy.
STANDALONE = {
    "torchscript": "import sys; sys.modules['sparse_offline_rl'] = None\n"
                   "import numpy as np, torch\n"
                   "actor = torch.jit.load(sys.argv[1])\n"
                   "np.save(sys.argv[3], actor(torch.from_numpy(np.load(sys.argv[2]))).numpy())\n",
    "onnx": "import sys; sys.modules['sparse_offline_rl'] = None; sys.modules['torch'] = None\n"
            "import numpy as np, onnxruntime as ort\n"
            "session = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "np.save(sys.argv[3], session.run(None, {'observations': np.load(sys.argv[2])})[0])\n",
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """A D4RL-layout file, so runs load their dataset by path as the command does. Observations far
    from zero mean and unit scale: an artefact without the normaliser would act far off."""
    data = random_dataset("hopper")
    shifted = dataclasses.replace(data, observations=data.observations * 3 + 2, next_observations=data.next_observations * 3 + 2)
    return write_d4rl_hdf5(tmp_path_factory.mktemp("data") / "hopper_shifted.hdf5", shifted)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """`trained(algo)`: the directory of a tiny finished run (90% random pruning), made once per module."""
    runs: dict[str, Path] = {}

    def make(algo: str) -> Path:
        if algo not in runs:
            runs[algo] = tmp_path_factory.mktemp(algo)
            train(run_config(algo, data_file), runs[algo])
        return runs[algo]

    return make


def run_config(algo: str, data_file: Path, steps: int = 100) -> dict:
    cfg = copy.deepcopy(FAST_CONFIG)
    cfg.update(algo={"name": algo, "hidden": [32, 32]}, dataset=str(data_file), steps=steps,
               eval={"every": steps, "episodes": 1, "suite": None})
    return cfg


def framework_actions(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(raw observations of the run's dataset, actions as evaluation computes them: act(normaliser(obs)))."""
    agent = load_agent(run_dir)
    obs = dataset_observations(agent)
    with torch.no_grad():
        return obs, agent.algo.act(agent.normalizer(torch.from_numpy(obs))).numpy()


@pytest.mark.slow  # a subprocess: python run.py / a standalone interpreter
@pytest.mark.parametrize("fmt", FORMATS)
def test_artefact_runs_without_the_framework_on_raw_observations_and_matches_act(fmt, trained, tmp_path):
    run_dir = trained("iql")
    assert main([f"run_dir={run_dir}", f"format={fmt}"]) == 0
    obs, expected = framework_actions(run_dir)
    np.save(tmp_path / "obs.npy", obs)
    artefact = run_dir / "export" / export.FORMATS[fmt]
    subprocess.run([sys.executable, "-c", STANDALONE[fmt], str(artefact), str(tmp_path / "obs.npy"), str(tmp_path / "act.npy")],
                   check=True, cwd=tmp_path)
    actions = np.load(tmp_path / "act.npy")
    assert actions.shape == expected.shape == (2000, 3)
    assert np.abs(actions - expected).max() <= MAX_ABS_DIFF
    # The normaliser is inside: the actor alone on the raw observations acts far from evaluation.
    with torch.no_grad():
        unnormalised = load_agent(run_dir).algo.networks()["actor"](torch.from_numpy(obs)).numpy()
    assert np.abs(unnormalised - expected).max() > 100 * MAX_ABS_DIFF


@pytest.mark.parametrize("algo", ["td3bc", "cql"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_builtin_actor_exports_exactly(algo, fmt, trained):
    """Deterministic (TD3+BC) and squashed-Gaussian (CQL: the mean half of a split head) actors alike."""
    run_dir = trained(algo)
    record = export_run(run_dir, fmt)
    obs, expected = framework_actions(run_dir)
    run = runtime(fmt, (run_dir / "export" / record["file"]).read_bytes(), threads=1)
    assert np.abs(run(obs) - expected).max() <= MAX_ABS_DIFF
    assert record["max_abs_diff"] <= MAX_ABS_DIFF and record["observations_checked"] == len(obs) == 2000


def test_actor_with_sparse_linear_layers_exports_in_either_storage(trained, tmp_path):
    """A trained actor may hold compressed SparseLinear layers: exported dense or as CSR, it acts the same."""
    agent = load_agent(trained("iql"))
    actor = agent.algo.networks()["actor"]
    masks = {name: p != 0 for name, p in actor.named_parameters() if name.endswith("weight")}
    sparsify_(actor, masks)
    assert sum(isinstance(m, SparseLinear) for m in actor.modules()) == 3
    obs = dataset_observations(agent)
    with torch.no_grad():
        expected = agent.algo.act(agent.normalizer(torch.from_numpy(obs))).numpy()
    # The kept weights of the units something reads (at 90% random pruning many units are read by none).
    read = [m.weight for m in export.exportable_policy(agent, obs).modules() if isinstance(m, torch.nn.Linear)]
    assert 0 < sum(int((w != 0).sum()) for w in read) < sum(int(m.sum()) for m in masks.values())
    for storage in ("dense", "sparse"):
        record = export_agent(agent, "torchscript", tmp_path / storage, storage=storage)
        assert record["storage"] == storage
        module = torch.jit.load(tmp_path / storage / "actor.pt")
        csr = [t for t in module.state_dict().values() if t.layout == torch.sparse_csr]
        # Sparse storage holds exactly those weights.
        assert sum(t._nnz() for t in csr) == (sum(int((w != 0).sum()) for w in read) if storage == "sparse" else 0)
        assert np.abs(module(torch.from_numpy(obs)).numpy() - expected).max() <= MAX_ABS_DIFF


@pytest.mark.parametrize("batch, chosen", [(1, "dense"), (256, "sparse")])
def test_storage_is_the_one_measured_faster_at_the_requested_batch(batch, chosen, trained, tmp_path, monkeypatch):
    # Sparse is faster at 256 only; at 1 it is within the noise margin, which keeps dense.
    timings = {"dense": {1: 10.0, 256: 300.0}, "sparse": {1: 9.9, 256: 100.0}}
    monkeypatch.setattr(export, "measure", lambda artefacts, *a, **k: {name: timings[name] for name in artefacts})
    record = export_agent(load_agent(trained("iql")), "torchscript", tmp_path, batch=batch)
    assert record["storage"] == chosen
    assert record["latency_us"] == {str(b): timings[chosen][b] for b in (1, 256)}
    assert record["bytes"] == (tmp_path / "actor.pt").stat().st_size == record["candidates"][chosen]["bytes"]
    layouts = {t.layout for t in torch.jit.load(tmp_path / "actor.pt").state_dict().values()}
    assert (torch.sparse_csr in layouts) == (chosen == "sparse")


@pytest.mark.parametrize("fmt", FORMATS)
def test_units_nothing_reads_are_left_out_of_the_artefact(fmt, data_file, tmp_path):
    """A unit Gibbs run ends with half the hidden units masked whole: the exported actor is narrower
    by those units (and any other unit whose outgoing weights are all zero, e.g. one drawn back that
    stayed dead) and acts as the framework does."""
    cfg = run_config("iql", data_file, steps=60)
    cfg.update(sparsity=0.5, pruner={"name": "gibbs", "structure": "units", "update_every": 20})
    train(cfg, tmp_path)
    masks = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["masks"]["actor"]
    layers = [m for m in load_agent(tmp_path).algo.networks()["actor"].modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 3 and len(masks) == 3  # obs -> 32 -> 32 -> actions: each layer reads the one before
    masked = sum(int((~mask.bool().any(1)).sum()) for mask in list(masks.values())[:2])
    unread = sum(int((reader.weight == 0).all(0).sum()) for reader in layers[1:])
    assert masked == 32 and unread >= masked  # 0.5 of the 64 hidden units
    record = export_run(tmp_path, fmt)
    assert record["hidden_units_removed"] == unread
    obs, expected = framework_actions(tmp_path)
    run = runtime(fmt, (tmp_path / "export" / record["file"]).read_bytes(), threads=1)
    assert np.abs(run(obs) - expected).max() <= MAX_ABS_DIFF
    policy = export.exportable_policy(load_agent(tmp_path), obs)
    assert sum(m.out_features for m in policy.actor.modules() if isinstance(m, torch.nn.Linear)) == 64 - unread + 3


def test_export_is_recorded_next_to_the_artefact_and_in_the_summary(trained):
    run_dir = trained("td3bc")
    summary_path = run_dir / "summary.json"
    before = json.loads(summary_path.read_text())
    formats = ["torchscript", "onnx"] if HAS_ONNX else ["torchscript"]
    for fmt in formats:
        record = export_run(run_dir, fmt, batch=256)
        beside = json.loads((run_dir / "export" / f"{Path(record['file']).stem}.json").read_text())
        assert beside == record
        assert record["bytes"] == (run_dir / "export" / record["file"]).stat().st_size
        assert set(record["latency_us"]) == {"1", "256"} and all(us > 0 for us in record["latency_us"].values())
        assert record["batch"] == 256 and record["measured_on"]["threads"] == 1
        assert record["storage"] in record["candidates"]
        assert list(record["candidates"]) == (["dense"] if fmt == "onnx" else ["dense", "sparse"])
        after = json.loads(summary_path.read_text())
        assert after["export"][fmt] == {**record, "file": f"export/{record['file']}"}
    # Each format has its entry; every other field is as training wrote it.
    assert set(after["export"]) == set(formats)
    assert {k: v for k, v in after.items() if k != "export"} == {k: v for k, v in before.items() if k != "export"}


@pytest.mark.parametrize("args, message", [
    (["format=onnx"], "run_dir= is required"),
    (["run_dir={run}"], "format= is required"),
    (["run_dir={run}", "format=tflite"], "format=tflite is invalid; accepted: onnx, torchscript"),
    (["run_dir={missing}", "format=torchscript"], "does not exist"),
    (["run_dir={run}", "format=torchscript", "batch=0"], "batch=0 is invalid"),
    (["run_dir={run}", "format=torchscript", "stroage=dense"], "unknown option 'stroage'"),
    (["run_dir={run}", "format=onnx", "storage=sparse"], "storage=sparse is invalid with format=onnx"),
    (["run_dir={empty}", "format=torchscript"], "no summary.json there"),
    (["run_dir={run}", "format=torchscript"], "no checkpoint.pt there"),
])
def test_bad_input_is_one_line_and_status_2(args, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    paths = {"run": tmp_path, "missing": tmp_path / "nowhere", "empty": tmp_path / "empty"}
    assert main([a.format(**paths) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


def test_an_algorithm_whose_act_is_not_its_actor_is_refused(tmp_path, data_file, capsys):
    from sparse_offline_rl.algorithms.base import register_algorithm
    from sparse_offline_rl.algorithms.iql import IQL

    @register_algorithm("iql_clipped_act_test", config_cls=IQL.Config)
    class ClippedIQL(IQL):
        @torch.no_grad()
        def act(self, observations):
            return self.actor(observations).clamp(-0.1, 0.1)

    train(run_config("iql_clipped_act_test", data_file, steps=20), tmp_path)
    assert main([f"run_dir={tmp_path}", "format=torchscript"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "algo 'iql_clipped_act_test' cannot be exported: its act(obs) is not its actor network's output" in err
    assert not (tmp_path / "export").exists()
