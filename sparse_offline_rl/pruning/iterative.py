"""Masks for one network: the scoring rounds of an iterative schedule, per ensemble member.

- `prune_rounds(score, keep, ...)`: prune to `keep` weights in `rounds` steps, rescoring each round.
- `prune_module(module, method, keep, ...)`: a registered scorer's masks for one network, with the
  layer-collapse check (what `weights.py` calls per network, and the library's per-network entry).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import allocate, check_layer_collapse, group_counts, keep_count, pin_pruned
from sparse_offline_rl.pruning.scorers import scorer_class
from sparse_offline_rl.pruning.scores import LossClosure, Scores
from sparse_offline_rl.sparse.masks import prunable_parameters
from sparse_offline_rl.sparse.wiring import LayerGraph, network_members, try_layer_graph

Score = Callable[[Mapping[str, torch.Tensor] | None], Scores]


def round_keep(keep: int, total: int, e: int, rounds: int) -> int:
    """Weights kept after round e of `rounds` by a member keeping `keep` of `total` in the end: keep
    ratio k^((e+1)/E), never below the final count."""
    ratio = keep / total if total else 1.0
    return keep if e == rounds - 1 else max(keep, keep_count(total, ratio ** ((e + 1) / rounds)))


def prune_rounds(
    score: Score,
    keep: int,
    scope: str,
    dense: Sequence[str],
    rounds: int,
    members: Sequence[Sequence[str]] | None = None,
) -> tuple[dict[str, torch.Tensor], Scores]:
    """Prune to `keep` weights in `rounds` steps with keep ratio k^((e+1)/E) at round e, rescoring
    the pruned network each round. Each member (groups of layer names, default: one for the whole
    network) keeps its own fixed share of `keep` (`group_counts`) and is ranked on its own, so one
    member's larger scores can never take another's weights. Pruned weights are pinned to -inf and
    each layer's count is capped at what it kept, so no weight is ever revived (for every scope)."""
    masks: dict[str, torch.Tensor] | None = None
    scores: Scores = {}
    groups: list[tuple[list[str], int, int]] = []  # (layer names, final keep, prunable weights)
    for e in range(rounds):
        scores = score(masks)
        if not groups:
            sizes = {n: s.numel() for n, s in scores.items()}
            names = [list(g) for g in members] if members is not None else [list(scores)]
            keeps = group_counts(sizes, names, keep, dense)
            groups = [(g, k, sum(sizes[n] for n in g)) for g, k in zip(names, keeps)]
        caps = None
        if masks is not None:
            scores = pin_pruned(scores, masks)
            caps = {n: int(m.sum()) for n, m in masks.items()}
        new: dict[str, torch.Tensor] = {}
        for names_g, keep_g, total_g in groups:
            new.update(allocate(
                {n: scores[n] for n in names_g}, round_keep(keep_g, total_g, e, rounds), scope,
                [n for n in dense if n in names_g], None if caps is None else {n: caps[n] for n in names_g},
            ))
        masks = new
    assert masks is not None
    return masks, scores


def prune_module(
    module: nn.Module,
    method: str,
    keep: int,
    *,
    scope: str = "global",
    dense_layers: Sequence[str] = (),
    losses: Sequence[LossClosure] = (),
    input_shape: Sequence[int] | None = None,
    rounds: int | None = None,
    seed: int = 0,
    allow_layer_collapse: bool = False,
    name: str = "network",
    graph: LayerGraph | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks for one network keeping exactly `keep` prunable weights (collapse-checked).

    Ensemble members (the connected groups of the traced layer graph, e.g. the two Q-networks of a
    twin critic) each keep the same fraction of their weights; a network whose wiring cannot be
    traced is one member. Collapse: a layer left with no weight, or an output layer no kept path
    from the input reaches (when the wiring is known). `graph`: the wiring, if already read."""
    scorer = scorer_class(method)
    params = prunable_parameters(module)
    total = sum(p.numel() for p in params.values())
    if method == "dense" or keep >= total:
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    if graph is None:
        graph, _ = try_layer_graph(module)
    score = scorer(module, losses, input_shape, seed, name, graph).score
    masks, _ = prune_rounds(score, keep, scope, list(dense_layers), scorer.rounds(rounds), network_members(module, graph))
    context = f"{method}, scope={scope}, density {keep / total:.4f}"
    check_layer_collapse(masks, name, allow_layer_collapse, context, graph)
    return masks


__all__ = ["prune_module", "prune_rounds", "round_keep"]
