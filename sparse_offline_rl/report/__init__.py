"""The sweep report: `python -m sparse_offline_rl.report SWEEP_DIR` -> tables and figures of a finished sweep.

`collect.py` finds the jobs of a sweep directory and their state, `table.py` aggregates finished runs
over seeds, `figures.py` draws them, `write.py` writes the report directory; `against.py` sets a
sweep beside a published results folder (the reference study), `publish.py` copies finished runs into
one, `select.py` ranks them by an offline score (`--select`); `__main__.py` is the command."""
from __future__ import annotations

from sparse_offline_rl.report.collect import Job, ReportError, collect
from sparse_offline_rl.report.write import write_report

__all__ = ["Job", "ReportError", "collect", "write_report"]
