"""The typed config of one training run: `RunConfig` (with `EvalConfig` for `eval.*`) mirrors the
top-level keys of configs/config.yaml, and `RunConfig.from_dict` builds it from the composed Hydra
dict, checking every value where its field is declared (`checks.check_value`'s one-line errors).

`algo` and `pruner` stay mappings: their own layers check them (`algorithms.algorithm_config`, and
`validate_pruner_options` here until pruning has its typed config). A key with a default may be left
out of the dict; the others are required. `validate_config` adds the checks that read several keys
together and returns the RunConfig.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from sparse_offline_rl.algorithms import ProblemSpec, algorithm_config, get_algorithm, make_algorithm
from sparse_offline_rl.algorithms.optimizers import OPTIMIZERS
from sparse_offline_rl.checks import check_value
from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.evaluation.rollout import MAX_EVAL_EPISODES, SEED_RANGE
from sparse_offline_rl.sparse.kernels import MODES


def to_dict(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def checked(interval: str | None = None, *, choices: Sequence[str] | None = None,
            check: Callable[[str, Any], None] | None = None, default: Any = dataclasses.MISSING) -> Any:
    """A field whose value `from_dict` checks: against its type hint (and `interval` / `choices`), or by
    `check(key, value)` for values a type cannot describe."""
    return field(default=default, metadata={"within": interval, "choices": choices, "check": check})


def check_algo(key: str, algo: Mapping[str, Any]) -> None:
    algorithm_config(algo)  # a known algorithm (lists them on a miss); every algo.<key>: known, right type, in range


def check_env(key: str, env: str) -> None:
    get_task(env)  # lists known envs


def check_pruner(key: str, pruner: Mapping[str, Any]) -> None:
    from sparse_offline_rl.sparse_training.dynamic import ALL_PRUNERS

    if pruner["name"] not in ALL_PRUNERS:
        raise ConfigError(f"unknown pruner '{pruner['name']}'; available: {', '.join(sorted(ALL_PRUNERS))}")
    validate_pruner_options(pruner)


def check_sparsity(key: str, sparsity: float | Mapping[str, float]) -> None:
    values = [(f"{key}.{k}", v) for k, v in sparsity.items()] if isinstance(sparsity, Mapping) else [(key, sparsity)]
    for name, value in values:
        check_value(name, value, float, "[0, 1)")


def check_device(key: str, device: str) -> None:
    if device not in ("cpu", "cuda", "auto") and not re.fullmatch(r"cuda:\d+", str(device)):
        raise ConfigError(f"{key}={device!r} is invalid; accepted: cpu, cuda, cuda:N, auto")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """`eval.*`: evaluation every `every` steps on `episodes` reset seeds (they follow the run seed),
    and the optional generalization suite at the end."""

    every: int = checked("[1, inf)")
    episodes: int = checked(f"[1, {MAX_EVAL_EPISODES}]")
    suite: str | None = checked(default=None)


# Field order is the order of the checks (the first bad value is the one reported).
@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run's settings (configs/config.yaml explains each). Values with defaults may be
    omitted from the dict; `algo` and `pruner` are the mappings their layers read."""

    algo: dict[str, Any] = checked(check=check_algo)
    env: str = checked(check=check_env)
    pruner: dict[str, Any] = checked(check=check_pruner)
    sparsity: float | dict[str, float] = checked(check=check_sparsity)
    dataset: str = checked()
    seed: int = checked(SEED_RANGE)
    steps: int = checked("[1, inf)")
    batch_size: int = checked("[1, inf)")
    val_fraction: float = checked("[0, 1)", default=0.0)
    threads: int | None = checked("[1, inf)", default=None)
    checkpoint_every: int = checked("[1, inf)")
    log_every: int = checked("[1, inf)")
    eval: EvalConfig = checked()
    sparse_kernels: str = checked(choices=MODES, default="auto")
    optim: str = checked(choices=OPTIMIZERS, default="adam")
    resume: bool = checked(default=False)
    tensorboard: bool = checked(default=True)
    progress: bool = checked(default=True)
    verbose: bool = checked(default=True)
    device: str = checked(check=check_device, default="cpu")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """Checked values of the composed config (keys of other layers, e.g. `plugins`, are ignored)."""
        return cls(**read_fields(cls, cfg))

    @property
    def algo_name(self) -> str:
        return self.algo["name"]


#: The defaults of the keys that may be omitted, for code that reads an unchecked config dict.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(RunConfig)
                            if f.default is not dataclasses.MISSING}


