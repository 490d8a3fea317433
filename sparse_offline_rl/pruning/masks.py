"""The one mask mechanism shared by every algorithm.

A `MaskSet` holds a 0/1 mask per prunable weight of each network. `bind(algo)` gathers, once, flat
lists of every tensor that must stay zero where the mask is zero: the online weights, the target
networks' weights (they share the online network's mask) and the optimizers' per-weight state
(e.g. Adam's exp_avg / exp_avg_sq). `apply()` is then a single `torch._foreach_mul_` per step.

Optimizer state appears lazily (Adam creates it on a parameter's first step, and TD3+BC's actor only
steps every other update) and is replaced wholesale by `optimizer.load_state_dict` (resuming from a
checkpoint). `apply()` therefore re-gathers until every masked parameter an optimizer owns has its
state bound, and again whenever an optimizer's state dict object changes; both checks are a few
pointer comparisons per step.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn


def prunable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Weight matrices of Linear layers, by parameter name. Biases and norm parameters are not pruned."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, nn.Linear):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


class MaskSet:
    def __init__(self, masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        # network name -> parameter name -> float mask (1 keep, 0 pruned), same shape as the weight
        self.masks: dict[str, dict[str, torch.Tensor]] = {
            net: {p: m.detach().float() for p, m in params.items()} for net, params in (masks or {}).items()
        }
        self._tensors: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._state_refs: list[Any] = []
        self._state_bound = False

    def __bool__(self) -> bool:
        return any(self.masks.values())

    # -- binding to an algorithm -------------------------------------------------------------
    def bind(self, algo: Any) -> "MaskSet":
        """Resolve every tensor to keep masked and zero them now. Call after pruning, before training
        (and again if the algorithm's networks or optimizers are rebuilt as new objects)."""
        nets = algo.networks()
        targets = algo.target_networks()
        unknown = set(self.masks) - set(nets)
        if unknown:
            raise KeyError(f"masks for unknown network(s) {sorted(unknown)}; the algorithm has {sorted(nets)}")
        self._weights = []
        for net_name, param_masks in self.masks.items():
            online = prunable_parameters(nets[net_name])
            target = prunable_parameters(targets[net_name]) if net_name in targets else {}
            missing = set(param_masks) - set(online)
            if missing:
                raise KeyError(f"masks for unknown layer(s) {sorted(missing)} of network '{net_name}'")
            for pname, mask in param_masks.items():
                weight = online[pname]
                if mask.shape != weight.shape:
                    raise ValueError(
                        f"mask for '{net_name}.{pname}' has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}"
                    )
                mask = mask.to(device=weight.device, dtype=weight.dtype)
                param_masks[pname] = mask
                # The Parameter itself (not `.data`) so that a later `param.data = ...` is still seen.
                self._weights.append((weight, mask))
                if pname in target:
                    self._weights.append((target[pname], mask))
        self._optimizers = list(algo.optimizers().values())
        self._state_bound = False
        self._rebuild()
        self.apply()
        return self

    def _rebuild(self) -> None:
        tensors = [w for w, _ in self._weights]
        factors = [m for _, m in self._weights]
        masked = {id(w): m for w, m in self._weights}
        all_bound = True
        for opt in self._optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in masked:
                        continue
                    state = opt.state.get(p, {})
                    per_weight = [v for v in state.values() if torch.is_tensor(v) and v.shape == p.shape]
                    if not per_weight:
                        all_bound = False
                    for value in per_weight:
                        tensors.append(value)
                        factors.append(masked[id(p)].to(value.dtype))
        self._state_refs = [opt.state for opt in self._optimizers]
        self._state_bound = all_bound
        self._tensors, self._factors = tensors, factors

    def apply(self) -> None:
        """Zero every pruned entry of weights, target weights and optimizer state."""
        if not self._weights:
            return
        if not self._state_bound or any(opt.state is not ref for opt, ref in zip(self._optimizers, self._state_refs)):
            self._rebuild()
        with torch.no_grad():
            torch._foreach_mul_(self._tensors, self._factors)

    # -- measurements ------------------------------------------------------------------------
    def layer_density(self, algo: Any | None = None) -> dict[str, dict[str, float]]:
        """Fraction of nonzero entries per layer, measured on the weights when `algo` is given."""
        out: dict[str, dict[str, float]] = {}
        if algo is not None:
            for net_name, net in algo.networks().items():
                out[net_name] = {p: float((w != 0).float().mean()) for p, w in prunable_parameters(net).items()}
            return out
        return {n: {p: float(m.mean()) for p, m in pm.items()} for n, pm in self.masks.items()}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: {p: m.to(torch.bool).cpu() for p, m in pm.items()} for n, pm in self.masks.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, torch.Tensor]]) -> "MaskSet":
        return cls(state)


def network_density(module: nn.Module) -> float:
    """Achieved fraction of nonzero prunable weights in one network, counted on the weights."""
    weights: Iterable[torch.Tensor] = prunable_parameters(module).values()
    nonzero = total = 0
    for w in weights:
        nonzero += int((w != 0).sum())
        total += w.numel()
    return nonzero / total if total else 1.0
