"""Training FLOPs: every step's forward and backward at the current masks (`density.step_flops`,
re-measured when the masks change) plus, for a rule that takes the dense gradient at an update
(RigL), that gradient: counted as Evci et al. do (`training_flops`) and as the separate pass this
code runs (`training_flops_separate_pass`), both from `density.dense_gradient_flops`."""
from __future__ import annotations

from typing import Any, Mapping

from sparse_offline_rl.sparse.density import dense_gradient_flops, step_flops
from sparse_offline_rl.sparse.masks import MaskSet


class TrainingFlops:
    """A run's training FLOPs so far; `dense_gradient`: its updates take the dense gradient."""

    def __init__(self, batch_size: int, dense_gradient: bool) -> None:
        self.batch_size, self.dense_gradient = int(batch_size), dense_gradient
        self.total = 0  # the dense gradient as Evci et al. count it (`density.dense_gradient_flops`)
        self.separate_pass = 0  # the same with it as the separate pass this code runs
        self.per_step = 0

    def measure(self, algo: Any, masks: MaskSet) -> None:
        """The cost of one training step at the current masks."""
        self.per_step = step_flops(algo, masks, self.batch_size)

    def count_step(self) -> None:
        self.total += self.per_step
        self.separate_pass += self.per_step

    def update_cost(self, algo: Any, masks: MaskSet) -> dict[str, int]:
        """What an update adds, taken at the masks the dense gradient is taken under (before the
        update; a rule taking it keeps each layer's count, so the same after)."""
        return dense_gradient_flops(algo, masks, self.batch_size) if self.dense_gradient else {}

    def count_update(self, cost: Mapping[str, int]) -> None:
        self.total += cost.get("evci2020", 0)
        self.separate_pass += cost.get("separate_pass", 0)

    def state_dict(self) -> dict[str, int]:
        return {"training_flops": self.total, "training_flops_separate_pass": self.separate_pass}

    def load_state_dict(self, state: Mapping[str, Any], updates: int, algo: Any, masks: MaskSet) -> None:
        """Resume from `state_dict` after `updates` mask updates."""
        self.total = int(state["training_flops"])
        self.separate_pass = int(state.get("training_flops_separate_pass", self.total))
        if "training_flops_separate_pass" not in state and self.dense_gradient:
            # Written when `training_flops` counted the separate pass: recount each update Evci et al.'s
            # way (the masks' counts have not changed since, the rule keeps them).
            extra = dense_gradient_flops(algo, masks, self.batch_size)
            self.total -= updates * (extra["separate_pass"] - extra["evci2020"])

    def report(self) -> dict[str, Any]:
        """summary.json's counts: both counts of the dense gradient, labelled, when there is one."""
        out: dict[str, Any] = {"training_flops": self.total}
        if self.dense_gradient:
            out.update(dense_gradient_counted_as="evci2020", training_flops_separate_pass=self.separate_pass)
        return out


__all__ = ["TrainingFlops"]