def read_fields(cls: type, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each field of `cls` from `values` (its default when omitted and it has one), checked."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        value = values[f.name] if f.default is dataclasses.MISSING else values.get(f.name, f.default)
        if dataclasses.is_dataclass(hint):
            out[f.name] = hint(**read_fields(hint, value, f"{key}."))
            continue
        if f.metadata["check"] is not None:
            f.metadata["check"](key, value)
        else:
            args = typing.get_args(hint)
            kind = next(a for a in args if a is not type(None)) if args else hint
            check_value(key, value, kind, f.metadata["within"], optional=type(None) in args,
                        choices=f.metadata["choices"])
        out[f.name] = value
    return out


def validate_pruner_options(pruner: Mapping[str, Any]) -> None:
    """The pruner.* keys, checked before the data loads (pruning itself runs after it): each value by
    `PrunerConfig` (its one home, which `options` runs first), then the during-training rules."""
    from sparse_offline_rl.pruning.config import OPTIONS
    from sparse_offline_rl.sparse_training.dynamic import options

    unknown = sorted(set(pruner) - {"name", *OPTIONS})
    if unknown:
        raise ConfigError(f"pruner.{unknown[0]} is not a pruner option; accepted: {', '.join(OPTIONS)}")
    try:
        options(pruner)  # the during-training schedule (pruner=gmp|set|rigl|gibbs), refused for the others
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_network_mappings(config: RunConfig) -> None:
    """Per-network `sparsity` / `pruner.budget_*` mappings name the algorithm's networks: checked on a copy
    built from the env's dimensions (RNG left alone), so a typo fails before data is loaded or downloaded."""
    pruner = config.pruner
    mappings = {key: value for key, value in (("sparsity", config.sparsity),
                                                ("pruner.budget_params", pruner.get("budget_params")),
                                                ("pruner.budget_flops", pruner.get("budget_flops")),
                                                ("pruner.weight_sparsity", pruner.get("weight_sparsity")))
                if isinstance(value, Mapping)}
    if not mappings and pruner.get("budget_networks") is None:
        return
    task = get_task(config.env)
    with torch.random.fork_rng(devices=[]):
        spec = ProblemSpec(task.obs_dim, task.act_dim, optim=config.optim)  # optim: algo.weight_decay needs lamb
        names = list(make_algorithm(config.algo_name, spec, config.algo).networks())
    from sparse_offline_rl.pruning import per_network
    from sparse_offline_rl.pruning.prune import budget_networks

    try:
        for key, value in mappings.items():
            per_network(value, names, key)
        budget_networks(pruner, names)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_optimizer(config: RunConfig) -> None:
    """`optim` must be one the algorithm builds (else the run would train with Adam but say otherwise);
    `algo.weight_decay` (range checked with the other algo keys) is LAMB's: under Adam it would be
    silently ignored. Only for algorithms that build their optimizers with `make_optimizer` (they
    accept lamb); a plug-in's own `weight_decay` means whatever it says."""
    supported = getattr(get_algorithm(config.algo_name).factory, "supported_optimizers", ("adam",))
    if config.optim not in supported:
        raise ConfigError(f"optim={config.optim!r} is invalid for algo={config.algo_name}: it builds its own "
                          f"optimizers ({', '.join(supported)}); a plug-in opts in by setting `supported_optimizers` "
                          f"and building them with `make_optimizer(..., spec.optim)`")
    decay = config.algo.get("weight_decay", 0.0)
    if "lamb" in supported and decay and config.optim != "lamb":
        raise ConfigError(f"algo.weight_decay={decay!r} is invalid with optim={config.optim}: it is LAMB's decoupled "
                          f"weight decay; 0 is required unless optim=lamb")


def validate_config(cfg: Mapping[str, Any]) -> RunConfig:
    """Fail before any data is loaded on values that can never work: one line naming the key, the
    value and what is accepted. Returns the typed config."""
    config = RunConfig.from_dict(cfg)
    check_optimizer(config)
    check_network_mappings(config)
    return config


def resolve_sparsity(sparsity: float | Mapping[str, float], networks: Sequence[str]) -> dict[str, float]:
    """A float applies to every network; a mapping names networks (plus an optional `default`).
    Checked here, before pruning, so a bad mapping is a config error raised early."""
    from sparse_offline_rl.pruning import per_network

    try:
        return {n: float(v) for n, v in per_network(sparsity, networks, "sparsity").items()}
    except ValueError as err:
        raise ConfigError(str(err)) from None


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} requested but CUDA is not available; use device=cpu")
    return name
