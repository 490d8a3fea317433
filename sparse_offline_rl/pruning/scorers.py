"""The pruners at initialization, one small class per method (as Synaptic-Flow's pruner classes).

A scorer knows its `name`, whether it `needs_data` (a saliency loss per network), its
`default_rounds` (SynFlow: 100), whether more rounds would change anything (`iterates`: random and
magnitude scores do not depend on the mask, so they always run their default), and `score(masks)`:
one round's score per prunable weight, `masks` (bool) marking the weights still alive (None in round
one). The score functions themselves are in `scores.py`.

Adding a pruner is one class here, decorated with `@register`: `PRUNERS`, `DEFAULT_ROUNDS`, the
config check and the entry points read this registry.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.pruning.scores import (
    LossClosure,
    Scores,
    grasp_scores,
    magnitude_scores,
    masked_weights,
    random_scores,
    snip_scores,
    synflow_scores,
)
from sparse_offline_rl.sparse.masks import prunable_parameters
from sparse_offline_rl.sparse.wiring import LayerGraph, layer_graph

Masks = Mapping[str, torch.Tensor]


class Scorer:
    """Scores of one network for one method; built once per network, `score` called once per round."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False
    default_rounds: ClassVar[int] = 1
    #: False: the scores do not depend on the mask, so `rounds` is ignored (iterating changes nothing).
    iterates: ClassVar[bool] = True

    def __init__(self, module: nn.Module, losses: Sequence[LossClosure] = (), input_shape: Sequence[int] | None = None,
                 seed: int = 0, what: str = "network", graph: LayerGraph | None = None) -> None:
        if self.needs_data and not losses:
            raise ValueError(f"pruner '{self.name}' is data-driven: pass loss_fn(module) -> scalar tensor")
        self.module, self.params, self.losses, self.what = module, prunable_parameters(module), losses, what
        self.input_shape, self.seed, self.graph = input_shape, seed, graph
        self.setup()

    def setup(self) -> None:
        """What a method prepares once per network (a generator, the wiring)."""

    @classmethod
    def rounds(cls, given: int | None) -> int:
        """The rounds this method runs when the config asks for `given` (None: unset)."""
        if not cls.iterates:
            return cls.default_rounds
        value = cls.default_rounds if given is None else given
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"rounds must be a positive integer, got {value!r}")
        return value

    def score(self, masks: Masks | None) -> Scores:
        raise NotImplementedError


SCORERS: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    SCORERS[cls.name] = cls
    return cls


@register
class Dense(Scorer):
    """No pruning: every weight kept, nothing scored."""

    name, default_rounds, iterates = "dense", 0, False

    def score(self, masks: Masks | None) -> Scores:
        available = ", ".join(n for n in sorted(SCORERS) if n != "dense")
        raise ValueError(f"pruner 'dense' has no scores (available: {available})")


@register
class Random(Scorer):
    """Uniform random scores (baseline), from a generator of the network's own seed."""

    name, iterates = "random", False

    def setup(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def score(self, masks: Masks | None) -> Scores:
        return random_scores(self.params, self.generator)


@register
class Magnitude(Scorer):
    """|W| at initialization (baseline)."""

    name, iterates = "magnitude", False

    def score(self, masks: Masks | None) -> Scores:
        return magnitude_scores(self.params)


class DataDriven(Scorer):
    """A score from the network's own loss, taken with the pruned weights zeroed."""

    needs_data = True
    scores_fn: ClassVar[Callable[..., Scores]]

    def score(self, masks: Masks | None) -> Scores:
        with masked_weights(self.params, masks):
            return type(self).scores_fn(self.params, self.losses, self.what)


@register
class Snip(DataDriven):
    """SNIP (Lee et al. 2019): |g * W|."""

    name, scores_fn = "snip", staticmethod(snip_scores)


@register
class Grasp(DataDriven):
    """GraSP (Wang et al. 2020): W * (H g), signed."""

    name, scores_fn = "grasp", staticmethod(grasp_scores)


@register
class Synflow(Scorer):
    """SynFlow (Tanaka et al. 2020): data-free, iterative; needs the wiring (WiringError without it:
    scores would be guesses)."""

    name, default_rounds = "synflow", 100

    def setup(self) -> None:
        if self.graph is None:
            self.graph = layer_graph(self.module)

    def score(self, masks: Masks | None) -> Scores:
        return synflow_scores(self.module, masks, self.input_shape, self.graph)


#: Every pruner at initialization, alphabetically.
PRUNERS = tuple(sorted(SCORERS))
#: The methods that score on data (a saliency loss per network).
DATA_DRIVEN = tuple(n for n in PRUNERS if SCORERS[n].needs_data)
#: Rounds when the config leaves `rounds` unset.
DEFAULT_ROUNDS = {n: SCORERS[n].default_rounds for n in PRUNERS}


def scorer_class(method: str) -> type[Scorer]:
    """The registered scorer of `method`; ValueError listing the pruners otherwise."""
    if method not in SCORERS:
        raise ValueError(f"unknown pruner '{method}'; available: {', '.join(PRUNERS)}")
    return SCORERS[method]


__all__ = ["DATA_DRIVEN", "DEFAULT_ROUNDS", "PRUNERS", "SCORERS", "Scorer", "register", "scorer_class"]
