"""From scores to masks: how many weights each layer keeps, and exactly which ones.

All counts are integers decided up front and selected with a stable sort, so ties (equal scores,
e.g. a constant initialisation or SynFlow underflow) break by index and never push the achieved
density above the target, unlike `scores >= threshold`.

`allocate` takes the number of weights kept in the whole network, layers kept dense included;
the entry point decides what a target means (a sparsity applies to the pruned layers only, a
parameter / FLOP budget to the whole network, see `prune_at_initialization`).
"""
from __future__ import annotations

import math
from typing import Collection, Hashable, Mapping, Sequence, TypeVar

import torch
from torch import nn

from sparse_offline_rl.errors import LayerCollapseError, WiringError
from sparse_offline_rl.sparse.wiring import LayerGraph, connectivity, layer_graph

SCOPES = ("global", "layer", "erk")
K = TypeVar("K", bound=Hashable)


def keep_count(total: int, density: float) -> int:
    """Number of weights kept at `density`, rounded down so the target is never exceeded.
    (Rounded to 6 decimals first: 0.1 * 1000 is 100.00000000000001 and 0.3 * 1000 299.99999999999994.)"""
    return max(0, min(total, math.floor(round(density * total, 6))))


def top_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of a 1-D tensor; ties at the k-th value go to the
    lower indices (the same selection as a stable descending sort, in O(n): a full sort per round
    made 100-round SynFlow ~10x slower)."""
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if torch.isnan(flat).any():
        raise ValueError("saliency scores contain NaN; the loss or the network produced non-finite values")
    if k >= n:
        return mask.fill_(True)
    threshold = torch.kthvalue(flat, n - k + 1).values
    torch.gt(flat, threshold, out=mask)
    need = k - int(mask.sum())
    if need > 0:
        mask[torch.nonzero(flat == threshold).squeeze(1)[:need]] = True
    return mask


def _fan(shape: Sequence[int]) -> tuple[int, int]:
    n_out = int(shape[0])
    n_in = int(math.prod(shape[1:])) if len(shape) > 1 else 1
    return n_in, n_out


def erk_densities(shapes: Mapping[str, Sequence[int]], keep: int, dense: Collection[str] = ()) -> dict[str, float]:
    """Erdos-Renyi(-Kernel) densities: d_l = eps * (n_in + n_out) / (n_in * n_out), eps solved so the
    kept total is `keep`; layers whose density would exceed 1 are made dense and eps is re-solved
    (making one dense only raises eps, so adding all offenders at once converges in a few passes)."""
    sizes = {n: int(math.prod(s)) for n, s in shapes.items()}
    fixed = set(dense)
    eps = 0.0
    while True:
        sparse = [n for n in shapes if n not in fixed]
        if not sparse:
            break
        budget = keep - sum(sizes[n] for n in fixed)
        # (n_in + n_out) = density coefficient * layer size
        denom = sum(sum(_fan(shapes[n])) for n in sparse)
        eps = max(budget, 0) / denom
        over = {n for n in sparse if eps * sum(_fan(shapes[n])) / sizes[n] > 1.0}
        if not over:
            break
        fixed |= over
    return {n: 1.0 if n in fixed else eps * sum(_fan(shapes[n])) / sizes[n] for n in shapes}


def _distribute(raw: Mapping[K, float], total: int, caps: Mapping[K, int]) -> dict[K, int]:
    """Integer counts summing to `total` (when the caps allow), closest to `raw`: largest remainder."""
    counts = {n: min(caps[n], math.floor(r + 1e-9)) for n, r in raw.items()}
    rest = total - sum(counts.values())
    order = sorted(raw, key=lambda n: -(raw[n] - math.floor(raw[n] + 1e-9)))
    while rest > 0:
        progressed = False
        for n in order:
            if rest == 0:
                break
            if counts[n] < caps[n]:
                counts[n] += 1
                rest -= 1
                progressed = True
        if not progressed:
            break
    return counts


def _check_dense_fits(keep: int, dense_n: int) -> None:
    if keep < dense_n:
        raise ValueError(
            f"the layers kept dense hold {dense_n} weights, more than the {keep} the target allows; "
            "lower the sparsity or drop keep_first_layer_dense / keep_last_layer_dense"
        )


def group_counts(sizes: Mapping[str, int], groups: Sequence[Sequence[str]], keep: int, dense: Collection[str] = ()) -> list[int]:
    """Kept weights per group of layers (the members of an ensemble), `keep` in all: each group keeps
    its dense layers plus a share of the rest proportional to its pruned layers' size, so every member
    is pruned to the same density and no scorer can hand one member another's budget."""
    dense_g = [sum(sizes[n] for n in g if n in dense) for g in groups]
    sparse_g = [sum(sizes[n] for n in g if n not in dense) for g in groups]
    _check_dense_fits(keep, sum(dense_g))
    budget, sparse_total = keep - sum(dense_g), sum(sparse_g)
    raw = {i: budget * s / sparse_total if sparse_total else 0.0 for i, s in enumerate(sparse_g)}
    counts = _distribute(raw, budget, dict(enumerate(sparse_g)))
    return [d + counts[i] for i, d in enumerate(dense_g)]


