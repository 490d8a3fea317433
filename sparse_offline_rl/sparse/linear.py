"""Compressed sparse linear layers for pruned networks: the kept weights are the only parameters.

Between mask updates (after pruning at initialization: the whole run; GMP, SET, RigL: densified and
rebuilt around each update, `densify_algorithm` / `sparsify_algorithm`) a pruned `nn.Linear` can
store just its kept weights as a CSR matrix: `values` (shape (nnz,), row-major order of the mask)
is the trainable parameter, the pattern is a fixed buffer. Forward, input gradient and weight
gradient then cost O(nnz * batch) instead of O(out * in * batch), optimizer state exists only for
kept weights, and a pruned weight is zero by construction (no mask to re-apply).

Layout. torch's CPU CSR product (MKL) is fastest as `csr @ dense` with a row-major dense operand:
about 7x slower as `dense @ csr`, 10-45% slower with a column-major dense operand (measured in
benchmarks/bench_sparse_linear.py --variants). So every product here runs feature-major:
y^T = W x^T with x^T contiguous (in, B); the output is a (B, out) tensor whose transpose is
contiguous, which is exactly the operand the next sparse layer wants, and elementwise layers (ReLU,
tanh) keep that layout. The input gradient is W^T g^T with a second CSR of W^T (its values a fixed
permutation gather of `values`; a CSC view of W is 2-2.5x slower in the product), and the weight
gradient `sampled_addmm(pattern, g^T, x)` computes only the kept entries of g^T x (its kernel
reads x^T rows, so the saved x^T is passed as is: 10-50% faster than a row-major x).

Only first-order gradients: pruning scores that need Hessian-vector products (GraSP) run on the
dense network before conversion. Gradients with respect to the input with frozen weights (an actor
loss through a critic) work as usual.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# MKL's sparse BLAS (LP64) takes 32-bit indices; int64 ones would be converted on every call.
INDEX_DTYPE = torch.int32


def csr_pattern(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow_indices, col_indices) of a 2-D boolean mask, entries in row-major order."""
    mask = mask.to(torch.bool)
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(mask.sum(1), 0, out=crow[1:])
    col = mask.nonzero()[:, 1]
    return crow.to(INDEX_DTYPE), col.to(INDEX_DTYPE)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
         check_invariants: bool = False) -> torch.Tensor:
    # torch warns on every first CSR tensor of a process that the layout is in beta; a training run
    # would print it on each start, though nothing here depends on what may change.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=check_invariants)


class _Kernels:
    """The CSR tensors one layer multiplies with, built once instead of per call (about 3 us each,
    and a layer runs several times per training step). `w` shares `values`' storage, so in-place
    updates (optimizer steps, Polyak, load_state_dict) show through; a new storage (`.to()`,
    `param.data = ...`, a deepcopy) is noticed by its data pointer and the tensors are rebuilt."""

    __slots__ = ("key", "w", "pattern", "wt_values", "wt")

    def __init__(self, layer: "SparseLinear", values: torch.Tensor) -> None:
        shape = (layer.out_features, layer.in_features)
        self.key = (values.data_ptr(), values.dtype)
        # Built as normal tensors even when the first call comes under inference_mode: the W^T
        # buffer is written in place during training, which inference tensors forbid.
        with torch.inference_mode(False):
            self.w = _csr(layer.crow_indices, layer.col_indices, values.detach(), shape)
            # sampled_addmm multiplies its input's values by beta = 0, but NaN * 0 is NaN: zeros.
            self.pattern = _csr(layer.crow_indices, layer.col_indices, torch.zeros_like(values.detach()), shape)
            # W^T's values: refilled by a gather from `values` before each input-gradient product.
            self.wt_values = torch.empty_like(values.detach())
            self.wt = _csr(layer.t_crow_indices, layer.t_col_indices, self.wt_values, shape[::-1])


def _kernels(layer: "SparseLinear", values: torch.Tensor) -> _Kernels:
    k = layer._kernel_cache
    if k is None or k.key != (values.data_ptr(), values.dtype):
        k = layer._kernel_cache = _Kernels(layer, values)
    return k


def csr_forward(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layer: "SparseLinear") -> tuple[torch.Tensor, torch.Tensor]:
    """y = x W^T + b for 2-D x, and the (in, B) contiguous x^T that the weight gradient reuses."""
    xt = x.t()
    if not xt.is_contiguous():
        xt = xt.contiguous()
    batch = x.shape[0]
    w = _kernels(layer, values).w
    # A (B, out) tensor stored as (out, B): the product writes it in its natural layout, and the
    # result is not a view, so in-place activations after this layer are allowed.
    y = torch.empty_strided((batch, layer.out_features), (1, batch), dtype=x.dtype, device=x.device)
    _product(w, xt, y.t(), bias)
    return y, xt


