"""Training throughput: native algorithms against d3rlpy 2.8.1, measured in one process, alternating.

    python benchmarks/bench_training.py [--algos iql,td3bc,cql] [--rounds 5] [--seconds 1.5] [--threads 1]

Every contender trains on the same random 100k-transition dataset (obs 17, act 6, hopper-sized)
with batch 256 and the same torch thread count. Contenders per algorithm:

- `native`          our hot loop: `algo.update(buffer.sample(B))` (the MaskSet's optimizer hooks
                    re-zero pruned entries after every step; dense masks bind no hook, as in a dense run);
- `native s=0.95`   the same at sparsity 0.95 (random pruner), and `native s=0.95 no-apply` the
                    same with the masks unbound (no hooks): their ratio is the mask-enforcement overhead;
- `d3rlpy`          d3rlpy's own path as `fit` runs it: `ReplayBuffer.sample_transition_batch(B)`
                    then `algo.update(batch)`, with network sizes matched to ours (IQL and TD3+BC
                    2x256, CQL 3x256 actor and critics);
- `d3rlpy upd`      the same without the sampling: `algo.update(batch)` on pre-sampled batches
                    (the most favourable figure for d3rlpy; ratios are reported against it);
- `d3rlpy default`  d3rlpy's own path with its default networks (2x256 everywhere; CQL's critics
                    are 2x256 there, ours 3x256), i.e. what the issue's figures measured;
- `adapter`         `algo=d3rlpy:<name>` through our loop (`D3rlpyAlgorithm`).

Timing: each round runs every contender for about `--seconds` in turn (order rotated every round),
so machine load hits all of them alike; the table gives each contender's median steps/s over the
rounds and the median of the per-round ratios native / d3rlpy.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from sparse_offline_rl.algorithms import ProblemSpec, algorithm_config, make_algorithm
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.pruning import MaskSet, prune_at_initialization

OBS, ACT, BATCH, N = 17, 6, 256, 100_000
D3RLPY_NAMES = {"iql": "iql", "td3bc": "td3plusbc", "cql": "cql"}
# Our networks' hidden sizes (config defaults), used to size d3rlpy's for the like-for-like rows.
NATIVE_HIDDEN = {"iql": [256, 256], "td3bc": [256, 256], "cql": [256, 256, 256]}


def synthetic_dataset(n: int = N, obs_dim: int = OBS, act_dim: int = ACT, seed: int = 0, episode_len: int = 1000) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, obs_dim), dtype=np.float32)
    next_obs = rng.standard_normal((n, obs_dim), dtype=np.float32)
    actions = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    rewards = rng.standard_normal(n, dtype=np.float32)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[episode_len - 1::episode_len] = True
    timeouts[-1] = True
    return OfflineDataset(obs, actions, rewards, next_obs, np.zeros(n, dtype=bool), timeouts,
                          np.arange(0, n, episode_len, dtype=np.int64), source="synthetic")


class Contender:
    """Something that does one training step per `step()` call."""

    label: str
    step: Callable[[], Any]

    def run(self, seconds: float) -> tuple[int, float]:
        """Steps for about `seconds` (at least 3), returns (steps, elapsed)."""
        n, t0 = 0, time.perf_counter()
        deadline = t0 + seconds
        while True:
            self.step()
            n += 1
            now = time.perf_counter()
            if n >= 3 and now >= deadline:
                return n, now - t0


class Native(Contender):
    def __init__(self, name: str, dataset: OfflineDataset, sparsity: float = 0.0, device: str = "cpu", **algo_overrides: Any) -> None:
        torch.manual_seed(0)
        config = algorithm_config({"name": name, **algo_overrides})
        spec = ProblemSpec(dataset.obs_dim, dataset.act_dim, 1.0, total_steps=1_000_000, device=device)
        self.algo = make_algorithm(name, spec, config)
        self.buffer = TransitionBuffer(dataset, device=device)
        self.buffer.seed(0)
        self.masks, _ = prune_at_initialization(self.algo, lambda: self.buffer.sample(BATCH), {"name": "random"},
                                                {n: sparsity for n in self.algo.networks()}, seed=0)
        self.label = f"native s={sparsity}" if sparsity else "native"

    def step(self) -> None:
        self.algo.update(self.buffer.sample(BATCH))


class NativeNoApply(Native):
    """Timing control: the sparse run's step with its masks unbound (weights are dense tensors either
    way, so the difference to `native s=0.95` is exactly what enforcing the masks costs in the loop)."""

    def __init__(self, name: str, dataset: OfflineDataset, sparsity: float) -> None:
        super().__init__(name, dataset, sparsity)
        self.masks.unbind()
        self.label = f"native s={sparsity} no-apply"


def d3rlpy_algo(name: str, hidden: list[int] | None, obs_dim: int = OBS, act_dim: int = ACT) -> Any:
    """d3rlpy's algorithm as its users build it (its default options), `hidden` sizing every encoder."""
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory

    from sparse_offline_rl.algorithms.d3rlpy_backend import VARIANTS

    config_cls = getattr(d3rlpy.algos, VARIANTS[D3RLPY_NAMES[name]][0])
    encoders = {}
    if hidden is not None:
        encoders = {f.name: VectorEncoderFactory(hidden_units=list(hidden))
                    for f in dataclasses.fields(config_cls) if f.name.endswith("encoder_factory")}
    algo = config_cls(batch_size=BATCH, **encoders).create(device="cpu:0")
    algo.create_impl((obs_dim,), act_dim)
    return algo


