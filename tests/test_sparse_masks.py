"""Pruned weights are exactly zero in every forward pass, not only when `update()` returns.

A probe hooks every `nn.Linear` and compressed `SparseLinear` of the online and target networks and
records each forward that runs with a nonzero pruned weight. It sees the forwards *inside* an update
(IQL's V(s') after the value step, TD3+BC's Q1 in the actor loss after the critic step) and those of
evaluation. A SparseLinear is checked on its weight rebuilt dense: zero where the mask is zero by
construction, so what the probe checks there is that its pattern never holds a pruned entry.
"""
from __future__ import annotations

import copy
import gc
import sys
import weakref
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

import sparse_offline_rl as sorl
import sparse_offline_rl.training.setup as trainer_module
from conftest import REPO
from sparse_offline_rl.pruning import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.kernels import apply_sparse_kernels
from sparse_offline_rl.sparse.linear import SparseLinear
from sparse_offline_rl.training.trainer import train

PLUGIN_FILE = REPO / "examples" / "sorl_awac_plugin" / "sorl_awac_plugin.py"


class ForwardProbe:
    """Forward pre-hooks on every Linear of the online and target networks of the masked networks:
    counts the forwards, and those whose weight * (1 - mask) is not all zero."""

    def __init__(self, algo: Any, mask_set: MaskSet) -> None:
        self.forwards = self.sparse_forwards = 0
        self.violations: list[str] = []
        self.handles = []
        nets, targets = algo.networks(), algo.target_networks()
        for net_name, param_masks in mask_set.masks.items():
            copies = {net_name: nets[net_name]}
            if net_name in targets:
                copies[f"target {net_name}"] = targets[net_name]
            for label, net in copies.items():
                for mod_name, layer in net.named_modules():
                    if isinstance(layer, (nn.Linear, SparseLinear)):
                        pruned = param_masks[f"{mod_name}.weight"] == 0
                        hook = partial(self._check, f"{label}.{mod_name}", pruned)
                        self.handles.append(layer.register_forward_pre_hook(hook))

    def _check(self, where: str, pruned: torch.Tensor, layer: nn.Module, args: Any) -> None:
        self.forwards += 1
        if isinstance(layer, SparseLinear):
            self.sparse_forwards += 1
            weight = layer.dense_weight()
        else:
            weight = layer.weight.detach()
        if bool((weight * pruned).any()):
            self.violations.append(where)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def probed_training(monkeypatch, cfg: dict, run_dir, dataset) -> ForwardProbe:
    """`train(cfg)` with the probe installed right after pruning at initialization and the choice of
    kernels (which replaces layers), before the first update, so it sees every training and
    evaluation forward of the run."""
    probes: list[ForwardProbe] = []

    def convert_then_probe(algo, mask_set, kernels):
        apply_sparse_kernels(algo, mask_set, kernels)
        probes.append(ForwardProbe(algo, mask_set))
        return mask_set

    monkeypatch.setattr(trainer_module, "apply_sparse_kernels", convert_then_probe)
    train(cfg, run_dir, dataset=dataset)
    assert len(probes) == 1
    return probes[0]


@pytest.fixture
def awac_registered():
    from sparse_offline_rl.algorithms import base

    had, imported = "awac" in base._REGISTRY, "sorl_awac_plugin" in sys.modules
    # import_plugin returns the cached module on a second import, so register its class explicitly.
    sorl.register_algorithm("awac")(sorl.import_plugin(str(PLUGIN_FILE)).AWAC)
    yield
    if not had:
        base._REGISTRY.pop("awac", None)
    if not imported:  # other tests import the plug-in afresh and expect it to register itself
        sys.modules.pop("sorl_awac_plugin", None)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
@pytest.mark.parametrize("algo", ["iql", "td3bc", "cql", "awac"])
def test_no_forward_ever_sees_a_pruned_weight(tmp_path, monkeypatch, fast_config, hopper_data, awac_registered, algo, kernels):
    """Dense-masked layers (optimizer hooks) and compressed ones (by construction) alike; the AWAC
    plug-in builds its networks from the framework's layers, so it gets sparse layers too."""
    cfg = copy.deepcopy(fast_config)
    cfg.update(
        algo={"name": algo, "hidden": [32, 32]}, sparsity=0.95, steps=30, log_every=10, sparse_kernels=kernels,
        # Which weights survive does not matter here; a disconnected toy network must not stop the run.
        pruner={"name": "snip", "allow_layer_collapse": True},
    )
    cfg["eval"].update(every=15, episodes=1)
    probe = probed_training(monkeypatch, cfg, tmp_path, hopper_data)
    assert probe.forwards > 0
    assert (probe.sparse_forwards == probe.forwards) if kernels == "sparse" else (probe.sparse_forwards == 0)
    assert probe.violations == [], f"{len(probe.violations)} forwards with a nonzero pruned weight, first: {probe.violations[:5]}"


class DirectStep:
    """A plug-in-style algorithm whose single update runs a second forward after its optimizer step,
    and which is used without the trainer (nobody calls `MaskSet.apply`)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.config = None
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)

    def networks(self):
        return {"net": self.net}

    def target_networks(self):
        return {"net": self.target}

    def optimizers(self):
        return {"net": self.opt}

    def update(self, x: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad()
        self.net(x).pow(2).mean().backward()
        self.opt.step()
        with torch.no_grad():
            self.target.load_state_dict(self.net.state_dict())  # hard target copy
            return self.net(x).mean() + self.target(x).mean()


def test_masks_hold_without_the_trainer_and_cover_optimizer_state() -> None:
    algo = DirectStep()
    masks = {"net": {n: torch.rand(p.shape) < 0.3 for n, p in prunable_parameters(algo.net).items()}}
    mask_set = MaskSet(masks).bind(algo)
    probe = ForwardProbe(algo, mask_set)
    for _ in range(5):
        algo.update(torch.randn(8, 4))
    assert probe.forwards == 5 * 3 * 2 and probe.violations == []
    for name, p in prunable_parameters(algo.net).items():
        momentum = algo.opt.state[p]["momentum_buffer"]
        assert bool((momentum[~masks["net"][name]] == 0).all())


def test_rebinding_replaces_the_earlier_masks() -> None:
    algo = DirectStep()
    params = prunable_parameters(algo.net)
    first = MaskSet({"net": {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}}).bind(algo)
    assert all(bool((p == 0).all()) for p in params.values())
    with torch.no_grad():
        for p in params.values():
            p.normal_()
    MaskSet({"net": {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}}).bind(algo)
    algo.update(torch.randn(8, 4))
    first.apply()
    # The first MaskSet (all pruned) no longer acts on this optimizer, by hook or by hand.
    assert all(bool((p != 0).any()) for p in params.values())


def test_a_dropped_algorithm_is_freed_with_its_masks() -> None:
    algo = DirectStep()
    params = prunable_parameters(algo.net)
    mask_set = MaskSet({"net": {n: torch.rand(p.shape) < 0.5 for n, p in params.items()}}).bind(algo)
    algo.update(torch.randn(8, 4))
    gone = weakref.ref(algo.opt)
    del algo, params, mask_set
    gc.collect()
    assert gone() is None


def test_a_masked_weight_no_listed_optimizer_trains_is_an_error() -> None:
    algo = DirectStep()
    algo.optimizers = lambda: {}
    params = prunable_parameters(algo.net)
    with pytest.raises(ValueError, match=r"'net'.*0\.weight.*optimizers\(\)"):
        MaskSet({"net": {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}}).bind(algo)
