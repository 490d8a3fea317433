"""The shared training loop: summary contents, masks through training, resume, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Interrupt, assert_same_state, interrupt_at
from sparse_offline_rl.algorithms import UnknownNameError, prepare_data
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.io import CheckpointError, load_checkpoint
from sparse_offline_rl.pruning import layer_weights, prunable_parameters
import sparse_offline_rl.training.setup as trainer_module
from sparse_offline_rl.training.trainer import ConfigError, StepInfo, train


def test_summary_has_documented_fields(tmp_path, fast_config, hopper_data):
    summary = train(fast_config, tmp_path, dataset=hopper_data)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("algo", "env", "dataset", "pruner", "sparsity", "density", "steps", "steps_per_sec", "eval", "seed", "config", "code"):
        assert key in on_disk, key
    assert on_disk["code"]["version"] and len(on_disk["code"]["commit"]) == 40  # tests run from a checkout
    for key in ("normalized_score_mean", "normalized_score_std", "return_mean"):
        assert key in on_disk["eval"], key
    assert on_disk["steps"] == 300 and on_disk["algo"] == "iql" and on_disk["sparsity"] == 0.9
    assert set(summary["density"]) == {"actor", "critic", "value"}
    for density in summary["density"].values():
        assert density == pytest.approx(0.1, abs=0.01)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "eval.csv").exists()
    data_mean = float(hopper_data.episode_returns().mean())  # the data's level, on each score scale
    assert on_disk["dataset_returns"]["return_mean"] == pytest.approx(data_mean)
    assert on_disk["dataset_returns"]["normalized_score"] == pytest.approx(float(hopper_data.normalized_score(data_mean)))
    assert on_disk["dataset_returns"]["episodes"] == hopper_data.num_episodes
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [150, 300]
    # Normalised score by hand: 100 * (R - random) / (expert - random), D4RL's hopper references.
    final = on_disk["eval"]
    assert final["normalized_score_mean"] == pytest.approx(100 * (final["return_mean"] + 20.272305) / 3254.572305)
    assert final["normalized_score_std"] == pytest.approx(100 * final["return_std"] / 3254.572305)


def test_summary_gives_both_score_scales_and_names_them(tmp_path, fast_config, hopper_data):
    """A project dataset has its own reference returns; D4RL's scale is reported beside it, labelled."""
    import dataclasses

    own = dataclasses.replace(hopper_data, ref_min_score=20.0, ref_max_score=820.0, source="own-hopper")
    on_disk = train({**fast_config, "steps": 100, "eval": {**fast_config["eval"], "every": 100}}, tmp_path, dataset=own)
    final = on_disk["eval"]
    assert final["normalized_score_mean"] == pytest.approx(100 * (final["return_mean"] - 20.0) / 800.0)
    assert final["d4rl_score_mean"] == pytest.approx(100 * (final["return_mean"] + 20.272305) / 3254.572305)
    assert final["d4rl_score_std"] == pytest.approx(100 * final["return_std"] / 3254.572305)
    assert on_disk["score_scales"]["normalized_score"] == "own-hopper reference returns (0 = 20.0, 100 = 820.0)"
    assert "D4RL's reference returns for hopper (0 = -20.2723, 100 = 3234.3)" in on_disk["score_scales"]["d4rl_score"]


def test_evaluation_start_states_follow_the_run_seed_and_are_recorded(tmp_path, fast_config, hopper_data):
    """(test_evaluation_diagnostics replays a saved agent from the recorded seeds: they are the evaluated ones.)"""
    from sparse_offline_rl.evaluation.rollout import eval_seeds

    quick = {**fast_config, "steps": 10, "eval": {**fast_config["eval"], "every": 1000, "episodes": 3}}
    runs = {seed: train({**quick, "seed": seed}, tmp_path / str(seed), dataset=hopper_data) for seed in (0, 1)}
    for seed, summary in runs.items():
        assert summary["eval"]["seeds"] == eval_seeds(seed, 3) == [(1_000_000 + seed) * 10**9 + k for k in range(3)]
        first = json.loads((tmp_path / str(seed) / "metrics.jsonl").read_text().splitlines()[0])
        assert first == {"step": 0, "kind": "eval_seeds", "seeds": eval_seeds(seed, 3)}
    assert not set(runs[0]["eval"]["seeds"]) & set(runs[1]["eval"]["seeds"])


