"""`MaskRule`: what every during-training method is to the driver (`dynamic.SparseTraining`).

A rule says what the run starts from (dense, or random masks at the run's scope), at which steps
it changes the masks and what the new masks are; its class attributes say where its updates begin,
which options it reads and whether an update takes the dense gradient (counted in the training
FLOPs). `RuleRun` is what the driver builds every rule from.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse_training.schedule import Schedule

#: New masks: network name -> parameter name -> boolean mask.
Masks = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class RuleRun:
    """A run as its rule sees it: the pruner config, its during-training options (defaults filled
    in), each network's target sparsity, the layer densities' scope and the run's seed."""

    pruner: Mapping[str, Any]
    opts: Mapping[str, Any]
    targets: Mapping[str, float]
    scope: str
    seed: int


class MaskRule(ABC):
    """A method that changes the masks during training (GMP, SET, RigL, Gibbs)."""

    #: Fraction of training where updates start when pruner.begin is not given.
    begin: ClassVar[float] = 0.0
    #: Training starts dense (all-ones masks, pruned later) instead of at random masks.
    starts_dense: ClassVar[bool] = False
    #: pruner.sparse_init when not given, for a sparse start (the reference's fixed_sparse_init).
    sparse_init: ClassVar[bool] = True
    #: The pruner.* options (of `options.DYNAMIC_DEFAULTS`) only this method and its kind read.
    own_options: ClassVar[tuple[str, ...]] = ()
    #: An update takes the dense gradient of the network's loss (a pass the training FLOPs count).
    dense_gradient: ClassVar[bool] = False
    #: The rule's own random stream (checkpointed), if it draws.
    generator: torch.Generator | None = None

    @classmethod
    @abstractmethod
    def for_run(cls, run: RuleRun, algo: Any, masks: MaskSet) -> "MaskRule":
        """The rule for a run, once its networks and masks exist (a fresh or a resumed run)."""

    @classmethod
    def initial_pruner(cls, base: Mapping[str, Any], sparse_init: bool | None) -> dict[str, Any]:
        """What prunes at initialization: `base` (the pruner config without the during-training
        options) as pruner=dense, or pruner=random with the kept weights re-drawn to their fans."""
        if cls.starts_dense:
            return {**base, "name": "dense", "structure": "unstructured", "sparse_init": False}  # dense: nothing narrowed
        return {**base, "name": "random", "sparse_init": cls.sparse_init if sparse_init is None else sparse_init}

    @classmethod
    def start_masks(cls, algo: Any, masks: MaskSet, targets: Mapping[str, float]) -> None:
        """A fresh run's masks: a dense start gives every network with a target all-ones masks."""
        if not cls.starts_dense:
            return
        for name, net in algo.networks().items():
            if targets.get(name, 0.0) > 0 and name not in masks.masks:
                masks.masks[name] = {p: torch.ones_like(w) for p, w in prunable_parameters(net).items()}
        masks.bind(algo)

    def check(self, algo: Any, masks: MaskSet) -> None:
        """Fail at the start of a fresh run, not at an update, on what the rule cannot do."""

    def is_update(self, schedule: Schedule, step: int) -> bool:
        return schedule.is_update(step)

    @abstractmethod
    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> Masks:
        """The masked networks' new masks at update `step` (their layers dense nn.Linear now)."""

    def logged(self, schedule: Schedule, step: int) -> dict[str, Any]:
        """What summary.json's update record adds for this method (after `new_masks`)."""
        return {}


__all__ = ["Masks", "MaskRule", "RuleRun"]
