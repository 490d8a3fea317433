"""Sparsity during training: masks that change while the networks train (GMP, SET, RigL, Gibbs).

The baselines pruning at initialization is measured against (Graesser et al. 2022, "The state of
sparse training in deep RL", and the google-research rigl code they use):

- `gmp`: gradual magnitude pruning (Zhu & Gupta 2017). Training starts dense; from `begin` to `end`
  (fractions of training, default 20% and 80%) every `update_every` steps each network is pruned by
  weight magnitude to the cubic schedule s_t = s_f (1 - (1 - p)^3), p the progress from begin to
  end; the last update, at `end`, reaches the target s_f exactly.
- `set`: Sparse Evolutionary Training (Mocanu et al. 2018). Starts sparse (random masks with `scope`
  densities, default ERK, the kept weights re-drawn to their fans under the mask unless
  `sparse_init=false`: `sparse/fan_init.py`); every `update_every` steps until `end` each layer
  drops the fraction f_t of its kept weights with the smallest magnitude and regrows as many at random.
- `rigl`: Rigging the Lottery (Evci et al. 2020). As `set`, but regrows where the dense gradient
  |dL/dW| of the network's own loss (`algo.saliency_loss`, on the step's batch) is largest.
- `gibbs`: Gibbs pruning (Labach & Valaee 2020). Training starts dense; from the first update the
  masks are drawn from a Gibbs measure over masks whose energy favours large |w|, with the target
  count in expectation and a temperature annealed towards zero; the update at `end` is the zero-
  temperature limit (exactly the target, by magnitude). With `pruner.structure=units` the measure is
  over whole hidden units instead (`UnitGibbs`): `sparsity` is the fraction of hidden units removed,
  a removed unit's incoming row and outgoing columns masked (the layers keep their width).

f_t = drop_fraction * (1 + cos(pi * p)) / 2 (cosine decay, p from begin to end), or constant; the
default drop_fraction 0.5 is the reference's for SAC on MuJoCo (rigl/rl/tfagents/configs/
sac_mujoco_sparse_config.gin: init_drop_fraction, cosine, update_freq 1000, last update at 80%).
SET and RigL keep each layer's count, so the ERK densities of the start hold the whole run.

One mask mechanism: `MaskSet.set_masks` changes masks (dropped weights become zero, regrown ones
start at exactly zero with zero optimizer state, target copies follow the online mask). A layer
converted to a compressed SparseLinear is densified before its mask changes and rebuilt with the new
pattern after (`rewire`), its optimizer state moved both ways; after the last update the kernels are
chosen again at the final masks (GMP starts dense, so only then can its layers go sparse).

`SparseTraining` is what the trainer talks to for every pruner: the initial pruning, the mask
updates after each step, and the training FLOPs (`density.step_flops`), with a state dict for resume.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import allocate, group_counts, keep_count, layer_counts, pin_pruned, top_mask
from sparse_offline_rl.sparse.density import count_params_flops, dense_gradient_flops, step_flops
from sparse_offline_rl.sparse.wiring import LayerGraph, network_members
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.pruning.scorers import PRUNERS
from sparse_offline_rl.sparse.wiring import try_layer_graph as _wiring
from sparse_offline_rl.pruning.rng import untouched_rngs
from sparse_offline_rl.sparse.kernels import LayerChoice, add_to_report, apply_sparse_kernels, choose_kernels, kernels_of
from sparse_offline_rl.sparse.fan_init import check as check_sparse_init
from sparse_offline_rl.sparse.linear import densify_, densify_algorithm
from sparse_offline_rl.pruning.units import (
    check_options,
    hidden_layers,
    hidden_members,
    select_units,
    unit_graph,
    unit_scores,
    weight_masks,
)

DYNAMIC_PRUNERS = ("gmp", "set", "rigl", "gibbs")
#: Every pruner= name: at initialization (pruning.PRUNERS) and during training.
ALL_PRUNERS = PRUNERS + DYNAMIC_PRUNERS
#: pruner.* options of the during-training pruners (the PaI options apply too: scope, keep_*_layer_dense).
DYNAMIC_DEFAULTS: dict[str, Any] = {
    "update_every": 1000,       # steps between mask updates
    "begin": None,              # fraction of training where updates start; None: the method's own
    "end": 0.8,                 # fraction of training of the last update
    "drop_fraction": 0.5,       # SET / RigL: fraction of each layer's kept weights dropped at the first update
    "drop_decay": "cosine",     # SET / RigL: cosine | constant
    "temperature_start": 1.0,   # Gibbs: temperature of the first update (relative to the mean kept w^2)
    "temperature_end": 0.01,    # Gibbs: of the last sampled update (the one at `end` is at zero)
}
#: Where each method starts updating (GMP: prune from 20%; the others change masks from the start).
BEGIN = {"gmp": 0.2, "set": 0.0, "rigl": 0.0, "gibbs": 0.0}
#: pruner.sparse_init when not given: on for the sparse starts, as the reference's fixed_sparse_init
#: (the PaI pruners default to off, prune.PRUNER_DEFAULTS: the SSP protocol keeps the dense init).
SPARSE_INIT = {"set": True, "rigl": True}
#: The options only some methods read; the others refuse them.
METHOD_OPTIONS = {"drop_fraction": ("set", "rigl"), "drop_decay": ("set", "rigl"),
                  "temperature_start": ("gibbs",), "temperature_end": ("gibbs",)}
#: The layer densities all three use unless pruner.scope says otherwise (the references' ERK).
SCOPE = "erk"
DECAYS = ("cosine", "constant")


def options(pruner: Mapping[str, Any]) -> dict[str, Any]:
    """The during-training options of `pruner` with defaults filled in; ValueError names a bad one."""
    method = pruner["name"]
    if check_sparse_init(pruner) and method in ("gmp", "gibbs"):
        raise ValueError(f"pruner.sparse_init applies to set, rigl and the pruners at initialization, not to "
                         f"pruner={method}: it starts dense, with no mask to scale the initialisation to")
    given = {k: pruner.get(k) for k in DYNAMIC_DEFAULTS if pruner.get(k) is not None}
    if method not in DYNAMIC_PRUNERS:
        if given:
            raise ValueError(f"pruner.{next(iter(given))} is an option of the during-training pruners "
                             f"({', '.join(DYNAMIC_PRUNERS)}), not of pruner={method}")
        return {}
    for key in given:
        if method not in METHOD_OPTIONS.get(key, DYNAMIC_PRUNERS):
            raise ValueError(f"pruner.{key} applies to {' and '.join(METHOD_OPTIONS[key])}, not to pruner={method}")
    out = {**DYNAMIC_DEFAULTS, "begin": BEGIN[method], **given}
    every = out["update_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"pruner.update_every={every!r} is invalid: an integer in [1, inf) is required")
    for key in ("begin", "end"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"pruner.{key}={value!r} is invalid: a fraction of training in [0, 1] is required")
    if out["begin"] > out["end"]:
        raise ValueError(f"pruner.begin={out['begin']!r} is after pruner.end={out['end']!r}: updates run from begin to end")
    fraction = out["drop_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"pruner.drop_fraction={fraction!r} is invalid: a number in [0, 1) is required")
    if out["drop_decay"] not in DECAYS:
        raise ValueError(f"pruner.drop_decay={out['drop_decay']!r} is invalid; accepted: {', '.join(DECAYS)}")
    for key in ("temperature_start", "temperature_end"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"pruner.{key}={value!r} is invalid: a number in (0, inf) is required")
    for key in ("budget_params", "budget_flops", "budget_cost"):
        if pruner.get(key) is not None:
            raise ValueError(f"pruner.{key} is not supported by pruner={method}: give the target as sparsity")
    if (pruner.get("structure") or "unstructured") != "unstructured":
        if method != "gibbs":
            raise ValueError(f"pruner.structure={pruner['structure']!r} is invalid with pruner={method}: "
                             f"{method} prunes single weights during training (structure=unstructured); whole units "
                             "are pruned during training by pruner=gibbs and at initialization by the PaI pruners")
        check_options(pruner)  # a known structure; scope global or layer (ERK sets weight densities, not unit counts)
        for key in ("weight_sparsity", "keep_first_layer_dense", "keep_last_layer_dense"):
            if pruner.get(key):  # units are masked with their whole rows and columns: no layer stays dense
                raise ValueError(f"pruner.{key} is not supported by pruner=gibbs with pruner.structure=units")
    return out


@dataclass(frozen=True)
class Schedule:
    """When masks change: every `update_every` steps from `begin_step` to `end_step` (inclusive)."""

    update_every: int
    begin_step: int
    end_step: int

    @classmethod
    def of(cls, opts: Mapping[str, Any], steps: int) -> "Schedule":
        begin = round(float(opts["begin"]) * steps)
        # At least step 1: GMP's last update, which reaches the target, must happen.
        return cls(int(opts["update_every"]), begin, max(begin, 1, round(float(opts["end"]) * steps)))

    def is_update(self, step: int) -> bool:
        return self.begin_step <= step <= self.end_step and step % self.update_every == 0

    def progress(self, step: int) -> float:
        """0 at begin, 1 at end (and after)."""
        span = self.end_step - self.begin_step
        return 1.0 if span <= 0 else min(1.0, max(0.0, (step - self.begin_step) / span))


def gmp_sparsity(target: float, progress: float) -> float:
    """Zhu & Gupta's cubic schedule from sparsity 0: s = s_f + (0 - s_f) (1 - p)^3."""
    return target * (1.0 - (1.0 - progress) ** 3)