def d3rlpy_replay_buffer(dataset: OfflineDataset) -> Any:
    import d3rlpy

    return d3rlpy.dataset.MDPDataset(dataset.observations, dataset.actions, dataset.rewards,
                                     dataset.terminals.astype(np.float32), dataset.timeouts.astype(np.float32))


class D3rlpyOwn(Contender):
    """d3rlpy's fit loop body: sample a TransitionMiniBatch from its replay buffer, `algo.update`."""

    def __init__(self, name: str, replay: Any, hidden: list[int] | None, presampled: bool = False, label: str = "d3rlpy") -> None:
        torch.manual_seed(0)
        self.algo = d3rlpy_algo(name, hidden)
        self.replay = replay
        self.label = label
        self.batches = [replay.sample_transition_batch(BATCH) for _ in range(16)] if presampled else None
        self.i = 0

    def step(self) -> None:
        if self.batches is None:
            batch = self.replay.sample_transition_batch(BATCH)
        else:
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
        self.algo.update(batch)


class Adapter(Native):
    """`algo=d3rlpy:<name>` through our loop (network sizes as our own algorithm's)."""

    def __init__(self, name: str, dataset: OfflineDataset) -> None:
        super().__init__(f"d3rlpy:{D3RLPY_NAMES[name]}", dataset, hidden=NATIVE_HIDDEN[name])
        self.label = "adapter"


class WithThreads(Contender):
    """Another contender run with `threads` torch threads (set before each timed run, restored after)."""

    def __init__(self, inner: Contender, threads: int) -> None:
        self.inner, self.threads = inner, threads
        self.label = f"{inner.label} @{threads}t"
        self.step = inner.step

    def run(self, seconds: float) -> tuple[int, float]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.inner.run(seconds)
        finally:
            torch.set_num_threads(before)


