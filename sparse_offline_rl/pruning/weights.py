"""Unstructured pruning of an algorithm's networks (pruner.structure=unstructured).

`prune_weights(algo, sample_batch, cfg, sparsity, seed)` is `prune_at_initialization` once the
config is checked: per-network targets (a sparsity, or a parameter / FLOP budget, or the least
sparsity meeting a cost budget, searched with `budgets.search`), the scoring batches drawn once with
every RNG put back, one `prune_module` per network, the bound `MaskSet` and the report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import keep_count, keep_dense_layers
from sparse_offline_rl.pruning.batches import ExampleBatch, scoring_batches, seed_for
from sparse_offline_rl.pruning.budget_search import (
    NetMasks, bisect_targets, constrained_masks, layer_key, retained_value)
from sparse_offline_rl.pruning.budgets import budget_keep, budget_networks
from sparse_offline_rl.pruning.config import PrunerConfig, check_sparsity, per_network
from sparse_offline_rl.pruning.iterative import prune_module
from sparse_offline_rl.pruning.rng import untouched_rngs
from sparse_offline_rl.pruning.scorers import scorer_class
from sparse_offline_rl.sparse.density import network_report
from sparse_offline_rl.sparse.fan_init import sparse_init_
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.wiring import LayerGraph, try_layer_graph


@dataclass(frozen=True)
class NetworkSetup:
    """What one network's pruning reads once: its size, wiring and the layers kept dense."""

    total: int
    graph: LayerGraph | None
    wiring_error: str | None
    dense_layers: list[str]
    dense_n: int


class WeightPass:
    """One unstructured pruning of `nets` under `cfg`, inside the scoring RNG context: the scoring
    batches, each network's set-up (read the first time it is pruned, in network order) and
    `prune_all`, which a cost search calls once per probe."""

    def __init__(self, algo: Any, sample_batch: Callable[..., Any] | None, cfg: PrunerConfig, seed: int) -> None:
        self.algo, self.cfg, self.seed = algo, cfg, seed
        self.nets: dict[str, nn.Module] = dict(algo.networks())
        self.budget_kind = cfg.budget_kind if cfg.budget_kind != "budget_cost" else None
        self.budgets = per_network(getattr(cfg, self.budget_kind), list(self.nets), self.budget_kind) if self.budget_kind else {}
        self.scorer = scorer_class(cfg.name)
        self.sample_batch = sample_batch
        self.batches: list[Any] = []
        self.setups: dict[str, NetworkSetup] = {}

    def draw(self) -> None:
        """The scoring batches (all networks see the same ones)."""
        self.batches = scoring_batches(self.sample_batch, self.scorer.needs_data, self.cfg.num_batches, self.cfg.batch_size)
        self.example = ExampleBatch(self.sample_batch, self.batches)

    def setup(self, name: str) -> NetworkSetup:
        if name in self.setups:
            return self.setups[name]
        net, cfg, pruning = self.nets[name], self.cfg, self.cfg.name != "dense"
        params = prunable_parameters(net)
        graph, wiring_error = try_layer_graph(net)
        if graph is None and self.sample_batch is not None:
            # Code fx cannot trace (d3rlpy's encoders assert isinstance(x, Tensor)) is run on a batch.
            example = self.example.inputs(net)
            if example is not None:
                graph, wiring_error = try_layer_graph(net, example)
        dense_layers = keep_dense_layers(graph, name, first=cfg.keep_first_layer_dense and pruning,
                                         last=cfg.keep_last_layer_dense and pruning, wiring_error=wiring_error,
                                         also_needs=["pruner=synflow"] if cfg.name == "synflow" else [])
        self.setups[name] = NetworkSetup(sum(p.numel() for p in params.values()), graph, wiring_error, dense_layers,
                                         sum(params[n].numel() for n in dense_layers))
        return self.setups[name]

    def target(self, name: str, setup: NetworkSetup, sparsity: float) -> tuple[float, int]:
        """(target sparsity, kept prunable weights) of one network."""
        if self.budget_kind:
            # A budget is about the whole network, so the dense layers are paid out of it.
            keep = budget_keep(self.nets[name], self.budget_kind, int(self.budgets[name]), name)
            return (1 - keep / setup.total if setup.total else 0.0), keep
        # A sparsity applies to the layers being pruned: keeping a layer dense means "do not prune
        # it", not "prune the others harder" (at 95% the 17x256 input layer alone would exceed the
        # budget of a 17-256-256-1 value net).
        target = sparsity if self.cfg.name != "dense" else 0.0
        return target, setup.dense_n + keep_count(setup.total - setup.dense_n, 1 - target)

    def prune_all(self, targets: Mapping[str, float], allow_collapse: bool,
                  names: Sequence[str] | None = None) -> tuple[NetMasks, dict[str, Any]]:
        """Masks of every pruned network at `targets` (or of `names`), and each network's report."""
        cfg, masks, reports = self.cfg, {}, {}
        for name, net in self.nets.items():
            if names is not None and name not in names:
                continue
            setup = self.setup(name)
            target, keep = self.target(name, setup, targets[name])
            net_masks = None
            if cfg.name != "dense" and keep < setup.total:
                net_masks = masks[name] = prune_module(
                    net, cfg.name, keep, scope=cfg.scope, dense_layers=setup.dense_layers,
                    losses=[partial(self.algo.saliency_loss, name, b) for b in self.batches], rounds=cfg.rounds,
                    seed=seed_for(self.seed, name), allow_layer_collapse=allow_collapse, name=name, graph=setup.graph,
                )
            reports[name] = network_report(net, net_masks, target, keep, setup.total, setup.dense_layers,
                                           self.budget_kind, self.budgets.get(name), setup.graph, setup.wiring_error)
            if cfg.name == "dense" and targets[name] > 0:
                reports[name]["ignored_sparsity"] = targets[name]
        return masks, reports


