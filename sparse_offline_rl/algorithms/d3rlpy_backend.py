"""d3rlpy's continuous-control algorithms behind the `OfflineAlgorithm` protocol: `algo=d3rlpy:<name>`.

`D3rlpyAlgorithm` builds d3rlpy's implementation for the task's dimensions and exposes its torch
modules, so the one training loop prunes them at initialization, enforces the masks after every
step (online networks, target networks and Adam state alike), checkpoints and evaluates them
exactly as it does the built-ins. d3rlpy's `fit()` is not used: each step hands d3rlpy's per-batch
`impl.update` a `TorchMiniBatch` made from our `Batch`.

Names are translated to the built-ins' so `sparsity={actor: .9, critic: .95}` means the same thing
for `iql` and `d3rlpy:iql`: policy -> actor, q_funcs -> critic, value_func -> value, targ_X -> the
target of X. Scalar modules without Linear layers (SAC's log temperature, CQL's log alpha) are
trained and checkpointed but not pruned.

d3rlpy is an optional dependency: the `d3rlpy:<name>` entries are registered without importing it
(so configs compose and `available_algorithms()` lists them), and building one without d3rlpy
installed raises `D3rlpyNotInstalledError` saying how to install it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from sparse_offline_rl.errors import D3rlpyNotInstalledError
from sparse_offline_rl.algorithms.base import ProblemSpec, register_algorithm
from sparse_offline_rl.data.buffer import Batch

PREFIX = "d3rlpy:"
INSTALL_HINT = "pip install 'sparse-offline-rl[d3rlpy]' -c constraints/cpu.txt  (or: pip install d3rlpy==2.8.1 -c constraints/cpu.txt)"

# d3rlpy 2.8.1's defaults for the numeric options of each algorithm's config, passed to it by name.
# (Factories, scalers and `batch_size` are not options here: the shared loop samples the batches and
# normalises the data.) tests/test_algorithms_d3rlpy.py checks these against the installed d3rlpy.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "awac": ("AWACConfig", {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "tau": 0.005,
                            "lam": 1.0, "n_action_samples": 1, "n_critics": 2}),
    "cql": ("CQLConfig", {"actor_learning_rate": 1e-4, "critic_learning_rate": 3e-4, "temp_learning_rate": 1e-4,
                          "alpha_learning_rate": 1e-4, "tau": 0.005, "n_critics": 2, "initial_temperature": 1.0,
                          "initial_alpha": 1.0, "alpha_threshold": 10.0, "conservative_weight": 5.0,
                          "n_action_samples": 10, "soft_q_backup": False, "max_q_backup": False}),
    "iql": ("IQLConfig", {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "tau": 0.005, "n_critics": 2,
                          "expectile": 0.7, "weight_temp": 3.0, "max_weight": 100.0}),
    "sac": ("SACConfig", {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "temp_learning_rate": 3e-4,
                          "tau": 0.005, "n_critics": 2, "initial_temperature": 1.0}),
    "td3": ("TD3Config", {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "tau": 0.005, "n_critics": 2,
                          "target_smoothing_sigma": 0.2, "target_smoothing_clip": 0.5, "update_actor_interval": 2}),
    "td3plusbc": ("TD3PlusBCConfig", {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "tau": 0.005,
                                      "n_critics": 2, "target_smoothing_sigma": 0.2, "target_smoothing_clip": 0.5,
                                      "alpha": 2.5, "update_actor_interval": 2}),
}
# IQL's locomotion setting (paper, CORL, d3rlpy's reproduction script): rewards * 1000 / return spread.
NORMALIZE_REWARD = {"iql"}

# d3rlpy module name -> the built-ins' network name.
NETWORK_NAMES = {"policy": "actor", "q_funcs": "critic", "value_func": "value"}
TARGET_PREFIX = "targ_"


class CriticView(nn.Module):
    """d3rlpy's Q-function ensemble called like the built-ins' critics: (obs, act) -> (n_critics, B).
    Holds the very same modules, so pruning, masks and optimizers act on d3rlpy's parameters."""

    def __init__(self, q_funcs: nn.ModuleList) -> None:
        super().__init__()
        self.q_funcs = q_funcs

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.stack([q(observations, actions).q_value.squeeze(-1) for q in self.q_funcs])


