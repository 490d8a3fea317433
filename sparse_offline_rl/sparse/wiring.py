"""How a network's Linear layers are wired, read from the network's own `forward`.

SynFlow's linearised network, the first / last layers (`keep_first_layer_dense`), the ensemble
members (each gets its own share of the budget) and the dead-unit report all need to know which
layer feeds which. Guessing that from shapes goes wrong as soon as a hidden width equals an input
width (a twin critic with hidden 8 over obs 6 + act 2 looks like one deep chain), so the wiring is
read from `forward`: traced symbolically with torch.fx (no inputs needed) or, where fx cannot trace
the code, by running it on example inputs and following the autograd graph. Every `nn.Linear` call
is a node, and a layer's source is the Linear call (or the network input) its input is computed
from through any number of non-Linear operations (activations, concatenation of inputs, reshapes).

Where the wiring cannot be known exactly, `layer_graph` raises `WiringError` naming the reason:
`forward` cannot be traced or run, a Linear is not called by `forward` or called twice (shared
weights), or a layer reads more than one source (skip connections, mixing an earlier layer's output
with the input), or reads a slice of its source (widths disagree).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Sequence

import torch
import torch.fx
from torch import nn

from sparse_offline_rl.errors import WiringError
from sparse_offline_rl.sparse.masks import prunable_parameters


class _LinearLeafTracer(torch.fx.Tracer):
    # Every Linear (also user subclasses outside torch.nn) is one call node, never traced into.
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.Linear) or super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class LayerGraph:
    """The Linear layers of a network in the order `forward` calls them (a topological order), each
    with the index of the layer whose output it reads, or None for the network input."""

    names: tuple[str, ...]  # weight names, as in `prunable_parameters`
    layers: tuple[nn.Linear, ...]
    parents: tuple[int | None, ...]

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(j for j, p in enumerate(self.parents) if p == i) for i in range(len(self.names)))

    def first_layers(self) -> list[str]:
        """Layers reading the network input."""
        return [n for n, p in zip(self.names, self.parents) if p is None]

    def last_layers(self) -> list[str]:
        """Layers whose output no other layer reads: the network's outputs (one per head / member)."""
        return [n for n, c in zip(self.names, self.children) if not c]

    def members(self) -> list[list[str]]:
        """Weight names of each connected group of layers: the members of an ensemble (a twin
        critic has two, an actor with several heads on one trunk has one)."""
        group = list(range(len(self.names)))

        def root(i: int) -> int:
            while group[i] != i:
                group[i] = group[group[i]]
                i = group[i]
            return i

        for i, p in enumerate(self.parents):
            if p is not None:
                group[root(i)] = root(p)
        out: dict[int, list[str]] = {}
        for i, name in enumerate(self.names):
            out.setdefault(root(i), []).append(name)
        return list(out.values())


Calls = list[tuple[nn.Linear, set[int | None]]]  # each Linear call in order, with its sources


def layer_graph(module: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None) -> LayerGraph:
    """The wiring of `module`'s Linear layers, read from its `forward`; `WiringError` if unknown.

    The forward is traced symbolically (torch.fx), which needs no inputs. Code that fx cannot trace
    (e.g. `assert isinstance(x, torch.Tensor)`, as d3rlpy's encoders have) is run for real on
    `example_inputs` when given, following the autograd graph back from each Linear's input."""
    what = type(module).__name__
    try:
        calls = _calls_by_fx(module, what)
    except WiringError as fx_error:
        if example_inputs is None:
            raise
        try:
            calls = _calls_by_running(module, example_inputs, what)
        except WiringError as run_error:
            raise WiringError(f"{fx_error}; {run_error}") from None
    return _graph_from_calls(module, calls, what)


