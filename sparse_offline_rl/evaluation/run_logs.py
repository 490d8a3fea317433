"""Reading what a training run logged: its evaluations (eval.csv) and its diagnostics (metrics.jsonl
rows of kind "diagnostics"). One home for both, read by the figures, the report and checkpoint
selection."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np


def read_curve(run_dir: str | Path, column: str = "normalized_score_mean") -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of a run's evaluations from its eval.csv, or None without any."""
    file = Path(run_dir) / "eval.csv"
    if not file.exists():
        return None
    with open(file) as f:
        rows = [r for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    if not rows:
        return None
    return np.array([int(r["step"]) for r in rows]), np.array([float(r[column]) for r in rows])


def read_diagnostics(metrics_path: Path) -> list[dict[str, Any]]:
    """The diagnostics rows of a metrics.jsonl ([] when the file is missing)."""
    if not metrics_path.exists():
        return []
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "diagnostics"]


__all__ = ["read_curve", "read_diagnostics"]
