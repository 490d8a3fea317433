"""The driver: `SparseTraining` applies a run's `MaskRule` (`registry.rule_class`) during training.

It is what the trainer talks to for every pruner (a pruner at initialization has no rule: its masks
never change): the initial pruning, the mask updates after each step, the training FLOPs
(`flops.TrainingFlops`), summary.json's `sparse_training` and a state dict for resume.

One mask mechanism: `MaskSet.set_masks` changes masks (dropped weights become zero, regrown ones
start at exactly zero with zero optimizer state, target copies follow the online mask). A layer
converted to a compressed SparseLinear is densified before its mask changes and rebuilt with the new
pattern after (`rewire`), its optimizer state moved both ways; after the last update the kernels are
chosen again at the final masks (GMP starts dense, so only then can its layers go sparse).

The names of the package's other modules import from here too, as they did when this module held
them all.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from sparse_offline_rl.sparse.kernels import LayerChoice, apply_sparse_kernels, choose_kernels, kernels_of
from sparse_offline_rl.sparse.linear import densify_algorithm
from sparse_offline_rl.sparse.masks import MaskSet
from sparse_offline_rl.sparse_training.drop_grow import SET, RigL, drop_and_grow
from sparse_offline_rl.sparse_training.final_report import add_unit_report, refresh_report
from sparse_offline_rl.sparse_training.flops import TrainingFlops
from sparse_offline_rl.sparse_training.gibbs import Gibbs, UnitGibbs, gibbs_sample
from sparse_offline_rl.sparse_training.gmp import GMP
from sparse_offline_rl.sparse_training.options import DECAYS, DYNAMIC_DEFAULTS, SCOPE, options
from sparse_offline_rl.sparse_training.registry import (
    ALL_PRUNERS,
    BEGIN,
    DYNAMIC_PRUNERS,
    METHOD_OPTIONS,
    RULES,
    SPARSE_INIT,
    rule_class,
)
from sparse_offline_rl.sparse_training.rule import MaskRule, Masks, RuleRun
from sparse_offline_rl.sparse_training.schedule import Schedule, drop_fraction, gmp_sparsity


def rewire(algo: Any, masks: MaskSet, new: Mapping[str, Mapping[str, torch.Tensor]],
           kernels: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Replace masks during training on any layer kind: compressed layers of the masked networks are
    densified (optimizer state scattered back), the masks changed (`MaskSet.set_masks`), and the
    layers `kernels` marks sparse rebuilt at the new patterns (state gathered again). Masks bound."""
    densify_algorithm(algo, list(masks.masks))
    changes = masks.set_masks(algo, new)
    apply_sparse_kernels(algo, masks, kernels)
    return changes


