"""The during-training methods by name: `RULES` (pruner=NAME -> its `MaskRule` class) is the one
place a new rule is added; `UNIT_RULES` holds the rules offered with pruner.structure=units. The
name tables the rest of the package reads are worked out from them."""
from __future__ import annotations

from sparse_offline_rl.pruning.scorers import PRUNERS
from sparse_offline_rl.sparse_training.drop_grow import SET, RigL
from sparse_offline_rl.sparse_training.gibbs import Gibbs, UnitGibbs
from sparse_offline_rl.sparse_training.gmp import GMP
from sparse_offline_rl.sparse_training.rule import MaskRule

RULES: dict[str, type[MaskRule]] = {"gmp": GMP, "set": SET, "rigl": RigL, "gibbs": Gibbs}
#: pruner.structure=units: whole hidden units masked during training (PaI units narrow instead).
UNIT_RULES: dict[str, type[MaskRule]] = {"gibbs": UnitGibbs}

DYNAMIC_PRUNERS = tuple(RULES)
#: Every pruner= name: at initialization (pruning.PRUNERS) and during training.
ALL_PRUNERS = PRUNERS + DYNAMIC_PRUNERS
#: Where each method starts updating (GMP: prune from 20%; the others change masks from the start).
BEGIN = {name: rule.begin for name, rule in RULES.items()}
#: pruner.sparse_init when not given: on for the sparse starts, as the reference's fixed_sparse_init
#: (the PaI pruners default to off, prune.PRUNER_DEFAULTS: the SSP protocol keeps the dense init).
SPARSE_INIT = {name: rule.sparse_init for name, rule in RULES.items() if not rule.starts_dense}
#: The options only some methods read; the others refuse them.
METHOD_OPTIONS = {key: tuple(name for name, rule in RULES.items() if key in rule.own_options)
                  for key in dict.fromkeys(k for rule in RULES.values() for k in rule.own_options)}


def rule_class(name: str, units: bool = False) -> type[MaskRule] | None:
    """The rule of pruner=`name` (with pruner.structure=units if `units`); None for a pruner at
    initialization, whose masks never change."""
    return (UNIT_RULES if units else RULES).get(name)


__all__ = ["ALL_PRUNERS", "BEGIN", "DYNAMIC_PRUNERS", "METHOD_OPTIONS", "RULES", "SPARSE_INIT", "UNIT_RULES", "rule_class"]
