"""python -m sparse_offline_rl.report SWEEP_DIR [--out DIR] [--reps N] [--against reference|DIR] [--publish DIR]
                                   [--select fqe|logme|logme_actor|q_s0|td_error|bc_mse] [--progress]
                                   [--check-draws [ENV,ENV]]

Collects every summary.json under SWEEP_DIR (a Hydra sweep dir, or any tree of runs) into
DIR (default SWEEP_DIR/report): runs.csv, results.csv, results.md, score_vs_sparsity.png,
learning_curves.png, density_per_layer.png. Missing or failed runs are listed (in results.md and
here); with --strict they also make the exit status 3. --against puts each configuration beside the
reference study's (or another results folder's) of the same algorithm, dataset, sparsity and length
(against.md, against.csv); --publish copies the finished runs' summaries, curves and configs into DIR;
--select ranks the finished runs by an offline score and recommends one, with its expected regret
(select.md, select.csv, select.png); --progress only prints how far a running sweep has got (each job's
step, the running jobs' rates, the time left) and writes nothing; --check-draws exits with status 1
when this machine's copy of a dataset (of ENVs, default all) is another draw than the one the runs
under SWEEP_DIR trained on (docs/reproducibility.md), and writes nothing.
"""
from __future__ import annotations

import argparse
import sys

from sparse_offline_rl.report.collect import ReportError
from sparse_offline_rl.report.draws import check_draws
from sparse_offline_rl.evaluation.ranking import SCORES
from sparse_offline_rl.report.progress import progress_lines, sweep_progress
from sparse_offline_rl.report.publish import publish
from sparse_offline_rl.report.select import write_select
from sparse_offline_rl.report.write import write_against, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_offline_rl.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", default=None, help="report directory (default: SWEEP_DIR/report)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for the IQM CIs")
    parser.add_argument("--strict", action="store_true", help="exit with status 3 when runs are missing or failed")
    parser.add_argument("--against", default=None, metavar="reference|DIR",
                        help="compare with the reference study (results/reference) or another results folder")
    parser.add_argument("--publish", default=None, metavar="DIR",
                        help="copy each finished run's summary.json, eval.csv and config into DIR")
    parser.add_argument("--select", default=None, choices=list(SCORES), metavar="|".join(SCORES),
                        help="rank the runs by an offline score (scored from the data alone) and recommend one")
    parser.add_argument("--progress", action="store_true",
                        help="print how far the sweep has got and the time left; write nothing")
    parser.add_argument("--check-draws", nargs="?", const="", default=None, metavar="ENV,ENV",
                        help="exit 1 if a local dataset is another draw than the runs' (ENVs: default all)")
    args = parser.parse_args(argv)
    try:
        if args.check_draws is not None:
            problems = check_draws(args.sweep_dir, [e for e in args.check_draws.split(",") if e] or None)
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            return 1 if problems else 0
        if args.progress:
            print("\n".join(progress_lines(args.sweep_dir, sweep_progress(args.sweep_dir))))
            return 0
        result = write_report(args.sweep_dir, args.out, reps=args.reps)
        if args.against is not None:
            result["paths"].update(write_against(args.sweep_dir, args.against, result["out"], args.reps))
        if args.select is not None:
            result["paths"].update(write_select(args.sweep_dir, args.select, result["out"], args.reps))
        if args.publish is not None:
            print(f"published {len(publish(args.sweep_dir, args.publish))} runs into {args.publish}")
    except (ReportError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    groups, problems = result["groups"], result["problems"]
    print(f"{len(result['runs'])} finished runs in {len(groups)} configurations")
    for job in problems:
        print(f"{job.status}: {job.label}: {job.detail}")
    for path in result["paths"].values():
        print(f"wrote {path}")
    return 3 if problems and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