def layer_counts(
    shapes: Mapping[str, Sequence[int]],
    keep: int,
    scope: str,
    dense: Collection[str] = (),
    caps: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Kept weights per layer for the per-layer scopes ("layer": one density for every non-dense
    layer; "erk": ERK densities). `caps` bounds each layer (iterative rounds never grow a layer)."""
    sizes = {n: int(math.prod(s)) for n, s in shapes.items()}
    caps = dict(caps) if caps is not None else dict(sizes)
    dense_n = sum(sizes[n] for n in dense)
    sparse = [n for n in shapes if n not in dense]
    remaining = keep - dense_n
    if scope == "layer":
        sparse_total = sum(sizes[n] for n in sparse)
        raw = {n: remaining * sizes[n] / sparse_total for n in sparse} if sparse_total else {}
    elif scope == "erk":
        densities = erk_densities(shapes, keep, dense)
        raw = {n: densities[n] * sizes[n] for n in sparse}
    else:
        raise ValueError(f"unknown scope '{scope}'; available: {', '.join(SCOPES)}")
    counts = _distribute(raw, remaining, {n: min(caps[n], sizes[n]) for n in sparse})
    counts.update({n: min(caps[n], sizes[n]) for n in dense})
    return counts


def allocate(
    scores: Mapping[str, torch.Tensor],
    keep: int,
    scope: str = "global",
    dense: Collection[str] = (),
    caps: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly `keep` weights of one network (fewer only if `caps` bind).

    global: one ranking over all non-dense layers; layer / erk: per-layer counts, ranked within
    each layer. Pinned scores (-inf, see `pin_pruned`) sort last, so they are only kept if a layer
    must keep more weights than it has unpinned ones, which the caps rule out."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope '{scope}'; available: {', '.join(SCOPES)}")
    unknown = set(dense) - set(scores)
    if unknown:
        raise ValueError(f"layers to keep dense are not prunable layers: {sorted(unknown)}")
    sizes = {n: s.numel() for n, s in scores.items()}
    total = sum(sizes.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} weights of a network with {total} prunable weights")
    dense_n = sum(sizes[n] for n in dense)
    _check_dense_fits(keep, dense_n)
    masks = {n: torch.zeros(s.shape, dtype=torch.bool, device=s.device) for n, s in scores.items()}
    for n in dense:
        masks[n].fill_(True)
    if scope == "global":
        sparse = [n for n in scores if n not in dense]
        if sparse:
            flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float64) for n in sparse])
            picked = top_mask(flat, keep - dense_n)
            for n, chunk in zip(sparse, picked.split([sizes[n] for n in sparse])):
                masks[n] = chunk.view(scores[n].shape)
        return masks
    counts = layer_counts({n: tuple(s.shape) for n, s in scores.items()}, keep, scope, dense, caps)
    for n, s in scores.items():
        if n in dense:
            continue
        masks[n] = top_mask(s.detach().reshape(-1), counts[n]).view(s.shape)
    return masks


def pin_pruned(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with already-pruned entries set to -inf, below any kept score: iterative rounds can
    then never revive a weight (SNIP / GraSP scores of a zeroed weight need not be zero)."""
    return {n: s.masked_fill(~masks[n], float("-inf")) if n in masks else s for n, s in scores.items()}


def check_layer_collapse(
    masks: Mapping[str, torch.Tensor],
    network: str,
    allow: bool,
    context: str = "",
    graph: LayerGraph | None = None,
) -> list[str]:
    """Names of layers that kept nothing, and (with the network's `graph`) of output layers no input
    reaches any more (a member or head that computes a constant); raises `LayerCollapseError`
    unless `allow`."""
    collapsed = [n for n, m in masks.items() if not bool(m.any())]
    disconnected = connectivity(graph, masks)["disconnected_outputs"] if graph is not None else []
    if (collapsed or disconnected) and not allow:
        detail = f" ({context})" if context else ""
        what = []
        if collapsed:
            what.append(f"{', '.join(collapsed)} kept 0 weights")
        if disconnected:
            what.append(f"output layer(s) {', '.join(disconnected)} have no kept path from the input")
        raise LayerCollapseError(
            f"layer collapse in network '{network}'{detail}: {'; '.join(what)}, "
            "which disconnects the network; lower the sparsity, use scope=erk or scope=layer, "
            "or set allow_layer_collapse=True"
        )
    return list(dict.fromkeys(collapsed + disconnected))


def keep_dense_layers(graph: LayerGraph | None, network: str, *, first: bool = False, last: bool = False,
                      wiring_error: str | None = None, also_needs: Sequence[str] = ()) -> list[str]:
    """The layers pruner.keep_first_layer_dense / keep_last_layer_dense keep dense (`first`, `last`):
    those reading the network input and those producing its output, once each. Without the wiring
    (`graph` None) none, unless they are asked for, or something in `also_needs` (e.g.
    "pruner=synflow") needs the wiring: then WiringError naming the network and `wiring_error`."""
    needs = [k for k, on in (("keep_first_layer_dense", first), ("keep_last_layer_dense", last)) if on]
    needs += list(also_needs)
    if graph is None:
        if needs:
            raise WiringError(f"{' and '.join(needs)} need(s) the wiring of network '{network}': {wiring_error}")
        return []
    return list(dict.fromkeys((graph.first_layers() if first else []) + (graph.last_layers() if last else [])))


def first_last_layers(module: nn.Module) -> tuple[list[str], list[str]]:
    """Weight names of the layers reading the network input and of those producing its output,
    from the traced Linear data-flow graph (an ensemble critic has one of each per member)."""
    graph = layer_graph(module)
    return graph.first_layers(), graph.last_layers()


__all__ = [
    "LayerCollapseError",
    "SCOPES",
    "allocate",
    "check_layer_collapse",
    "erk_densities",
    "first_last_layers",
    "group_counts",
    "keep_count",
    "keep_dense_layers",
    "layer_counts",
    "pin_pruned",
    "top_mask",
]
