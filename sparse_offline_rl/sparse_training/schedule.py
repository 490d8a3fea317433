"""When masks change and by how much: the update grid from `begin` to `end`, GMP's cubic sparsity
schedule (Zhu & Gupta 2017), the drop fraction of SET / RigL (cosine decay or constant; the
reference's rigl/rl/tfagents/configs/sac_mujoco_sparse_config.gin) and Gibbs' annealed temperature."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Schedule:
    """When masks change: every `update_every` steps from `begin_step` to `end_step` (inclusive)."""

    update_every: int
    begin_step: int
    end_step: int

    @classmethod
    def of(cls, opts: Mapping[str, Any], steps: int) -> "Schedule":
        begin = round(float(opts["begin"]) * steps)
        # At least step 1: GMP's last update, which reaches the target, must happen.
        return cls(int(opts["update_every"]), begin, max(begin, 1, round(float(opts["end"]) * steps)))

    def is_update(self, step: int) -> bool:
        return self.begin_step <= step <= self.end_step and step % self.update_every == 0

    def progress(self, step: int) -> float:
        """0 at begin, 1 at end (and after)."""
        span = self.end_step - self.begin_step
        return 1.0 if span <= 0 else min(1.0, max(0.0, (step - self.begin_step) / span))


def gmp_sparsity(target: float, progress: float) -> float:
    """Zhu & Gupta's cubic schedule from sparsity 0: s = s_f + (0 - s_f) (1 - p)^3."""
    return target * (1.0 - (1.0 - progress) ** 3)


def drop_fraction(opts: Mapping[str, Any], progress: float) -> float:
    """f_t = drop_fraction * (1 + cos(pi p)) / 2, or drop_fraction with drop_decay=constant."""
    base = float(opts["drop_fraction"])
    return base if opts["drop_decay"] == "constant" else base * (1.0 + math.cos(math.pi * progress)) / 2.0


def temperature(opts: Mapping[str, Any], progress: float) -> float:
    """Gibbs' temperature, geometric from `temperature_start` (progress 0) to `temperature_end` (1)."""
    start, end = float(opts["temperature_start"]), float(opts["temperature_end"])
    return start * (end / start) ** progress


__all__ = ["Schedule", "drop_fraction", "gmp_sparsity", "temperature"]
