"""GMP, gradual magnitude pruning (Zhu & Gupta 2017): training starts dense; from `begin` (20% of
training) every `update_every` steps each network is pruned by |w| to the cubic schedule's
sparsity, the last update, at `end`, reaching the target exactly. Also where the layers a run keeps
dense and its ensemble members are read from the wiring (Gibbs uses them too)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from sparse_offline_rl.pruning.allocation import allocate, group_counts, keep_count, keep_dense_layers, pin_pruned
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.wiring import network_members, try_layer_graph
from sparse_offline_rl.sparse_training.rule import MaskRule, Masks, RuleRun
from sparse_offline_rl.sparse_training.schedule import Schedule, gmp_sparsity


def dense_layers_and_members(pruner: Mapping[str, Any], algo: Any,
                             masks: MaskSet) -> tuple[dict[str, list[str]], dict[str, list[list[str]]]]:
    """Per masked network, the layers pruner.keep_first/last_layer_dense keep dense and the
    parameter names of each ensemble member; WiringError (a ValueError) when the wanted layers need wiring that
    cannot be read."""
    dense, members = {}, {}
    for name in masks.masks:
        net = algo.networks()[name]
        graph, error = try_layer_graph(net)
        dense[name] = keep_dense_layers(graph, name, first=bool(pruner.get("keep_first_layer_dense")),
                                        last=bool(pruner.get("keep_last_layer_dense")), wiring_error=error)
        members[name] = network_members(net, graph)
    return dense, members


class GMP(MaskRule):
    """Magnitude pruning to the cubic schedule's sparsity, with the run's scope (global, layer or ERK
    counts; ensemble members each keep their share, layers kept dense stay dense)."""

    begin = 0.2
    starts_dense = True

    def __init__(self, opts: Mapping[str, Any], targets: Mapping[str, float], dense: Mapping[str, list[str]],
                 members: Mapping[str, list[list[str]]], scope: str) -> None:
        self.opts, self.targets, self.dense, self.members, self.scope = opts, targets, dense, members, scope

    @classmethod
    def for_run(cls, run: RuleRun, algo: Any, masks: MaskSet) -> "GMP":
        return cls(run.opts, run.targets, *dense_layers_and_members(run.pruner, algo, masks), run.scope)

    def is_update(self, schedule: Schedule, step: int) -> bool:
        return schedule.is_update(step) or step == schedule.end_step  # the last one reaches the target

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> Masks:
        nets = algo.networks()
        out: Masks = {}
        for name, current in masks.masks.items():
            params = prunable_parameters(nets[name])
            sizes = {n: p.numel() for n, p in params.items()}
            dense = self.dense.get(name, [])
            dense_n = sum(sizes[n] for n in dense)
            sparsity = gmp_sparsity(self.targets[name], schedule.progress(step))
            keep = dense_n + keep_count(sum(sizes.values()) - dense_n, 1 - sparsity)
            kept = {n: m.bool() for n, m in current.items()}
            scores = pin_pruned({n: p.detach().abs() for n, p in params.items()}, kept)
            caps = {n: int(m.sum()) for n, m in kept.items()}  # a pruned weight never comes back
            groups = self.members[name]
            new: dict[str, torch.Tensor] = {}
            for names, keep_g in zip(groups, group_counts(sizes, groups, keep, dense)):
                new.update(allocate({n: scores[n] for n in names}, min(keep_g, sum(caps[n] for n in names)),
                                    self.scope, [n for n in dense if n in names], {n: caps[n] for n in names}))
            out[name] = new
        return out


__all__ = ["GMP", "dense_layers_and_members"]
