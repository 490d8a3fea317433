"""The during-training options (pruner.update_every, begin, end, drop_*, temperature_*): their
defaults and `options`, the one function that checks them against the method's rule."""
from __future__ import annotations

import math
from typing import Any, Mapping

from sparse_offline_rl.pruning.units import check_options
from sparse_offline_rl.sparse.fan_init import check as check_sparse_init
from sparse_offline_rl.sparse_training.registry import DYNAMIC_PRUNERS, METHOD_OPTIONS, RULES, SPARSE_INIT, UNIT_RULES

#: pruner.* options of the during-training pruners (the PaI options apply too: scope, keep_*_layer_dense).
DYNAMIC_DEFAULTS: dict[str, Any] = {
    "update_every": 1000,       # steps between mask updates
    "begin": None,              # fraction of training where updates start; None: the method's own
    "end": 0.8,                 # fraction of training of the last update
    "drop_fraction": 0.5,       # SET / RigL: fraction of each layer's kept weights dropped at the first update
    "drop_decay": "cosine",     # SET / RigL: cosine | constant
    "temperature_start": 1.0,   # Gibbs: temperature of the first update (relative to the mean kept w^2)
    "temperature_end": 0.01,    # Gibbs: of the last sampled update (the one at `end` is at zero)
}
#: The layer densities the rules use unless pruner.scope says otherwise (the references' ERK).
SCOPE = "erk"
DECAYS = ("cosine", "constant")


def options(pruner: Mapping[str, Any]) -> dict[str, Any]:
    """The during-training options of `pruner` with defaults filled in; ValueError names a bad one."""
    method = pruner["name"]
    rule = RULES.get(method)
    if check_sparse_init(pruner) and rule is not None and rule.starts_dense:
        raise ValueError(f"pruner.sparse_init applies to {', '.join(SPARSE_INIT)} and the pruners at initialization, not to "
                         f"pruner={method}: it starts dense, with no mask to scale the initialisation to")
    given = {k: pruner.get(k) for k in DYNAMIC_DEFAULTS if pruner.get(k) is not None}
    if rule is None:
        if given:
            raise ValueError(f"pruner.{next(iter(given))} is an option of the during-training pruners "
                             f"({', '.join(DYNAMIC_PRUNERS)}), not of pruner={method}")
        return {}
    for key in given:
        if key in METHOD_OPTIONS and method not in METHOD_OPTIONS[key]:
            raise ValueError(f"pruner.{key} applies to {' and '.join(METHOD_OPTIONS[key])}, not to pruner={method}")
    out = {**DYNAMIC_DEFAULTS, "begin": rule.begin, **given}
    check_values(out)
    for key in ("budget_params", "budget_flops", "budget_cost"):
        if pruner.get(key) is not None:
            raise ValueError(f"pruner.{key} is not supported by pruner={method}: give the target as sparsity")
    if (pruner.get("structure") or "unstructured") != "unstructured":
        if method not in UNIT_RULES:
            raise ValueError(f"pruner.structure={pruner['structure']!r} is invalid with pruner={method}: "
                             f"{method} prunes single weights during training (structure=unstructured); whole units "
                             f"are pruned during training by {' and '.join(f'pruner={n}' for n in UNIT_RULES)} "
                             "and at initialization by the PaI pruners")
        check_options(pruner)  # a known structure; scope global or layer (ERK sets weight densities, not unit counts)
        for key in ("weight_sparsity", "keep_first_layer_dense", "keep_last_layer_dense"):
            if pruner.get(key):  # units are masked with their whole rows and columns: no layer stays dense
                raise ValueError(f"pruner.{key} is not supported by pruner={method} with pruner.structure=units")
    return out


def check_values(opts: Mapping[str, Any]) -> None:
    """ValueError naming the first during-training option (defaults filled in) out of its range."""
    every = opts["update_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"pruner.update_every={every!r} is invalid: an integer in [1, inf) is required")
    for key in ("begin", "end"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"pruner.{key}={value!r} is invalid: a fraction of training in [0, 1] is required")
    if opts["begin"] > opts["end"]:
        raise ValueError(f"pruner.begin={opts['begin']!r} is after pruner.end={opts['end']!r}: updates run from begin to end")
    fraction = opts["drop_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"pruner.drop_fraction={fraction!r} is invalid: a number in [0, 1) is required")
    if opts["drop_decay"] not in DECAYS:
        raise ValueError(f"pruner.drop_decay={opts['drop_decay']!r} is invalid; accepted: {', '.join(DECAYS)}")
    for key in ("temperature_start", "temperature_end"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"pruner.{key}={value!r} is invalid: a number in (0, inf) is required")


__all__ = ["DECAYS", "DYNAMIC_DEFAULTS", "SCOPE", "check_values", "options"]
