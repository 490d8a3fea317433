"""Sparsity during training: masks that change while the networks train (GMP, SET, RigL, Gibbs), on
the one mask mechanism of `sparse/` (`MaskSet.set_masks`).

The baselines pruning at initialization is measured against (Graesser et al. 2022, "The state of
sparse training in deep RL", and the google-research rigl code they use). Each method is a rule
behind one small protocol; a driver applies the run's rule after every training step.

Modules, bottom to top:

- `schedule.py`: when masks change (`Schedule`: every `update_every` steps from `begin` to `end`)
  and by how much (GMP's cubic sparsity, SET / RigL's drop fraction, Gibbs' temperature).
- `rule.py`: `MaskRule`, the protocol: what the run starts from (dense or random masks), which
  steps update, the new masks at an update, what an update record adds; `RuleRun`, what a rule is
  built from.
- `gmp.py` (`GMP`), `drop_grow.py` (`SET`, `RigL`, `drop_and_grow`), `gibbs.py` (`Gibbs`,
  `UnitGibbs`, `gibbs_sample`): the rules, one idea each.
- `registry.py`: `RULES`, pruner name -> rule class (`UNIT_RULES` for pruner.structure=units), and
  the name tables worked out from it (`DYNAMIC_PRUNERS`, `ALL_PRUNERS`, `BEGIN`, `SPARSE_INIT`,
  `METHOD_OPTIONS`).
- `options.py`: the during-training options' defaults (`DYNAMIC_DEFAULTS`) and `options`, the one
  function that checks them.
- `flops.py`: `TrainingFlops`, training FLOPs per step and RigL's dense gradient.
- `final_report.py`: the pruning report brought to the masks the run ended with.
- `dynamic.py`: the driver, `SparseTraining` (what the trainer talks to for every pruner) and
  `rewire` (masks changed on dense and compressed layers); it re-exports the names above.

To add a rule: write a `MaskRule` subclass (its class attributes: `begin`, `starts_dense`,
`own_options`, `dense_gradient`; its methods: `for_run`, `new_masks`, and `is_update` / `logged`
where the defaults do not fit), give any new option a field in `pruning.config.PrunerConfig` (its
default and its check, in one place) and its YAML line, and add the rule to `registry.RULES` under
its pruner name.
"""
from sparse_offline_rl.sparse_training.dynamic import (
    ALL_PRUNERS,
    BEGIN,
    DECAYS,
    DYNAMIC_DEFAULTS,
    DYNAMIC_PRUNERS,
    GMP,
    METHOD_OPTIONS,
    SCOPE,
    SET,
    SPARSE_INIT,
    Gibbs,
    MaskRule,
    Masks,
    RigL,
    RuleRun,
    Schedule,
    SparseTraining,
    UnitGibbs,
    drop_and_grow,
    drop_fraction,
    gibbs_sample,
    gmp_sparsity,
    options,
    rewire,
    update_record,
)
from sparse_offline_rl.sparse_training.registry import RULES, UNIT_RULES, rule_class

__all__ = ["ALL_PRUNERS", "BEGIN", "DECAYS", "DYNAMIC_DEFAULTS", "DYNAMIC_PRUNERS", "GMP", "Gibbs", "METHOD_OPTIONS",
           "MaskRule", "Masks", "RULES", "RigL", "RuleRun", "SCOPE", "SET", "SPARSE_INIT", "Schedule", "SparseTraining",
           "UNIT_RULES", "UnitGibbs", "drop_and_grow", "drop_fraction", "gibbs_sample", "gmp_sparsity", "options",
           "rewire", "rule_class", "update_record"]
