"""The pruner config, typed: `PrunerConfig`, the union of every key of configs/pruner/*.yaml.

`PrunerConfig.from_mapping(d)` is where each pruner.* value is checked (ConfigError naming the key,
the value and what is accepted); a key given as None takes its default, as an unset one does. The
during-training keys (`update_every` ... `temperature_end`) are checked for their type and range
here; which during-training method reads which of them is `sparse_training`'s business. `given`
holds the keys the mapping set (not None), for the defaults that depend on the method (scope, begin,
sparse_init of the during-training pruners).

`per_network` and `check_sparsity` read the values that may be given per network.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from sparse_offline_rl.checks import check_value
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning.allocation import SCOPES
from sparse_offline_rl.pruning.budget_search import SEARCHES, budget_entries, search_settings
from sparse_offline_rl.pruning.budgets import load_cost
from sparse_offline_rl.sparse.fan_init import check as check_sparse_init

STRUCTURES = ("unstructured", "units")
UNIT_SCOPES = ("global", "layer")
#: Options only structure=units reads.
UNIT_OPTIONS = ("weight_sparsity", "unit_score")
#: pruner.unit_score: the summed weight scores of a unit, or the saliency of a gate on its activation.
UNIT_SCORES = ("sum", "gate")
#: The pruners a gate saliency is defined for: it is a derivative of their loss (SNIP) or gradient
#: norm (GraSP) with respect to the gate.
GATE_METHODS = ("snip", "grasp")
BUDGETS = ("budget_params", "budget_flops", "budget_cost")
DECAYS = ("cosine", "constant")
TRAINING = {"during_training": True}  # field metadata: read by the during-training pruners only


@dataclass(frozen=True)
class PrunerConfig:
    """Every pruner.* key with its default (configs/pruner/*.yaml mirror them)."""

    #: The keys `from_mapping` was given a value for (not None).
    given: ClassVar[frozenset[str]] = frozenset()

    name: str = "dense"
    scope: str = "global"  # global | layer | erk (the during-training pruners: erk when unset)
    num_batches: int = 1  # offline batches for data-driven scores (snip, grasp)
    batch_size: int = 256
    rounds: int | None = None  # None: the method's default (SynFlow 100, the others 1)
    keep_first_layer_dense: bool = False
    keep_last_layer_dense: bool = False
    allow_layer_collapse: bool = False
    budget_params: int | dict[str, int] | None = None
    budget_flops: int | dict[str, int] | None = None
    budget_cost: str | list[str] | None = None  # 'module:function' (or a list), with budget_cost_max
    budget_cost_max: float | list[float] | None = None  # a limit per budget_cost
    budget_networks: list[str] | str | None = None  # the networks a budget_cost search sets (None: all)
    budget_search: str = "bisect"  # bisect: one sparsity | constrained: per-layer counts (pruning/budget_search.py)
    budget_search_probes: int | None = None  # constrained: None takes constrained.SearchSettings' default
    budget_search_population: int | None = None
    budget_search_lr: float | None = None
    budget_search_lambda_lr: float | None = None
    budget_search_init_std: float | None = None
    budget_search_near_limit: float | None = None
    budget_search_repeats: int | None = None
    structure: str = "unstructured"  # or "units": whole hidden units removed (pruning/units.py)
    weight_sparsity: float | dict[str, float] | None = None  # structure=units: weights pruned on top
    sparse_init: bool = False  # re-draw the kept weights to their fans under the mask (sparse/fan_init.py)
    unit_score: str = "sum"  # structure=units: summed weight scores, or "gate" (snip, grasp)
    update_every: int = field(default=1000, metadata=TRAINING)  # steps between mask updates
    begin: float | None = field(default=None, metadata=TRAINING)  # None: the method's own
    end: float = field(default=0.8, metadata=TRAINING)  # fraction of training of the last update
    drop_fraction: float = field(default=0.5, metadata=TRAINING)  # SET / RigL, at the first update
    drop_decay: str = field(default="cosine", metadata=TRAINING)  # SET / RigL: cosine | constant
    temperature_start: float = field(default=1.0, metadata=TRAINING)  # Gibbs, relative to the mean kept w^2
    temperature_end: float = field(default=0.01, metadata=TRAINING)  # Gibbs, of the last sampled update

    @classmethod
    def from_mapping(cls, pruner: Mapping[str, Any], *, methods: Sequence[str] | None = None,
                     keys: Sequence[str] | None = None) -> "PrunerConfig":
        """The checked config of a pruner.* mapping. `methods`: the accepted names (None: not checked
        here); `keys`: the accepted options (None: every field)."""
        values = dict(pruner)
        name = values.pop("name", "dense")
        if methods is not None and name not in methods:
            raise ConfigError(f"unknown pruner '{name}'; available: {', '.join(methods)}")
        accepted = list(keys) if keys is not None else OPTIONS
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise ConfigError(f"unknown pruner option(s) {', '.join(unknown)}; accepted: name, {', '.join(sorted(accepted))}")
        given = {k: v for k, v in values.items() if v is not None}
        check_value("pruner", name, str)
        for key, value in given.items():
            CHECKS[key](key, value)
        try:
            check_sparse_init(given)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        config = cls(name=name, **given)
        object.__setattr__(config, "given", frozenset(given))
        config.check_units()
        config.check_budgets()
        return config

    def check_units(self) -> None:
        """structure=units and the options that go with it."""
        if self.structure == "unstructured" and self.weight_sparsity is not None:
            raise ConfigError("pruner.weight_sparsity applies with pruner.structure=units only (unstructured pruning "
                              "reads `sparsity`)")
        if self.unit_score == "gate" and self.structure != "units":
            raise ConfigError("pruner.unit_score='gate' applies with pruner.structure=units only (unstructured pruning "
                              "scores weights)")
        if self.unit_score == "gate" and self.name not in GATE_METHODS:
            raise ConfigError(f"pruner.unit_score='gate' is invalid with pruner={self.name}: a unit gate's "
                              f"saliency is defined for {', '.join(GATE_METHODS)}; accepted here: sum")
        if self.structure == "units" and self.scope not in UNIT_SCOPES:
            raise ConfigError(f"pruner.scope={self.scope!r} is invalid with pruner.structure=units: one of "
                              f"{', '.join(UNIT_SCOPES)} is required (ERK sets weight densities, not unit counts)")

    def check_budgets(self) -> None:
        """At most one budget; budget_cost with budget_cost_max, and importable."""
        given = [k for k in BUDGETS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError("give at most one of pruner.budget_params, pruner.budget_flops and pruner.budget_cost; "
                              f"got {', '.join(given)}")
        if (self.budget_cost is None) != (self.budget_cost_max is None):
            raise ConfigError("pruner.budget_cost and pruner.budget_cost_max go together: give both or neither")
        self.check_search()
        if given and self.structure == "units" and self.weight_sparsity is not None:
            raise ConfigError(f"pruner.{given[0]} with pruner.structure=units sets the unit fraction; "
                              "pruner.weight_sparsity cannot be combined with it")
        for path in [] if self.budget_cost is None else budget_entries(self)[0]:
            load_cost(path)

    def check_search(self) -> None:
        """budget_cost and budget_cost_max of the same length; budget_search=constrained on weights only."""
        if self.budget_cost is not None:
            paths, limits = budget_entries(self)
            if len(paths) != len(limits) or isinstance(self.budget_cost, str) != (len(limits) == 1 and not isinstance(
                    self.budget_cost_max, (list, tuple))):
                raise ConfigError(f"pruner.budget_cost_max={self.budget_cost_max!r} is invalid with pruner.budget_cost="
                                  f"{self.budget_cost!r}: one limit per cost (a number for a path, a list as long as "
                                  "the list) is required")
            if len(set(paths)) != len(paths):
                raise ConfigError(f"pruner.budget_cost={self.budget_cost!r} is invalid: each cost at most once is required")
        searched = [k for k in self.given if k.startswith("budget_search_")]
        if self.budget_search == "constrained" and self.budget_cost is None:
            raise ConfigError("pruner.budget_search=constrained is invalid without pruner.budget_cost: it searches "
                              "per-layer counts under a cost budget (give budget_cost and budget_cost_max)")
        if self.budget_search == "constrained" and self.structure == "units":
            raise ConfigError("pruner.budget_search=constrained is invalid with pruner.structure=units: it allocates "
                              "weights per layer; accepted with units: bisect")
        if self.budget_search == "constrained" and self.name == "dense":
            raise ConfigError("pruner.budget_search=constrained is invalid with pruner=dense: it ranks weights by a "
                              "pruner's scores; accepted: random, magnitude, snip, grasp, synflow")
        if self.structure == "units" and isinstance(self.budget_cost, (list, tuple)):
            raise ConfigError(f"pruner.budget_cost={self.budget_cost!r} is invalid with pruner.structure=units: one "
                              "cost ('module:function') is required (one unit fraction is bisected)")
        if searched and self.budget_search != "constrained":
            raise ConfigError(f"pruner.{searched[0]} applies with pruner.budget_search=constrained only")
        if self.budget_search == "constrained":
            search_settings(self)  # the allocator's own checks (an even population)

    @property
    def budget_kind(self) -> str | None:
        """The budget given (budget_params, budget_flops or budget_cost), None without one."""
        return next((k for k in BUDGETS if getattr(self, k) is not None), None)

    def weights_only(self) -> "PrunerConfig":
        """This config without its unit and budget options: the weight pass after units are removed."""
        return dataclasses.replace(self, structure="unstructured", weight_sparsity=None, unit_score="sum",
                                   budget_params=None, budget_flops=None, budget_cost=None, budget_cost_max=None,
                                   budget_networks=None, budget_search="bisect")


def _fields(during_training: bool) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(PrunerConfig)
            if f.name != "name" and f.metadata.get("during_training", False) == during_training]


#: The options of the pruners at initialization, with their defaults.
PRUNER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in _fields(False)}
#: The options only the during-training pruners read, with their defaults.
DURING_TRAINING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in _fields(True)}
OPTIONS = [*PRUNER_DEFAULTS, *DURING_TRAINING_DEFAULTS]


# -- one check per key: check(key, value) on a value given (not None) ------------------------------
def _refuse(key: str, value: Any, accepted: str) -> None:
    raise ConfigError(f"pruner.{key}={value!r} is invalid: {accepted} is required")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _per_network(kind: type, interval: str) -> Any:
    def check(key: str, value: Any) -> None:
        for net, v in (value.items() if isinstance(value, Mapping) else [(None, value)]):
            check_value(f"pruner.{key}" + (f".{net}" if net else ""), v, kind, interval, optional=net is None)
    return check


def _check_update_every(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _refuse(key, value, "an integer in [1, inf)")


def _check_fraction_of_training(key: str, value: Any) -> None:
    if not _number(value) or not 0 <= value <= 1:
        _refuse(key, value, "a fraction of training in [0, 1]")


def _check_drop_fraction(key: str, value: Any) -> None:
    if not _number(value) or not 0 <= value < 1:
        _refuse(key, value, "a number in [0, 1)")


def _check_drop_decay(key: str, value: Any) -> None:
    if value not in DECAYS:
        raise ConfigError(f"pruner.{key}={value!r} is invalid; accepted: {', '.join(DECAYS)}")


def _check_temperature(key: str, value: Any) -> None:
    if not _number(value) or not 0 < value < float("inf"):
        _refuse(key, value, "a number in (0, inf)")


def _value(kind: type, interval: str | None = None, choices: Sequence[str] | None = None, optional: bool = False) -> Any:
    return lambda key, value: check_value(f"pruner.{key}", value, kind, interval, choices=choices, optional=optional)


def _one_or_list(kind: type) -> Any:
    def check(key: str, value: Any) -> None:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            _refuse(key, value, f"a {kind.__name__} or a non-empty list of them")
        for i, v in enumerate(items):
            check_value(f"pruner.{key}" + (f"[{i}]" if isinstance(value, (list, tuple)) else ""), v, kind)
    return check


CHECKS = {
    "scope": _value(str, choices=SCOPES, optional=True),
    "num_batches": _value(int, "[1, inf)"),
    "batch_size": _value(int, "[1, inf)"),
    "rounds": _value(int, "[1, inf)", optional=True),
    "keep_first_layer_dense": _value(bool),
    "keep_last_layer_dense": _value(bool),
    "allow_layer_collapse": _value(bool),
    "budget_params": _per_network(int, "[1, inf)"),
    "budget_flops": _per_network(int, "[1, inf)"),
    "budget_cost": _one_or_list(str),
    "budget_cost_max": _one_or_list(float),
    "budget_networks": lambda key, value: None,  # against the networks: `budgets.budget_networks`
    "budget_search": _value(str, choices=SEARCHES),
    "budget_search_probes": _value(int, "[2, inf)", optional=True),
    "budget_search_population": _value(int, "[2, inf)", optional=True),
    "budget_search_lr": _value(float, "(0, inf)", optional=True),
    "budget_search_lambda_lr": _value(float, "(0, inf)", optional=True),
    "budget_search_init_std": _value(float, "(0, inf)", optional=True),
    "budget_search_near_limit": _value(float, "(0, inf)", optional=True),
    "budget_search_repeats": _value(int, "[1, inf)", optional=True),
    "structure": _value(str, choices=STRUCTURES),
    "weight_sparsity": _per_network(float, "[0, 1)"),
    "sparse_init": lambda key, value: None,  # `fan_init.check`, with structure
    "unit_score": _value(str, choices=UNIT_SCORES),
    "update_every": _check_update_every,
    "begin": _check_fraction_of_training,
    "end": _check_fraction_of_training,
    "drop_fraction": _check_drop_fraction,
    "drop_decay": _check_drop_decay,
    "temperature_start": _check_temperature,
    "temperature_end": _check_temperature,
}
assert set(CHECKS) == set(OPTIONS), "every pruner option has its check"


# -- values given per network ----------------------------------------------------------------------
def per_network(value: Any, nets: Sequence[str], what: str) -> dict[str, Any]:
    """A single value for every network, or a mapping {network: value} (key 'default' as fallback)."""
    if not isinstance(value, Mapping):
        return {n: value for n in nets}
    unknown = sorted(set(value) - set(nets) - {"default"})
    if unknown:
        raise ValueError(f"{what} given for unknown network(s) {', '.join(unknown)}; networks: {', '.join(nets)}")
    missing = [n for n in nets if n not in value and "default" not in value]
    if missing:
        raise ValueError(
            f"{what} mapping has no entry for network(s) {', '.join(missing)} and no 'default': name each or add "
            f"{what}.default; networks: {', '.join(nets)}"
        )
    return {n: value.get(n, value.get("default")) for n in nets}


def check_sparsity(value: Any, network: str) -> float:
    """One network's target sparsity as a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < 1:
        raise ValueError(f"sparsity {value!r} for network '{network}' is outside the accepted range [0, 1)")
    return float(value)


__all__ = ["DURING_TRAINING_DEFAULTS", "GATE_METHODS", "PRUNER_DEFAULTS", "PrunerConfig", "STRUCTURES", "UNIT_OPTIONS",
           "UNIT_SCOPES", "UNIT_SCORES", "check_sparsity", "per_network"]
