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

Only layers marked eligible (`sparse_linear.allow_sparse_kernels`; `algorithms.networks.mlp` marks
its layers) are ever converted, whatever the mode: other code may read a layer's `weight` directly
(d3rlpy's modules), and those layers stay dense-masked.

The choice is recorded by the caller (it decides the parameter layout, so a resumed run must reuse
it rather than measure again under other load): `checkpoint.restore_pruned` rebuilds a checkpoint's layout.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sparse_offline_rl.sparse.masks import MaskSet
from sparse_offline_rl.sparse.linear import eligible, sparsify_algorithm, to_sparse

MODES = ("auto", "sparse", "dense")
#: In "auto", a layer goes sparse only if its measured call is at most this fraction of the dense one's.
SPARSE_MARGIN = 0.9


#: Why a layer got its kernel, as the pruning report says it.
REASONS = ("measured", "forced by mode", "not eligible", "fully kept", "no weights kept", "not on CPU", "not pruned")


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


def best_us(fn: Callable[[], None], device: torch.device, seconds: float) -> float:
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
    # Measuring happens between pruning and training: it must not move the RNG training draws from
    # (a cached measurement would otherwise make two runs of one seed differ).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        mask = torch.zeros(out_features * in_features, dtype=torch.bool)
        mask[torch.randperm(out_features * in_features)[:nnz]] = True
        dense = nn.Linear(in_features, out_features, device=device, dtype=dtype)
        # Inputs feature-major, as a SparseLinear's output is (the dense layer reads either layout
        # at the same cost).
        x = torch.randn(in_features, batch, device=device, dtype=dtype).t().requires_grad_(True)
        g = torch.randn(out_features, batch, device=device, dtype=dtype).t()
    sparse = to_sparse(dense, mask.view(out_features, in_features).to(device))
    # Bias not shared: the two layers' gradients must not accumulate into one tensor.
    sparse.bias = nn.Parameter(dense.bias.detach().clone())

    def call(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            layer(x).backward(g)
            x.grad = None
            for p in layer.parameters():
                p.grad = None
        return run

    contenders = {"dense": call(dense), "sparse": call(sparse)}
    for fn in contenders.values():
        fn()  # warm-up: allocator, kernel handles
    best = {name: float("inf") for name in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in order:
            best[name] = min(best[name], best_us(contenders[name], device, seconds))
    cost = _MEASURED[key] = LayerCost(best["dense"], best["sparse"])
    return cost


@dataclass(frozen=True)
class LayerChoice:
    """The kernel of one masked layer ("sparse" or "dense"), why (one of `REASONS`), and its
    measured cost where it was measured."""

    kernel: str
    reason: str
    cost: LayerCost | None = None


def choose_layers(module: nn.Module, masks: Mapping[str, torch.Tensor], batch_size: int, mode: str = "auto",
                  measure: Callable[..., LayerCost] = measure_layer) -> dict[str, LayerChoice]:
    """The kernel of each masked layer of `module` (keys as in `masks`: "<layer>.weight").

    A layer not marked eligible stays dense in every mode. Otherwise mode "dense": dense-masked;
    "sparse": sparse; "auto": measured (`measure(out, in, nnz, batch, device=, dtype=)`, see
    `measure_layer`), with a fully kept layer always dense, a layer left with no weights always
    sparse, and dense off the CPU."""
    if mode not in MODES:
        raise ValueError(f"unknown sparse-kernel mode '{mode}'; accepted: {', '.join(MODES)}")
    modules = dict(module.named_modules())
    choice: dict[str, LayerChoice] = {}
    for pname, mask in masks.items():
        layer_name, _, leaf = pname.rpartition(".")
        linear = modules.get(layer_name)
        if leaf != "weight" or not isinstance(linear, nn.Linear):
            raise KeyError(f"'{pname}' is not the weight of an nn.Linear of this module")
        nnz, total = int(torch.count_nonzero(mask)), mask.numel()
        w = linear.weight
        if not eligible(linear):
            choice[pname] = LayerChoice("dense", "not eligible")
        elif nnz == total:  # nothing pruned: a CSR layer would only be slower, whatever the mode
            choice[pname] = LayerChoice("dense", "fully kept")
        elif mode != "auto":
            choice[pname] = LayerChoice(mode, "forced by mode")
        elif nnz == 0:
            choice[pname] = LayerChoice("sparse", "no weights kept")
        elif w.device.type != "cpu":
            choice[pname] = LayerChoice("dense", "not on CPU")
        else:
            cost = measure(linear.out_features, linear.in_features, nnz, batch_size, device=w.device, dtype=w.dtype)
            kernel = "sparse" if cost.sparse_us <= SPARSE_MARGIN * cost.dense_us else "dense"
            choice[pname] = LayerChoice(kernel, "measured", cost)
    return choice


def choose_kernels(algo, masks: MaskSet, batch_size: int, mode: str = "auto") -> dict[str, dict[str, LayerChoice]]:
    """`choose_layers` for every masked network of an `OfflineAlgorithm`: {network: {layer weight: choice}}."""
    nets = algo.networks()
    return {net: choose_layers(nets[net], net_masks, batch_size, mode) for net, net_masks in masks.masks.items()}


def kernels_of(choices: Mapping[str, Mapping[str, LayerChoice]]) -> dict[str, dict[str, str]]:
    """{network: {layer weight: "sparse" | "dense"}}: the plain form checkpoints keep."""
    return {net: {p: c.kernel for p, c in layers.items()} for net, layers in choices.items()}


def apply_sparse_kernels(algo, masks: MaskSet, kernels: Mapping[str, Mapping[str, str]]) -> MaskSet:
    """Convert the layers `kernels` marks "sparse" (see `kernels_of`; a layer it does not name stays
    dense), in online and target networks and optimizers alike (`sparsify_algorithm`), and bind
    `masks` again: it stays whole, for checkpoints and reports, and now hooks only the layers left
    dense-masked (a SparseLinear has no pruned entries to re-zero). Returns `masks`."""
    masks.unbind()
    sparsify_algorithm(algo, masks.masks, {net: dict(kernels.get(net, {})) for net in masks.masks})
    return masks.bind(algo)


def add_to_report(report: dict[str, Any], choices: Mapping[str, Mapping[str, LayerChoice]], mode: str,
                  batch_size: int) -> None:
    """Record the kernels in a `prune_at_initialization` report: per layer `kernel`, `kernel_reason`
    and, where measured, `cost_us` (one forward + backward call, dense and sparse); at the top
    `sparse_kernels` (mode, batch, threads, layers converted). Layers of unpruned networks are dense."""
    for net, info in report.get("networks", {}).items():
        for pname, layer in info["layers"].items():
            c = choices.get(net, {}).get(pname, LayerChoice("dense", "not pruned"))
            layer["kernel"], layer["kernel_reason"] = c.kernel, c.reason
            if c.cost is not None:
                layer["cost_us"] = {"dense": round(c.cost.dense_us, 1), "sparse": round(c.cost.sparse_us, 1)}
    kinds = [c.kernel for layers in choices.values() for c in layers.values()]
    report["sparse_kernels"] = {"mode": mode, "batch_size": int(batch_size), "threads": torch.get_num_threads(),
                                "sparse_layers": kinds.count("sparse"), "pruned_layers": len(kinds)}