def episodes_dataset(lengths: list[int], rewards: list[float], terminated: list[bool]) -> OfflineDataset:
    """Hopper-shaped data made of whole episodes with constant per-step rewards; an episode that does
    not terminate ends with a timeout flag, as the loaders mark a cut last episode."""
    n = sum(lengths)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    ends = np.cumsum(lengths) - 1
    terminals[ends] = terminated
    timeouts[ends] = ~np.asarray(terminated)
    obs = np.random.default_rng(0).normal(size=(n, 11)).astype(np.float32)
    return OfflineDataset(
        observations=obs, actions=np.zeros((n, 3), np.float32),
        rewards=np.repeat(np.asarray(rewards, np.float32), lengths), next_observations=obs, terminals=terminals,
        timeouts=timeouts, episode_starts=np.concatenate([[0], ends[:-1] + 1]), env_id="Hopper-v5", source="episodes",
    )


def test_reward_range_leaves_out_the_trailing_cut_episode(fast_config):
    """Returns 1000 (1000 steps of 1.0, Hopper's time limit), 20 (terminated after 20 steps of 1.0) and a
    last episode cut after 7 steps of 0.5 (3.5): the range is 1000 - 20, not 1000 - 3.5."""
    cut = episodes_dataset([1000, 20, 7], [1.0, 1.0, 0.5], [False, True, False])
    assert prepare_data(fast_config, cut).reward_scale == pytest.approx(1000 / 980)
    # A last episode that ended for real counts: terminated, or stopped by the time limit.
    terminated = episodes_dataset([1000, 20, 7], [1.0, 1.0, 0.5], [False, True, True])
    assert prepare_data(fast_config, terminated).reward_scale == pytest.approx(1000 / 996.5)
    timed_out = episodes_dataset([20, 1000], [1.0, 0.5], [True, False])
    assert prepare_data(fast_config, timed_out).reward_scale == pytest.approx(1000 / 480)


# GraSP's signed scores under one global threshold empty one of CQL's twin critics at 95% here (layer
# collapse, reported as an error), so that case prunes layer by layer.
# LAMB runs every pruned layer dense-masked: there its whole-tensor norms meet the pruned entries.
@pytest.mark.parametrize("algo, pruner, scope, optim", [(algo, pruner, scope, optim) for optim in ("adam", "lamb") for algo, pruner, scope in
                                                         (("iql", "snip", "global"), ("cql", "grasp", "layer"), ("td3bc", "synflow", "global"))])
def test_pruned_weights_stay_exactly_zero_in_online_and_target_nets(tmp_path, fast_config, hopper_data, algo, pruner, scope, optim):
    fast_config = {**fast_config, "algo": {"name": algo, "hidden": [32, 32]},
                   "pruner": {"name": pruner, "rounds": 10, "scope": scope}, "sparsity": 0.95, "optim": optim,
                   **({"sparse_kernels": "dense"} if optim == "lamb" else {})}
    seen_steps = []

    def check(info: StepInfo) -> None:
        if info.step % 50:
            return
        seen_steps.append(info.step)
        nets, targets = info.algo.networks(), info.algo.target_networks()
        for net_name, param_masks in info.masks.masks.items():
            online = layer_weights(nets[net_name])
            target = layer_weights(targets[net_name]) if net_name in targets else {}
            for pname, mask in param_masks.items():
                assert (online[pname][mask == 0] == 0).all()
                if pname in target:
                    assert (target[pname][mask == 0] == 0).all()
        for opt in info.algo.optimizers().values():
            assert optim == "adam" or type(opt).__name__ in ("Lamb", "FusedAdam")  # CQL's scalars keep Adam
            for p, state in opt.state.items():
                for net_name, param_masks in info.masks.masks.items():
                    for pname, w in prunable_parameters(nets[net_name]).items():
                        if w is p:
                            assert (state["exp_avg"][param_masks[pname] == 0] == 0).all()

    summary = train(fast_config, tmp_path, dataset=hopper_data, callbacks=[check])
    assert seen_steps == [50, 100, 150, 200, 250, 300]
    # Achieved density, counted on the trained weights, equals the target within one weight per network.
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm

    nets = make_algorithm(algo, ProblemSpec(11, 3), fast_config["algo"]).networks()
    for name, density in summary["density"].items():
        total = sum(w.numel() for w in prunable_parameters(nets[name]).values())
        assert abs(density * total - 0.05 * total) <= 1, (name, density * total, 0.05 * total)


