"""Pruning consumes none of training's randomness.

Comparing pruners at one seed is only fair if every run then trains on the same random stream. A
data-driven score runs the algorithm's own losses, which draw from the global RNGs and from the
algorithm's own generators (CQL's policy samples, TD3+BC's target smoothing noise), so scoring
would shift those streams by an amount that depends on the pruner. `untouched_rngs` snapshots every
RNG before scoring and restores it afterwards: the torch (CPU and CUDA), numpy and Python global
RNGs, and every `torch.Generator` / `numpy.random.Generator` reachable from the given objects'
attributes (the algorithm, the batch sampler).
"""
from __future__ import annotations

import contextlib
import random
import types
from typing import Any, Iterator, Sequence

import numpy as np
import torch

_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, np.ndarray, type, types.ModuleType,
           types.BuiltinFunctionType)


def find_generators(*roots: Any) -> list[torch.Generator | np.random.Generator]:
    """Every torch / numpy Generator reachable from `roots` through attributes, containers, bound
    methods' owners and closures (each once, in discovery order)."""
    found: dict[int, Any] = {}
    seen: set[int] = set()
    stack: list[Any] = list(reversed(roots))
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (torch.Generator, np.random.Generator)):
            found.setdefault(id(obj), obj)
            continue
        if isinstance(obj, types.FunctionType):  # a sampler given as a closure (lambda: buffer.sample(n))
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    stack.append(cell.cell_contents)
            continue
        if isinstance(obj, _LEAVES):
            continue
        if isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return list(found.values())


@contextlib.contextmanager
def untouched_rngs(*owners: Any, devices: Sequence[int] = ()) -> Iterator[None]:
    """Run the body, then put every RNG (global ones, and generators reachable from `owners`) back
    in the state it had before."""
    generators = find_generators(*owners)
    saved = [(g, g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state) for g in generators]
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=list(devices)):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        for g, state in saved:
            if isinstance(g, torch.Generator):
                g.set_state(state)
            else:
                g.bit_generator.state = state


__all__ = ["find_generators", "untouched_rngs"]