def update_record(step: int, masks: MaskSet, changes: Mapping[str, Mapping[str, tuple[int, int]]]) -> dict[str, Any]:
    """summary.json's record of one mask update: overall sparsity after it, weights dropped and grown."""
    kept = sum(int(m.sum()) for pm in masks.masks.values() for m in pm.values())
    total = sum(m.numel() for pm in masks.masks.values() for m in pm.values())
    return {"step": step, "sparsity": 1 - kept / total if total else 0.0,
            "dropped": sum(d for layers in changes.values() for d, _ in layers.values()),
            "grown": sum(g for layers in changes.values() for _, g in layers.values())}


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
        # Unit masks during training (`options` checked that the method offers them); PaI units narrow instead.
        self.units = self.method in RULES and (pruner.get("structure") or "unstructured") == "units"
        self.rule_class = rule_class(self.method, self.units)
        self.dynamic = self.rule_class is not None
        self.scope = pruner.get("scope") or (SCOPE if self.dynamic and not self.units else "global")
        self.schedule = Schedule.of(self.opts, steps) if self.dynamic else None
        self.targets = {n: float(s) for n, s in targets.items()}
        self.batch_size, self.kernel_mode, self.seed = int(batch_size), kernel_mode, int(seed)
        self.rule: MaskRule | None = None
        self.kernels: dict[str, dict[str, str]] = {}
        self.choices: dict[str, dict[str, LayerChoice]] | None = None  # the last re-choice, this process
        self.flops = TrainingFlops(self.batch_size, self.dynamic and self.rule_class.dense_gradient)
        self.updates: list[dict[str, Any]] = []

    @property
    def training_flops(self) -> int:
        return self.flops.total

    @property
    def training_flops_separate_pass(self) -> int:
        return self.flops.separate_pass

    @property
    def step_flops(self) -> int:
        return self.flops.per_step

    def initial_pruner(self) -> dict[str, Any]:
        """What prunes at initialization: the rule's start (`MaskRule.initial_pruner`) at the run's
        scope; a pruner at initialization prunes as configured."""
        base = {k: v for k, v in self.pruner.items() if k not in DYNAMIC_DEFAULTS}
        base["scope"] = self.scope
        if self.rule_class is None:
            return base
        return self.rule_class.initial_pruner(base, self.pruner.get("sparse_init"))

    def start(self, algo: Any, masks: MaskSet, kernels: Mapping[str, Mapping[str, str]]) -> None:
        """Take over the pruned algorithm: a dense start gets all-ones masks (pruned later)."""
        self.kernels = {n: dict(k) for n, k in kernels.items()}
        if self.rule_class is not None:
            self.rule_class.start_masks(algo, masks, self.targets)
        self._make_rule(algo, masks)
        if self.rule is not None:
            self.rule.check(algo, masks)
        self.flops.measure(algo, masks)

    def _make_rule(self, algo: Any, masks: MaskSet) -> None:
        if self.rule_class is not None:
            run = RuleRun(self.pruner, self.opts, self.targets, self.scope, self.seed)
            self.rule = self.rule_class.for_run(run, algo, masks)

    def updates_masks(self, step: int, masks: MaskSet) -> bool:
        """Whether `after_step(step, ...)` changes the masks (it needs the step's batch then)."""
        return self.rule is not None and self.rule.is_update(self.schedule, step) and bool(masks)

    def after_step(self, step: int, algo: Any, masks: MaskSet, batch: Any) -> dict[str, dict[str, str]] | None:
        """Count the step's FLOPs; at an update step change the masks. Returns the kernels if they changed."""
        self.flops.count_step()
        if not self.updates_masks(step, masks):
            return None
        cost = self.flops.update_cost(algo, masks)
        densify_algorithm(algo, list(masks.masks))  # dense weights and gradients for the rule
        new = self.rule.new_masks(self.schedule, step, algo, masks, batch)
        old_kernels = self.kernels
        if step == self.schedule.end_step:  # the masks are final: the kernels for the rest of the run
            self.choices = choose_kernels(algo, MaskSet(new), self.batch_size, self.kernel_mode)
            self.kernels = kernels_of(self.choices)
        changes = rewire(algo, masks, new, self.kernels)
        self.flops.count_update(cost)
        self.flops.measure(algo, masks)
        self.updates.append({**update_record(step, masks, changes), **self.rule.logged(self.schedule, step)})
        return self.kernels if self.kernels != old_kernels else None

    def final_report(self, report: dict[str, Any], algo: Any, masks: MaskSet) -> None:
        """Bring a `prune_at_initialization` report (what the run started from) to the masks and
        kernels the run ended with (`final_report.refresh_report`). Every run: `final_sparsity`, over
        all prunable weights of all networks, from the masks (a regrown weight still at zero counts
        as kept)."""
        if self.dynamic:
            # Kernels re-chosen at the last update (a resumed run knows only which, not the measurements).
            choices = self.choices or {net: {p: LayerChoice(k, "chosen at the last mask update") for p, k in layers.items()}
                                       for net, layers in self.kernels.items()}
            refresh_report(report, self.method, algo, masks, choices, self.kernel_mode, self.batch_size)
        if self.units:
            add_unit_report(report, algo, masks, self.targets)
        kept = sum(info["kept_weights"] for info in report["networks"].values())
        total = sum(info["prunable_weights"] for info in report["networks"].values())
        report["final_sparsity"] = 1 - kept / total if total else 0.0

    # -- checkpoint and report -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        generator = getattr(self.rule, "generator", None)
        return {**self.flops.state_dict(), "updates": list(self.updates),
                "generator": generator.get_state() if generator is not None else None}

    def load_state_dict(self, state: Mapping[str, Any] | None, algo: Any, masks: MaskSet,
                        kernels: Mapping[str, Mapping[str, str]]) -> None:
        """Resume: the restored algorithm, masks and kernels, and what `state_dict` saved."""
        self.kernels = {n: dict(k) for n, k in kernels.items()}
        self._make_rule(algo, masks)
        self.flops.measure(algo, masks)
        if state:
            self.updates = list(state["updates"])
            self.flops.load_state_dict(state, len(self.updates), algo, masks)
            generator = getattr(self.rule, "generator", None)
            if state.get("generator") is not None and generator is not None:
                generator.set_state(state["generator"])

    def report(self) -> dict[str, Any]:
        """summary.json's `sparse_training`: the method, its options and schedule, the updates."""
        out: dict[str, Any] = {"method": self.method, "during_training": self.dynamic, **self.flops.report()}
        if self.units:
            out["structure"] = "units"
        if self.dynamic:
            assert self.schedule is not None
            out.update(options=dict(self.opts), begin_step=self.schedule.begin_step, end_step=self.schedule.end_step,
                       updates=self.updates)
        return out


__all__ = ["ALL_PRUNERS", "BEGIN", "DECAYS", "DYNAMIC_DEFAULTS", "DYNAMIC_PRUNERS", "GMP", "Gibbs", "METHOD_OPTIONS",
           "MaskRule", "Masks", "RigL", "RuleRun", "SCOPE", "SET", "SPARSE_INIT", "Schedule", "SparseTraining",
           "UnitGibbs", "drop_and_grow", "drop_fraction", "gibbs_sample", "gmp_sparsity", "options", "rewire",
           "update_record"]
