"""What pruning kept, counted: parameters and FLOPs dense and pruned, the per-network report that
goes into `summary.json["pruning"]`, and the per-layer density table printed before training."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.sparse.wiring import LayerGraph, connectivity, network_members
from sparse_offline_rl.sparse.masks import prunable_parameters
from sparse_offline_rl.sparse.linear import SparseLinear


def count_params_flops(module: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Parameters and forward FLOPs of `module`, dense and pruned.

    params: every parameter of the module (biases, norms, log-std included) minus pruned weights.
    FLOPs: per sample and per forward pass, Linear layers only: 2 * nonzero weights (one multiply
    and one add each) + out_features for the bias; activations, tanh, concatenation and the loss are
    not counted. Every Linear layer is assumed to run once per forward (an ensemble critic's forward
    runs all members, so all count). Pruned entries come from `masks` (name -> 0/1 tensor), or, when
    `masks` is None, from the zeros of the weights themselves. A SparseLinear counts as the
    out x in layer it replaced, with its stored values as the kept weights.
    """
    params_dense = sum(p.numel() for p in module.parameters())
    flops_dense = flops = pruned = 0
    for mod_name, layer in module.named_modules():
        if isinstance(layer, SparseLinear):
            total = layer.out_features * layer.in_features
            params_dense += total - layer.nnz  # the entries it does not store were pruned
            stored = layer.values
        elif isinstance(layer, nn.Linear):
            total = layer.weight.numel()
            stored = layer.weight
        else:
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        if masks is not None and name in masks:
            nnz = int(masks[name].bool().sum())
        elif masks is not None:
            nnz = stored.numel()  # not pruned: every weight it stores is kept
        else:
            nnz = int((stored != 0).sum())
        bias = layer.out_features if layer.bias is not None else 0
        flops_dense += 2 * total + bias
        flops += 2 * nnz + bias
        pruned += total - nnz
    return {"params_dense": params_dense, "params": params_dense - pruned, "flops_dense": flops_dense, "flops": flops}


def network_report(
    net: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    target: float,
    keep: int,
    total: int,
    dense_layers: Sequence[str],
    budget_kind: str | None,
    budget: Any,
    graph: LayerGraph | None,
    wiring_error: str | None,
) -> dict[str, Any]:
    params = prunable_parameters(net)
    layers: dict[str, Any] = {}
    kept_total = 0
    sparse_kept = sparse_total = 0
    for pname, p in params.items():
        kept = int(masks[pname].sum()) if masks is not None else p.numel()
        kept_total += kept
        if pname not in dense_layers:
            sparse_kept += kept
            sparse_total += p.numel()
        layers[pname] = {"shape": list(p.shape), "kept": kept, "total": p.numel(), "density": kept / p.numel()}
    stats = count_params_flops(net, masks if masks is not None else {})
    out: dict[str, Any] = {
        "target_sparsity": target,
        "target_from": budget_kind or "sparsity",
        # a sparsity target applies to the pruned layers (dense ones excluded), a budget to the network
        "target_applies_to": "network" if budget_kind else "pruned layers",
        "pruned_layers_density": sparse_kept / sparse_total if sparse_total else 1.0,
        "prunable_weights": total,
        "kept_weights": kept_total,
        "density": kept_total / total if total else 1.0,
        "layers": layers,
        "layer_density": {n: v["density"] for n, v in layers.items()},
        "dense_layers": list(dense_layers),
        "collapsed_layers": [n for n, v in layers.items() if v["kept"] == 0],
        **stats,
    }
    members = []
    for names in network_members(net, graph):
        kept = sum(layers[n]["kept"] for n in names)
        members.append({"layers": names, "kept_weights": kept, "prunable_weights": sum(layers[n]["total"] for n in names),
                        "share": kept / kept_total if kept_total else 0.0})
    out["members"] = members
    # Dead units and effective weights need the wiring; None where it cannot be traced.
    out["wiring"] = "traced" if graph is not None else wiring_error
    conn = connectivity(graph, masks) if graph is not None else {}
    for key in ("hidden_units", "dead_units", "dead_units_per_layer", "effective_weights", "disconnected_outputs"):
        out[key] = conn.get(key)
    if budget_kind:
        out[budget_kind] = int(budget)
    return out