def layer_scores(run: WeightPass, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One network's scores from one round on the dense network (which weights each layer keeps under
    budget_search=constrained), and the values the search's reward sums: the scores, or |W| for
    random (a random ranking has no meaningful score to retain)."""
    net, setup = run.nets[name], run.setup(name)
    losses = [partial(run.algo.saliency_loss, name, b) for b in run.batches]
    scores = run.scorer(net, losses, None, seed_for(run.seed, name), name, setup.graph).score(None)
    if run.cfg.name == "random":
        return scores, {p: w.detach().abs() for p, w in prunable_parameters(net).items()}
    return scores, scores


def bisect_start(run: WeightPass, targets: dict[str, float], searched: list[str]) -> tuple[dict[str, int] | None, dict[str, Any]]:
    """Bisection's answer as per-layer counts of the searched layers, the allocator's start (so it
    starts where bisection ends), and a record of it; (None, reason) when no sparsity meets the budgets."""
    try:
        at, report = bisect_targets(run, targets, searched)
    except ValueError as err:
        return None, {"search": "bisect", "infeasible": str(err)}
    torch.manual_seed(run.seed)
    masks, _ = run.prune_all(at, True, names=searched)
    dense = {n: run.setup(n).dense_layers for n in searched}
    counts = {layer_key(n, p): int(m.sum()) for n in searched for p, m in masks.get(n, {}).items() if p not in dense[n]}
    return counts, {"search": "bisect", "sparsity": report["sparsity"], "cost": report["cost"],
                    "probes": len(report["probes"])}


def constrained_networks(run: WeightPass, targets: dict[str, float], searched: list[str]
                         ) -> tuple[NetMasks, dict[str, Any], dict[str, Any]]:
    """budget_search=constrained: the other networks pruned to their targets, the searched ones at
    the allocator's per-layer counts, started from bisection's; the masks, the reports and the
    search's report."""
    others = [n for n in run.nets if n not in searched]
    masks, reports = run.prune_all(targets, run.cfg.allow_layer_collapse, names=others)
    start, start_report = bisect_start(run, targets, searched)
    scored = {n: layer_scores(run, n) for n in searched}
    found, cost_report = constrained_masks(run, {n: s for n, (s, _) in scored.items()},
                                           {n: v for n, (_, v) in scored.items()}, masks, searched, start)
    cost_report["start"] = start_report
    for name in searched:
        setup, net_masks = run.setup(name), found[name]
        keep = sum(int(m.sum()) for m in net_masks.values())
        masks[name] = net_masks
        reports[name] = network_report(run.nets[name], net_masks, 1 - keep / setup.total, keep, setup.total,
                                       setup.dense_layers, None, None, setup.graph, setup.wiring_error)
    return masks, {n: reports[n] for n in run.nets}, cost_report


