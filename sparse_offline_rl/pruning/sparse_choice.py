"""Where compressed sparse layers pay: a per-layer choice between SparseLinear and dense-masked.

Whether the CSR kernels beat a dense product depends on the layer's shape, its density, the batch,
the thread count and the device, and on this machine's BLAS; a layer with few weights is dominated
by per-call overhead, where the dense layer wins (benchmarks/results/sparse_linear.txt: a 1x256
head is 1.5-1.7x slower sparse at batch 256, any layer 1.1-2.2x slower at batch 1, while a 256x256
layer at 5% density is 4x faster and a 256x17 input layer 1.2-1.9x). So the choice is measured, not
guessed: once per process per (out, in, nnz, batch, threads, device, dtype) the two layers are
timed on random data for one training-time call (forward and backward with input, weight and bias
gradients), alternating, and the faster kept; a sparse layer must win by `SPARSE_MARGIN` so noise
does not flip a tie. Optimizer and mask-enforcement work, which a sparse layer also saves (Adam
over nnz instead of out*in entries, no mask multiply), is left out: the choice errs towards dense.

Not CPU: dense-masked without measuring. This is a policy, not a measurement (no GPU was at hand):
at these sizes a GPU step is bound by kernel launches, and a CSR layer launches more of them.

The choice is recorded by the caller (it decides the parameter layout, so a resumed run must reuse
it rather than measure again under other load).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from sparse_offline_rl.pruning.masks import MaskSet
from sparse_offline_rl.pruning.sparse_linear import sparsify_algorithm, to_sparse

MODES = ("auto", "sparse", "dense")
#: In "auto", a layer goes sparse only if its measured call is at most this fraction of the dense one's.
SPARSE_MARGIN = 0.9


@dataclass(frozen=True)
class LayerCost:
    """Microseconds of one forward + backward call of a layer, dense-masked and sparse."""

    dense_us: float
    sparse_us: float

    @property
    def speedup(self) -> float:
        return self.dense_us / self.sparse_us if self.sparse_us > 0 else float("inf")


_MEASURED: dict[tuple, LayerCost] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_us(fn: Callable[[], None], device: torch.device, seconds: float) -> float:
    """Per-call microseconds of `fn` over about `seconds` (at least 2 calls)."""
    n = 0
    _sync(device)
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= 2:
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return elapsed / n * 1e6


def measure_layer(out_features: int, in_features: int, nnz: int, batch: int, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, rounds: int = 5, seconds: float = 0.004) -> LayerCost:
    """Time one training-time call (forward, then backward to the input, weight and bias) of a
    dense-masked nn.Linear and of a SparseLinear with `nnz` kept weights, alternating for `rounds`
    rounds; each side's fastest round counts (load from other processes only ever slows a round).
    Cached per process, keyed by the arguments and the current torch thread count."""
    device = torch.device(device)
    key = (out_features, in_features, nnz, batch, torch.get_num_threads(), str(device), dtype)
    if key in _MEASURED:
        return _MEASURED[key]
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(out_features * in_features, dtype=torch.bool)
    mask[torch.randperm(out_features * in_features, generator=gen)[:nnz]] = True
    dense = nn.Linear(in_features, out_features, device=device, dtype=dtype)
    sparse = to_sparse(dense, mask.view(out_features, in_features).to(device))
    # Bias not shared: the two layers' gradients must not accumulate into one tensor.
    sparse.bias = nn.Parameter(dense.bias.detach().clone())
    # Inputs feature-major, as a SparseLinear's output is (the dense layer reads either layout at
    # the same cost); a fresh input each call, as in training.
    x = torch.randn(in_features, batch, device=device, dtype=dtype).t().requires_grad_(True)
    g = torch.randn(out_features, batch, device=device, dtype=dtype).t()

    def call(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            layer(x).backward(g)
            x.grad = None
            for p in layer.parameters():
                p.grad = None
        return run

    contenders = {"dense": call(dense), "sparse": call(sparse)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for fn in contenders.values():
            fn()  # warm-up: allocator, kernel handles
        best = {name: float("inf") for name in contenders}
        for r in range(rounds):
            order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
            for name in order:
                best[name] = min(best[name], _best_us(contenders[name], device, seconds))
    cost = _MEASURED[key] = LayerCost(best["dense"], best["sparse"])
    return cost


def choose_layers(module: nn.Module, masks: Mapping[str, torch.Tensor], batch_size: int, mode: str = "auto",
                  measure: Callable[..., LayerCost] = measure_layer) -> dict[str, str]:
    """"sparse" or "dense" for each masked layer of `module` (keys as in `masks`: "<layer>.weight").

    mode "dense": every layer dense-masked; "sparse": every masked layer sparse; "auto": measured
    (`measure(out, in, nnz, batch, device=, dtype=)`, see `measure_layer`), with a fully kept
    layer always dense, a layer left with no weights always sparse, and dense off the CPU."""
    if mode not in MODES:
        raise ValueError(f"unknown sparse-kernel mode '{mode}'; accepted: {', '.join(MODES)}")
    modules = dict(module.named_modules())
    choice: dict[str, str] = {}
    for pname, mask in masks.items():
        layer_name, _, leaf = pname.rpartition(".")
        linear = modules.get(layer_name)
        if leaf != "weight" or not isinstance(linear, nn.Linear):
            raise KeyError(f"'{pname}' is not the weight of an nn.Linear of this module")
        if mode != "auto":
            choice[pname] = mode
            continue
        nnz, total = int(torch.count_nonzero(mask)), mask.numel()
        w = linear.weight
        if nnz == total or w.device.type != "cpu":
            choice[pname] = "dense"
        elif nnz == 0:
            choice[pname] = "sparse"
        else:
            cost = measure(linear.out_features, linear.in_features, nnz, batch_size, device=w.device, dtype=w.dtype)
            choice[pname] = "sparse" if cost.sparse_us <= SPARSE_MARGIN * cost.dense_us else "dense"
    return choice


def measured_costs() -> dict[tuple, LayerCost]:
    """This process's measurements so far, keyed (out, in, nnz, batch, threads, device, dtype)."""
    return dict(_MEASURED)



def apply_sparse_kernels(algo, masks: MaskSet, batch_size: int, mode: str = "auto",
                         choice: Mapping[str, Mapping[str, str]] | None = None) -> tuple[MaskSet, dict[str, dict[str, str]]]:
    """After pruning at initialization: convert each masked layer of `algo` where sparse pays
    (`choose_layers` per network; online, target and optimizers alike, see `sparsify_algorithm`).
    A given `choice` (a resumed run's) is used as is, without measuring.

    `masks` (bound by the pruner) is unbound and left whole, for checkpoints and reports; the
    returned MaskSet holds only the layers kept dense-masked, bound to `algo`, since a SparseLinear
    has no pruned entries to re-zero. Also returns the choice {network: {layer weight: kind}}."""
    nets = algo.networks()
    if choice is None:
        choice = {net: choose_layers(nets[net], net_masks, batch_size, mode) for net, net_masks in masks.masks.items()}
    choice = {net: dict(layers) for net, layers in choice.items()}
    masks.unbind()
    sparsify_algorithm(algo, masks.masks, choice)
    dense = {net: {p: m for p, m in pm.items() if choice[net][p] == "dense"} for net, pm in masks.masks.items()}
    return MaskSet({net: pm for net, pm in dense.items() if pm}).bind(algo), choice