def bench_threads(name: str, dataset: OfflineDataset, replay: Any | None, rounds: int, seconds: float,
                  threads: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Native (and d3rlpy's update) at each thread count, alternating: the thread-policy evidence."""
    contenders: list[Contender] = []
    for t in threads:
        contenders.append(WithThreads(Native(name, dataset), t))
        if replay is not None:
            contenders.append(WithThreads(D3rlpyOwn(name, replay, NATIVE_HIDDEN[name], presampled=True, label="d3rlpy upd"), t))
    rates = measure(contenders, rounds, seconds)
    out: dict[str, Any] = {"steps_per_sec": {k: statistics.median(v) for k, v in rates.items()}, "rounds": rates}
    out["ratios"] = {f"{a} / {b}": ratio(rates, a, b) for a in rates for b in rates if a != b and a.split(" @")[1] == b.split(" @")[1]}
    t0, t1 = threads[0], threads[-1]
    out["ratios"].update({f"native @{t1}t / @{t0}t": ratio(rates, f"native @{t1}t", f"native @{t0}t")})
    if replay is not None:
        out["ratios"].update({f"d3rlpy upd @{t1}t / @{t0}t": ratio(rates, f"d3rlpy upd @{t1}t", f"d3rlpy upd @{t0}t")})
    return out


def measure(contenders: list[Contender], rounds: int, seconds: float, warmup: float = 0.5) -> dict[str, list[float]]:
    """Steps/s per contender per round, alternating (the order rotates each round)."""
    for c in contenders:
        c.run(warmup)
    rates: dict[str, list[float]] = {c.label: [] for c in contenders}
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            n, dt = c.run(seconds)
            rates[c.label].append(n / dt)
    return rates


def ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of the per-round ratio a / b."""
    return statistics.median(x / y for x, y in zip(rates[a], rates[b]))


def bench_algorithm(name: str, dataset: OfflineDataset, replay: Any | None, rounds: int, seconds: float,
                    sparse: bool = True, adapter: bool = True, default_nets: bool = True) -> dict[str, Any]:
    contenders: list[Contender] = [Native(name, dataset)]
    if sparse:
        contenders.append(Native(name, dataset, sparsity=0.95))
        contenders.append(NativeNoApply(name, dataset, sparsity=0.95))
    if replay is not None:
        hidden = NATIVE_HIDDEN[name]
        contenders.append(D3rlpyOwn(name, replay, hidden))
        contenders.append(D3rlpyOwn(name, replay, hidden, presampled=True, label="d3rlpy upd"))
        if default_nets and hidden != [256, 256]:
            contenders.append(D3rlpyOwn(name, replay, None, label="d3rlpy default"))
        if adapter:
            contenders.append(Adapter(name, dataset))
    rates = measure(contenders, rounds, seconds)
    out: dict[str, Any] = {"steps_per_sec": {k: statistics.median(v) for k, v in rates.items()}, "rounds": rates}
    ratios = {}
    for other in rates:
        if other != "native":
            ratios[f"native/{other}"] = ratio(rates, "native", other)
    out["ratios"] = ratios
    if sparse:
        # The cost of enforcing masks at sparsity 0.95, three ways: in the loop (sparse step with vs.
        # without the MaskSet's optimizer hooks, alternating: the headline figure), sparse vs. dense
        # (alternating), and one full `apply` (what the hooks of one step do) timed alone, in warm
        # caches, over the dense step time (a lower bound).
        out["mask_overhead"] = 1.0 - ratio(rates, "native s=0.95", "native s=0.95 no-apply")
        out["mask_overhead_ab"] = 1.0 - ratio(rates, "native s=0.95", "native")
        sparse_c = next(c for c in contenders if c.label == "native s=0.95")
        apply_s = min(_timeit(sparse_c.masks.apply, 200) for _ in range(5))
        out["mask_apply_us"] = apply_s * 1e6
        out["mask_tensors"] = sparse_c.masks.num_tensors
        out["mask_overhead_isolated"] = apply_s * out["steps_per_sec"]["native"]
    return out


def _timeit(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def format_rows(name: str, res: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for label, sps in res["steps_per_sec"].items():
        r = res["ratios"].get(f"native/{label}")
        rows.append((name, label, f"{sps:.1f}" if sps < 20 else f"{sps:.0f}", "" if r is None else f"{r:.2f}x"))
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], out=sys.stdout) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algos", default="iql,td3bc,cql")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-d3rlpy", action="store_true")
    ap.add_argument("--thread-policy", action="store_true", help="1 vs 2 threads, native and d3rlpy, alternating")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    dataset = synthetic_dataset()
    replay = None
    if not args.no_d3rlpy:
        try:
            replay = d3rlpy_replay_buffer(dataset)
        except ImportError:
            print("d3rlpy not installed: native figures only")
    if args.thread_policy:
        for name in args.algos.split(","):
            res = bench_threads(name, dataset, replay, args.rounds, args.seconds)
            print(name, {k: round(v, 1) for k, v in res["steps_per_sec"].items()})
            print(name, {k: round(v, 2) for k, v in res["ratios"].items()})
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        return
    rows = []
    for name in args.algos.split(","):
        res = bench_algorithm(name, dataset, replay, args.rounds, args.seconds)
        rows += format_rows(name, res)
        if "mask_overhead" in res:
            print(f"{name}: mask enforcement at sparsity 0.95 costs {100 * res['mask_overhead']:+.1f}% in the loop "
                  f"(sparse vs dense {100 * res['mask_overhead_ab']:+.1f}%; apply alone {res['mask_apply_us']:.0f} us)")
    print_table(("algo", "contender", "steps/s", "native / it"), rows)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