def score_networks(run: WeightPass, sample_batch: Any, targets: dict[str, float]
                   ) -> tuple[NetMasks, dict[str, Any], dict[str, Any] | None]:
    """The masks, per-network reports and cost report, every RNG put back after."""
    cfg, nets = run.cfg, run.nets
    searched = budget_networks(cfg, list(nets))
    devices = sorted({p.device.index or 0 for net in nets.values() for p in net.parameters() if p.device.type == "cuda"})
    cost_report = None
    with untouched_rngs(run.algo, sample_batch, devices=devices):
        torch.manual_seed(run.seed)
        run.draw()
        if cfg.budget_search == "constrained":
            masks, reports, cost_report = constrained_networks(run, targets, searched)
        else:
            if cfg.budget_cost is not None:
                began = time.perf_counter()
                targets, cost_report = bisect_targets(run, targets, searched)
                torch.manual_seed(run.seed)
            masks, reports = run.prune_all(targets, cfg.allow_layer_collapse)
            if cost_report is not None:
                # The constrained search's reward of these masks, so the two searches compare.
                values = {n: layer_scores(run, n)[1] for n in searched}
                cost_report["reward"] = retained_value(values, masks, {n: run.setup(n).dense_layers for n in searched},
                                                       {n: run.setup(n).graph for n in searched})
                cost_report["seconds"] = time.perf_counter() - began
        if cost_report is not None:
            for name in searched:
                reports[name]["target_from"] = "budget_cost"
    # Scoring never touches `.grad`, but a saliency_loss that calls backward itself would; the first
    # optimizer step must not see such gradients.
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    return masks, reports, cost_report


def prune_weights(algo: Any, sample_batch: Callable[..., Any] | None, cfg: PrunerConfig,
                  sparsity: float | Mapping[str, float], seed: int = 0) -> tuple[MaskSet, dict[str, Any]]:
    """`prune_at_initialization` for structure=unstructured, `cfg` checked (its docstring says what)."""
    run = WeightPass(algo, sample_batch, cfg, seed)
    targets = {n: check_sparsity(s, n) for n, s in per_network(sparsity, list(run.nets), "sparsity").items()}
    start = time.perf_counter()
    masks, reports, cost_report = score_networks(run, sample_batch, targets)
    scoring_seconds = time.perf_counter() - start
    mask_set = MaskSet(masks).bind(algo)
    if cfg.sparse_init:  # the masks are final: only now are the fans under them known
        sparse_init_(algo, mask_set, seed)
    return mask_set, weights_report(run, mask_set, reports, cost_report, scoring_seconds)


def weights_report(run: WeightPass, mask_set: MaskSet, reports: dict[str, Any], cost_report: dict[str, Any] | None,
                   scoring_seconds: float) -> dict[str, Any]:
    cfg, data = run.cfg, run.scorer.needs_data
    totals = {k: sum(r[k] for r in reports.values()) for k in ("params_dense", "params", "flops_dense", "flops")}
    return {
        "pruner": cfg.name,
        "scope": cfg.scope,
        "num_batches": cfg.num_batches if data else 0,
        "batch_size": cfg.batch_size if data else 0,
        "rounds": run.scorer.rounds(cfg.rounds),
        "keep_first_layer_dense": bool(cfg.keep_first_layer_dense),
        "keep_last_layer_dense": bool(cfg.keep_last_layer_dense),
        "allow_layer_collapse": bool(cfg.allow_layer_collapse),
        "budget_params": cfg.budget_params if not isinstance(cfg.budget_params, Mapping) else dict(cfg.budget_params),
        "budget_flops": cfg.budget_flops if not isinstance(cfg.budget_flops, Mapping) else dict(cfg.budget_flops),
        "budget_cost": cost_report,
        "seed": int(run.seed),
        "sparse_init": cfg.sparse_init and bool(mask_set),
        "scoring_seconds": scoring_seconds,
        "networks": reports,
        "total": totals,
    }


__all__ = ["NetworkSetup", "WeightPass", "prune_weights"]
