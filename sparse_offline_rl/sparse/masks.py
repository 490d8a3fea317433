"""The one mask mechanism shared by every algorithm.

A `MaskSet` holds a 0/1 mask per prunable weight of each network. A pruned weight must be exactly
zero in *every* forward pass, including those an algorithm runs inside one `update()` after one of
its optimizers stepped (IQL's V(s') after the value step, TD3+BC's Q1 after the critic step). So the
masks are enforced where no algorithm can forget them: `bind(algo)` registers a step post-hook on
each of `algo.optimizers()`, and right after every optimizer step one `torch._foreach_mul_` zeroes
the pruned entries of the weights that optimizer owns, of their target-network copies (they share
the online network's mask) and of its per-weight state (e.g. Adam's exp_avg / exp_avg_sq). Target
networks only ever move towards masked online weights (Polyak, hard copies), so they stay zero too.
An optimizer whose step reads whole tensors (LAMB's trust-ratio norms) says so with
`needs_masked_gradients = True` and also gets a step pre-hook that zeroes the pruned gradient entries.

Layers converted to compressed `SparseLinear` layers (kernels.apply_sparse_kernels) store only
their kept weights, so a pruned entry is zero by construction: `bind` checks that such a layer's
pattern is its mask and leaves it out of the hooks. One MaskSet thus describes every pruned layer
(for checkpoints and reports) whichever way each is computed.

Optimizer state appears lazily (Adam creates it on a parameter's first step, and TD3+BC's actor only
steps every other update) and is replaced wholesale by `optimizer.load_state_dict` (resuming from a
checkpoint). A hook therefore re-gathers its tensors when its optimizer's state dict object or its
number of entries changes: a few pointer comparisons per step.
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from sparse_offline_rl.sparse.linear import SparseLinear, sparse_layers
from sparse_offline_rl.sparse.stacked_layers import StackedDense

# The group whose hook enforces masks on each optimizer: binding a new MaskSet to an algorithm
# replaces the old one's hooks instead of stacking a second set of masks on top. Weak both ways, so
# an algorithm that is dropped is freed with its optimizers.
_BOUND: "weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.ref[_OptimizerGroup]]" = weakref.WeakKeyDictionary()


def prunable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Weight matrices of Linear layers, by parameter name. Biases and norm parameters are not pruned.
    A SparseLinear has none: its pruned entries no longer exist (see `layer_weights`). A member-stacked
    dense layer's (K, out, in) weight counts too, so stacked members' masks are enforced alike."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, (nn.Linear, StackedDense)):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


def layer_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The (out, in) weight of every Linear and SparseLinear layer, keyed like `prunable_parameters`
    ("<layer>.weight"): what counts and checks read, whichever way a layer is stored. A SparseLinear's
    is rebuilt dense (a new tensor, zeros at pruned entries); an nn.Linear's is the Parameter."""
    out: dict[str, torch.Tensor] = dict(prunable_parameters(module))
    out.update({name: layer.dense_weight() for name, layer in sparse_layers(module).items()})
    return out


class _OptimizerGroup:
    """What one optimizer's step can un-zero: the masked weights it owns, their target copies and
    its per-weight state, as flat lists for a single foreach multiply."""

    def __init__(self, optimizer: torch.optim.Optimizer, weights: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]) -> None:
        self.optimizer = optimizer
        self.weights = weights  # (online weight, mask, [target copies])
        self.tensors: list[torch.Tensor] = []
        self.factors: list[torch.Tensor] = []
        self._state_ref: Any = None
        self._state_len = -1
        self.handle: Any = None  # the step post-hook, while it is registered
        self.pre_handle: Any = None  # the gradient-masking pre-hook, for optimizers that ask for it

    def hook(self) -> None:
        previous = _BOUND.get(self.optimizer)
        if previous is not None and previous() is not None:
            previous().unhook()
        self.handle = self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply())
        if getattr(self.optimizer, "needs_masked_gradients", False):
            self.pre_handle = self.optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.mask_gradients())
        _BOUND[self.optimizer] = weakref.ref(self)

    def unhook(self) -> None:
        for handle in (self.handle, self.pre_handle):
            if handle is not None:
                handle.remove()
        self.handle = self.pre_handle = None

    def mask_gradients(self) -> None:
        """Zero the pruned entries of the gradients an optimizer with whole-tensor statistics (LAMB's
        trust ratio) is about to read; an elementwise optimizer (Adam) needs no such pass."""
        pairs = [(w.grad, mask) for w, mask, _ in self.weights if w.grad is not None]
        if pairs:
            with torch.no_grad():
                torch._foreach_mul_([g for g, _ in pairs], [m.to(g.dtype) for g, m in pairs])

    def gather(self) -> None:
        tensors: list[torch.Tensor] = []
        factors: list[torch.Tensor] = []
        for weight, mask, copies in self.weights:
            for t in (weight, *copies):
                tensors.append(t)
                factors.append(mask)
            for value in self.optimizer.state.get(weight, {}).values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    tensors.append(value)
                    factors.append(mask.to(value.dtype))
        self.tensors, self.factors = tensors, factors
        self._state_ref, self._state_len = self.optimizer.state, len(self.optimizer.state)

    def apply(self) -> None:
        state = self.optimizer.state
        if state is not self._state_ref or len(state) != self._state_len:
            self.gather()
        with torch.no_grad():
            torch._foreach_mul_(self.tensors, self.factors)


