"""One rule for every configuration value: a bad value stops the run before any work, with one line
that names the key, the value and what is accepted (`eval.every=0 is invalid: a positive integer is
required`).

`check_value(key, value, kind, interval)` checks one value; algorithm configs declare their ranges on
the dataclass field (`within("(0, 1)", default=0.7)`) and `algorithms.base.build_config` checks every
option given against the field's type and range. `check_same_config` tells whether a run directory
holds a run of the given config (the settings in `VOLATILE_KEYS` aside). `parse_overrides`, `to_int`
and `to_bool` read the key=value arguments of the commands that do not go through Hydra.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sparse_offline_rl.errors import USER_ERRORS, ConfigError, StaleRunError

KINDS = (bool, int, float, str)
INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


def within(interval: str, *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose number (or each number of a list) must lie in `interval`, written like
    "(0, 1]" or "[1, inf)"."""
    _parse(interval)  # a malformed interval is the config author's bug: fail at import
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"within": interval})


def _parse(interval: str) -> tuple[float, float, bool, bool]:
    m = INTERVAL.match(interval)
    if m is None:
        raise ValueError(f"interval {interval!r} is malformed; write e.g. '(0, 1]' or '[1, inf)'")
    return float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]"


def _inside(x: float, interval: str) -> bool:
    low, high, low_closed, high_closed = _parse(interval)
    return (x > low or (low_closed and x == low)) and (x < high or (high_closed and x == high))


def _fmt(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else str(x)


def describe(kind: type, interval: str | None = None, choices: Sequence[str] | None = None) -> str:
    """What `check_value` accepts, in words: 'a number in (0, 1)', 'a positive integer', 'one of a, b', ..."""
    if choices is not None:
        return "one of " + ", ".join(choices)
    if kind is bool:
        return "true or false"
    if kind is str:
        return "a non-empty string"
    noun = "an integer" if kind is int else "a number"
    if interval is None:
        return noun
    low, high, low_closed, high_closed = _parse(interval)
    if kind is int and math.isinf(high):
        if (low == 1 and low_closed) or (low == 0 and not low_closed):
            return "a positive integer"
        if low == 0 and low_closed:
            return "a non-negative integer"
    if math.isinf(high):
        return f"{noun} {'>=' if low_closed else '>'} {_fmt(low)}"
    return f"{noun} in {interval}"


def check_value(key: str, value: Any, kind: type, interval: str | None = None, *, optional: bool = False,
                choices: Sequence[str] | None = None) -> None:
    """Raise ConfigError unless `value` is a `kind` (bool, int, float, str) inside `interval`; ints pass as
    floats, bools never pass as numbers. `optional` also accepts None; `choices` lists the accepted strings."""
    if value is None and optional:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str) and value != "" and (choices is None or value in choices)
    elif kind in (int, float):
        types_ok = (int,) if kind is int else (int, float)
        ok = isinstance(value, types_ok) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (interval is None or _inside(float(value), interval))
    else:
        raise TypeError(f"check_value cannot check kind {kind!r}")
    if not ok:
        accepted = describe(kind, interval, choices) + (" or null" if optional else "")
        raise ConfigError(f"{key}={value!r} is invalid: {accepted} is required")


def check_field(key: str, value: Any, hint: Any, interval: str | None = None) -> None:
    """`check_value` driven by a dataclass field's type hint: bool, int, float, str, list[...] of those,
    and `X | None`. Hints it cannot read (Any, custom classes) are not checked."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Any
    if typing.get_origin(hint) in (list, tuple):
        item = (typing.get_args(hint) or (Any,))[0]
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        if ok and item in KINDS:
            try:
                for v in value:
                    check_value(key, v, item, interval)
            except ConfigError:
                ok = False
        if not ok:
            each = f", each item {describe(item, interval)}," if item in KINDS else ""
            raise ConfigError(f"{key}={value!r} is invalid: a non-empty list{each} is required")
        return
    if hint in KINDS:
        check_value(key, value, hint, interval)


# -- one run, one config ---------------------------------------------------------------------------
#: Settings that cannot change a run's result: they may differ between a launch and its re-launch.
VOLATILE_KEYS = frozenset({"resume", "threads", "progress", "tensorboard", "verbose"})


def check_same_config(stored: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Keys present in both must agree (keys added to the config since the run was made are ignored)."""
    old, new = flatten(stored), flatten(current)
    diff = [k for k in sorted(old.keys() & new.keys()) if k.split(".")[0] not in VOLATILE_KEYS and old[k] != new[k]]
    if diff:
        shown = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff[:4]) + (" ..." if len(diff) > 4 else "")
        raise StaleRunError(f"{path} belongs to a run with another config ({shown}); "
                            f"use another hydra.sweep.dir / hydra.run.dir or delete that directory")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# -- key=value command lines (the commands outside Hydra) -------------------------------------------
def parse_overrides(args: Sequence[str], accepted: set[str]) -> tuple[dict[str, str], list[str]]:
    """key=value pairs (Hydra-style) and the remaining positional arguments. An argument naming an
    existing path is positional even with "=" in it: sweep job directories are named by their
    overrides (`sweeps/x/algo=iql,env=hopper,seed=0`)."""
    options, positional = {}, []
    for arg in args:
        if "=" not in arg or Path(arg).exists():
            positional.append(arg)
            continue
        key, value = arg.split("=", 1)
        if key not in accepted:
            raise ConfigError(f"unknown option '{key}'; accepted: {', '.join(sorted(accepted))}")
        options[key] = value
    return options, positional


def run_dir_options(args: Sequence[str], accepted: set[str], example: str) -> dict[str, str]:
    """A command's key=value options, `run_dir=` among them (required) and nothing positional;
    `example`: the usage the error lines show (e.g. 'run_dir=runs/... format=onnx')."""
    options, positional = parse_overrides(args, accepted)
    if positional:
        raise ConfigError(f"unexpected argument '{positional[0]}'; use key=value (e.g. {example})")
    if "run_dir" not in options:
        raise ConfigError(f"run_dir=PATH is required (e.g. {example})")
    return options


def to_int(key: str, value: str, minimum: int = 0) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{key}={value} is invalid; an integer >= {minimum} is required")
    return number


def to_bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={value} is invalid; accepted: true, false")
    return value.lower() in ("true", "1", "yes")


def run_command(body: Callable[[list[str]], None], argv: Sequence[str] | None = None) -> int:
    """A command's exit status: 0 when `body(arguments)` returns, 2 with its one line on stderr when it
    raises a user error (bad input, a missing file or module), so that a mistake is read, not traced."""
    try:
        body(list(sys.argv[1:] if argv is None else argv))
    except (ImportError, *USER_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
