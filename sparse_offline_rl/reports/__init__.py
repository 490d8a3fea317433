"""Sweep reports: `python -m sparse_offline_rl.reports SWEEP_DIR` -> tables and figures of a finished sweep."""
from __future__ import annotations

from sparse_offline_rl.reports.collect import Job, ReportError, collect
from sparse_offline_rl.reports.report import write_report

__all__ = ["Job", "ReportError", "collect", "write_report"]
