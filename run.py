"""Train one sparse offline-RL agent: `python run.py algo=iql sparsity=0.95` (Hydra overrides).

Algorithms beyond the YAML files in configs/algo/ are selected the same way:

    python run.py algo=d3rlpy:iql                       # d3rlpy's IQL (pip install d3rlpy, see README)
    python run.py plugins=my_awac.py algo=awac          # a single-file plug-in in your own folder
    python run.py algo=awac                             # a plug-in installed with an entry point

Before Hydra composes the config, the modules named by `plugins=` (a file, a dotted module name, or a
list `[a.py,b]`) are imported, entry-point plug-ins are loaded, and every registered algorithm without
a YAML file gets a config-group entry built from its config dataclass (`algo.<field>=...` overrides
work). `plugins` is kept in the composed config, so the run's saved config records it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def plugin_specs(argv: list[str]) -> tuple[list[str], list[str]]:
    """Find `plugins=...` (also `+plugins=`, `++plugins=`) on the command line. Returns the specs and
    argv with those arguments replaced, in place, by one `++plugins=[...]` (`++` adds the key whether
    or not configs/config.yaml declares it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    specs: list[str] = []
    out: list[str] = []
    first: int | None = None
    for arg in argv:
        if not arg.lstrip("+").startswith("plugins="):
            out.append(arg)
            continue
        value = parser.parse_override(arg).value()
        if isinstance(value, str):
            specs.append(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            specs.extend(value)
        else:
            raise ValueError(f"{arg}: plugins takes a module or file, or a list of them: plugins=[a.py,lab.awac]")
        if first is None:
            first = len(out)
            out.append("")
    if first is not None:
        out[first] = f"++plugins=[{','.join(specs)}]"
    return specs, out


def check_choices(args: list[str]) -> None:
    """`algo=` / `pruner=` (or comma lists of them, for sweeps) must name a known option: say so in one
    line here instead of Hydra's multi-line config-search report."""
    from sparse_offline_rl.algorithms import available_algorithms
    from sparse_offline_rl.sparse_training.dynamic import ALL_PRUNERS

    known = {
        "algorithm": ("algo", sorted(set(available_algorithms()) | {p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml")})),
        "pruner": ("pruner", sorted(ALL_PRUNERS)),
    }
    for what, (group, options) in known.items():
        for arg in args:
            if arg.startswith(f"{group}="):
                for value in arg.split("=", 1)[1].split(","):
                    if value not in options:
                        raise ValueError(f"unknown {what} '{value}'; available: {', '.join(options)}")


def prepare(argv: list[str]) -> list[str]:
    """Import plug-ins and register config entries; return argv with `plugins` as a recorded override."""
    from sparse_offline_rl.algorithms import load_plugins
    from sparse_offline_rl.algorithms.plugins import import_plugins, store_algorithm_configs

    specs, args = plugin_specs(argv[1:])
    import_plugins(specs)
    load_plugins()
    check_choices(args)
    store_algorithm_configs(CONFIG_DIR / "algo")
    return [argv[0], *args]


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from sparse_offline_rl.algorithms.d3rlpy_backend import PREFIX, D3rlpyNotInstalledError, require_d3rlpy
    from sparse_offline_rl.algorithms.plugins import PluginImportError, import_plugins
    from sparse_offline_rl.cli import run_training

    try:
        # Again here: sweep launchers may run this function in fresh worker processes.
        import_plugins(cfg.get("plugins"))
        if str(cfg.algo.name).startswith(PREFIX):
            require_d3rlpy(cfg.algo.name)  # before any data is loaded
    except (PluginImportError, D3rlpyNotInstalledError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return run_training(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    try:
        sys.argv = prepare(sys.argv)
    except (ImportError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