def _calls_by_fx(module: nn.Module, what: str) -> Calls:
    try:
        graph = _LinearLeafTracer().trace(module)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise WiringError(
            f"cannot read how the Linear layers of {what} are wired: torch.fx cannot trace its forward "
            f"({type(err).__name__}: {err})"
        ) from None
    index: dict[torch.fx.Node, int] = {}
    calls: Calls = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(layer := module.get_submodule(node.target), nn.Linear):
            calls.append((layer, _fx_sources(node, index)))
            index[node] = len(calls) - 1
    return calls


def _fx_sources(node: torch.fx.Node, linear_index: Mapping[torch.fx.Node, int]) -> set[int | None]:
    """The Linear calls (indices) and / or the network input (None) that `node`'s input is computed from."""
    found: set[int | None] = set()
    stack = list(node.all_input_nodes)
    seen: set[torch.fx.Node] = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in linear_index:
            found.add(linear_index[n])
        elif n.op == "placeholder":
            found.add(None)
        else:  # parameters and constants (get_attr) have no inputs and add nothing
            stack.extend(n.all_input_nodes)
    return found


def _calls_by_running(module: nn.Module, example_inputs: Sequence[torch.Tensor], what: str) -> Calls:
    inputs = [x.detach().clone().requires_grad_(True) for x in example_inputs]
    outputs: dict[Any, int] = {}  # autograd node of each Linear call's output -> call index
    calls: Calls = []

    def before(layer: nn.Module, args: tuple) -> None:
        calls.append((layer, _autograd_sources(args[0], outputs, inputs)))

    def after(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if out.grad_fn is not None:
            outputs[out.grad_fn] = len(calls) - 1

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    modes = [(m, m.training) for m in module.modules()]
    module.eval()  # reading the wiring must not move batch-norm statistics
    try:
        with torch.enable_grad():
            module(*inputs)
    except Exception as err:
        raise WiringError(f"running its forward on example inputs failed too ({type(err).__name__}: {err})") from None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.train(training)
    return calls


def _autograd_sources(x: torch.Tensor, outputs: Mapping[Any, int], inputs: Sequence[torch.Tensor]) -> set[int | None]:
    """The Linear calls and / or network inputs (None) tensor `x` was computed from, read from its
    autograd graph (parameters and constants add nothing)."""
    if x.grad_fn is None:
        return {None} if any(x is i for i in inputs) else set()
    found: set[int | None] = set()
    stack, seen = [x.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in outputs:
            found.add(outputs[node])
        elif hasattr(node, "variable"):  # a leaf: a network input or a parameter
            if any(node.variable is i for i in inputs):
                found.add(None)
        else:
            stack.extend(f for f, _ in node.next_functions)
    return found


def _graph_from_calls(module: nn.Module, calls: Calls, what: str) -> LayerGraph:
    weight_names = {id(m): f"{n}.weight" if n else "weight" for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    names: list[str] = []
    layers: list[nn.Linear] = []
    parents: list[int | None] = []
    for layer, sources in calls:
        name = weight_names[id(layer)]
        if name in names:
            raise WiringError(f"{what}: layer {name} is called more than once by forward (shared weights)")
        if len(sources) != 1:
            described = ", ".join("the network input" if s is None else names[s] for s in sorted(sources, key=lambda s: -1 if s is None else s))
            raise WiringError(
                f"{what}: layer {name} reads " + (f"several sources ({described})" if sources else "no input")
                + "; each Linear must read exactly one earlier Linear layer or the network input"
            )
        (parent,) = sources
        if parent is not None and layers[parent].out_features != layer.in_features:
            raise WiringError(
                f"{what}: layer {name} reads {layer.in_features} features from {names[parent]}, which has "
                f"{layers[parent].out_features} outputs (a slice or reshape of it)"
            )
        names.append(name)
        layers.append(layer)
        parents.append(parent)
    unused = sorted(set(prunable_parameters(module)) - set(names))
    if unused:
        raise WiringError(f"{what}: layer(s) {', '.join(unused)} are not called by forward, so their wiring is unknown")
    return LayerGraph(tuple(names), tuple(layers), tuple(parents))


def _reach(graph: LayerGraph, masks: Mapping[str, torch.Tensor] | None
           ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: its kept weights, which input units the network input reaches (`sources`), which
    output units it reaches (`reached`) and which output units reach a network output (`useful`)."""
    kept = [
        (masks[name] != 0) if masks is not None and name in masks
        else torch.ones(layer.weight.shape, dtype=torch.bool, device=layer.weight.device)
        for name, layer in zip(graph.names, graph.layers)
    ]
    sources: list[torch.Tensor] = []
    reached: list[torch.Tensor] = []
    for m, parent in zip(kept, graph.parents):
        src = torch.ones(m.shape[1], dtype=torch.bool, device=m.device) if parent is None else reached[parent]
        sources.append(src)
        reached.append((m & src).any(1))
    useful: list[torch.Tensor] = [torch.empty(0)] * len(kept)
    for i in reversed(range(len(kept))):
        children = graph.children[i]
        if not children:
            useful[i] = torch.ones(kept[i].shape[0], dtype=torch.bool, device=kept[i].device)
        else:
            useful[i] = torch.stack([(kept[c] & useful[c][:, None]).any(0) for c in children]).any(0)
    return kept, sources, reached, useful


def effective_masks(graph: LayerGraph, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per layer, the kept weights on some path from the network input to an output (`connectivity`'s
    effective weights, as boolean masks): the only ones that can move the output through the input."""
    kept, sources, _, useful = _reach(graph, masks)
    return {name: m & useful[i][:, None] & sources[i] for i, (name, m) in enumerate(zip(graph.names, kept))}


def connectivity(graph: LayerGraph, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Which kept weights can still matter, from the masks (bool / 0-1; a layer without one is dense).

    - `hidden_units`: outputs of the layers that feed another layer; `dead_units`: those with no
      kept incoming weight or no kept outgoing weight (per layer in `dead_units_per_layer`);
    - `effective_weights`: kept weights on some path from the network input to an output, i.e.
      from an input-reachable unit to a unit that reaches an output; the others cannot affect the
      output through the input (at most through biases);
    - `disconnected_outputs`: output layers none of whose units any input reaches, i.e. that
      member or head computes a constant: a collapse.
    """
    kept, sources, reached, useful = _reach(graph, masks)
    effective = sum(int((m & useful[i][:, None] & sources[i]).sum()) for i, m in enumerate(kept))
    dead: dict[str, int] = {}
    for i, (name, children) in enumerate(zip(graph.names, graph.children)):
        if children:
            incoming = kept[i].any(1)
            outgoing = torch.stack([kept[c].any(0) for c in children]).any(0)
            dead[name] = int((~(incoming & outgoing)).sum())
    return {
        "hidden_units": sum(graph.layers[graph.names.index(n)].out_features for n in dead),
        "dead_units": sum(dead.values()),
        "dead_units_per_layer": dead,
        "effective_weights": effective,
        "disconnected_outputs": [n for n, r, c in zip(graph.names, reached, graph.children) if not c and not bool(r.any())],
    }


def network_members(module: nn.Module, graph: LayerGraph | None) -> list[list[str]]:
    """The ensemble members of `module` (lists of prunable parameter names): the connected groups of
    its wiring, or the whole network as one member where the wiring is unknown (`graph` None)."""
    return graph.members() if graph is not None else [list(prunable_parameters(module))]


def try_layer_graph(module: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None
                    ) -> tuple[LayerGraph | None, str | None]:
    """The layer graph read from `forward`, or None and the reason it cannot be known. Only what needs
    the wiring (SynFlow, layers kept dense) fails loudly without it; for the rest such a network is one
    member, and its dead units are not reported."""
    try:
        return layer_graph(module, example_inputs), None
    except WiringError as err:
        return None, str(err)


__all__ = ["LayerGraph", "WiringError", "connectivity", "effective_masks", "layer_graph", "network_members", "try_layer_graph"]
