"""Physically narrower networks: hidden units removed from the Linear layers (rows of a layer, the
matching columns of the layers reading it), their parameters swapped in the optimizers, and the
layout (kept unit indices, which layer reads which) that reports and checkpoints keep so a fresh
network can be narrowed again before its state is loaded (resume, evaluation, export)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from sparse_offline_rl.sparse.linear import ELIGIBLE, ParamSwap, swap_optimizer_params
from sparse_offline_rl.sparse.masks import layer_weights, prunable_parameters
from sparse_offline_rl.sparse.wiring import LayerGraph, layer_graph

Units = dict[str, torch.Tensor]  # hidden layer weight name -> bool (out_features,), True = kept


def layout_of(graph: LayerGraph, kept: Units) -> dict[str, Any]:
    """The JSON form a report and checkpoint keep: kept unit indices per hidden layer and the layer
    each layer reads (None: the network input), enough to narrow a fresh network without tracing it."""
    return {"kept_units": {n: torch.nonzero(m).squeeze(1).tolist() for n, m in kept.items()},
            "inputs_from": {n: (graph.names[p] if p is not None else None) for n, p in zip(graph.names, graph.parents)}}


def narrow_(module: nn.Module, layout: Mapping[str, Any]) -> list[ParamSwap]:
    """Replace, in place, each Linear of `module` by one holding only the kept units' rows and the
    kept inputs' columns (`layout` as `layout_of` gives). Returns the parameter swaps."""
    kept = {n: torch.as_tensor(idx, dtype=torch.long) for n, idx in layout["kept_units"].items()}
    swaps: list[ParamSwap] = []
    for wname in list(prunable_parameters(module)):
        layer_name = wname.rpartition(".")[0]
        old = module.get_submodule(layer_name)
        parent = layout["inputs_from"].get(wname)
        rows = kept.get(wname)
        cols = kept.get(parent) if parent is not None else None
        if rows is None and cols is None:
            continue
        rows_t = rows if rows is not None else torch.arange(old.out_features)
        cols_t = cols if cols is not None else torch.arange(old.in_features)
        device = old.weight.device
        rows_t, cols_t = rows_t.to(device), cols_t.to(device)
        # skip_init: the values are copied below, and initialising would draw from training's torch RNG.
        new = torch.nn.utils.skip_init(nn.Linear, len(cols_t), len(rows_t), bias=old.bias is not None, device=device,
                                       dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[rows_t][:, cols_t])
            if old.bias is not None:
                new.bias.copy_(old.bias[rows_t])
        for p_new, p_old in zip(new.parameters(), old.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        if getattr(old, ELIGIBLE, False):
            setattr(new, ELIGIBLE, True)
        swaps.append(ParamSwap(old.weight, new.weight, lambda t, r=rows_t, c=cols_t: t[r][:, c]))
        if old.bias is not None:
            swaps.append(ParamSwap(old.bias, new.bias, lambda t, r=rows_t: t[r]))
        parent_name, _, child = layer_name.rpartition(".")
        setattr(module.get_submodule(parent_name), child, new)
    return swaps


def read_units(graph: LayerGraph) -> Units:
    """Per hidden layer, the units that some weight still reads (nonzero in an outgoing column of a
    layer reading it). A unit nothing reads adds exactly zero to the output, whatever its input."""
    return {graph.names[i]: torch.stack([graph.layers[c].weight.detach() != 0 for c in children]).any(0).any(0)
            for i, children in enumerate(graph.children) if children}


def drop_unread_units_(net: nn.Module) -> int:
    """Narrow `net` (plain nn.Linear layers) in place by its hidden units that nothing reads, e.g. the
    units a unit Gibbs run or heavy pruning left with all outgoing weights zero; its outputs stay the
    same. A layer keeps at least one unit (shapes stay valid). Repeated until nothing changes: a unit
    read only by units that were removed is unread in turn. Returns how many units were removed."""
    total = 0
    while True:
        graph = layer_graph(net)
        kept = read_units(graph)
        for units in kept.values():
            if not bool(units.any()):
                units[0] = True
        removed = sum(int((~units).sum()) for units in kept.values())
        if not removed:
            return total
        narrow_(net, layout_of(graph, kept))
        total += removed


def narrow_algorithm(algo: Any, layouts: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Narrow each network of `algo` named in `layouts` ({network: layout}), its target copy alike
    (Polyak pairs their parameters in order), and swap the replaced parameters in its optimizers."""
    if not layouts:
        return
    nets, targets = algo.networks(), algo.target_networks()
    swaps: list[ParamSwap] = []
    for name, layout in layouts.items():
        swaps += narrow_(nets[name], layout)
        if name in targets:
            narrow_(targets[name], layout)
    swap_optimizer_params(algo.optimizers().values(), swaps)


def layouts_of(report: Mapping[str, Any] | None) -> dict[str, Any]:
    """{network: layout} of a pruning report (empty for unstructured pruning)."""
    return {n: info["layout"] for n, info in ((report or {}).get("units") or {}).items()}


def network_densities(networks: Mapping[str, nn.Module], report: Mapping[str, Any] | None) -> dict[str, float]:
    """Nonzero prunable weights per network over those of the network as built (before any unit was
    removed): what `summary.json["density"]` reports, for structured and unstructured runs alike."""
    units = (report or {}).get("units") or {}
    out = {}
    for name, net in networks.items():
        weights = layer_weights(net).values()
        nonzero = sum(int((w != 0).sum()) for w in weights)
        total = units[name]["prunable_weights_unpruned"] if name in units else sum(w.numel() for w in weights)
        out[name] = nonzero / total if total else 1.0
    return out
