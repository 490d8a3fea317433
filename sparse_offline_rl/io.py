"""Atomic file writes: a reader never sees a half-written result, checkpoint or summary. Also the
machine-level helpers results depend on: the cache folder, a lock between processes, the CPU model,
the code version."""
from __future__ import annotations

import fcntl
import functools
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from sparse_offline_rl.errors import CheckpointError

def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should be readable as usual
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX: the old file or the new one, never a mix
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path | str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(Path(path), write)


def atomic_write_bytes_with(path: Path | str, write: Callable[[Any], None]) -> None:
    """`write(file_object)` fills the file (e.g. `np.savez`); readers see all of it or nothing."""

    def to_tmp(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    _atomic(Path(path), to_tmp)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def atomic_torch_save(path: Path | str, obj: Any) -> None:
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> Any:
    """Load with `weights_only=True`: tensors, containers and plain values only. A full pickle can run
    any code while it is read, so a checkpoint from someone else must not get one; everything this
    project saves (state dicts, RNG states, reports, the config) fits the restricted format."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused to load: a checkpoint may hold only tensors and plain values{what}; "
                              "loading it in full could run code from the file") from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None


def atomic_save_figure(fig: Any, path: Path | str, dpi: int = 110) -> Path:
    """A matplotlib figure as PNG, written atomically; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cache_dir() -> Path:
    """Where long-running work keeps its resumable state: $SORL_CACHE_DIR, else ~/.cache/sparse_offline_rl.

    Outside the repository on purpose: it is large (replay buffers) and survives a fresh clone."""
    env = os.environ.get("SORL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparse_offline_rl"


@contextmanager
def file_lock(path: Path | str, waiting_message: str | None = None, busy_error: str | None = None) -> Iterator[None]:
    """An exclusive lock between processes (POSIX `flock` on `path`), held for the `with` block.

    For work that several processes may start at once, e.g. the parallel jobs of a sweep on a fresh
    machine all needing the same dataset: one does it, the others wait, then find it done. With
    `busy_error`, a held lock raises RuntimeError(busy_error) instead of waiting. The lock goes away
    with its process, so a killed holder never blocks anyone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy_error:
                raise RuntimeError(busy_error) from None
            if waiting_message:
                print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cpu_model() -> str:
    """The CPU's model name, for results measured on this machine (timings)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The code a result came from: the package version and, in a git checkout, the commit and whether
    tracked files differed from it (a long study runs from a worktree at a fixed commit)."""
    from importlib import metadata

    try:
        version: str | None = metadata.version("sparse-offline-rl")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        version = None
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": version, "commit": commit, "dirty": None if status is None else bool(status)}
