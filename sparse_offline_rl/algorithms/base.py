"""The small protocol every offline-RL algorithm implements, and the registry that names them.

Pruning, mask enforcement, checkpointing and evaluation only talk to an algorithm through
`OfflineAlgorithm`, so they are written once for all of them (built-in or plug-in).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from sparse_offline_rl.checks import check_field
from sparse_offline_rl.data.buffer import Batch
from sparse_offline_rl.errors import ConfigError, UnknownNameError
from sparse_offline_rl.seeding import Stream, stream_seed

if TYPE_CHECKING:
    from sparse_offline_rl.data.dataset import OfflineDataset
    from sparse_offline_rl.data.prepare import PreparedData


@dataclass(frozen=True)
class ProblemSpec:
    """What an algorithm needs to know about the task to build its networks."""

    obs_dim: int
    act_dim: int
    max_action: float = 1.0
    total_steps: int = 1_000_000  # for schedules (e.g. IQL's cosine actor lr)
    device: str = "cpu"
    optim: str = "adam"  # the networks' optimizer: adam | lamb (networks.make_optimizer)
    # K stacked agents trained together in one object (training.stacked; the field keeps its
    # plug-in-facing name): a batch holds each agent's B rows in turn ([K * B, ...], agent-major), and
    # a loss is the sum of the agents' own losses (networks.AgentRows takes each agent's means).
    # 1 for every single run.
    members: int = 1


@runtime_checkable
class OfflineAlgorithm(Protocol):
    """What an algorithm provides. Observations given to it are already normalised by the buffer."""

    config: Any

    def networks(self) -> dict[str, nn.Module]:
        """Online networks by name ("actor", "critic", "value"): the ones pruned at initialization."""

    def target_networks(self) -> dict[str, nn.Module]:
        """Target copies, keyed by the name of the online network they track (they share its mask)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name; mask enforcement zeroes their state for pruned weights."""

    def saliency_loss(self, network: str, batch: Batch) -> torch.Tensor:
        """The loss whose gradients score `network`'s weights (SNIP, GraSP). Only that network's
        parameters may receive gradients from it: others are used under no_grad or detached."""

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on a batch. Returns detached scalar tensors (logged sparsely, so no sync)."""

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        """Deterministic actions for a batch of normalised observations."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: networks, targets, optimizers, schedulers, step."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class AlgorithmEntry:
    name: str
    factory: Callable[..., OfflineAlgorithm]
    config_cls: type


_REGISTRY: dict[str, AlgorithmEntry] = {}


def register_algorithm(name: str, config_cls: type | None = None) -> Callable[[type], type]:
    """Class decorator: `@register_algorithm("iql")` on a class with a dataclass `Config` attribute
    (or pass `config_cls`). The class is constructed as `cls(config, spec: ProblemSpec)`."""

    def decorate(cls: type) -> type:
        cfg_cls = config_cls or getattr(cls, "Config", None)
        if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
            raise TypeError(f"algorithm '{name}' needs a dataclass config: set `Config` on the class or pass config_cls")
        if name in _REGISTRY and _REGISTRY[name].factory is not cls:
            raise ValueError(f"algorithm name '{name}' is already registered by {_REGISTRY[name].factory!r}")
        _REGISTRY[name] = AlgorithmEntry(name, cls, cfg_cls)
        return cls

    return decorate


def is_registered(cls: type) -> bool:
    """Whether `cls` is the factory of some registered algorithm (under any name)."""
    return any(entry.factory is cls for entry in _REGISTRY.values())


def available_algorithms() -> list[str]:
    from sparse_offline_rl.algorithms import load_plugins

    load_plugins()
    return sorted(_REGISTRY)


def get_algorithm(name: str) -> AlgorithmEntry:
    from sparse_offline_rl.algorithms import load_plugins

    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown algorithm '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_config(config_cls: type, values: Mapping[str, Any] | None, prefix: str = "algo") -> Any:
    """Dataclass from a mapping. Unknown keys fail loudly (typos), and so does every given value that
    does not fit its field's type hint or declared range (`checks.within`), naming `prefix.key`."""
    values = dict(values or {})
    values.pop("name", None)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {config_cls.__name__}; accepted: {', '.join(sorted(fields))}"
        )
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):  # a plug-in's annotation that cannot be resolved: its values go unchecked
        hints = {}
    for key, value in values.items():
        check_field(f"{prefix}.{key}", value, hints.get(key, Any), fields[key].metadata.get("within"))
    return config_cls(**values)


def algorithm_config(values: Mapping[str, Any]) -> Any:
    """The config dataclass of the algorithm `values["name"]`, with the other entries as its options (checked)."""
    return build_config(get_algorithm(values["name"]).config_cls, values)


def prepare_data(cfg: Mapping[str, Any], dataset: OfflineDataset, device: str = "cpu") -> PreparedData:
    """A run's preprocessing, shared by training and by reloading an agent: episode split by
    (val_fraction, seed); normaliser and reward scale from the training split when the algorithm
    opts in through its config fields `normalize_obs` / `normalize_reward` (plug-ins may omit them)."""
    from sparse_offline_rl.data.prepare import PreparedData  # late: gymnasium is not needed to import the package

    algo_config = algorithm_config(cfg["algo"])
    return PreparedData.from_dataset(
        dataset, cfg["env"], val_fraction=float(cfg.get("val_fraction", 0.0) or 0.0),
        seed=stream_seed(int(cfg["seed"]), Stream.VAL_SPLIT),
        normalize_obs=getattr(algo_config, "normalize_obs", False),
        normalize_reward=getattr(algo_config, "normalize_reward", False), device=device,
    )


def make_algorithm(name: str, spec: ProblemSpec, config: Mapping[str, Any] | Any | None = None) -> OfflineAlgorithm:
    entry = get_algorithm(name)
    cfg = config if isinstance(config, entry.config_cls) else build_config(entry.config_cls, config)
    return entry.factory(cfg, spec)


def collect_state(owner: Any, names: list[str]) -> dict[str, Any]:
    """state_dict of each named attribute (modules, optimizers, schedulers); plain values as they are."""
    return {n: (getattr(owner, n).state_dict() if hasattr(getattr(owner, n), "state_dict") else getattr(owner, n)) for n in names}


def restore_state(owner: Any, state: Mapping[str, Any]) -> None:
    """Inverse of `collect_state`."""
    for name, value in state.items():
        attr = getattr(owner, name)
        if hasattr(attr, "load_state_dict"):
            attr.load_state_dict(value)
        else:
            setattr(owner, name, value)