def format_density_table(report: Mapping[str, Any]) -> str:
    """The per-layer densities of a `prune_at_initialization` report as an aligned text table."""
    head = f"pruning at initialization: {report.get('pruner', '?')}"
    if report.get("pruner") != "dense":
        head += f" (scope {report.get('scope')}, rounds {report.get('rounds')}"
        if report.get("num_batches"):
            head += f", {report['num_batches']} x {report['batch_size']} transitions"
        head += f", {report.get('scoring_seconds', 0.0):.2f} s)"
        if report.get("sparse_init"):
            head += "; kept weights re-drawn to their fans under the mask (sparse_init)"
    kernels = report.get("sparse_kernels")
    rows: list[tuple[str, ...]] = [("network", "layer", "shape", "kept / total", "density")
                                   + (("kernel (sparse speedup)",) if kernels else ())]
    for net, info in report.get("networks", {}).items():
        for layer, li in info["layers"].items():
            mark = " (dense)" if layer in info.get("dense_layers", ()) else ""
            rows.append((net, layer + mark, "x".join(map(str, li["shape"])), f"{li['kept']:,} / {li['total']:,}", f"{li['density']:.4f}")
                        + ((_kernel_cell(li),) if kernels else ()))
        # structure=units: `target_sparsity` is the units' target, the weights have their own
        weight_target = info.get("weight_sparsity_target", info["target_sparsity"])
        if info.get("dense_layers"):
            rows.append((
                net, "pruned layers", f"target {1 - weight_target:.4f}" if info["target_applies_to"] != "network" else "",
                "", f"{info['pruned_layers_density']:.4f}",
            ))
        units = report.get("units", {}).get(net)
        if units is not None:  # structure=units: the layers above are the narrowed ones
            kept, total = (sum(u[k] for u in units["units"].values()) for k in ("kept", "total"))
            rows.append((net, "hidden units", f"target {1 - units['target_unit_sparsity']:.4f}", f"{kept:,} / {total:,}",
                         f"{kept / total:.4f}" if total else "-"))
        rows.append((
            net, "all prunable", f"target {1 - weight_target:.4f}" if info["target_applies_to"] == "network" or not info.get("dense_layers") else "",
            f"{info['kept_weights']:,} / {info['prunable_weights']:,}", f"{info['density']:.4f}",
        ))
        if len(info.get("members", ())) > 1:
            rows.append((
                net, "members", "kept per member", " / ".join(f"{m['kept_weights']:,}" for m in info["members"]),
                "shares " + " / ".join(f"{m['share']:.3f}" for m in info["members"]),
            ))
        if info.get("effective_weights") is not None:
            # effective: kept weights on an input-to-output path; dead: hidden units missing an in- or outgoing weight
            rows.append((
                net, "effective (on a path)", f"dead units {info['dead_units']:,} / {info['hidden_units']:,}",
                f"{info['effective_weights']:,} / {info['kept_weights']:,}",
                f"{info['effective_weights'] / info['kept_weights']:.4f}" if info["kept_weights"] else "-",
            ))
        rows.append((
            net, "params / FLOPs", "", f"{info['params']:,} / {info['params_dense']:,}", f"{info['flops']:,} / {info['flops_dense']:,} FLOPs",
        ))
    if kernels:
        head += (f"\nkernels: {kernels['mode']} at batch {kernels['batch_size']}, {kernels['threads']} thread(s): "
                 f"{kernels['sparse_layers']} of {kernels['pruned_layers']} pruned layers sparse")
    width = len(rows[0])
    rows = [r + ("",) * (width - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(width)]
    lines = [head]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 or j == 5 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _kernel_cell(layer: Mapping[str, Any]) -> str:
    """"sparse 4.14x" (measured: dense time / sparse time), else the kernel and why."""
    cost = layer.get("cost_us")
    if cost:
        return f"{layer['kernel']} {cost['dense'] / cost['sparse']:.2f}x" if cost["sparse"] > 0 else layer["kernel"]
    return f"{layer['kernel']}: {layer['kernel_reason']}" if layer.get("kernel") else ""


def step_flops(algo: Any, masks: Any, batch_size: int) -> int:
    """Training FLOPs of one step, the model summary.json's `training_flops` sums: each online network
    runs one forward and one backward on the batch (backward = 2x forward: the input and the weight
    gradient), each target network one forward; forward FLOPs per sample as `count_params_flops`
    counts them at the current masks (`masks`: a MaskSet; an unmasked network counts dense). Extra
    forwards an algorithm runs (IQL's V(s'), CQL's sampled actions), the optimizer and the loss are
    not counted: the model ranks methods by their cost, it does not time them."""
    nets, targets = algo.networks(), algo.target_networks()
    total = 0
    for name, net in nets.items():
        forward = count_params_flops(net, masks.masks.get(name, {}))["flops"] * int(batch_size)
        total += 3 * forward + (forward if name in targets else 0)
    return total


def dense_gradient_flops(algo: Any, masks: Any, batch_size: int) -> dict[str, int]:
    """What one RigL update's dense gradient adds to the step's `step_flops`, counted two ways, summed
    over the masked networks (f_S, f_D: a network's forward FLOPs per sample at its masks and dense):
    - `evci2020`: Evci et al. 2020's accounting (appendix): the update step's weight gradient is taken
      dense, f_D instead of the sparse f_S, inside the step's own forward and backward (that step costs
      2 f_S + f_D, a step's average (3 f_S dT + 2 f_S + f_D) / (dT + 1)): (f_D - f_S) x batch;
    - `separate_pass`: as this code computes it, a dense forward and backward of its own after the
      step (`pruning.dynamic.RigL`): 3 f_D x batch."""
    nets = algo.networks()
    out = {"evci2020": 0, "separate_pass": 0}
    for name, layer_masks in masks.masks.items():
        counts = count_params_flops(nets[name], layer_masks)
        out["evci2020"] += (counts["flops_dense"] - counts["flops"]) * int(batch_size)
        out["separate_pass"] += 3 * counts["flops_dense"] * int(batch_size)
    return out
