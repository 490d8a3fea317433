"""The pruning report at the end of a run whose masks changed: `prune_at_initialization`'s report
(what the run started from: dense for GMP and Gibbs, random ERK for SET and RigL) brought to the
masks and kernels the run ended with, and for unit masks the hidden units kept."""
from __future__ import annotations

import copy
from typing import Any, Mapping

from torch import nn

from sparse_offline_rl.pruning.units import hidden_layers, unit_graph
from sparse_offline_rl.sparse.density import count_params_flops
from sparse_offline_rl.sparse.kernels import LayerChoice, add_to_report
from sparse_offline_rl.sparse.linear import densify_
from sparse_offline_rl.sparse.masks import MaskSet


def refresh_network(info: dict[str, Any], current: Mapping[str, Any], net: nn.Module) -> None:
    """One network's entry at its masks `current`: per layer kept / density, kept weights, density,
    members' shares, params and FLOPs; what only initialization measured becomes None."""
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
    info.update(count_params_flops(net, current))


def refresh_report(report: dict[str, Any], method: str, algo: Any, masks: MaskSet,
                   choices: Mapping[str, Mapping[str, LayerChoice]], kernel_mode: str, batch_size: int) -> None:
    """`report` at the final masks and kernel `choices`; `pruner` names the method, `initial_pruner`
    the start."""
    report["initial_pruner"], report["pruner"] = report.get("pruner"), method
    nets = algo.networks()
    for name, info in report.get("networks", {}).items():
        current = masks.masks.get(name)
        if current is not None:
            refresh_network(info, current, nets[name])
    report["total"] = {k: sum(r[k] for r in report["networks"].values())
                       for k in ("params_dense", "params", "flops_dense", "flops")}
    sparse_kernels = report.get("sparse_kernels", {})
    add_to_report(report, choices, sparse_kernels.get("mode", kernel_mode), batch_size)


def add_unit_report(report: dict[str, Any], algo: Any, masks: MaskSet, targets: Mapping[str, float]) -> None:
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
                    target_unit_sparsity=targets[name])


__all__ = ["add_unit_report", "refresh_network", "refresh_report"]
