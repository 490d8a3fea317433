"""Drop and grow at a constant count per layer: SET (Mocanu et al. 2018) regrows at random, RigL
(Evci et al. 2020) where the dense gradient is largest. Both start at random masks with the run's
scope (ERK by default) and, every `update_every` steps until `end`, drop the fraction f_t of each
layer's kept weights with the smallest |w| and regrow as many, so the start's densities hold."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import top_mask
from sparse_offline_rl.pruning.rng import untouched_rngs
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse_training.rule import MaskRule, Masks, RuleRun
from sparse_offline_rl.sparse_training.schedule import Schedule, drop_fraction


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


class SET(MaskRule):
    """Drop by magnitude, regrow at random (a generator of its own, checkpointed)."""

    own_options = ("drop_fraction", "drop_decay")

    def __init__(self, opts: Mapping[str, Any], seed: int) -> None:
        self.opts = opts
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def for_run(cls, run: RuleRun, algo: Any, masks: MaskSet) -> "SET":
        return cls(run.opts, run.seed)

    def grow_scores(self, algo: Any, name: str, params: Mapping[str, nn.Parameter], batch: Any) -> dict[str, torch.Tensor]:
        return {n: torch.rand(p.shape, generator=self.generator).to(p.device) for n, p in params.items()}

    def new_masks(self, schedule: Schedule, step: int, algo: Any, masks: MaskSet, batch: Any) -> Masks:
        fraction = drop_fraction(self.opts, schedule.progress(step))
        nets = algo.networks()
        out: Masks = {}
        for name, current in masks.masks.items():
            params = prunable_parameters(nets[name])
            scores = self.grow_scores(algo, name, params, batch)
            out[name] = {n: drop_and_grow(params[n], m, scores[n], fraction) for n, m in current.items()}
        return out

    def logged(self, schedule: Schedule, step: int) -> dict[str, Any]:
        return {"drop_fraction": drop_fraction(self.opts, schedule.progress(step))}


class RigL(SET):
    """Drop by magnitude, regrow where the dense gradient of the network's own loss is largest. The
    layers are dense-masked at an update (`dynamic.rewire` densifies them), so the gradient with
    respect to the full weight matrix is the dense gradient; it is computed on the step's batch, for
    the update only (autograd.grad: no `.grad` is touched), with every RNG left as it was (a loss that
    samples, e.g. CQL's or TD3+BC's noise, does not shift training's streams)."""

    dense_gradient = True

    def grow_scores(self, algo: Any, name: str, params: Mapping[str, nn.Parameter], batch: Any) -> dict[str, torch.Tensor]:
        with untouched_rngs(algo), torch.enable_grad():
            grads = torch.autograd.grad(algo.saliency_loss(name, batch), list(params.values()), allow_unused=True)
        return {n: (g.abs() if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}


__all__ = ["RigL", "SET", "drop_and_grow"]
