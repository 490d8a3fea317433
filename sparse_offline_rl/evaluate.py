"""Command line for the generalization harness (the library is the `evaluation` package).

  python -m sparse_offline_rl.evaluate run_dir=PATH [suite=generalization] [episodes=N] [seed=0]
                                       [device=cpu] [threads=1] [progress=true]
  python -m sparse_offline_rl.evaluate compare RUN_DIR_A RUN_DIR_B ... [by=algo,pruner,sparsity]
                                       [reps=2000] [out=comparison.json]

Bad input ends with one line naming the value and what is accepted (exit status 2).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from sparse_offline_rl.checks import parse_overrides, to_bool, to_int
from sparse_offline_rl.errors import USER_ERRORS, ConfigError

EVALUATE_KEYS = {"run_dir", "suite", "episodes", "seed", "device", "threads", "progress"}
COMPARE_KEYS = {"by", "reps", "out", "seed"}


def evaluate_command(args: Sequence[str]) -> None:
    options, positional = parse_overrides(args, EVALUATE_KEYS)
    if positional:
        raise ConfigError(f"unexpected argument '{positional[0]}'; use key=value (e.g. run_dir=runs/...) or 'compare DIR...'")
    if "run_dir" not in options:
        raise ConfigError("run_dir=PATH is required (a training run directory holding checkpoint.pt)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "compare":
            compare_command(args[1:])
        else:
            evaluate_command(args)
    except (ImportError, *USER_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
