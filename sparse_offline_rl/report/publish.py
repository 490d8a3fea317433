"""Copy a sweep's finished runs into a results folder that can be committed: per run its
summary.json, eval.csv and the resolved Hydra config, never checkpoints or logs (a few kB a run)."""
from __future__ import annotations

from pathlib import Path

from sparse_offline_rl.io import atomic_write_bytes_with
from sparse_offline_rl.report.collect import collect

PUBLISHED = ("summary.json", "eval.csv", ".hydra/config.yaml", ".hydra/overrides.yaml")


def publish(sweep_dir: Path | str, dest: Path | str) -> list[Path]:
    """Copy every finished run (status done) under `sweep_dir` to `dest/<its folder name>/`; a run
    already there is replaced file by file, atomically. Returns the run folders written."""
    sweep_dir, dest = Path(sweep_dir), Path(dest)
    written = []
    for job in collect(sweep_dir):
        if job.status != "done" or job.path is None:
            continue
        target = dest / job.path.relative_to(sweep_dir)
        for name in PUBLISHED:
            source = job.path / name
            if source.exists():
                atomic_write_bytes_with(target / name, lambda f, src=source: f.write(src.read_bytes()))
        written.append(target)
    return written
