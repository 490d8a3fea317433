"""Stacked training (training/stacked.py): K runs in one algorithm object, each following its separate run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import Interrupt
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.io import load_checkpoint
from sparse_offline_rl.sparse.stacked_layers import StackedDense, StackedSparse
from sparse_offline_rl.training.stacked import check_group, group_key, train_stacked
from sparse_offline_rl.training.trainer import StepInfo, train

# Stacked products sum in another order than a member's own (baddbmm vs addmm, one block-diagonal
# CSR product vs K), and training amplifies the rounding: after 150 steps, at most 1e-5 relative in any
# tensor of the checkpoint on a 2-core AMD EPYC; on an AVX-512 Intel Xeon, CQL with the Lagrange
# threshold and entropy backup reaches 3.8e-4 in the norm of a critic Adam moment (5e-5 in one entry).
# A member that trained on another's data, seed or mask differs at order 1.
ATOL, RTOL = 1e-5, 1e-4
NORM_RTOL = 1e-3


def members(cfg: dict) -> list[dict]:
    """Three runs of one group: different seeds, pruners, scopes and sparsities."""
    return [{**cfg, "seed": 0, "sparsity": 0.9},
            {**cfg, "seed": 1, "sparsity": 0.8, "pruner": {"name": "snip"}},
            {**cfg, "seed": 2, "sparsity": 0.9, "pruner": {"name": "magnitude", "scope": "erk"}}]


def tensors(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from tensors(value, f"{prefix}/{key}")
    elif torch.is_tensor(tree):
        yield prefix, tree


def assert_close_state(a: dict, b: dict) -> None:
    ta, tb = dict(tensors(a)), dict(tensors(b))
    assert ta.keys() == tb.keys()
    for key, value in ta.items():
        if value.is_floating_point():  # entrywise, or, where rounding grew, in norm
            assert (torch.allclose(value, tb[key], atol=ATOL, rtol=RTOL)
                    or (value - tb[key]).norm() <= NORM_RTOL * value.norm() + ATOL), key
        else:
            assert torch.equal(value, tb[key]), key


def config(fast_config: dict, algo: str, kernels: str, steps: int = 150, options: dict | None = None) -> dict:
    return {**fast_config, "algo": {"name": algo, "hidden": [32, 32], **(options or {})}, "steps": steps, "sparse_kernels": kernels,
            "checkpoint_every": 50, "log_every": 25, "eval": {**fast_config["eval"], "every": 75, "episodes": 2}}


# CQL with its Lagrange multiplier and the entropy backup: per-member learned scalars beside the networks.
@pytest.mark.parametrize("algo, kernels, options", [
    ("iql", "dense", {}), ("iql", "sparse", {}), ("td3bc", "dense", {}), ("td3bc", "auto", {}), ("cql", "sparse", {}),
    ("cql", "dense", {"lagrange_threshold": 1.0, "backup_entropy": True})])
def test_members_follow_their_separate_runs(tmp_path, fast_config, hopper_data, algo, kernels, options):
    cfgs = members(config(fast_config, algo, kernels, options=options))
    separate = [train(cfg, tmp_path / f"alone{k}", dataset=hopper_data) for k, cfg in enumerate(cfgs)]
    kinds: dict[tuple[str, str], str] = {}

    def record_layers(info: StepInfo) -> None:
        if info.step == 1:
            kinds.update({(net_name, f"{name}.weight"): "sparse" if isinstance(m, StackedSparse) else "dense"
                          for net_name, net in info.algo.networks().items() for name, m in net.named_modules()
                          if isinstance(m, (StackedDense, StackedSparse))})

    stacked = train_stacked(cfgs, [tmp_path / f"stacked{k}" for k in range(3)], dataset=hopper_data,
                            callbacks=[record_layers])
    for k in range(3):
        a, b = (load_checkpoint(tmp_path / f"{kind}{k}" / "checkpoint.pt") for kind in ("alone", "stacked"))
        for net, layers in a["masks"].items():  # the separate run's masks, exactly
            for name, mask in layers.items():
                assert torch.equal(mask, b["masks"][net][name]), (net, name)
        assert a["sparse_kernels"] == b["sparse_kernels"] and a["step"] == b["step"] == 150
        assert_close_state(a["algo"], b["algo"])  # networks, targets, Adam moments, schedules, noise
        assert torch.equal(a["buffer"]["generator"], b["buffer"]["generator"])
        assert stacked[k]["eval"]["return_mean"] == pytest.approx(separate[k]["eval"]["return_mean"], rel=1e-4)
        assert stacked[k]["density"] == separate[k]["density"] and stacked[k]["stacked"]["members"] == 3
        for key in ("training_flops", "final_sparsity", "dataset_returns"):  # what reports compare runs by
            assert stacked[k][key] == separate[k][key], key
        losses = [[json.loads(line) for line in (tmp_path / f"{kind}{k}" / "metrics.jsonl").read_text().splitlines()]
                  for kind in ("alone", "stacked")]
        train_rows = [[r for r in rows if r["kind"] == "train"] for rows in losses]
        assert [r["step"] for r in train_rows[0]] == [r["step"] for r in train_rows[1]] == [25, 50, 75, 100, 125, 150]
        for r0, r1 in zip(*train_rows):
            for key, value in r0.items():
                if key not in ("step", "kind", "time"):
                    assert r1[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
        assert (tmp_path / f"stacked{k}" / "summary.json").exists() and (tmp_path / f"stacked{k}" / "eval.csv").exists()
    # Layers every member compressed run as one block-diagonal product, the others as one batched product.
    chosen = [load_checkpoint(tmp_path / f"alone{k}" / "checkpoint.pt")["sparse_kernels"] for k in range(3)]
    assert kinds == {(net, name): "sparse" if all(c[net][name] == "sparse" for c in chosen) else "dense"
                     for net, layers in chosen[0].items() for name in layers}
    assert len(kinds) == {"iql": 12, "td3bc": 9, "cql": 9}[algo]
    if kernels == "sparse":
        assert "sparse" in kinds.values()


# Masks that change during training: every member updates at steps 40, 80, 120 (GMP and Gibbs also at
# its end, 120), so the group is stacked again three times; sparse kernels are rebuilt at the new patterns.
@pytest.mark.parametrize("algo, kernels", [("iql", "sparse"), ("td3bc", "dense")])  # forced: "auto" measures
def test_members_with_changing_masks_follow_their_separate_runs(tmp_path, fast_config, hopper_data, algo, kernels):
    base = {**config(fast_config, algo, kernels), "sparsity": 0.9}
    schedule = {"update_every": 40, "end": 0.8}
    cfgs = [{**base, "seed": 0, "pruner": {"name": "rigl", **schedule}},
            {**base, "seed": 1, "pruner": {"name": "set", **schedule}},
            {**base, "seed": 2, "pruner": {"name": "gmp", "begin": 0.2, **schedule}},
            {**base, "seed": 3, "sparsity": 0.8, "pruner": {"name": "gibbs", **schedule}},
            # A PaI member beside them (its masks stay), re-drawn to its fans as SET's and RigL's start is by default.
            {**base, "seed": 4, "pruner": {"name": "snip", "sparse_init": True}},
            {**base, "seed": 5, "sparsity": 0.5, "pruner": {"name": "gibbs", "structure": "units", **schedule}}]
    separate = [train(cfg, tmp_path / f"alone{k}", dataset=hopper_data) for k, cfg in enumerate(cfgs)]
    restacked = []

    def count_restacks(info: StepInfo) -> None:
        if not restacked or restacked[-1][1] is not info.algo:
            restacked.append((info.step, info.algo))

    stacked = train_stacked(cfgs, [tmp_path / f"stacked{k}" for k in range(len(cfgs))], dataset=hopper_data,
                            callbacks=[count_restacks])
    assert [step for step, _ in restacked] == [1, 40, 80, 120]
    for k, cfg in enumerate(cfgs):
        a, b = (load_checkpoint(tmp_path / f"{kind}{k}" / "checkpoint.pt") for kind in ("alone", "stacked"))
        for net, layers in a["masks"].items():
            for name, mask in layers.items():
                assert torch.equal(mask, b["masks"][net][name]), (cfg["pruner"]["name"], net, name)
        assert a["sparse_kernels"] == b["sparse_kernels"]
        assert_close_state(a["algo"], b["algo"])
        for key in ("training_flops", "final_sparsity", "sparse_training", "density"):
            assert stacked[k][key] == separate[k][key], (cfg["pruner"]["name"], key)
        assert stacked[k]["eval"]["return_mean"] == pytest.approx(separate[k]["eval"]["return_mean"], rel=1e-4)
        updates = separate[k]["sparse_training"].get("updates", [])
        assert [u["step"] for u in updates] == ([] if k == 4 else [40, 80, 120])
    assert stacked[5]["sparse_training"]["updates"][-1]["unit_sparsity"] == pytest.approx(0.5)
    assert stacked[0]["final_sparsity"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("changing", [False, True])
def test_pruned_weights_are_zero_in_every_forward(tmp_path, fast_config, hopper_data, changing):
    """Dense-masked stacked layers (online and target) never see a pruned weight; compressed ones
    have none. With masks changing during training, also in every stacking after an update."""
    cfgs = members({**config(fast_config, "td3bc", "dense", steps=40)})
    if changing:
        cfgs = [{**cfg, "pruner": {"name": name, "update_every": 10}} for cfg, name in zip(cfgs, ("rigl", "set", "gibbs"))]
    seen = {"dense": 0, "sparse": 0, "stackings": 0}

    def check(module, args):
        if isinstance(module, StackedDense):
            mask = module._stacked_mask
            assert torch.count_nonzero(module.weight.detach()[~mask]) == 0
            seen["dense"] += 1

    hooked: dict[int, list] = {}

    def install(info: StepInfo) -> None:
        if id(info.algo) in hooked:
            return
        for handle in (h for handles in hooked.values() for h in handles):
            handle.remove()
        hooked[id(info.algo)] = handles = []
        seen["stackings"] += 1
        nets = {**{f"t.{n}": m for n, m in info.algo.target_networks().items()}, **info.algo.networks()}
        masks = {n: info.masks.masks[n.removeprefix("t.")] for n in nets}
        for name, net in nets.items():
            for layer_name, layer in net.named_modules():
                if isinstance(layer, StackedDense) and f"{layer_name}.weight" in masks[name]:  # else kept dense
                    layer._stacked_mask = masks[name][f"{layer_name}.weight"].bool()
                    handles.append(layer.register_forward_pre_hook(check))
                elif isinstance(layer, StackedSparse):
                    seen["sparse"] += 1

    train_stacked(cfgs, [tmp_path / str(k) for k in range(3)], dataset=hopper_data, callbacks=[install])
    assert seen["dense"] > 100 and seen["sparse"] == 0
    assert seen["stackings"] == (5 if changing else 1)  # at steps 1, 10, 20, 30 and Gibbs' end, 0.8 x 40 = 32
    for handle in (h for handles in hooked.values() for h in handles):
        handle.remove()


@pytest.mark.parametrize("changing", [False, True])
def test_kill_then_resume_continues_every_member(tmp_path, fast_config, hopper_data, changing):
    """A group killed at step 130 resumes: members that checkpointed at different steps (here member
    1 at 50, the others at 100) are brought level alone, then stacked again; every member ends as its
    separate run does. With masks changing every 40 steps, member 1 updates alone at 80 on the way."""
    cfgs = members(config(fast_config, "iql", "auto"))
    if changing:
        cfgs = [{**cfg, "pruner": {"name": name, "update_every": 40}} for cfg, name in zip(cfgs, ("gibbs", "rigl", "set"))]
    dirs = [tmp_path / f"cut{k}" for k in range(3)]
    saved = tmp_path / "member1_step50.pt"

    def kill(info: StepInfo) -> None:
        if info.step == 51:
            shutil.copy(dirs[1] / "checkpoint.pt", saved)
        if info.step == 130:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_stacked(cfgs, dirs, dataset=hopper_data, callbacks=[kill])
    shutil.copy(saved, dirs[1] / "checkpoint.pt")
    assert [load_checkpoint(d / "checkpoint.pt")["step"] for d in dirs] == [100, 50, 100]
    resumed = train_stacked([{**c, "resume": True} for c in cfgs], dirs, dataset=hopper_data)
    for k, cfg in enumerate(cfgs):
        alone = train(cfg, tmp_path / f"alone{k}", dataset=hopper_data)
        a, b = (load_checkpoint(d / "checkpoint.pt") for d in (tmp_path / f"alone{k}", dirs[k]))
        assert_close_state(a["algo"], b["algo"])
        assert_close_state(a["masks"], b["masks"])  # booleans: equal
        assert resumed[k]["eval"]["return_mean"] == pytest.approx(alone["eval"]["return_mean"], rel=1e-4)
        steps = [json.loads(line)["step"] for line in (dirs[k] / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "train"]
        assert steps == [25, 50, 75, 100, 125, 150]  # no step logged twice after the resume


@pytest.mark.parametrize("change, words", [
    ({"algo": {"name": "iql", "hidden": [32, 32], "beta": 5.0}}, "differ in algo"),
    ({"steps": 100}, "differ in steps"),
    ({"dataset": "other"}, "differ in dataset"),
])
def test_a_group_must_share_everything_but_the_member_keys(fast_config, change, words):
    cfgs = [fast_config, {**fast_config, "seed": 1, "sparsity": 0.5, "pruner": {"name": "snip"}}]
    check_group(cfgs)  # seed, sparsity and pruner may differ
    assert group_key(cfgs[0]) == group_key({**cfgs[1], "resume": True, "threads": 1})
    with pytest.raises(ConfigError, match=words):
        check_group([fast_config, {**fast_config, **change}])


def test_what_cannot_be_stacked_is_refused_in_one_line(fast_config, monkeypatch):
    from sparse_offline_rl.algorithms.iql import IQL

    monkeypatch.setattr(IQL, "stackable", False)  # as a plug-in that does not declare it
    with pytest.raises(ConfigError, match="algo=iql cannot be stacked"):
        check_group([fast_config])
    monkeypatch.undo()
    check_group([{**fast_config, "pruner": {"name": "gmp"}}])  # masks that change during training stack
    check_group([{**fast_config, "pruner": {"name": "gibbs", "structure": "units"}}])  # unit masks: same width
    with pytest.raises(ConfigError, match="pruner.structure=units cannot be stacked with pruner=snip"):
        check_group([{**fast_config, "pruner": {"name": "snip", "structure": "units"}}])  # narrowed layers


def test_members_whose_layers_differ_in_shape_are_refused(tmp_path, fast_config, hopper_data):
    cfgs = [fast_config, {**fast_config, "seed": 1}]
    from sparse_offline_rl.training.stacked import StackedAlgorithm
    from sparse_offline_rl.training.trainer import setup_run

    runs = [setup_run(cfg, tmp_path / str(k), hopper_data) for k, cfg in enumerate(cfgs)]
    torch.nn.init.zeros_(runs[1].algo.actor.log_std)  # same shapes: fine
    StackedAlgorithm(runs)
    runs[1].algo.actor.log_std = torch.nn.Parameter(torch.zeros(7))
    with pytest.raises(ConfigError, match="network 'actor' has other layer shapes"):
        StackedAlgorithm(runs)
    with pytest.raises(ConfigError, match="optim='lamb' cannot be stacked.*accepted: adam"):
        check_group([{**fast_config, "optim": "lamb"}])


def test_run_group_skips_finished_members_and_records_a_bad_one(tmp_path, fast_config, hopper_data, monkeypatch):
    """The launcher's per-group entry (cli.run_group): a finished member is skipped with its stored
    score, a member with an invalid config fails alone (failed.json), the others train stacked."""
    import sparse_offline_rl.training.stacked as stacked_module
    from sparse_offline_rl.cli import JobError, run_group

    real = stacked_module.train_stacked
    monkeypatch.setattr("sparse_offline_rl.cli.train_stacked",
                        lambda cfgs, dirs: real(cfgs, dirs, dataset=hopper_data))
    monkeypatch.setattr("sparse_offline_rl.cli.train", lambda cfg, run_dir: train(cfg, run_dir, dataset=hopper_data))
    cfgs = [{**config(fast_config, "td3bc", "auto", steps=50), "seed": k, "pruner": {"name": "random", "scope": "layer"}}
            for k in range(4)]
    cfgs[3]["sparsity"] = 1.5
    dirs = [str(tmp_path / str(k)) for k in range(4)]
    done = train(cfgs[0], dirs[0], dataset=hopper_data)
    results = run_group(cfgs, dirs)
    assert results[0] == done["eval"]["normalized_score_mean"]
    assert isinstance(results[3], JobError) and "sparsity=1.5 is invalid" in str(results[3])
    assert "sparsity=1.5 is invalid" in json.loads((tmp_path / "3" / "failed.json").read_text())["error"]
    for k in (1, 2):
        summary = json.loads((tmp_path / str(k) / "summary.json").read_text())
        assert summary["stacked"]["members"] == 2 and results[k] == summary["eval"]["normalized_score_mean"]
    assert run_group(cfgs[:3], dirs[:3]) == results[:3]  # a re-launch skips them all


def test_the_state_comparison_refuses_a_difference_beyond_rounding():
    state = {"critic": {"w": torch.linspace(-1, 1, 100)}}
    assert_close_state(state, {"critic": {"w": state["critic"]["w"] * (1 + 1e-7)}})
    with pytest.raises(AssertionError):
        assert_close_state(state, {"critic": {"w": state["critic"]["w"] * 1.01}})  # 1%: not rounding
