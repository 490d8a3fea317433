"""A sweep beside a published results folder (the reference study, `results/reference/`, or any other).

Each configuration of the sweep (algo, dataset, pruner, sparsity, steps) is put beside every
reference configuration of the same algorithm, dataset, sparsity and step count (each of its
pruners), and beside the reference's dense runs of the same algorithm, dataset and length: the IQM
of each over seeds with a bootstrap 95% CI, and the probability that a run of the sweep scores above
a run of the reference, P(X > Y), with its CI. The score is each run's final score, the mean of its
last `collect.FINAL_EVALS` evaluations, on the dataset's own scale. A cell with no reference says why.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sparse_offline_rl.evaluation.stats import iqm, probability_of_improvement_ci, stratified_bootstrap_ci
from sparse_offline_rl.report.collect import FINAL_EVALS, ReportError, collect
from sparse_offline_rl.report.table import run_rows

#: `--against reference`: the framework's own results, published beside the code.
REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"

Cell = tuple[str, str, str, str, int]  # algo, dataset, pruner, sparsity, steps


def results_dir(spec: str | Path) -> Path:
    """`reference` (the published reference study) or a path to a folder of runs."""
    path = REFERENCE if str(spec) == "reference" else Path(spec)
    if not path.is_dir():
        where = " (the published results come with a source checkout of the project)" if str(spec) == "reference" else ""
        raise ReportError(f"--against {spec}: no results folder at {path}{where}")
    return path


def final_scores(root: Path) -> dict[Cell, list[float]]:
    """Per configuration, each finished run's final score (runs without an evaluation curve left out)."""
    cells: dict[Cell, list[float]] = defaultdict(list)
    for row in run_rows(collect(root)):
        if not math.isnan(row["score_final"]):
            cells[(row["algo"], row["dataset"], row["pruner"], row["sparsity"], int(row["steps"]))].append(row["score_final"])
    return dict(cells)


def missing_reason(cell: Cell, reference: Mapping[Cell, list[float]]) -> str:
    algo, dataset, _, sparsity, steps = cell
    same_task = [c for c in reference if c[:2] == (algo, dataset)]
    if not same_task:
        return f"no reference run of {algo} on {dataset}"
    lengths = sorted({c[4] for c in same_task})
    if steps not in lengths:
        return f"no reference at {steps} steps (it has {', '.join(map(str, lengths))})"
    levels = sorted({c[3] for c in same_task if c[4] == steps and c[2] != "dense"}, key=float)
    return f"no reference at sparsity {sparsity} (it has {', '.join(levels) or 'dense only'})"


def compare_cell(cell: Cell, scores: list[float], reference: Mapping[Cell, list[float]], reps: int,
                 seed: int) -> list[dict[str, Any]]:
    """One row per reference configuration that matches `cell` (its sparsity's pruners, then dense)."""
    algo, dataset, _, sparsity, steps = cell
    matches = sorted(c for c in reference if c[:2] == (algo, dataset) and c[4] == steps
                     and (c[3] == sparsity or c[2] == "dense"))
    own = _iqm_ci(scores, reps, seed)
    rows = []
    for ref in sorted(matches, key=lambda c: (c[2] == "dense", c[2])):
        p, low, high = probability_of_improvement_ci([scores], [reference[ref]], reps=reps, seed=seed)
        rows.append({"algo": algo, "dataset": dataset, "pruner": cell[2], "sparsity": sparsity, "steps": steps,
                     "seeds": len(scores), **own, "ref_pruner": ref[2], "ref_sparsity": ref[3],
                     "ref_seeds": len(reference[ref]), **{f"ref_{k}": v for k, v in _iqm_ci(reference[ref], reps, seed).items()},
                     "p_improve": p, "p_low": low, "p_high": high, "note": ""})
    return rows


def against(sweep_dir: Path | str, spec: str | Path, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Rows for every sweep configuration (with reference) and the cells without one, with reasons."""
    reference = final_scores(results_dir(spec))
    if not reference:
        raise ReportError(f"--against {spec}: no finished run with an evaluation curve in {results_dir(spec)}")
    rows, unmatched = [], []
    for cell, scores in sorted(final_scores(Path(sweep_dir)).items()):
        found = compare_cell(cell, scores, reference, reps, seed)
        if found and any(r["ref_pruner"] != "dense" or cell[2] == "dense" for r in found):
            rows += found
        else:
            unmatched.append({"algo": cell[0], "dataset": cell[1], "pruner": cell[2], "sparsity": cell[3],
                              "steps": cell[4], "seeds": len(scores), **_iqm_ci(scores, reps, seed),
                              "note": missing_reason(cell, reference)})
            rows += found  # the dense line still applies where only the sparsity is new
    return {"rows": rows, "unmatched": unmatched, "reference": str(results_dir(spec))}


def to_markdown(result: Mapping[str, Any]) -> str:
    head = ["algo", "dataset", "pruner", "sparsity", "steps", "seeds", "IQM [95% CI]", "reference", "ref seeds",
            "ref IQM [95% CI]", "P(sweep > ref) [95% CI]"]
    lines = [f"Against `{result['reference']}`: final score = mean of the last {FINAL_EVALS} evaluations "
             "(dataset's own scale), IQM over seeds with a stratified-bootstrap 95% CI; P(sweep > ref): the "
             "probability that a sweep run scores above a reference run, ties counted half.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        ref = "dense" if r["ref_pruner"] == "dense" else f"{r['ref_pruner']} {r['ref_sparsity']}"
        lines.append("| " + " | ".join([r["algo"], r["dataset"], r["pruner"], r["sparsity"], str(r["steps"]),
                                         str(r["seeds"]), _ci(r["iqm"], r["low"], r["high"]), ref, str(r["ref_seeds"]),
                                         _ci(r["ref_iqm"], r["ref_low"], r["ref_high"]),
                                         _ci(r["p_improve"], r["p_low"], r["p_high"], 2)]) + " |")
    if result["unmatched"]:
        lines += ["", f"Configurations without a reference ({len(result['unmatched'])}):", ""]
        lines += [f"- {u['algo']} {u['dataset']} {u['pruner']} {u['sparsity']} at {u['steps']} steps "
                  f"({u['seeds']} seeds, IQM {u['iqm']:.1f}): {u['note']}" for u in result["unmatched"]]
    return "\n".join(lines) + "\n"


def _iqm_ci(scores: Sequence[float], reps: int, seed: int) -> dict[str, float]:
    point, low, high = stratified_bootstrap_ci([np.asarray(scores, dtype=np.float64)], iqm, reps=reps, seed=seed)
    return {"iqm": point, "low": low, "high": high}


def _ci(point: float, low: float, high: float, digits: int = 1) -> str:
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
