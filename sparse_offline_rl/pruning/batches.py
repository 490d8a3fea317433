"""What scoring draws: the batches data-driven scores see, and each network's own seed.

Drawn inside `rng.untouched_rngs`, after the torch RNG is seeded with the run's seed, by both the
unstructured pass (`weights.py`) and structure=units (`units.py`).
"""
from __future__ import annotations

import inspect
import zlib
from typing import Any, Callable

import torch
from torch import nn


def seed_for(seed: int, name: str) -> int:
    """A stable per-network stream (Python's hash() is salted per process)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def draw_batch(sample_batch: Callable[..., Any], batch_size: int) -> Any:
    """One batch of `batch_size` rows: `sample_batch(batch_size)` if it takes a size (e.g.
    `buffer.sample`), otherwise `sample_batch()` repeated and concatenated / cut to size."""
    try:
        takes_size = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in inspect.signature(sample_batch).parameters.values()
        )
    except (TypeError, ValueError):
        takes_size = False
    if takes_size:
        return sample_batch(batch_size)
    parts = [sample_batch()]
    have = len(parts[0][0])
    while have < batch_size:
        parts.append(sample_batch())
        have += len(parts[-1][0])
    fields = [torch.cat(column)[:batch_size] if len(parts) > 1 else column[0][:batch_size] for column in zip(*parts)]
    return type(parts[0])(*fields)


def scoring_batches(sample_batch: Callable[..., Any], needs_data: bool, num_batches: int, batch_size: int) -> list[Any]:
    """The `num_batches` batches of `batch_size` every network is scored on (none for data-free scores)."""
    return [draw_batch(sample_batch, batch_size) for _ in range(num_batches)] if needs_data else []


class ExampleBatch:
    """A batch to run a network on where its wiring cannot be traced: the first scoring batch, or two
    rows drawn the first time one is needed (and then shared by every network)."""

    def __init__(self, sample_batch: Callable[..., Any] | None, batches: list[Any]) -> None:
        self.sample_batch, self.batch = sample_batch, batches[0] if batches else None

    def inputs(self, net: nn.Module) -> tuple[torch.Tensor, ...] | None:
        """The batch as the protocol feeds `net`: `critic(obs, act)`, `value(obs)`, `actor(obs)`, told
        apart by how many inputs its forward requires (None: no sampler, or another signature)."""
        if self.sample_batch is None:
            return None
        if self.batch is None:
            self.batch = draw_batch(self.sample_batch, 2)
        required = [p for p in inspect.signature(net.forward).parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        return {1: (self.batch.observations,), 2: (self.batch.observations, self.batch.actions)}.get(len(required))


__all__ = ["ExampleBatch", "draw_batch", "scoring_batches", "seed_for"]