# Checkpoints every 25 steps and an interrupt at 80: the run resumes from step 75, an odd step, where
# TD3+BC's delayed actor update is mid-cycle. "sparse": every pruned layer a compressed SparseLinear
# (its parameters have other shapes, so the checkpoint's kernels must be applied before loading).
# LAMB: its state (moments, step counts) and its trust ratios resume exactly too, dense-masked and sparse.
@pytest.mark.parametrize("algo, pruner, kernels, optim",
                         [(algo, pruner, "auto", "adam") for algo in ("iql", "cql", "td3bc") for pruner in ("snip", "grasp")]
                         + [(algo, "snip", "sparse", "adam") for algo in ("iql", "cql", "td3bc")]
                         + [("td3bc", "snip", "dense", "lamb"), ("iql", "snip", "sparse", "lamb")])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, fast_config, hopper_data, algo, pruner, kernels, optim):
    cfg = {**fast_config, "algo": {"name": algo, "hidden": [16, 16]}, "pruner": {"name": pruner, "scope": "layer"},
           "sparsity": 0.8, "steps": 120, "batch_size": 32, "checkpoint_every": 25, "log_every": 10,
           "eval": {**fast_config["eval"], "every": 60, "episodes": 1}, "sparse_kernels": kernels, "optim": optim}
    full = train(cfg, tmp_path / "full", dataset=hopper_data)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=hopper_data, callbacks=[interrupt_at(80)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 75

    def measured_again(*args, **kwargs):
        raise AssertionError("a resumed run must reuse the checkpoint's kernels, not choose again")

    monkeypatch.setattr(trainer_module, "choose_kernels", measured_again)
    resumed = train({**cfg, "resume": True}, tmp_path / "cut", dataset=hopper_data)

    assert resumed["eval"] == full["eval"]
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("full", "cut"))
    if kernels == "sparse":
        assert all(kind == "sparse" for layers in a["sparse_kernels"].values() for kind in layers.values())
        assert any(name.endswith(".values") for name in a["algo"]["critic"])
    for key in ("step", "algo", "masks", "sparse_kernels", "buffer", "torch_rng", "last_eval"):
        assert_same_state(a[key], b[key], key)
    metrics = lambda run: (tmp_path / run / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert metrics("full") == metrics("cut")


# A run with compressed sparse layers against the dense-masked run of the same config and seed:
# the same arithmetic, float32 sums in another order. Observed after 1000 steps here: at most 3e-7 in
# any parameter (2x256 networks at batch 256: 1e-4 in IQL's actor, whose exp-advantage weights
# amplify differences; 3e-7 elsewhere).
SAME_TRAINING_ATOL, SAME_TRAINING_RTOL = 1e-5, 1e-4


# Under LAMB the trust ratio's norms run over the CSR values on one side and over the masked dense
# weight (zeros at pruned entries) on the other. LAMB couples every entry of a tensor through its
# ratio, so a rounding difference reaches them all: in CQL's second critic the largest difference
# grew from 4e-8 after 300 steps to 5e-6 after 600 and 4e-5 after 1000, so CQL is compared at 300.
@pytest.mark.parametrize("algo, optim, steps", [(algo, "adam", 1000) for algo in ("iql", "td3bc", "cql")]
                         + [("iql", "lamb", 1000), ("td3bc", "lamb", 1000), ("cql", "lamb", 300)])
def test_sparse_kernels_train_like_dense_masked(tmp_path, fast_config, hopper_data, algo, optim, steps):
    """`steps` each way; every parameter of the online and target networks (rebuilt by
    load_agent from the checkpoints), the densities and the final evaluation agree."""
    from sparse_offline_rl.evaluation.agent import load_agent
    from sparse_offline_rl.sparse.linear import sparse_layers

    cfg = {**fast_config, "algo": {"name": algo, "hidden": [32, 32]}, "sparsity": 0.9, "steps": steps, "optim": optim,
           "checkpoint_every": steps, "log_every": 100, "eval": {**fast_config["eval"], "every": steps, "episodes": 2}}
    summaries, algos = {}, {}
    for kernels in ("dense", "sparse"):
        summaries[kernels] = train({**cfg, "sparse_kernels": kernels}, tmp_path / kernels, dataset=hopper_data)
        algos[kernels] = load_agent(tmp_path / kernels, dataset=hopper_data).algo
    counts = {k: summaries[k]["pruning"]["sparse_kernels"] for k in summaries}
    assert counts["dense"]["sparse_layers"] == 0 and counts["sparse"]["sparse_layers"] == counts["sparse"]["pruned_layers"] > 0
    for which in ("networks", "target_networks"):
        for net, dense in getattr(algos["dense"], which)().items():
            sparse = getattr(algos["sparse"], which)()[net]
            weights = layer_weights(dense)
            assert set(sparse_layers(sparse)) == set(weights)
            for name, w in weights.items():
                assert torch.allclose(layer_weights(sparse)[name], w.detach(), atol=SAME_TRAINING_ATOL, rtol=SAME_TRAINING_RTOL), (which, net, name)
            rest = dict(sparse.named_parameters())
            for name, p in dense.named_parameters():
                if name not in weights:  # biases, log-stds, ...
                    assert torch.allclose(rest[name], p, atol=SAME_TRAINING_ATOL, rtol=SAME_TRAINING_RTOL), (which, net, name)
    assert summaries["sparse"]["density"] == summaries["dense"]["density"]
    assert summaries["sparse"]["eval"]["return_mean"] == pytest.approx(summaries["dense"]["eval"]["return_mean"], rel=1e-4)


def test_the_report_and_density_table_show_each_layers_kernel(tmp_path, capsys, fast_config, hopper_data):
    cfg = {**fast_config, "steps": 10, "eval": {**fast_config["eval"], "every": 1000, "episodes": 1}, "verbose": True,
           "sparsity": {"actor": 0.0, "default": 0.9}, "sparse_kernels": "sparse"}
    summary = train(cfg, tmp_path, dataset=hopper_data)
    report = summary["pruning"]
    assert report["sparse_kernels"] == {"mode": "sparse", "batch_size": 64, "threads": torch.get_num_threads(),
                                        "sparse_layers": 9, "pruned_layers": 9}  # twin critic 2 x 3 layers, value 3
    for net, info in report["networks"].items():
        expected = ("dense", "not pruned") if net == "actor" else ("sparse", "forced by mode")
        assert {(li["kernel"], li["kernel_reason"]) for li in info["layers"].values()} == {expected}, net
    out = capsys.readouterr().out
    assert "kernels: sparse at batch 64" in out and "9 of 9 pruned layers sparse" in out
    assert "sparse: forced by mode" in out and "dense: not pruned" in out


class RunsCode:
    """Unpickling this calls Path.touch: a stand-in for the arbitrary call a hostile pickle can make."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, fast_config, hopper_data):
    from sparse_offline_rl.cli import interrupted
    from sparse_offline_rl.evaluation.agent import load_agent

    marker, run = tmp_path / "code-ran", tmp_path / "run"
    run.mkdir()
    torch.save({"step": 100, "config": fast_config, "algo": RunsCode(marker)}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused to load.*only tensors and plain values"):
        train({**fast_config, "resume": True}, run, dataset=hopper_data)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_agent(run, dataset=hopper_data)
    with pytest.raises(CheckpointError, match="refused to load"):
        interrupted(run, fast_config)  # a sweep job deciding whether to resume
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"sparsity": 1.0}, ConfigError, "[0, 1)"),
        ({"sparsity": -0.1}, ConfigError, "[0, 1)"),
        ({"algo": {"name": "sac"}}, UnknownNameError, "available: "),
        ({"env": "pong"}, UnknownNameError, "hopper"),
        ({"pruner": {"name": "lottery"}}, ConfigError, "snip"),
        ({"steps": 0}, ConfigError, "positive integer"),
        ({"sparsity": {"actor": 0.9}}, ConfigError, "sparsity.default"),
        ({"sparse_kernels": "fast"}, ConfigError, "sparse_kernels='fast' is invalid: one of auto, sparse, dense is required"),
    ],
)
def test_bad_config_fails_early_with_a_clear_message(tmp_path, fast_config, hopper_data, change, error, words):
    with pytest.raises(error, match=None) as info:
        train({**fast_config, **change}, tmp_path, dataset=hopper_data)
    assert words in str(info.value)
    assert not (tmp_path / "summary.json").exists()


def test_dataset_that_does_not_fit_the_env_is_rejected(tmp_path, fast_config, hopper_data):
    from sparse_offline_rl.data.dataset import DatasetError

    with pytest.raises(DatasetError, match="Walker2d-v5 expects"):
        train({**fast_config, "env": "walker2d"}, tmp_path, dataset=hopper_data)


def test_per_network_sparsity(tmp_path, fast_config, hopper_data):
    cfg = {**fast_config, "steps": 20, "eval": {**fast_config["eval"], "every": 1000, "episodes": 1},
           "sparsity": {"actor": 0.5, "default": 0.9}}
    summary = train(cfg, tmp_path, dataset=hopper_data)
    assert summary["density"]["actor"] == pytest.approx(0.5, abs=0.01)
    assert summary["density"]["critic"] == pytest.approx(0.1, abs=0.01)


def test_summary_pruner_is_measured_not_inferred(tmp_path, fast_config, hopper_data):
    """A parameter budget prunes at sparsity 0; sparsity 0 with no budget is the dense reference."""
    quick = {**fast_config, "steps": 10, "eval": {**fast_config["eval"], "every": 1000, "episodes": 1}, "sparsity": 0.0}
    budget = train({**quick, "pruner": {"name": "magnitude", "scope": "layer", "budget_params": 1000}}, tmp_path / "budget",
                   dataset=hopper_data)
    assert budget["pruner"] == "magnitude" and all(d < 1.0 for d in budget["density"].values())
    dense = train({**quick, "pruner": {"name": "snip"}}, tmp_path / "dense", dataset=hopper_data)
    assert dense["pruner"] == "dense" and all(d == 1.0 for d in dense["density"].values())


def test_threads_setting_is_the_runs_own(tmp_path, fast_config, hopper_data):
    """Library callers (and sweeps run in one process) keep their thread count after a run sets its own."""
    import torch

    before = torch.get_num_threads()
    train({**fast_config, "steps": 20, "threads": before + 1}, tmp_path, dataset=hopper_data)
    assert torch.get_num_threads() == before


def test_config_yaml_equals_run_config_defaults():
    """configs/config.yaml and RunConfig declare the same keys; each key the dataclass defaults has the
    YAML's value there (the others are required, and the YAML gives them)."""
    import dataclasses

    import yaml

    from sparse_offline_rl.training.config import EvalConfig, RunConfig

    on_disk = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "config.yaml").read_text())
    groups = {next(iter(entry)) for entry in on_disk.pop("defaults") if isinstance(entry, dict)}
    on_disk.pop("hydra")
    for cls, values, extra in ((RunConfig, on_disk, groups), (EvalConfig, on_disk["eval"], set())):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == set(values) | extra, cls.__name__
        for name, f in fields.items():
            if f.default is not dataclasses.MISSING:
                assert values[name] == f.default, f"{cls.__name__}.{name}"


