"""Per-layer timings: dense-masked nn.Linear against the compressed SparseLinear.

    python benchmarks/bench_sparse_linear.py [--threads 1,2] [--batches 256,1] [--rounds 7] [--variants]

For each layer shape (out x in weight: 256x256 hidden, 256x17 first layer of a hopper network,
1x256 critic / value head), density, batch and thread count, in microseconds per call:

- `fwd`    forward y = x W^T + b without autograd (dense: the nn.Linear on the masked weight;
           sparse: the SparseLinear module, its CSR product);
- `gx`     input-gradient kernel g W (dense: g @ W; sparse: gather W^T's values, CSR of W^T times g^T);
- `gW`     weight-gradient kernel (dense: the full g^T x, as dense-masked training computes it;
           sparse: `sampled_addmm`, only the kept entries);
- `total`  forward + backward through autograd (input, weight and bias gradients), the Python and
           autograd overhead included: what one training-time call of the layer costs.

Every contender of one row is timed in turn, in an order rotated every round, and the median over
rounds is reported, so machine load hits both alike. `--variants` also times the kernel layouts the
layer chose between (see sparse_offline_rl/sparse/linear.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from sparse_offline_rl.sparse.linear import _kernels, _product, csr_pattern, to_sparse

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks")

SHAPES = [(256, 256), (256, 17), (1, 256)]  # (out, in) of the weight
DENSITIES = [0.2, 0.1, 0.05, 0.02, 0.01]


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Microseconds per call of `fn`, timed over about `seconds` (at least 3 calls)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if n >= 3 and elapsed >= seconds:
            return elapsed / n * 1e6


def compare(contenders: dict[str, Callable[[], object]], rounds: int, seconds: float) -> dict[str, float]:
    """Median per-call time of each contender over `rounds` rotated rounds."""
    names = list(contenders)
    for fn in contenders.values():  # warm-up: allocator, MKL handles, autograd caches
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(per_call_us(contenders[name], seconds))
    return {n: statistics.median(t) for n, t in times.items()}


def layer_pair(out_f: int, in_f: int, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = nn.Linear(in_f, out_f)
    mask = torch.zeros(out_f * in_f, dtype=torch.bool)
    mask[torch.randperm(out_f * in_f, generator=g)[: max(1, round(density * out_f * in_f))]] = True
    mask = mask.view(out_f, in_f)
    with torch.no_grad():
        dense.weight.mul_(mask)
    return dense, to_sparse(dense, mask), mask


def time_row(out_f: int, in_f: int, density: float, batch: int, rounds: int, seconds: float) -> dict[str, float]:
    dense, sparse, _ = layer_pair(out_f, in_f, density)
    x = torch.randn(batch, in_f)
    g = torch.randn(batch, out_f)
    # The sparse layer's operands arrive feature-major (the previous sparse layer's output, the
    # next one's input gradient); time it that way, the dense layer with ordinary row-major ones.
    x_fm, g_fm = x.t().contiguous().t(), g.t().contiguous().t()
    x_req, x_fm_req = x.clone().requires_grad_(True), x_fm.clone().requires_grad_(True)
    w = dense.weight.detach()
    kernels = _kernels(sparse, sparse.values)
    xt, gt = x_fm.t(), g_fm.t()

    def sparse_gx() -> torch.Tensor:
        torch.index_select(sparse.values.detach(), 0, sparse.t_perm, out=kernels.wt_values)
        out = torch.empty_strided((batch, in_f), (1, batch))
        _product(kernels.wt, gt, out.t())
        return out

    def dense_total() -> None:
        dense(x_req).backward(g)

    def sparse_total() -> None:
        sparse(x_fm_req).backward(g_fm)

    with torch.no_grad():
        fwd = compare({"dense": lambda: dense(x), "sparse": lambda: sparse(x_fm)}, rounds, seconds)
    gx = compare({"dense": lambda: g @ w, "sparse": sparse_gx}, rounds, seconds)
    gw = compare({"dense": lambda: g.t() @ x,
                  "sparse": lambda: torch.sparse.sampled_addmm(kernels.pattern, gt, xt.t(), beta=0.0).values()},
                 rounds, seconds)
    total = compare({"dense": dense_total, "sparse": sparse_total}, rounds, seconds)
    return {
        "fwd_d": fwd["dense"], "fwd_s": fwd["sparse"],
        "gx_d": gx["dense"], "gx_s": gx["sparse"],
        "gw_d": gw["dense"], "gw_s": gw["sparse"],
        "tot_d": total["dense"], "tot_s": total["sparse"],
    }


def time_variants(rounds: int, seconds: float, density: float = 0.05, batch: int = 256) -> dict[str, float]:
    """The kernel layouts considered for one 256x256 layer (raw products, no autograd)."""
    out_f = in_f = 256
    _, sparse, mask = layer_pair(out_f, in_f, density)
    w = sparse.dense_weight()
    crow, col = csr_pattern(mask)
    wc = torch.sparse_csr_tensor(crow, col, sparse.values.detach(), (out_f, in_f))
    wtc = w.t().contiguous().to_sparse_csr()
    wtc = torch.sparse_csr_tensor(wtc.crow_indices().int(), wtc.col_indices().int(), wtc.values(), (in_f, out_f))
    wc64 = torch.sparse_csr_tensor(crow.long(), col.long(), sparse.values.detach(), (out_f, in_f))
    x = torch.randn(batch, in_f)
    xt = x.t().contiguous()
    gt = torch.randn(out_f, batch)
    zeros = torch.sparse_csr_tensor(crow, col, torch.zeros(sparse.nnz), (out_f, in_f))
    rows = torch.repeat_interleave(torch.arange(out_f), crow.diff().long())
    colsl = col.long()
    return compare({
        "fwd  csr @ x^T (x^T contiguous)": lambda: torch.mm(wc, xt),
        "fwd  csr @ x^T (x row-major)": lambda: torch.mm(wc, x.t()),
        "fwd  csr(int64 indices) @ x^T": lambda: torch.mm(wc64, xt),
        "fwd  x @ csr(W^T) (dense @ sparse)": lambda: torch.mm(x, wtc),
        "gx   csr(W^T) @ g^T": lambda: torch.mm(wtc, gt),
        "gx   csc view W.t() @ g^T": lambda: torch.mm(wc.t(), gt),
        "gW   sampled_addmm, x column-major": lambda: torch.sparse.sampled_addmm(zeros, gt, xt.t(), beta=0.0),
        "gW   sampled_addmm, x row-major": lambda: torch.sparse.sampled_addmm(zeros, gt, x, beta=0.0),
        "gW   gather (g[rows] * x^T[cols]).sum": lambda: (gt[rows] * xt[colsl]).sum(1),
        "csr  construct from indices + values": lambda: torch.sparse_csr_tensor(crow, col, sparse.values.detach(), (out_f, in_f), check_invariants=False),
        "dense fwd (reference)": lambda: torch.addmm(sparse.bias.detach(), x, w.t()),
    }, rounds, seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="256,1")
    ap.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.02, help="timing window per contender per round")
    ap.add_argument("--variants", action="store_true", help="also time the kernel layouts (256x256, 5%%, batch 256)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print("microseconds per call, median of rotated rounds; weight is out x in")
    header = (f"{'weight':>8} {'dens':>5} {'B':>4} {'thr':>3} | {'fwd d':>7} {'fwd s':>7} | {'gx d':>7} {'gx s':>7} | "
              f"{'gW d':>7} {'gW s':>7} | {'total d':>8} {'total s':>8} {'speedup':>7}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        if args.variants:
            print(f"\nkernel variants, 256x256, density 0.05, batch 256, {threads} thread(s):")
            for name, us in time_variants(args.rounds, args.seconds).items():
                print(f"  {name:40s} {us:8.1f}")
        print("\n" + header)
        for batch in [int(b) for b in args.batches.split(",")]:
            for out_f, in_f in SHAPES:
                for density in [float(d) for d in args.densities.split(",")]:
                    r = time_row(out_f, in_f, density, batch, args.rounds, args.seconds)
                    print(f"{out_f:>4}x{in_f:<3} {density:>5.2f} {batch:>4} {threads:>3} | {r['fwd_d']:7.1f} {r['fwd_s']:7.1f} | "
                          f"{r['gx_d']:7.1f} {r['gx_s']:7.1f} | {r['gw_d']:7.1f} {r['gw_s']:7.1f} | "
                          f"{r['tot_d']:8.1f} {r['tot_s']:8.1f} {r['tot_d'] / r['tot_s']:6.2f}x", flush=True)
    load1 = os.getloadavg()
    print(f"\nload average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