def drop_fraction(opts: Mapping[str, Any], progress: float) -> float:
    base = float(opts["drop_fraction"])
    return base if opts["drop_decay"] == "constant" else base * (1.0 + math.cos(math.pi * progress)) / 2.0


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, grow_scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """One layer's new boolean mask: drop the `fraction` of its kept weights with the smallest |w|
    (rounded down), regrow as many where `grow_scores` is largest among the weights not kept after
    the drop (a weight just dropped may come back: it is not new, so it keeps its value)."""
    kept = mask.reshape(-1).bool()
    n = int(kept.sum())
    k = int(fraction * n)
    if k == 0:
        return kept.view(mask.shape)
    survivors = top_mask(weight.detach().abs().reshape(-1).float().masked_fill(~kept, -math.inf), n - k)
    grown = top_mask(grow_scores.reshape(-1).float().masked_fill(survivors, -math.inf), k)
    return (survivors | grown).view(mask.shape)


# -- the methods: new masks for the masked networks at an update step ------------------------------
class GMP:
    """Magnitude pruning to the cubic schedule's sparsity, with the run's scope (global, layer or ERK
    counts; ensemble members each keep their share, layers kept dense stay dense)."""

    def __init__(self, opts: Mapping[str, Any], targets: Mapping[str, float], dense: Mapping[str, list[str]],
                 members: Mapping[str, list[list[str]]], scope: str) -> None:
        self.opts, self.targets, self.dense, self.members, self.scope = opts, targets, dense, members, scope

    def is_update(self, schedule: Schedule, step: int) -> bool:
        return schedule.is_update(step) or step == schedule.end_step  # the last one reaches the target

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> dict[str, dict[str, torch.Tensor]]:
        nets = algo.networks()
        out: dict[str, dict[str, torch.Tensor]] = {}
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

    def __init__(self, opts: Mapping[str, Any], targets: Mapping[str, float], dense: Mapping[str, list[str]],
                 members: Mapping[str, list[list[str]]], scope: str, seed: int) -> None:
        super().__init__(opts, targets, dense, members, scope)
        self.generator = torch.Generator().manual_seed(int(seed))

    def temperature(self, schedule: Schedule, step: int) -> float:
        start, end = float(self.opts["temperature_start"]), float(self.opts["temperature_end"])
        return start * (end / start) ** schedule.progress(step)

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> dict[str, dict[str, torch.Tensor]]:
        nets = algo.networks()
        temperature = self.temperature(schedule, step)
        out: dict[str, dict[str, torch.Tensor]] = {}
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
    which hidden units stay (units as in structured.py: outputs of a Linear another Linear reads).

    The networks keep their width (masks change during training): a removed unit has its incoming
    row and its outgoing columns, in every layer reading it, masked by `MaskSet.set_masks`. A unit's
    energy is the sum of w^2 over those weights (structured.py's aggregation of the unstructured
    energy w^2), so a removed unit, all zeros, has energy 0 and comes back, if drawn, at zero. Each
    group (an ensemble member's hidden units under `global`, a hidden layer under `layer`) keeps
    its share of the target unit count in expectation, T' = T * the mean energy of the units it
    kept; the update at `end` keeps exactly the target count by energy (`select_units`, each
    layer's best unit first under `global`). A draw that keeps no unit of a layer keeps that layer's
    highest-energy unit, so no layer is ever emptied (one unit over the expected count then)."""

    def __init__(self, opts: Mapping[str, Any], targets: Mapping[str, float], scope: str, seed: int) -> None:
        super().__init__(opts, targets, {}, {}, scope, seed)
        self.unit_sparsity = 0.0  # of the networks' hidden units, at the last update

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

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> dict[str, dict[str, torch.Tensor]]:
        nets = algo.networks()
        temperature = self.temperature(schedule, step)
        out: dict[str, dict[str, torch.Tensor]] = {}
        kept_units = all_units = 0
        for name, current in masks.masks.items():
            graph, energy = self.unit_energy(nets[name], name)  # traced now: `after_step` densified the layers
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


class SET:
    """Drop by magnitude, regrow at random (a generator of its own, checkpointed)."""

    def __init__(self, opts: Mapping[str, Any], seed: int) -> None:
        self.opts = opts
        self.generator = torch.Generator().manual_seed(int(seed))

    def is_update(self, schedule: Schedule, step: int) -> bool:
        return schedule.is_update(step)

    def grow_scores(self, algo: Any, name: str, params: Mapping[str, nn.Parameter], batch: Any) -> dict[str, torch.Tensor]:
        return {n: torch.rand(p.shape, generator=self.generator).to(p.device) for n, p in params.items()}

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> dict[str, dict[str, torch.Tensor]]:
        fraction = drop_fraction(self.opts, schedule.progress(step))
        nets = algo.networks()
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, current in masks.masks.items():
            params = prunable_parameters(nets[name])
            scores = self.grow_scores(algo, name, params, batch)
            out[name] = {n: drop_and_grow(params[n], m, scores[n], fraction) for n, m in current.items()}
        return out


class RigL(SET):
    """Drop by magnitude, regrow where the dense gradient of the network's own loss is largest. The
    layers are dense-masked at an update (`rewire` densifies them), so the gradient with respect to
    the full weight matrix is the dense gradient; it is computed on the step's batch, for the update
    only (autograd.grad: no `.grad` is touched), with every RNG left as it was (a loss that samples,
    e.g. CQL's or TD3+BC's noise, does not shift training's streams)."""

    def grow_scores(self, algo: Any, name: str, params: Mapping[str, nn.Parameter], batch: Any) -> dict[str, torch.Tensor]:
        with untouched_rngs(algo), torch.enable_grad():
            grads = torch.autograd.grad(algo.saliency_loss(name, batch), list(params.values()), allow_unused=True)
        return {n: (g.abs() if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}


# -- changing masks on an algorithm -----------------------------------------------------------------
def rewire(algo: Any, masks: MaskSet, new: Mapping[str, Mapping[str, torch.Tensor]],
           kernels: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Replace masks during training on any layer kind: compressed layers of the masked networks are
    densified (optimizer state scattered back), the masks changed (`MaskSet.set_masks`), and the
    layers `kernels` marks sparse rebuilt at the new patterns (state gathered again). Masks bound."""
    densify_algorithm(algo, list(masks.masks))
    changes = masks.set_masks(algo, new)
    apply_sparse_kernels(algo, masks, kernels)
    return changes


class SparseTraining:
    """A run's masks over time and its training FLOPs, for every pruner (PaI pruners: no updates).

    Use: `initial_pruner()` for `prune_at_initialization`; `start(algo, masks, kernels)` once the
    masks and kernels exist (a fresh run) or `load_state_dict` (a resumed one); `after_step(step,
    algo, masks, batch)` after every update, which returns the kernels when they changed.
    """

    def __init__(self, pruner: Mapping[str, Any], steps: int, targets: Mapping[str, float], batch_size: int,
                 seed: int, kernel_mode: str = "auto") -> None:
        self.method = pruner["name"]
        self.pruner = dict(pruner)
        self.opts = options(pruner)
        self.dynamic = self.method in DYNAMIC_PRUNERS
        # Unit masks during training (pruner=gibbs only, `options` checked); PaI units narrow instead.
        self.units = self.dynamic and (pruner.get("structure") or "unstructured") == "units"
        self.scope = pruner.get("scope") or (SCOPE if self.dynamic and not self.units else "global")
        self.schedule = Schedule.of(self.opts, steps) if self.dynamic else None
        self.targets = {n: float(s) for n, s in targets.items()}
        self.batch_size, self.kernel_mode, self.seed = int(batch_size), kernel_mode, int(seed)
        self.rule: Any = None
        self.kernels: dict[str, dict[str, str]] = {}
        self.choices: dict[str, dict[str, LayerChoice]] | None = None  # the last re-choice, this process
        self.training_flops = 0  # RigL's dense gradient as Evci et al. count it (`density.dense_gradient_flops`)
        self.training_flops_separate_pass = 0  # the same with it as the separate pass this code runs
        self.step_flops = 0
        self.updates: list[dict[str, Any]] = []

    def initial_pruner(self) -> dict[str, Any]:
        """What prunes at initialization: GMP and Gibbs start dense, SET / RigL random with the run's scope
        and, unless pruner.sparse_init=false, the kept weights re-drawn to their fans under the mask."""
        base = {k: v for k, v in self.pruner.items() if k not in DYNAMIC_DEFAULTS}
        base["scope"] = self.scope
        if self.method in ("gmp", "gibbs"):
            return {**base, "name": "dense", "structure": "unstructured", "sparse_init": False}  # dense: nothing narrowed
        if self.method in ("set", "rigl"):
            given = self.pruner.get("sparse_init")
            return {**base, "name": "random", "sparse_init": SPARSE_INIT[self.method] if given is None else given}
        return base

    def start(self, algo: Any, masks: MaskSet, kernels: Mapping[str, Mapping[str, str]]) -> None:
        """Take over the pruned algorithm: GMP's and Gibbs' networks get all-ones masks (pruned later)."""
        self.kernels = {n: dict(k) for n, k in kernels.items()}
        if self.method in ("gmp", "gibbs"):
            for name, net in algo.networks().items():
                if self.targets.get(name, 0.0) > 0 and name not in masks.masks:
                    masks.masks[name] = {p: torch.ones_like(w) for p, w in prunable_parameters(net).items()}
            masks.bind(algo)
        self._make_rule(algo, masks)
        if isinstance(self.rule, UnitGibbs):
            self.rule.check(algo, masks)
        self.step_flops = step_flops(algo, masks, self.batch_size)

    def _make_rule(self, algo: Any, masks: MaskSet) -> None:
        if self.units:
            self.rule = UnitGibbs(self.opts, self.targets, self.scope, self.seed)
        elif self.method in ("gmp", "gibbs"):
            dense, members = {}, {}
            for name in masks.masks:
                net = algo.networks()[name]
                graph, error = _wiring(net)
                wanted = [k for k in ("keep_first_layer_dense", "keep_last_layer_dense") if self.pruner.get(k)]
                if wanted and graph is None:
                    raise ValueError(f"{' and '.join(wanted)} need(s) the wiring of network '{name}': {error}")
                dense[name] = ((graph.first_layers() if self.pruner.get("keep_first_layer_dense") else [])
                               + (graph.last_layers() if self.pruner.get("keep_last_layer_dense") else [])) if graph else []
                dense[name] = list(dict.fromkeys(dense[name]))
                members[name] = network_members(net, graph)
            self.rule = (GMP(self.opts, self.targets, dense, members, self.scope) if self.method == "gmp"
                         else Gibbs(self.opts, self.targets, dense, members, self.scope, self.seed))
        elif self.method == "set":
            self.rule = SET(self.opts, self.seed)
        elif self.method == "rigl":
            self.rule = RigL(self.opts, self.seed)

    def updates_masks(self, step: int, masks: MaskSet) -> bool:
        """Whether `after_step(step, ...)` changes the masks (it needs the step's batch then)."""
        return self.rule is not None and self.rule.is_update(self.schedule, step) and bool(masks)

    def after_step(self, step: int, algo: Any, masks: MaskSet, batch: Any) -> dict[str, dict[str, str]] | None:
        """Count the step's FLOPs; at an update step change the masks. Returns the kernels if they changed."""
        self.training_flops += self.step_flops
        self.training_flops_separate_pass += self.step_flops
        if not self.updates_masks(step, masks):
            return None
        # RigL's dense gradient, at the masks it is taken under (each layer keeps its count, so the same after)
        extra = dense_gradient_flops(algo, masks, self.batch_size) if self.method == "rigl" else {}
        densify_algorithm(algo, list(masks.masks))  # dense weights and gradients for the rule
        new = self.rule.new_masks(self.schedule, step, algo, masks, batch)
        old_kernels = self.kernels
        if step == self.schedule.end_step:  # the masks are final: the kernels for the rest of the run
            self.choices = choose_kernels(algo, MaskSet(new), self.batch_size, self.kernel_mode)
            self.kernels = kernels_of(self.choices)
        changes = rewire(algo, masks, new, self.kernels)
        self.training_flops += extra.get("evci2020", 0)
        self.training_flops_separate_pass += extra.get("separate_pass", 0)
        self.step_flops = step_flops(algo, masks, self.batch_size)
        kept = sum(int(m.sum()) for pm in masks.masks.values() for m in pm.values())
        total = sum(m.numel() for pm in masks.masks.values() for m in pm.values())
        self.updates.append({
            "step": step, "sparsity": 1 - kept / total if total else 0.0,
            "dropped": sum(d for layers in changes.values() for d, _ in layers.values()),
            "grown": sum(g for layers in changes.values() for _, g in layers.values()),
            **({"drop_fraction": drop_fraction(self.opts, self.schedule.progress(step))} if self.method in ("set", "rigl") else {}),
            **({"temperature": 0.0 if step == self.schedule.end_step else self.rule.temperature(self.schedule, step)}
               if self.method == "gibbs" else {}),
            **({"unit_sparsity": self.rule.unit_sparsity} if self.units else {}),
        })
        return self.kernels if self.kernels != old_kernels else None

    def final_report(self, report: dict[str, Any], algo: Any, masks: MaskSet) -> None:
        """Bring a `prune_at_initialization` report (what the run started from: dense for GMP, random
        ERK for SET / RigL) to the masks and kernels the run ended with: per layer kept / density /
        kernel, per network kept weights, density, params and FLOPs; `pruner` names the method,
        `initial_pruner` the start. Every run: `final_sparsity`, over all prunable weights of all
        networks, from the masks (a regrown weight still at zero counts as kept)."""
        if self.dynamic:
            self._refresh(report, algo, masks)
        if self.units:
            self._unit_report(report, algo, masks)
        kept = sum(info["kept_weights"] for info in report["networks"].values())
        total = sum(info["prunable_weights"] for info in report["networks"].values())
        report["final_sparsity"] = 1 - kept / total if total else 0.0

    def _refresh(self, report: dict[str, Any], algo: Any, masks: MaskSet) -> None:
        report["initial_pruner"], report["pruner"] = report.get("pruner"), self.method
        nets = algo.networks()
        for name, info in report.get("networks", {}).items():
            current = masks.masks.get(name)
            if current is None:
                continue
            for pname, layer in info["layers"].items():
                layer["kept"] = int(current[pname].sum())
                layer["density"] = layer["kept"] / layer["total"]
            info["layer_density"] = {n: v["density"] for n, v in info["layers"].items()}
            info["kept_weights"] = sum(v["kept"] for v in info["layers"].values())
            info["density"] = info["kept_weights"] / info["prunable_weights"] if info["prunable_weights"] else 1.0
            info["collapsed_layers"] = [n for n, v in info["layers"].items() if v["kept"] == 0]
            pruned = [v for n, v in info["layers"].items() if n not in info.get("dense_layers", ())]
            total = sum(v["total"] for v in pruned)
            info["pruned_layers_density"] = sum(v["kept"] for v in pruned) / total if total else 1.0
            for member in info.get("members", ()):
                member["kept_weights"] = sum(info["layers"][n]["kept"] for n in member["layers"])
                member["share"] = member["kept_weights"] / info["kept_weights"] if info["kept_weights"] else 0.0
            for key in ("dead_units", "dead_units_per_layer", "effective_weights", "disconnected_outputs"):
                info[key] = None  # measured at initialization only; the masks have changed since
            info.update(count_params_flops(nets[name], current))
        report["total"] = {k: sum(r[k] for r in report["networks"].values())
                           for k in ("params_dense", "params", "flops_dense", "flops")}
        # Kernels re-chosen at the last update (a resumed run knows only which, not the measurements).
        choices = self.choices or {net: {p: LayerChoice(k, "chosen at the last mask update") for p, k in layers.items()}
                                   for net, layers in self.kernels.items()}
        sparse_kernels = report.get("sparse_kernels", {})
        add_to_report(report, choices, sparse_kernels.get("mode", self.kernel_mode), self.batch_size)

    def _unit_report(self, report: dict[str, Any], algo: Any, masks: MaskSet) -> None:
        """structure=units: per network the kept hidden units per layer (a unit is kept when its row
        is) and the unit sparsity; not `report["units"]`, whose layouts would narrow a resumed network."""
        report["structure"] = "units"
        for name, info in report["networks"].items():
            if name not in masks.masks:
                continue
            dense_copy = copy.deepcopy(algo.networks()[name])
            densify_(dense_copy)  # the final layers may be compressed, and the wiring is traced on nn.Linear
            layers = hidden_layers(unit_graph(dense_copy, name))
            units = {h: {"kept": int(masks.masks[name][h].bool().any(1).sum()), "total": masks.masks[name][h].shape[0]}
                     for h in layers}
            kept, total = (sum(u[k] for u in units.values()) for k in ("kept", "total"))
            info.update(hidden_units_kept=units, unit_sparsity=1 - kept / total if total else 0.0,
                        target_unit_sparsity=self.targets[name])

    # -- checkpoint and report -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"training_flops": self.training_flops, "training_flops_separate_pass": self.training_flops_separate_pass,
                "updates": list(self.updates),
                "generator": self.rule.generator.get_state() if hasattr(self.rule, "generator") else None}

    def load_state_dict(self, state: Mapping[str, Any] | None, algo: Any, masks: MaskSet,
                        kernels: Mapping[str, Mapping[str, str]]) -> None:
        """Resume: the restored algorithm, masks and kernels, and what `state_dict` saved."""
        self.kernels = {n: dict(k) for n, k in kernels.items()}
        self._make_rule(algo, masks)
        self.step_flops = step_flops(algo, masks, self.batch_size)
        if state:
            self.training_flops, self.updates = int(state["training_flops"]), list(state["updates"])
            self.training_flops_separate_pass = int(state.get("training_flops_separate_pass", self.training_flops))
            if "training_flops_separate_pass" not in state and self.method == "rigl":
                # Written when `training_flops` counted the separate pass: recount each update Evci et al.'s
                # way (the masks' counts have not changed since, RigL keeps them).
                extra = dense_gradient_flops(algo, masks, self.batch_size)
                self.training_flops -= len(self.updates) * (extra["separate_pass"] - extra["evci2020"])
            if state.get("generator") is not None and hasattr(self.rule, "generator"):
                self.rule.generator.set_state(state["generator"])

    def report(self) -> dict[str, Any]:
        """summary.json's `sparse_training`: the method, its options and schedule, the updates."""
        out: dict[str, Any] = {"method": self.method, "during_training": self.dynamic,
                               "training_flops": self.training_flops}
        if self.method == "rigl":  # both counts of the dense gradient, labelled (`density.dense_gradient_flops`)
            out.update(dense_gradient_counted_as="evci2020", training_flops_separate_pass=self.training_flops_separate_pass)
        if self.units:
            out["structure"] = "units"
        if self.dynamic:
            assert self.schedule is not None
            out.update(options=dict(self.opts), begin_step=self.schedule.begin_step, end_step=self.schedule.end_step,
                       updates=self.updates)
        return out


__all__ = ["BEGIN", "DYNAMIC_DEFAULTS", "ALL_PRUNERS", "DYNAMIC_PRUNERS", "GMP", "Gibbs", "RigL", "SET", "Schedule", "SparseTraining",
           "UnitGibbs", "drop_and_grow", "drop_fraction", "gibbs_sample", "gmp_sparsity", "options", "rewire"]
