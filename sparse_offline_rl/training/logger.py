"""Metrics to JSONL (one record per line, any keys), CSV (evaluation rows) and TensorBoard."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.csv_path = self.run_dir / "eval.csv"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop records written after the checkpoint we restart from."""
        if self.jsonl_path.exists():
            keep = [l for l in self.jsonl_path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
            self.jsonl_path.write_text("".join(l + "\n" for l in keep))
        if self.csv_path.exists():
            with open(self.csv_path) as f:
                rows = list(csv.DictReader(f))
            fields = list(rows[0].keys()) if rows else []
            self._write_csv([r for r in rows if int(r["step"]) <= step], fields)

    def _write_csv(self, rows: list[dict[str, Any]], fields: list[str]) -> None:
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        record = {"step": step, "kind": kind, **values}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
        if kind == "eval":
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(record))
                if new:
                    writer.writeheader()
                writer.writerow(record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