def _product(w: torch.Tensor, dense: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """out = w @ dense (+ bias per row), written in place. torch.mm(out=) would first copy a zero
    tensor into `out` and then accumulate; addmm with `out` as its own input and beta 0 only zeroes
    it (one pass fewer over the output, about 8% of a 256x256 product)."""
    if bias is None:
        torch.addmm(out, w, dense, beta=0.0, out=out)
    else:
        torch.addmm(bias.unsqueeze(1), w, dense, out=out)


class SparseLinearFunction(torch.autograd.Function):
    """y = x W^T + b. `feature_major`: x is given, and y returned, transposed ((in, B) and (out, B),
    contiguous), the layout member-stacked networks keep between layers (sparse/stacked_layers.py). The
    transposes happen inside the Function, so its output is no view and in-place activations after
    it stay cheap (an in-place op on a view of a Function's output makes autograd zero-fill and copy
    a whole buffer in backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layer: "SparseLinear",
                feature_major: bool = False) -> torch.Tensor:
        y, xt = csr_forward(x.t() if feature_major else x, values, bias, layer)
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.feature_major = feature_major
        ctx.save_for_backward(xt, values)
        return y.t() if feature_major else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        if ctx.feature_major:
            grad_y = grad_y.t()
        xt, values = ctx.saved_tensors
        layer: SparseLinear = ctx.layer
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        k = _kernels(layer, values)
        gt = grad_y.t()
        if not gt.is_contiguous():
            gt = gt.contiguous()
        grad_x = grad_values = grad_bias = None
        if need_x:
            batch = grad_y.shape[0]
            torch.index_select(values, 0, layer.t_perm, out=k.wt_values)
            grad_x = torch.empty_strided((batch, layer.in_features), (1, batch), dtype=grad_y.dtype, device=grad_y.device)
            _product(k.wt, gt, grad_x.t())
        if need_values:
            grad_values = torch.sparse.sampled_addmm(k.pattern, gt, xt.t(), beta=0.0).values()
        if need_bias and ctx.has_bias:
            grad_bias = gt.sum(1)
        if ctx.feature_major and grad_x is not None:
            grad_x = grad_x.t()
        return grad_x, grad_values, grad_bias, None, None


class SparseLinear(nn.Module):
    """`nn.Linear` with a fixed sparsity pattern, storing only the kept weights.

    Parameters: `values` (nnz,), the kept weights in row-major order of the mask, and `bias`
    (out,) or None. Buffers: the CSR pattern (`crow_indices`, `col_indices`, saved in the state
    dict so a checkpoint names its own pattern) and, derived from it, the CSR pattern of W^T with
    the permutation `t_perm` that gathers its values from `values`.
    """

    def __init__(self, in_features: int, out_features: int, crow_indices: torch.Tensor, col_indices: torch.Tensor,
                 values: torch.Tensor, bias: torch.Tensor | nn.Parameter | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        crow_indices = crow_indices.to(device=values.device, dtype=INDEX_DTYPE)
        col_indices = col_indices.to(device=values.device, dtype=INDEX_DTYPE)
        # Validated once here; the kernels skip the check on every call.
        _csr(crow_indices, col_indices, values.detach(), (self.out_features, self.in_features), check_invariants=True)
        self.values = values if isinstance(values, nn.Parameter) else nn.Parameter(values.detach().clone())
        if bias is None or isinstance(bias, nn.Parameter):
            self.bias = bias
        else:
            self.bias = nn.Parameter(bias.detach().clone())
        self.register_buffer("crow_indices", crow_indices)
        self.register_buffer("col_indices", col_indices)
        for name, tensor in self._transposed_pattern().items():
            self.register_buffer(name, tensor, persistent=False)
        self._kernel_cache: _Kernels | None = None

    def __getstate__(self):
        # Copies and pickles rebuild their own kernels (the cached ones alias this layer's values).
        state = super().__getstate__()
        state["_kernel_cache"] = None
        return state

    def _transposed_pattern(self) -> dict[str, torch.Tensor]:
        rows, cols = self._rows(), self.col_indices.long()
        # Stable sort by column keeps rows ascending within a column: the CSR order of W^T.
        t_perm = torch.sort(cols, stable=True).indices
        t_crow = torch.zeros(self.in_features + 1, dtype=torch.int64, device=cols.device)
        torch.cumsum(torch.bincount(cols, minlength=self.in_features), 0, out=t_crow[1:])
        return {
            "t_crow_indices": t_crow.to(INDEX_DTYPE),
            "t_col_indices": rows[t_perm].to(INDEX_DTYPE),
            "t_perm": t_perm,
        }

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        total = self.in_features * self.out_features
        return self.nnz / total if total else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            y = SparseLinearFunction.apply(x2, self.values, self.bias, self)
        else:  # target networks, evaluation: no graph, so skip the autograd.Function machinery
            y = csr_forward(x2, self.values, self.bias, self)[0]
        return y if x.dim() == 2 else y.reshape(*lead, self.out_features)

    def mask(self) -> torch.Tensor:
        """Boolean (out, in) mask of the kept weights."""
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        mask[self._rows(), self.col_indices.long()] = True
        return mask

    def _rows(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(self.out_features, device=self.values.device),
                                       self.crow_indices.diff().long())

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight with zeros at pruned entries (a new tensor, detached)."""
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        w[self._rows(), self.col_indices.long()] = self.values.detach()
        return w

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Values are meaningful only in their own pattern: loading another pattern's values of the
        # same length would silently scramble the weights.
        for name in ("crow_indices", "col_indices"):
            stored = state_dict.get(prefix + name)
            own = getattr(self, name)
            if stored is not None and not (stored.shape == own.shape and torch.equal(stored.to(own), own)):
                error_msgs.append(f"{prefix}{name}: the state dict's sparsity pattern differs from this layer's")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"density={self.density:.4f}, bias={self.bias is not None}")


