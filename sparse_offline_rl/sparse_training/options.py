"""The during-training options (pruner.update_every, begin, end, drop_*, temperature_*): their
defaults and `options`, which checks them against the method's rule (each value's type and range
is checked once, by `pruning.config.PrunerConfig`)."""
from __future__ import annotations

from typing import Any, Mapping

from sparse_offline_rl.pruning.config import DECAYS, DURING_TRAINING_DEFAULTS, PrunerConfig
from sparse_offline_rl.sparse.fan_init import check as check_sparse_init
from sparse_offline_rl.sparse_training.registry import DYNAMIC_PRUNERS, METHOD_OPTIONS, RULES, SPARSE_INIT, UNIT_RULES

#: pruner.* options of the during-training pruners, with their defaults (their home is PrunerConfig;
#: the PaI options apply too: scope, keep_*_layer_dense). begin None: the method's own.
DYNAMIC_DEFAULTS: dict[str, Any] = dict(DURING_TRAINING_DEFAULTS)
#: The layer densities the rules use unless pruner.scope says otherwise (the references' ERK).
SCOPE = "erk"


def options(pruner: Mapping[str, Any]) -> dict[str, Any]:
    """The during-training options of `pruner` with defaults filled in; ValueError names a bad one."""
    PrunerConfig.from_mapping(pruner)  # each value's type and range
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
    if out["begin"] > out["end"]:
        raise ValueError(f"pruner.begin={out['begin']!r} is after pruner.end={out['end']!r}: updates run from begin to end")
    for key in ("budget_params", "budget_flops", "budget_cost"):
        if pruner.get(key) is not None:
            raise ValueError(f"pruner.{key} is not supported by pruner={method}: give the target as sparsity")
    if (pruner.get("structure") or "unstructured") != "unstructured":
        if method not in UNIT_RULES:
            raise ValueError(f"pruner.structure={pruner['structure']!r} is invalid with pruner={method}: "
                             f"{method} prunes single weights during training (structure=unstructured); whole units "
                             f"are pruned during training by {' and '.join(f'pruner={n}' for n in UNIT_RULES)} "
                             "and at initialization by the PaI pruners")
        for key in ("weight_sparsity", "keep_first_layer_dense", "keep_last_layer_dense"):
            if pruner.get(key):  # units are masked with their whole rows and columns: no layer stays dense
                raise ValueError(f"pruner.{key} is not supported by pruner={method} with pruner.structure=units")
    return out


__all__ = ["DECAYS", "DYNAMIC_DEFAULTS", "SCOPE", "options"]
