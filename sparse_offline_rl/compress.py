"""Command line: fit a trained agent to budgets before it deploys (the library is `training.compress`).

  python -m sparse_offline_rl.compress run_dir=RUN budget_cost=PATH|[P1,P2] budget_cost_max=X|[X1,X2]
                                       [budget_search=constrained|bisect] [networks=actor] [finetune_steps=0]
                                       [seed=RUN's] [out=DIR] [probes=600] [rows=4096] [device=cpu]
                                       [threads=1] [eval_episodes=RUN's]

writes DIR (default RUN/compressed-<hash of the options>): checkpoint.pt, summary.json (with the
`compress` record), metrics.jsonl, eval.csv and, for budget_search=constrained, budget_search.png;
`evaluate` and `export` then take DIR as any run. Re-running a finished command says so and exits 0.
Bad input ends with one line naming the value and what is accepted (exit status 2).
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from sparse_offline_rl.checks import run_command, run_dir_options, to_int
from sparse_offline_rl.errors import ConfigError

KEYS = {"run_dir", "budget_cost", "budget_cost_max", "budget_search", "networks", "finetune_steps", "seed", "out",
        "probes", "rows", "device", "threads", "eval_episodes"}


def listed(value: str) -> list[str] | None:
    """'[a,b]' -> ['a', 'b']; a plain value -> None."""
    value = value.strip()
    if not (value.startswith("[") and value.endswith("]")):
        return None
    return [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]


def number(key: str, value: str) -> float:
    try:
        limit = float(value)
    except ValueError:
        limit = float("nan")
    if not limit > 0 or limit == float("inf"):
        raise ConfigError(f"{key}={value} is invalid; accepted: a number > 0 (or a list of them, [X1,X2])")
    return limit


def budgets(options: dict[str, str]) -> tuple[Any, Any]:
    """budget_cost (a path or a list) and budget_cost_max (a number or a list) as CompressOptions takes them."""
    for key in ("budget_cost", "budget_cost_max"):
        if key not in options:
            raise ConfigError(f"{key}= is required (budget_cost=module:function budget_cost_max=LIMIT, or lists)")
    paths, limits = listed(options["budget_cost"]), listed(options["budget_cost_max"])
    cost = tuple(paths) if paths is not None else options["budget_cost"]
    limit = (tuple(number("budget_cost_max", v) for v in limits) if limits is not None
             else number("budget_cost_max", options["budget_cost_max"]))
    return cost, limit


def command_options(options: dict[str, str]) -> Any:
    from sparse_offline_rl.training.compress import CompressOptions

    cost, limit = budgets(options)
    optional = {key: to_int(key, options[key], low) for key, low in
                (("finetune_steps", 0), ("seed", 0), ("probes", 2), ("rows", 2), ("eval_episodes", 0)) if key in options}
    return CompressOptions(cost, limit, budget_search=options.get("budget_search", "constrained"),
                           networks=tuple(n.strip() for n in options.get("networks", "actor").split(",")),
                           device=options.get("device", "cpu"), **optional)


def run(args: Sequence[str]) -> None:
    options = run_dir_options(args, KEYS, "run_dir=RUN budget_cost=module:function budget_cost_max=LIMIT")
    settings = command_options(options)
    import torch

    # One thread by default, as evaluate and export: on a shared machine more only add contention.
    torch.set_num_threads(to_int("threads", options.get("threads", "1"), 1))
    from sparse_offline_rl.training.compress import compress_run, output_dir

    out = output_dir(options["run_dir"], settings, options.get("out"))
    summary, already = compress_run(options["run_dir"], settings, out)
    record = summary["compress"]
    if already:
        print(f"{out} already holds this compression (finished); nothing to do")
        return
    score, limits = summary["eval"]["normalized_score_mean"], record["options"]["budget_cost_max"]
    within = "within" if record["within_budget"] else "NOT within"
    print(f"wrote {out}: {record['search']['search']} search, cost {record['cost']['after_finetune']} {within} "
          f"{limits}, sparsity {summary['final_sparsity']:.4f}, fidelity reward "
          f"{record['reward']['after_finetune']:.4g}, score {score:.1f} ({record['seconds']:.0f} s)")
    if not record["within_budget"]:
        # The search met every limit; measured again on the final networks a noisy cost (a latency) can miss.
        print(f"warning: measured again on the output, a cost misses its limit (summary.json compress.cost); "
              f"the search's own measurement met it: {record['search']['cost']}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