# -- which layers may be converted ---------------------------------------------------------------
# Converting replaces a module and its `weight` Parameter by new objects. That is safe only for a
# layer used purely as a module inside its network: code that reads `layer.weight` (d3rlpy's
# modules, a custom init or regulariser run during training) or keeps its own reference to the
# layer would break or silently train a stale copy. So conversion is opt-in per layer, by this
# attribute; `algorithms.networks.mlp` sets it on the layers it builds. (An attribute rather than a
# subclass: torch.fx treats only torch.nn's own classes as leaf modules, and the pruners trace.)
ELIGIBLE = "sparse_kernels_eligible"


def allow_sparse_kernels(module: nn.Module) -> nn.Module:
    """Declare every nn.Linear of `module` convertible to a SparseLinear after pruning: the network
    only ever calls it and never reads its `weight`. Returns `module`. Copies (target networks made
    with deepcopy) keep the mark."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            setattr(layer, ELIGIBLE, True)
    return module


def eligible(layer: nn.Module) -> bool:
    """Whether `layer` is an nn.Linear marked by `allow_sparse_kernels`."""
    return isinstance(layer, nn.Linear) and getattr(layer, ELIGIBLE, False) is True


def to_sparse(linear: nn.Linear, mask: torch.Tensor) -> SparseLinear:
    """A SparseLinear holding `linear`'s weights where `mask` is nonzero; the bias Parameter itself
    is shared (not copied), so optimizers that own it need no change for it."""
    if mask.shape != linear.weight.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, the weight {tuple(linear.weight.shape)}")
    keep = mask.to(device=linear.weight.device, dtype=torch.bool)
    crow, col = csr_pattern(keep)
    layer = SparseLinear(linear.in_features, linear.out_features, crow, col, linear.weight.detach()[keep], linear.bias)
    layer.values.requires_grad_(linear.weight.requires_grad)
    if eligible(linear):  # carried both ways, so a layer densified to change its mask may go sparse again
        setattr(layer, ELIGIBLE, True)
    return layer


def to_dense(sparse: SparseLinear) -> nn.Linear:
    """An nn.Linear with the same function: the weight has zeros at pruned entries; the bias
    Parameter is shared."""
    device, dtype = sparse.values.device, sparse.values.dtype
    linear = nn.Linear(sparse.in_features, sparse.out_features, bias=sparse.bias is not None, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(sparse.dense_weight())
    linear.weight.requires_grad_(sparse.values.requires_grad)
    if sparse.bias is not None:
        linear.bias = sparse.bias
    if getattr(sparse, ELIGIBLE, False) is True:
        setattr(linear, ELIGIBLE, True)
    return linear


# -- converting networks and the optimizers that already hold their parameters ---------------------
@dataclass
class ParamSwap:
    """`old` was replaced by `new`; `convert` maps a tensor shaped like `old` (e.g. Adam's exp_avg)
    to one shaped like `new`."""

    old: nn.Parameter
    new: nn.Parameter
    convert: Callable[[torch.Tensor], torch.Tensor]


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def sparsify_(module: nn.Module, masks: Mapping[str, torch.Tensor], choice: Mapping[str, str] | None = None) -> list[ParamSwap]:
    """Replace, in place, each `nn.Linear` of `module` whose weight has a mask (keyed like
    `prunable_parameters`: "<layer>.weight") and whose `choice` is "sparse" (all masked layers when
    `choice` is None) by a SparseLinear. Returns the parameter swaps, for `swap_optimizer_params`."""
    swaps: list[ParamSwap] = []
    modules = dict(module.named_modules())
    for pname, mask in masks.items():
        if choice is not None and choice.get(pname, "dense") != "sparse":
            continue
        layer_name, leaf = _split(pname)
        linear = modules.get(layer_name)
        if leaf != "weight" or not isinstance(linear, nn.Linear):
            raise KeyError(f"'{pname}' is not the weight of an nn.Linear of this module")
        if not layer_name:
            raise ValueError("the module is itself an nn.Linear: convert it with to_sparse and keep the returned layer")
        sparse = to_sparse(linear, mask)
        keep = mask.to(device=linear.weight.device, dtype=torch.bool)
        swaps.append(ParamSwap(linear.weight, sparse.values, lambda t, keep=keep: t[keep]))
        parent, child = _split(layer_name)
        setattr(modules[parent], child, sparse)
    return swaps


def densify_(module: nn.Module) -> list[ParamSwap]:
    """Inverse of `sparsify_`: every SparseLinear of `module` becomes an nn.Linear with zeros at
    pruned entries."""
    swaps: list[ParamSwap] = []
    for name, sub in list(module.named_modules()):
        if isinstance(sub, SparseLinear) and name:
            linear = to_dense(sub)
            rows, cols = sub._rows(), sub.col_indices.long()
            shape = (sub.out_features, sub.in_features)

            def scatter(t: torch.Tensor, rows=rows, cols=cols, shape=shape) -> torch.Tensor:
                out = t.new_zeros(shape)
                out[rows, cols] = t
                return out

            swaps.append(ParamSwap(sub.values, linear.weight, scatter))
            parent, child = _split(name)
            setattr(module.get_submodule(parent), child, linear)
    return swaps


def swap_optimizer_params(optimizers: Iterable[torch.optim.Optimizer], swaps: Iterable[ParamSwap]) -> None:
    """Make optimizers that already hold replaced parameters train their replacements: each old
    parameter is replaced in `param_groups`, and its per-parameter state moves to the new one with
    tensors shaped like the parameter converted (Adam's moments keep only the kept entries) and
    the rest (step counts) kept. `optimizer.state` becomes a new dict object, which is what caches
    keyed on it (FusedAdam's fast path, MaskSet's hooks) take as the signal to rebuild."""
    by_old = {id(s.old): s for s in swaps}
    for opt in {id(o): o for o in optimizers}.values():
        for group in opt.param_groups:
            group["params"] = [by_old[id(p)].new if id(p) in by_old else p for p in group["params"]]
        state: defaultdict = defaultdict(dict)
        for p, s in opt.state.items():
            swap = by_old.get(id(p))
            if swap is None:
                state[p] = s
            else:
                state[swap.new] = {k: (swap.convert(v) if torch.is_tensor(v) and v.shape == swap.old.shape else v)
                                   for k, v in s.items()}
        opt.state = state


def sparse_layers(module: nn.Module) -> dict[str, SparseLinear]:
    """SparseLinear submodules by the name their weight had as an nn.Linear ("<layer>.weight")."""
    return {f"{n}.weight" if n else "weight": m for n, m in module.named_modules() if isinstance(m, SparseLinear)}



def sparsify_algorithm(algo, masks: Mapping[str, Mapping[str, torch.Tensor]],
                       choice: Mapping[str, Mapping[str, str]] | None = None) -> list[ParamSwap]:
    """`sparsify_` every network of an `OfflineAlgorithm` that has masks, its target copy alike
    (Polyak updates pair `parameters()` of the two in order, so they must match), and swap the
    replaced weights in all of `algo.optimizers()`. Only the protocol is used: any algorithm whose
    networks are built from nn.Linear layers is converted without code of its own."""
    nets, targets = algo.networks(), algo.target_networks()
    swaps: list[ParamSwap] = []
    for name, net_masks in masks.items():
        net_choice = None if choice is None else choice.get(name, {})
        swaps += sparsify_(nets[name], net_masks, net_choice)
        if name in targets:
            sparsify_(targets[name], net_masks, net_choice)
    swap_optimizer_params(algo.optimizers().values(), swaps)
    return swaps


def densify_algorithm(algo, networks: Iterable[str]) -> list[ParamSwap]:
    """Inverse of `sparsify_algorithm` for the named networks: every SparseLinear of them and of their
    target copies becomes a dense-masked nn.Linear, and `algo.optimizers()` train the dense weights
    with their state scattered back (zeros at pruned entries). What changes a mask during training
    (`pruning.dynamic.rewire`) runs this first, then converts back with the new patterns."""
    nets, targets = algo.networks(), algo.target_networks()
    swaps: list[ParamSwap] = []
    for name in networks:
        swaps += densify_(nets[name])
        if name in targets:
            densify_(targets[name])
    if swaps:
        swap_optimizer_params(algo.optimizers().values(), swaps)
    return swaps
