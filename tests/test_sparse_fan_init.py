"""pruner.sparse_init (sparse/fan_init.py): the kept weights re-drawn U(-a, a), a = sqrt(3 / fan_avg),
fan_avg = (kept weights into the output unit + kept weights out of the input unit) / 2, as the google-
research rigl code's `unit_scaled_init` (fanavg_uniform, scale 1); configs match the code's defaults."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import REPO
from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.pruning import PRUNER_DEFAULTS, PRUNERS, prunable_parameters, prune_at_initialization
from sparse_offline_rl.sparse_training.dynamic import SPARSE_INIT, options
from sparse_offline_rl.sparse.fan_init import init_generator, unit_scaled_init, unit_scaled_limits


def test_each_kept_weight_is_drawn_to_its_fans_under_the_mask():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # (out 3, in 4)
    # By hand: rows (fan-in of outputs) 2, 1, 0; columns (fan-out of inputs) 2, 1, 0, 0.
    limits = unit_scaled_limits(mask)
    assert limits[0, 0] == pytest.approx(math.sqrt(3 / 2))      # (2 + 2) / 2
    assert limits[0, 1] == pytest.approx(math.sqrt(3 / 1.5))    # (2 + 1) / 2
    assert limits[1, 0] == pytest.approx(math.sqrt(3 / 1.5))    # (1 + 2) / 2
    stacked = unit_scaled_limits(torch.stack([mask, mask.flip(0)]))  # (K, out, in): fans per member
    assert torch.equal(stacked[0], limits) and torch.equal(stacked[1], limits.flip(0))
    before = torch.get_rng_state()
    draws = [unit_scaled_init(mask, init_generator(seed)) for seed in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), before)  # its own generator only
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert bool((draws[0][~mask] == 0).all()) and bool((draws[0].abs() <= limits).all())
    # A 95% sparse 256 x 256 layer: the kept weights' variance is a^2 / 3 = 1 / fan_avg.
    big = torch.rand(256, 256, generator=torch.Generator().manual_seed(0)) < 0.05
    values = unit_scaled_init(big, init_generator(3))[big]
    assert float(values.var()) == pytest.approx(float((unit_scaled_limits(big)[big] ** 2 / 3).mean()), rel=0.05)


def pruned_iql(sparse_init: bool):
    torch.manual_seed(0)
    algo = make_algorithm("iql", ProblemSpec(11, 3), {"hidden": [64, 64]})
    masks, report = prune_at_initialization(algo, None, {"name": "random", "scope": "erk", "sparse_init": sparse_init},
                                            0.95, seed=0)
    return algo, masks, report


def test_pruning_with_sparse_init_rescales_the_kept_weights_and_targets_follow():
    plain, plain_masks, plain_report = pruned_iql(False)
    algo, masks, report = pruned_iql(True)
    assert (plain_report["sparse_init"], report["sparse_init"]) == (False, True)
    assert plain_masks.state_dict().keys() == masks.state_dict().keys()
    for name, layers in masks.masks.items():
        net, dense_net = algo.networks()[name], plain.networks()[name]
        weights, plain_weights = prunable_parameters(net), prunable_parameters(dense_net)
        for pname, mask in layers.items():
            keep = mask.bool()
            assert torch.equal(keep, plain_masks.masks[name][pname].bool())  # the same masks, only new values
            w = weights[pname].detach()
            assert bool((w[~keep] == 0).all()) and bool((w.abs() <= unit_scaled_limits(keep)).all())
            # A unit's summed squared input weights (its pre-activation variance for unit-variance
            # inputs): about 1/20 of dense under the masked dense init, back near Glorot's under sparse_init.
            rows = keep.any(1)
            ratio = float(w.pow(2).sum(1)[rows].mean() / plain_weights[pname].detach().pow(2).sum(1)[rows].mean())
            assert ratio > 3, (name, pname, ratio)
        for (n, p), (_, q) in zip(net.named_parameters(), dense_net.named_parameters()):
            if not n.endswith("weight"):
                assert torch.equal(p, q), n  # biases (and IQL's other parameters) are left as they are
    target = prunable_parameters(algo.target_networks()["critic"])
    for pname, w in prunable_parameters(algo.networks()["critic"]).items():
        assert torch.equal(target[pname], w)  # the targets start equal to the re-drawn online weights


def test_the_pruner_configs_match_the_code_defaults():
    for path in sorted((REPO / "configs" / "pruner").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        name = cfg["name"]
        if name in SPARSE_INIT:  # set, rigl: the reference's schedule and sparse start
            opts = options({"name": name})
            assert {k: cfg[k] for k in ("update_every", "begin", "end", "drop_fraction", "drop_decay")} == \
                {k: opts[k] for k in ("update_every", "begin", "end", "drop_fraction", "drop_decay")}, name
            assert cfg["drop_fraction"] == 0.5 and cfg["sparse_init"] is SPARSE_INIT[name] is True
        elif name in PRUNERS:
            assert cfg["sparse_init"] is PRUNER_DEFAULTS["sparse_init"] is False, name  # the SSP protocol's dense init
        else:  # gmp, gibbs start dense: no sparse_init
            assert "sparse_init" not in cfg and all(cfg[k] == v for k, v in options({"name": name}).items() if k in cfg), name
