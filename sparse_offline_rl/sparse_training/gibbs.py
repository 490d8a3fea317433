"""Gibbs pruning (Labach & Valaee 2020): training starts dense; from the first update the masks are
drawn from a Gibbs measure over masks whose energy favours large |w|, with the target count in
expectation and a temperature annealed towards zero; the update at `end` is the zero-temperature
limit (exactly the target, by magnitude). With pruner.structure=units the measure is over whole
hidden units instead (`UnitGibbs`): a removed unit's incoming row and outgoing columns are masked,
the layers keep their width."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import allocate, group_counts, keep_count, layer_counts
from sparse_offline_rl.pruning.units import hidden_members, select_units, unit_graph, unit_scores, weight_masks
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.wiring import LayerGraph
from sparse_offline_rl.sparse_training.gmp import GMP, dense_layers_and_members
from sparse_offline_rl.sparse_training.rule import Masks, RuleRun
from sparse_offline_rl.sparse_training import schedule as schedules
from sparse_offline_rl.sparse_training.schedule import Schedule


def gibbs_sample(energy: torch.Tensor, count: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """A draw from the Gibbs measure P(m) ∝ exp(sum_i m_i (energy_i - mu) / temperature) over boolean
    masks: entry i kept independently with probability sigmoid((energy_i - mu) / temperature), the
    chemical potential mu solved (bisection) so that the expected number kept is `count`."""
    x = energy.detach().reshape(-1).double()
    lo, hi = float(x.min()) - 40 * temperature, float(x.max()) + 40 * temperature  # sigmoid(40) = 1 - 4e-18
    for _ in range(60):
        mu = (lo + hi) / 2
        lo, hi = (mu, hi) if float(torch.sigmoid((x - mu) / temperature).sum()) > count else (lo, mu)
    p = torch.sigmoid((x - (lo + hi) / 2) / temperature)
    return (torch.rand(x.shape, generator=generator, dtype=torch.float64) < p).view(energy.shape).to(energy.device)


class Gibbs(GMP):
    """Gibbs pruning (Labach & Valaee 2020): train and prune at once, each update drawing the masks
    from a Gibbs measure whose energy favours large weights, at a temperature annealed to zero.

    From the first update on, each group of layers (a layer under scope layer / erk, an ensemble
    member under global) keeps, in expectation, its share of the target count: weight i with
    probability sigmoid((w_i^2 - mu) / T'), T' = T * the mean w^2 of the weights it kept (so T does
    not depend on the weights' scale), T going geometrically from `temperature_start` to
    `temperature_end` between begin and end. The update at `end` is the zero-temperature limit: the
    exact count with the largest |w|, so the run ends at exactly the target. A hot draw is nearly
    random (a pruned weight, zero, may come back, starting from zero); a cold one is magnitude
    pruning. Its own generator, checkpointed."""

    begin = 0.0  # masks change from the first update (GMP waits until 20%)
    own_options = ("temperature_start", "temperature_end")

    def __init__(self, opts: Mapping[str, Any], targets: Mapping[str, float], dense: Mapping[str, list[str]],
                 members: Mapping[str, list[list[str]]], scope: str, seed: int) -> None:
        super().__init__(opts, targets, dense, members, scope)
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def for_run(cls, run: RuleRun, algo: Any, masks: MaskSet) -> "Gibbs":
        return cls(run.opts, run.targets, *dense_layers_and_members(run.pruner, algo, masks), run.scope, run.seed)

    def temperature(self, schedule: Schedule, step: int) -> float:
        return schedules.temperature(self.opts, schedule.progress(step))

    def logged(self, schedule: Schedule, step: int) -> dict[str, Any]:
        return {"temperature": 0.0 if step == schedule.end_step else self.temperature(schedule, step)}

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> Masks:
        nets = algo.networks()
        temperature = self.temperature(schedule, step)
        out: Masks = {}
        for name, current in masks.masks.items():
            params = prunable_parameters(nets[name])
            energy = {n: p.detach().pow(2) for n, p in params.items()}
            sizes = {n: p.numel() for n, p in params.items()}
            dense = self.dense.get(name, [])
            dense_n = sum(sizes[n] for n in dense)
            keep = dense_n + keep_count(sum(sizes.values()) - dense_n, 1 - self.targets[name])
            groups = self.members[name]
            new: dict[str, torch.Tensor] = {}
            for names, keep_g in zip(groups, group_counts(sizes, groups, keep, dense)):
                dense_g = [n for n in dense if n in names]
                if step == schedule.end_step:
                    new.update(allocate({n: energy[n] for n in names}, keep_g, self.scope, dense_g))
                    continue
                new.update({n: torch.ones_like(energy[n], dtype=torch.bool) for n in dense_g})
                sampled = [n for n in names if n not in dense_g]
                if self.scope == "global":
                    draws = [(sampled, keep_g - sum(sizes[n] for n in dense_g))]
                else:
                    counts = layer_counts({n: tuple(energy[n].shape) for n in names}, keep_g, self.scope, dense_g)
                    draws = [([n], counts[n]) for n in sampled]
                for layer_names, count in draws:
                    flat = torch.cat([energy[n].reshape(-1) for n in layer_names])
                    kept = torch.cat([current[n].reshape(-1).bool() for n in layer_names])
                    scale = float(flat[kept].mean()) if bool(kept.any()) else 0.0
                    draw = gibbs_sample(flat, count, temperature * (scale if scale > 0 else 1.0), self.generator)
                    new.update({n: d.view(energy[n].shape) for n, d in
                                zip(layer_names, draw.split([sizes[n] for n in layer_names]))})
            out[name] = new
        return out


class UnitGibbs(Gibbs):
    """Structured Gibbs pruning (Labach & Valaee's neuron / filter case) on masks: the measure is over
    which hidden units stay (units as in pruning/units.py: outputs of a Linear another Linear reads).

    The networks keep their width (masks change during training): a removed unit has its incoming
    row and its outgoing columns, in every layer reading it, masked by `MaskSet.set_masks`. A unit's
    energy is the sum of w^2 over those weights (pruning/units.py's aggregation of the unstructured
    energy w^2), so a removed unit, all zeros, has energy 0 and comes back, if drawn, at zero. Each
    group (an ensemble member's hidden units under `global`, a hidden layer under `layer`) keeps
    its share of the target unit count in expectation, T' = T * the mean energy of the units it
    kept; the update at `end` keeps exactly the target count by energy (`select_units`, each
    layer's best unit first under `global`). A draw that keeps no unit of a layer keeps that layer's
    highest-energy unit, so no layer is ever emptied (one unit over the expected count then)."""

    def __init__(self, opts: Mapping[str, Any], targets: Mapping[str, float], scope: str, seed: int) -> None:
        super().__init__(opts, targets, {}, {}, scope, seed)
        self.unit_sparsity = 0.0  # of the networks' hidden units, at the last update

    @classmethod
    def for_run(cls, run: RuleRun, algo: Any, masks: MaskSet) -> "UnitGibbs":
        return cls(run.opts, run.targets, run.scope, run.seed)

    def logged(self, schedule: Schedule, step: int) -> dict[str, Any]:
        return {**super().logged(schedule, step), "unit_sparsity": self.unit_sparsity}

    @staticmethod
    def unit_energy(net: nn.Module, name: str) -> tuple[LayerGraph, dict[str, torch.Tensor]]:
        """The wiring of `net` (its layers dense nn.Linear) and each hidden unit's energy."""
        graph = unit_graph(net, name)
        return graph, unit_scores(graph, {n: p.detach().pow(2) for n, p in prunable_parameters(net).items()})

    def check(self, algo: Any, masks: MaskSet) -> None:
        """Fail at the start, not at `end`: the wiring must be readable and the target leave a unit
        in every hidden layer (the networks start dense, nn.Linear)."""
        for name in masks.masks:
            graph, energy = self.unit_energy(algo.networks()[name], name)
            select_units(energy, hidden_members(graph), 1 - self.targets[name], self.scope, name, self.targets[name])

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> Masks:
        nets = algo.networks()
        temperature = self.temperature(schedule, step)
        out: Masks = {}
        kept_units = all_units = 0
        for name, current in masks.masks.items():
            graph, energy = self.unit_energy(nets[name], name)  # traced now: the driver densified the layers
            target = self.targets[name]
            if step == schedule.end_step:
                units = select_units(energy, hidden_members(graph), 1 - target, self.scope, name, target)
            else:
                groups = hidden_members(graph) if self.scope == "global" else [[h] for h in energy]
                units = {}
                for layers in groups:
                    flat = torch.cat([energy[h] for h in layers])
                    kept = torch.cat([current[h].bool().any(1) for h in layers])  # a kept unit keeps its row
                    scale = float(flat[kept].mean()) if bool(kept.any()) else 0.0
                    draw = gibbs_sample(flat, keep_count(flat.numel(), 1 - target),
                                        temperature * (scale if scale > 0 else 1.0), self.generator)
                    units.update(zip(layers, draw.split([energy[h].numel() for h in layers])))
                for h, drawn in units.items():  # no layer emptied: the best unit of a layer the draw emptied
                    if not bool(drawn.any()):
                        drawn[int(torch.argmax(energy[h]))] = True
            out[name] = weight_masks(graph, units)
            kept_units += sum(int(u.sum()) for u in units.values())
            all_units += sum(u.numel() for u in units.values())
        self.unit_sparsity = 1 - kept_units / all_units if all_units else 0.0
        return out


__all__ = ["Gibbs", "UnitGibbs", "gibbs_sample"]
