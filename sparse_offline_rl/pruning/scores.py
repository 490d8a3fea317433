"""Saliency scorers: one small function per method, each returning a score per prunable weight.

Every scorer follows the reference definitions (REFERENCE.md section 1) and leaves the module
exactly as it found it (weights, signs, gradients). Higher score = more worth keeping; GraSP scores
are signed and must never be ranked by absolute value.

Data-driven scorers take `losses`: zero-argument closures, one per batch, each returning the scalar
loss of *this* network on that batch. Gradients are taken with `torch.autograd.grad` with respect to
this network's prunable weights only, so a loss that also runs (and builds graph through) another
network can never leak into these scores, and no `.grad` field is read or written.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.sparse.wiring import LayerGraph, layer_graph
from sparse_offline_rl.sparse.masks import prunable_parameters

Scores = dict[str, torch.Tensor]
Masks = Mapping[str, torch.Tensor]
LossClosure = Callable[[], torch.Tensor]


# -- helpers -----------------------------------------------------------------------------------
@contextlib.contextmanager
def masked_weights(params: Mapping[str, nn.Parameter], masks: Masks | None) -> Iterator[None]:
    """Temporarily zero pruned weights in place (iterative rounds score the pruned network), then
    restore the exact original values, so scoring never changes the module."""
    if not masks:
        yield
        return
    saved = {n: p.detach().clone() for n, p in params.items() if n in masks}
    try:
        with torch.no_grad():
            for n in saved:
                params[n].mul_(masks[n].to(params[n].dtype))
        yield
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)


@contextlib.contextmanager
def _requires_grad(params: Sequence[nn.Parameter]) -> Iterator[None]:
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _scalar(loss: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(loss) or loss.numel() != 1:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"saliency loss for {what} must be a scalar tensor, got {shape}")
    if not loss.requires_grad:
        raise ValueError(f"saliency loss for {what} does not depend on its weights (no autograd graph)")
    return loss.reshape(())


def _grads(loss: torch.Tensor, weights: Sequence[nn.Parameter], create_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(weights), allow_unused=True, create_graph=create_graph)
    # A weight the loss never reaches (e.g. an unused head) has zero saliency, not an error.
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]


def _batch_gradients(
    params: Mapping[str, nn.Parameter], losses: Sequence[LossClosure], what: str, create_graph: bool = False
) -> list[list[torch.Tensor]]:
    """Per batch, the gradient of its loss, each loss evaluated exactly once."""
    if not losses:
        raise ValueError(f"{what}: data-driven scoring needs at least one batch (num_batches >= 1)")
    weights = list(params.values())
    return [_grads(_scalar(loss_fn(), what), weights, create_graph) for loss_fn in losses]


def _mean(per_batch: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    return [sum(g[i].detach() for g in per_batch) / len(per_batch) for i in range(len(per_batch[0]))]


# -- scorers -----------------------------------------------------------------------------------
def random_scores(params: Mapping[str, nn.Parameter], generator: torch.Generator) -> Scores:
    """Uniform random scores (baseline). float64 so that ties have probability ~0."""
    return {n: torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p.device) for n, p in params.items()}


def magnitude_scores(params: Mapping[str, nn.Parameter]) -> Scores:
    """abs(W) at initialization (baseline)."""
    return {n: p.detach().abs().clone() for n, p in params.items()}


def snip_products(params: Mapping[str, nn.Parameter], losses: Sequence[LossClosure], what: str = "network") -> Scores:
    """g * W, signed, g the gradient of the loss averaged over the batches: the first-order change of
    the mean loss when each weight is scaled, which SNIP's score takes the abs of. Signed because a
    unit gate's saliency (pruner.unit_score=gate) sums these over the unit's outgoing weights first."""
    with _requires_grad(list(params.values())):
        grads = _mean(_batch_gradients(params, losses, what))
    return {n: g * p.detach() for (n, p), g in zip(params.items(), grads)}


def snip_scores(params: Mapping[str, nn.Parameter], losses: Sequence[LossClosure], what: str = "network") -> Scores:
    """SNIP: abs(g * W), g the gradient of the loss averaged over the batches.

    Not normalised by the sum: the ranking is identical and raw values are easier to check."""
    return {n: p.abs() for n, p in snip_products(params, losses, what).items()}


def grasp_scores(params: Mapping[str, nn.Parameter], losses: Sequence[LossClosure], what: str = "network") -> Scores:
    """GraSP: W * (H g), keep the largest (signed; never rank by abs).

    g is the mean gradient over all batches; H g is the gradient of sum_b (g_b . stopgrad(g)) / B,
    i.e. the Hessian of the mean loss times g, by double backward (no explicit Hessian). Each loss
    is evaluated once, and g and H g both come from that one graph: a loss that draws noise (CQL's
    sampled actions) would otherwise give g and H g of two different losses."""
    weights = list(params.values())
    with _requires_grad(weights):
        per_batch = _batch_gradients(params, losses, what, create_graph=True)
        g_fixed = _mean(per_batch)
        z = sum((a * b).sum() for g_b in per_batch for a, b in zip(g_b, g_fixed) if a.requires_grad)
        if torch.is_tensor(z) and z.requires_grad:
            hg = [h.detach() / len(losses) for h in _grads(z, weights)]
        else:  # the loss is linear in these weights: H g = 0
            hg = [torch.zeros_like(w) for w in weights]
    return {n: p.detach() * h for (n, p), h in zip(params.items(), hg)}


# -- SynFlow -----------------------------------------------------------------------------------
def synflow_scores(
    module: nn.Module,
    masks: Masks | None = None,
    input_shape: Sequence[int] | None = None,
    graph: LayerGraph | None = None,
) -> Scores:
    """One SynFlow round: abs(dR/dW * W) with R = sum of the output of the linearised network.

    The linearised network is the Linear layers wired as `forward` wires them (`layer_graph`, traced;
    `WiringError` where that cannot be known), evaluated in float64 on an all-ones input with every
    weight *and bias* replaced by its absolute value (as the reference implementation does: it
    abs()es the whole state dict), pruned weights zeroed. Activations are dropped: ReLU is the
    identity on these positive signals; output nonlinearities (tanh, the Gaussian head's exp /
    clamp) are deliberately ignored, so the last layer is scored like any other Linear layer with
    its raw output summed into R. Heads are summed together (a Gaussian actor's mean and log-std
    columns both count), and so are the members of an ensemble, whose scores do not interact
    (they share no layer). Works on float64 *copies*: the module's weights and signs are never
    modified, so there is nothing to restore. Pass `graph` to skip tracing (iterative rounds).
    """
    graph = layer_graph(module) if graph is None else graph
    if not graph.names:
        return {}
    device = graph.layers[0].weight.device
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor | None] = []
    for name, layer in zip(graph.names, graph.layers):
        w = layer.weight.detach().to(torch.float64).abs()
        if masks is not None and name in masks:
            w = w * masks[name].to(device=w.device, dtype=torch.float64)
        weights.append(w.requires_grad_(True))
        biases.append(None if layer.bias is None else layer.bias.detach().to(torch.float64).abs())
    outputs: list[torch.Tensor] = []
    with torch.enable_grad():
        for i, (name, layer, parent) in enumerate(zip(graph.names, graph.layers, graph.parents)):
            if parent is None:
                shape = tuple(input_shape) if input_shape is not None else (1, layer.in_features)
                if shape[-1] != layer.in_features:
                    raise ValueError(
                        f"synflow: input_shape {shape} does not match layer '{name}' in_features={layer.in_features}"
                    )
                x = torch.ones(shape, dtype=torch.float64, device=device)
            else:
                x = outputs[parent]
            y = x @ weights[i].T
            if biases[i] is not None:
                y = y + biases[i]
            outputs.append(y)
        r = sum(out.sum() for out, children in zip(outputs, graph.children) if not children)
        grads = torch.autograd.grad(r, weights, allow_unused=True)
    scores: Scores = {}
    for name, w, g in zip(graph.names, weights, grads):
        scores[name] = torch.zeros_like(w) if g is None else (g * w.detach()).abs()
    return scores


__all__ = [
    "LossClosure",
    "Scores",
    "grasp_scores",
    "magnitude_scores",
    "masked_weights",
    "prunable_parameters",
    "random_scores",
    "snip_products",
    "snip_scores",
    "synflow_scores",
]