def _check_pattern(layer: SparseLinear, mask: torch.Tensor, where: str) -> None:
    """A compressed layer is masked by its pattern; a different mask would be silently ignored."""
    if tuple(mask.shape) != (layer.out_features, layer.in_features) or not torch.equal(
            layer.mask(), mask.to(device=layer.values.device, dtype=torch.bool)):
        raise ValueError(f"mask for '{where}' differs from the sparsity pattern of its SparseLinear layer")


class MaskSet:
    def __init__(self, masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        # network name -> parameter name -> float mask (1 keep, 0 pruned), same shape as the weight
        self.masks: dict[str, dict[str, torch.Tensor]] = {
            net: {p: m.detach().float() for p, m in params.items()} for net, params in (masks or {}).items()
        }
        self._groups: list[_OptimizerGroup] = []
        self._unowned: list[tuple[torch.Tensor, torch.Tensor]] = []  # frozen weights no optimizer moves

    def __bool__(self) -> bool:
        return any(self.masks.values())

    # -- binding to an algorithm -------------------------------------------------------------
    def bind(self, algo: Any) -> "MaskSet":
        """Zero every pruned entry now and after every step of each of `algo.optimizers()`. Call
        after pruning, before training (and again if the algorithm's networks or optimizers are
        rebuilt as new objects, e.g. converted to SparseLinear layers: those are checked against
        their masks and need no hook). Replaces any MaskSet bound earlier to the same optimizers."""
        nets = algo.networks()
        targets = algo.target_networks()
        unknown = set(self.masks) - set(nets)
        if unknown:
            raise KeyError(f"masks for unknown network(s) {sorted(unknown)}; the algorithm has {sorted(nets)}")
        optimizers = list({id(o): o for o in algo.optimizers().values()}.values())  # one hook per optimizer
        owner = {id(p): opt for opt in optimizers for group in opt.param_groups for p in group["params"]}
        per_opt: dict[int, list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]] = {id(o): [] for o in optimizers}
        unowned: list[tuple[torch.Tensor, torch.Tensor]] = []
        for net_name, param_masks in self.masks.items():
            online = prunable_parameters(nets[net_name])
            target = prunable_parameters(targets[net_name]) if net_name in targets else {}
            compressed = sparse_layers(nets[net_name])
            missing = set(param_masks) - set(online) - set(compressed)
            if missing:
                raise KeyError(f"masks for unknown layer(s) {sorted(missing)} of network '{net_name}'")
            for pname, mask in param_masks.items():
                if pname in compressed:
                    _check_pattern(compressed[pname], mask, f"{net_name}.{pname}")
                    continue
                weight = online[pname]
                if mask.shape != weight.shape:
                    raise ValueError(
                        f"mask for '{net_name}.{pname}' has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}"
                    )
                mask = mask.to(device=weight.device, dtype=weight.dtype)
                param_masks[pname] = mask
                copies = [target[pname]] if pname in target else []
                opt = owner.get(id(weight))
                if opt is not None:
                    # The Parameter itself (not `.data`) so that a later `param.data = ...` is still seen.
                    per_opt[id(opt)].append((weight, mask, copies))
                elif weight.requires_grad:
                    raise ValueError(
                        f"network '{net_name}': weight {pname} is trained (requires_grad) but owned by none of "
                        "algo.optimizers(); masks are enforced after each step of those optimizers, so list the "
                        "optimizer that trains it"
                    )
                else:
                    unowned += [(t, mask) for t in (weight, *copies)]
        self.unbind()
        self._groups = [_OptimizerGroup(opt, per_opt[id(opt)]) for opt in optimizers if per_opt[id(opt)]]
        self._unowned = unowned
        for group in self._groups:
            group.hook()
        self.apply()
        return self

    def set_masks(self, algo: Any, new: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict[str, tuple[int, int]]]:
        """Change masks during training (sparse training: GMP, SET, RigL), then enforce them as `bind`
        does. `new` names layers already masked ({network: {layer weight: bool/0-1 mask}}); layers it
        leaves out keep their mask. A weight that leaves the mask (dropped) becomes zero, with its
        target copies and optimizer state, as any pruned weight. A weight that enters it (regrown)
        starts at exactly zero, and so do its target copies and its per-weight optimizer state
        (Adam's exp_avg / exp_avg_sq; the per-tensor step count cannot be reset per entry): it is
        trained from zero like RigL's new connections, and a target copy follows it from zero.
        The changed layers must be dense-masked (`nn.Linear`): a SparseLinear's pattern is its mask,
        so it is densified first and rebuilt after (`pruning.dynamic.rewire`).
        Returns {network: {layer weight: (dropped, grown)}} for the layers that changed."""
        nets, targets = algo.networks(), algo.target_networks()
        owner = {id(p): opt for opt in algo.optimizers().values() for group in opt.param_groups for p in group["params"]}
        changes: dict[str, dict[str, tuple[int, int]]] = {}
        for net_name, layer_masks in new.items():
            online = prunable_parameters(nets[net_name])
            target = prunable_parameters(targets[net_name]) if net_name in targets else {}
            for pname, mask in layer_masks.items():
                old = self.masks.get(net_name, {}).get(pname)
                if old is None:
                    raise KeyError(f"no mask for '{net_name}.{pname}' to change; masked layers: "
                                   f"{', '.join(f'{n}.{p}' for n, pm in self.masks.items() for p in pm)}")
                if pname not in online:
                    raise ValueError(f"'{net_name}.{pname}' is not a dense-masked nn.Linear weight (a SparseLinear "
                                     "must be densified before its mask changes: pruning.dynamic.rewire)")
                weight = online[pname]
                keep = mask.to(device=weight.device, dtype=torch.bool)
                was = old.to(device=weight.device, dtype=torch.bool)
                if keep.shape != was.shape:
                    raise ValueError(f"new mask for '{net_name}.{pname}' has shape {tuple(keep.shape)}, "
                                     f"the weight {tuple(was.shape)}")
                grown, dropped = keep & ~was, was & ~keep
                if not (grown.any() or dropped.any()):
                    continue
                opt = owner.get(id(weight))
                state = opt.state.get(weight, {}) if opt is not None else {}
                with torch.no_grad():
                    for t in (weight, *([target[pname]] if pname in target else []),
                              *(v for v in state.values() if torch.is_tensor(v) and v.shape == weight.shape)):
                        t.masked_fill_(grown | dropped, 0.0)
                self.masks[net_name][pname] = keep.to(weight.dtype)
                changes.setdefault(net_name, {})[pname] = (int(dropped.sum()), int(grown.sum()))
        self.bind(algo)
        return changes

    def unbind(self) -> None:
        """Stop enforcing these masks (remove the optimizer hooks); the weights keep their values."""
        for group in self._groups:
            group.unhook()

    def apply(self) -> None:
        """Zero every pruned entry of weights, target weights and optimizer state now (the hooks do
        this after every optimizer step; calling it again changes nothing). Optimizers another
        MaskSet has been bound to since are left to that one."""
        for group in self._groups:
            if group.handle is not None:
                group.apply()
        if self._unowned:
            with torch.no_grad():
                torch._foreach_mul_([t for t, _ in self._unowned], [m for _, m in self._unowned])

    @property
    def num_tensors(self) -> int:
        """Tensors re-zeroed per step, over all optimizers (weights, target copies, optimizer state)."""
        return sum(len(g.tensors) for g in self._groups) + len(self._unowned)

    # -- measurements ------------------------------------------------------------------------
    def layer_density(self, algo: Any | None = None) -> dict[str, dict[str, float]]:
        """Fraction of nonzero entries per layer, measured on the weights when `algo` is given."""
        out: dict[str, dict[str, float]] = {}
        if algo is not None:
            for net_name, net in algo.networks().items():
                out[net_name] = {p: float((w != 0).float().mean()) for p, w in layer_weights(net).items()}
            return out
        return {n: {p: float(m.mean()) for p, m in pm.items()} for n, pm in self.masks.items()}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: {p: m.to(torch.bool).cpu() for p, m in pm.items()} for n, pm in self.masks.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, torch.Tensor]]) -> "MaskSet":
        return cls(state)


def network_density(module: nn.Module) -> float:
    """Achieved fraction of nonzero prunable weights in one network, counted on the weights (a
    SparseLinear's over its full out x in)."""
    weights: Iterable[torch.Tensor] = layer_weights(module).values()
    nonzero = total = 0
    for w in weights:
        nonzero += int((w != 0).sum())
        total += w.numel()
    return nonzero / total if total else 1.0