def test_run_config_is_built_from_the_composed_config(tmp_path):
    from hydra import compose, initialize_config_dir

    from sparse_offline_rl.training.config import RunConfig, to_dict, validate_config

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = to_dict(compose("config", overrides=["algo=cql", "sparsity=0.9", "eval.episodes=3"]))
    config = validate_config(cfg)
    assert isinstance(config, RunConfig) and config == RunConfig.from_dict(cfg)
    assert (config.algo_name, config.env, config.dataset, config.sparsity) == ("cql", "hopper", "hopper-medium", 0.9)
    assert (config.eval.episodes, config.eval.every, config.eval.suite, config.sparse_kernels) == (3, 5000, None, "auto")


def test_run_config_defaults_fill_omitted_keys(fast_config):
    from sparse_offline_rl.training.config import DEFAULTS, RunConfig

    cfg = {k: v for k, v in fast_config.items() if k not in DEFAULTS}
    cfg["eval"] = {k: v for k, v in cfg["eval"].items() if k != "suite"}
    config = RunConfig.from_dict(cfg)
    assert {k: getattr(config, k) for k in DEFAULTS} == DEFAULTS
    assert config.optim == "adam" and config.sparse_kernels == "auto" and config.device == "cpu" and config.eval.suite is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"threads": 0}, "threads=0 is invalid: a positive integer or null is required"),
        ({"eval": {"every": 10, "episodes": 0}}, "eval.episodes=0 is invalid: an integer in [1, "),
        ({"eval": {"every": 10, "episodes": 1, "suite": ""}}, "eval.suite='' is invalid: a non-empty string or null"),
        ({"optim": "sgd"}, "optim='sgd' is invalid: one of adam, lamb is required"),
        ({"device": "tpu"}, "device='tpu' is invalid; accepted: cpu, cuda, cuda:N, auto"),
        ({"verbose": "yes"}, "verbose='yes' is invalid: true or false is required"),
        ({"val_fraction": 1.0}, "val_fraction=1.0 is invalid: a number in [0, 1) is required"),
        ({"sparsity": {"actor": 1.5}}, "sparsity.actor=1.5 is invalid: a number in [0, 1) is required"),
    ],
)
def test_run_config_names_key_value_and_what_is_accepted(fast_config, change, message):
    from sparse_offline_rl.training.config import RunConfig

    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({**fast_config, **change})
    assert message in str(info.value)