class ValueView(nn.Module):
    """d3rlpy's state-value function called like the built-ins': obs -> (B,)."""

    def __init__(self, value_func: nn.Module) -> None:
        super().__init__()
        self.value_func = value_func

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.value_func(observations).squeeze(-1)


VIEWS: dict[str, type[nn.Module]] = {"q_funcs": CriticView, "targ_q_funcs": CriticView, "value_func": ValueView}


@dataclass
class D3rlpyConfig:
    """Options every d3rlpy variant shares; each variant adds d3rlpy's own options (see VARIANTS)."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])  # every encoder's hidden units
    discount: float = 0.99  # d3rlpy's gamma (named like the built-ins': evaluation reads algo.discount)
    normalize_obs: bool = True  # done by the shared buffer; d3rlpy's own scalers stay off
    normalize_reward: bool = False


def d3rlpy_available() -> bool:
    return importlib.util.find_spec("d3rlpy") is not None


def require_d3rlpy(name: str = "d3rlpy:<name>") -> Any:
    """The d3rlpy module, or `D3rlpyNotInstalledError` naming the install command."""
    try:
        import d3rlpy
    except ImportError as err:
        raise D3rlpyNotInstalledError(f"algo={name} needs the optional dependency d3rlpy ({err}); install it with: {INSTALL_HINT}") from err
    return d3rlpy


def d3rlpy_device(device: str) -> str:
    # d3rlpy wants an explicit index ("cuda:0"); ours may be plain "cuda".
    return "cuda:0" if device == "cuda" else "cpu:0" if device == "cpu" else device


class D3rlpyAlgorithm:
    """One d3rlpy algorithm (`variant`, e.g. "iql") as an `OfflineAlgorithm`."""

    variant: str = ""
    d3rlpy_config: str = ""
    Config: type = D3rlpyConfig

    def __init__(self, config: Any, spec: ProblemSpec) -> None:
        d3rlpy = require_d3rlpy(PREFIX + self.variant)
        from d3rlpy.models.encoders import VectorEncoderFactory

        self.config = config
        self.device = d3rlpy_device(spec.device)
        options = {k: v for k, v in dataclasses.asdict(config).items() if k not in {f.name for f in dataclasses.fields(D3rlpyConfig)}}
        config_cls = getattr(d3rlpy.algos, self.d3rlpy_config)
        encoders = {f.name: VectorEncoderFactory(hidden_units=list(config.hidden))
                    for f in dataclasses.fields(config_cls) if f.name.endswith("encoder_factory")}
        self.d3rlpy_algo = config_cls(gamma=config.discount, **encoders, **options).create(device=self.device)
        self.d3rlpy_algo.create_impl((spec.obs_dim,), spec.act_dim)
        self.impl = self.d3rlpy_algo.impl
        self.grad_step = 0
        self._ones: torch.Tensor | None = None
        # Evaluation diagnostics call networks by name (critic(obs, act), value(obs)), so those are
        # exposed through thin views with the built-ins' call signatures.
        self._exposed = {k: VIEWS[k](v) if k in VIEWS else v for k, v in self._fields().items() if isinstance(v, nn.Module)}

    # -- d3rlpy's modules by kind --------------------------------------------------------------
    def _fields(self) -> dict[str, Any]:
        mods = self.impl.modules
        return {f.name: getattr(mods, f.name) for f in dataclasses.fields(mods)}

    @staticmethod
    def _network_name(field_name: str) -> str:
        return NETWORK_NAMES.get(field_name, field_name)

    def networks(self) -> dict[str, nn.Module]:
        return {
            self._network_name(k): v for k, v in self._exposed.items()
            if not k.startswith(TARGET_PREFIX) and any(isinstance(m, nn.Linear) for m in v.modules())
        }

    def target_networks(self) -> dict[str, nn.Module]:
        return {self._network_name(k[len(TARGET_PREFIX):]): v for k, v in self._exposed.items() if k.startswith(TARGET_PREFIX)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # d3rlpy wraps each torch optimizer (grad clipping, lr schedule); masks act on the optimizer.
        return {k.removesuffix("_optim"): v.optim for k, v in self._fields().items() if hasattr(v, "optim")}

    # -- data ----------------------------------------------------------------------------------
    def _torch_batch(self, b: Batch) -> Any:
        from d3rlpy.torch_utility import TorchMiniBatch

        rewards = b.rewards.unsqueeze(-1)
        if self._ones is None or self._ones.shape != rewards.shape:
            self._ones = torch.ones_like(rewards)
        # next_actions / returns_to_go are only read by algorithms not offered here (SARSA-style, Cal-QL).
        return TorchMiniBatch(
            observations=b.observations, actions=b.actions, rewards=rewards, next_observations=b.next_observations,
            next_actions=torch.zeros_like(b.actions), returns_to_go=torch.zeros_like(rewards),
            terminals=b.dones.unsqueeze(-1), intervals=self._ones, device=self.device,
        )

    # -- protocol ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _optimizers_hidden(self) -> Iterator[None]:
        """d3rlpy's loss functions step side optimizers (SAC's temperature, CQL's alpha) when they
        exist; hiding them makes a saliency loss a pure function of the batch."""
        mods = self.impl.modules
        hidden = {k: v for k, v in self._fields().items() if hasattr(v, "optim")}
        try:
            for k in hidden:
                object.__setattr__(mods, k, None)  # the modules dataclass is frozen
            yield
        finally:
            for k, v in hidden.items():
                object.__setattr__(mods, k, v)

    def saliency_loss(self, network: str, batch: Batch) -> torch.Tensor:
        """d3rlpy's own loss for the network: the actor loss for `actor`, the critic loss for
        `critic` and `value` (IQL's critic loss is q_loss + v_loss; each network only gets its own
        term's gradient because the other term reaches it under no_grad)."""
        tb = self._torch_batch(batch)
        impl = self.impl
        with self._optimizers_hidden():
            if network == "actor" and hasattr(impl, "compute_actor_loss"):
                return impl.compute_actor_loss(tb, impl.modules.policy(tb.observations)).actor_loss
            if network in ("critic", "value") and hasattr(impl, "compute_critic_loss"):
                return impl.compute_critic_loss(tb, impl.compute_target(tb)).critic_loss
        raise ValueError(
            f"d3rlpy:{self.variant} has no saliency loss for network '{network}'; "
            "use a data-free pruner (random, magnitude, synflow)"
        )

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        metrics = self.impl.update(self._torch_batch(batch), self.grad_step)
        self.grad_step += 1
        # d3rlpy already synchronised to turn its losses into floats.
        return {k: torch.tensor(float(v)) for k, v in metrics.items()}

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.impl.predict_best_action(observations)

    def state_dict(self) -> dict[str, Any]:
        stateful = {k: v.state_dict() for k, v in self._fields().items() if hasattr(v, "state_dict")}
        return {"modules": stateful, "grad_step": self.grad_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        fields = self._fields()
        for k, value in state["modules"].items():
            fields[k].load_state_dict(value)
        self.grad_step = int(state["grad_step"])


def _register_variants() -> None:
    for variant, (config_name, defaults) in VARIANTS.items():
        base = {f.name: f for f in dataclasses.fields(D3rlpyConfig)}
        reward_default = variant in NORMALIZE_REWARD
        config_cls = make_dataclass(
            f"D3rlpy{variant.upper()}Config",
            [("normalize_reward", bool, field(default=reward_default))]
            + [(k, type(v), field(default=v)) for k, v in defaults.items()],
            bases=(D3rlpyConfig,),
        )
        config_cls.__doc__ = f"d3rlpy's {config_name} options (d3rlpy 2.8.1 defaults) plus {', '.join(base)}."
        cls = type(f"D3rlpy{variant.upper()}", (D3rlpyAlgorithm,),
                   {"variant": variant, "d3rlpy_config": config_name, "Config": config_cls, "__module__": __name__})
        register_algorithm(PREFIX + variant)(cls)


_register_variants()

__all__ = ["D3rlpyAlgorithm", "D3rlpyConfig", "D3rlpyNotInstalledError", "PREFIX", "VARIANTS", "d3rlpy_available", "require_d3rlpy"]
