"""Algorithm plug-ins: entry points, user modules, and their Hydra config entries.

Three ways an algorithm gets registered (all end in `@register_algorithm(name)`):

- built in (`sparse_offline_rl/algorithms/*.py`, plus the `d3rlpy:<name>` backend);
- an installed package declaring an entry point in the group `sparse_offline_rl.algorithms`, e.g.
  `awac = my_package.awac:AWAC` (a class, registered under the entry point's name unless its module
  already registered it) or `awac = my_package.awac` (a module whose import registers it). Entry
  points are loaded lazily, the first time the registry is asked for a name it lacks; one that fails
  is skipped with a warning naming it and its error (also kept in `plugin_errors()`);
- a user's own module or single file, imported with `import_plugin` (`run.py plugins=my_algo.py`).

`store_algorithm_configs` then gives every registered algorithm that has no YAML file in
`configs/algo/` a Hydra config-group entry built from its config dataclass defaults, so `algo=<name>`
works from the command line like the built-ins.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import warnings
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from sparse_offline_rl.errors import PluginImportError
from sparse_offline_rl.algorithms.base import available_algorithms, get_algorithm, is_registered, register_algorithm

ENTRY_POINT_GROUP = "sparse_offline_rl.algorithms"

_errors: dict[str, str] = {}
_loaded: set[tuple[str, str]] = set()


class PluginWarning(UserWarning):
    """An entry-point plug-in failed to load; the built-ins and other plug-ins still work."""


def plugin_errors() -> dict[str, str]:
    """Entry-point plug-ins that failed to load: name -> "ErrorType: message"."""
    return dict(_errors)


def _register_entry_point(ep: EntryPoint) -> None:
    obj = ep.load()
    if isinstance(obj, type) and not is_registered(obj):
        register_algorithm(ep.name)(obj)  # a class its module did not decorate: named by the entry point


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> dict[str, str]:
    """Load every not-yet-loaded entry point of `group`; return the failures (name -> error)."""
    failures: dict[str, str] = {}
    for ep in entry_points(group=group):
        key = (ep.name, ep.value)
        if key in _loaded:  # the same distribution seen twice on sys.path
            continue
        _loaded.add(key)
        try:
            _register_entry_point(ep)
        except Exception as err:  # a broken plug-in must never take the built-ins down with it
            failures[ep.name] = _errors[ep.name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"algorithm plug-in '{ep.name}' ({ep.value}) failed to load and is skipped: "
                          f"{failures[ep.name]}", PluginWarning, stacklevel=2)
    return failures


def import_plugin(spec: str) -> ModuleType:
    """Import a user module by file path (`my_algo.py`, `lab/awac.py`) or dotted name (`lab.awac`,
    found from the current directory too); importing it runs its `@register_algorithm`. Importing
    the same plug-in again returns the module already loaded."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file():
            return _import_file(path.resolve())
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # `python run.py` puts the script's folder first, not the cwd
        return importlib.import_module(spec)
    except PluginImportError:
        raise
    except Exception as err:
        raise PluginImportError(f"plugin '{spec}' failed to import: {type(err).__name__}: {err}") from err


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
            return loaded
        raise ImportError(f"a module named '{name}' is already imported from {getattr(loaded, '__file__', '?')}; rename {path.name}")
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before executing, so dataclasses and pickling can resolve the module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugins(specs: Iterable[str] | str | None) -> list[ModuleType]:
    if specs is None:
        return []
    return [import_plugin(s) for s in ([specs] if isinstance(specs, str) else specs)]


def config_defaults(name: str) -> dict[str, Any]:
    """`{"name": name, **defaults of its config dataclass}`: the algo config node of `algo=<name>`."""
    cls = get_algorithm(name).config_cls
    try:
        defaults = dataclasses.asdict(cls())
    except TypeError as err:
        raise TypeError(f"algorithm '{name}': every field of {cls.__name__} needs a default to be selectable as algo={name} ({err})") from err
    return {"name": name, **defaults}


def store_algorithm_configs(config_dir: Path | str | None = None) -> list[str]:
    """Give each registered algorithm without `<config_dir>/<name>.yaml` a Hydra entry `algo/<name>`
    in the ConfigStore; call before Hydra composes the config. Returns the names stored."""
    from hydra.core.config_store import ConfigStore

    with_yaml = {p.stem for p in Path(config_dir).glob("*.yaml")} if config_dir else set()
    store = ConfigStore.instance()
    stored = []
    for name in available_algorithms():
        if name not in with_yaml:
            store.store(group="algo", name=name, node=config_defaults(name))
            stored.append(name)
    return stored


__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginImportError",
    "PluginWarning",
    "config_defaults",
    "import_plugin",
    "import_plugins",
    "load_entry_points",
    "plugin_errors",
    "store_algorithm_configs",
]
