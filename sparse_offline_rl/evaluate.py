"""Command line for the generalization harness (the library is the `evaluation` package).

  python -m sparse_offline_rl.evaluate run_dir=PATH [suite=generalization] [episodes=N] [seed=0]
                                       [device=cpu] [threads=1] [progress=true]
  python -m sparse_offline_rl.evaluate compare RUN_DIR_A RUN_DIR_B ... [by=algo,pruner,sparsity]
                                       [reps=2000] [out=comparison.json]
  python -m sparse_offline_rl.evaluate select RUN_DIR... [out=selection.json] [seed=0] [fqe_steps=8000]
                                       [rows=20000] [logme_rows=4096] [reps=100] [scores=fqe,logme,...]
                                       [device=cpu] [threads=1]
  python -m sparse_offline_rl.evaluate checkpoints RUN_DIR... [out=checkpoints.json] [reps=2000] [seed=0]

Bad input ends with one line naming the value and what is accepted (exit status 2).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from sparse_offline_rl.checks import parse_overrides, run_command, run_dir_options, to_bool, to_int
from sparse_offline_rl.errors import ConfigError

if TYPE_CHECKING:
    from sparse_offline_rl.evaluation.selection import SelectionSettings

EVALUATE_KEYS = {"run_dir", "suite", "episodes", "seed", "device", "threads", "progress"}
COMPARE_KEYS = {"by", "reps", "out", "seed"}
CHECKPOINTS_KEYS = {"out", "reps", "seed"}
SELECT_KEYS = {"out", "seed", "fqe_steps", "rows", "logme_rows", "reps", "scores", "device", "threads"}


def evaluate_command(args: Sequence[str]) -> None:
    options = run_dir_options(args, EVALUATE_KEYS, "run_dir=RUN, a training run directory holding checkpoint.pt; "
                                                   "or 'compare DIR...', 'select DIR...', 'checkpoints DIR...'")
    import torch

    # One thread by default: the policy sees small batches, and extra threads only contend with the
    # simulator (2-3x slower on a shared 2-core machine).
    torch.set_num_threads(to_int("threads", options.get("threads", "1"), 1))
    from sparse_offline_rl.evaluation.suite import evaluate_run, get_suite

    result = evaluate_run(
        options["run_dir"],
        suite=get_suite(options.get("suite", "generalization")),
        episodes=to_int("episodes", options["episodes"], 1) if "episodes" in options else None,
        device=options.get("device", "cpu"),
        seed=to_int("seed", options.get("seed", "0")),
        progress=to_bool("progress", options.get("progress", "true")),
    )
    s = result["summary"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"{s['metric']}: held-out seeds {fmt(s['seeds_heldout'])}, train seeds {fmt(s['seeds_train'])}, "
          f"gap {fmt(s['generalization_gap'])}, perturbed mean {fmt(s['perturbed_mean'])}  "
          f"({result['seconds']:.0f} s, {result['env_steps']} env steps)")
    print(f"wrote {Path(options['run_dir']) / 'generalization.json'} and generalization.png")


def compare_command(args: Sequence[str]) -> None:
    options, run_dirs = parse_overrides(args, COMPARE_KEYS)
    if not run_dirs:
        raise ConfigError("compare needs one or more run directories holding generalization.json")
    from sparse_offline_rl.evaluation.compare import DEFAULT_LABEL_KEYS, compare_run_dirs, format_comparison, plot_profiles
    from sparse_offline_rl.io import atomic_write_json

    by = tuple(options["by"].split(",")) if "by" in options else DEFAULT_LABEL_KEYS
    comparison = compare_run_dirs(run_dirs, by, reps=to_int("reps", options.get("reps", "2000"), 1),
                                  seed=to_int("seed", options.get("seed", "0")))
    print(format_comparison(comparison))
    if "out" in options:
        atomic_write_json(options["out"], comparison)
        figure = plot_profiles(comparison, Path(options["out"]).with_suffix(".png"))
        print(f"wrote {options['out']}" + (f" and {figure}" if figure else ""))


def select_settings(options: dict[str, str]) -> "SelectionSettings":
    from sparse_offline_rl.evaluation.fqe import FQESettings
    from sparse_offline_rl.evaluation.selection import SCORES, SelectionSettings

    scores = tuple(options["scores"].split(",")) if "scores" in options else tuple(SCORES)
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise ConfigError(f"scores={options.get('scores')} is invalid; accepted: a comma list of {', '.join(SCORES)}")
    default = SelectionSettings()
    return SelectionSettings(
        seed=to_int("seed", options.get("seed", "0")), rows=to_int("rows", options.get("rows", str(default.rows)), 1),
        logme_rows=to_int("logme_rows", options.get("logme_rows", str(default.logme_rows)), 2),
        reps=to_int("reps", options.get("reps", str(default.reps)), 1), scores=scores,
        fqe=FQESettings(steps=to_int("fqe_steps", options.get("fqe_steps", str(default.fqe.steps)), 1)))


def select_command(args: Sequence[str]) -> None:
    options, run_dirs = parse_overrides(args, SELECT_KEYS)
    if not run_dirs:
        raise ConfigError("select needs one or more run directories holding checkpoint.pt")
    settings = select_settings(options)
    import torch

    torch.set_num_threads(to_int("threads", options.get("threads", "1"), 1))
    from sparse_offline_rl.evaluation import ranking
    from sparse_offline_rl.evaluation.selection import select_runs
    from sparse_offline_rl.io import atomic_write_json, atomic_write_text

    def progress(record: dict) -> None:
        how = "reused its offline_scores.json" if record.get("reused") else f"in {record['seconds']:.0f} s"
        print(f"scored {record['run_dir']} ({record['eval_split']} split) {how}")

    records = select_runs(run_dirs, settings, device=options.get("device", "cpu"), progress=progress)
    rows = ranking.table_rows(records)
    print(ranking.to_csv(rows), end="")
    print("\n".join(ranking.summary_lines(records, settings.scores, seed=settings.seed)))
    out = Path(options.get("out", "selection.json"))
    agreement = {s: {"runs": ranking.agreement_by_cell(records, s, seed=settings.seed),
                     "configurations": ranking.agreement_by_cell(records, s, seed=settings.seed, of=ranking.config_agreement)}
                 for s in settings.scores}
    recommendation = {s: ranking.recommend(records, s) for s in settings.scores}
    # Each run's bootstrap replicates stay in its RUN_DIR/offline_scores.json; the table keeps the values.
    lean = [{**r, "scores": {k: {f: v for f, v in e.items() if f != "replicates"} for k, e in r["scores"].items()}}
            for r in records]
    atomic_write_json(out, {"runs": lean, "recommendation": recommendation, "agreement": agreement})
    atomic_write_text(out.with_suffix(".csv"), ranking.to_csv(rows))
    figure = ranking.figure(records, settings.scores, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.csv')}" + (f" and {figure}" if figure else "")
          + "; each run's scores in RUN_DIR/offline_scores.json")


def checkpoints_command(args: Sequence[str]) -> None:
    options, run_dirs = parse_overrides(args, CHECKPOINTS_KEYS)
    if not run_dirs:
        raise ConfigError("checkpoints needs one or more training run directories holding eval.csv and metrics.jsonl")
    from sparse_offline_rl.evaluation import checkpoints
    from sparse_offline_rl.io import atomic_write_json

    result = checkpoints.checkpoint_selection(run_dirs, reps=to_int("reps", options.get("reps", "2000"), 1),
                                              seed=to_int("seed", options.get("seed", "0")))
    if not result["runs"]:
        raise ConfigError(f"none of the {len(run_dirs)} run directories has an eval.csv to select from")
    print("\n".join(checkpoints.summary_lines(result)))
    out = Path(options.get("out", "checkpoints.json"))
    atomic_write_json(out, result)
    figure = checkpoints.figure(result, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {figure}" if figure else ""))


def dispatch(args: list[str]) -> None:
    if args and args[0] == "compare":
        compare_command(args[1:])
    elif args and args[0] == "select":
        select_command(args[1:])
    elif args and args[0] == "checkpoints":
        checkpoints_command(args[1:])
    else:
        evaluate_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
