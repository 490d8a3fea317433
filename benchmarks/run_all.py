"""The whole performance suite in one command (a few minutes on a 2-core machine), printed as tables
and written to `benchmarks/results/<name>.json` (atomically) with a description of the machine.

    python benchmarks/run_all.py [--name NAME] [--threads N] [--quick] [--skip d3rlpy,pruning,...]

Run it from an environment with d3rlpy 2.8.1 installed for the peer comparison (without it, the
native figures are still measured). Sections:

1. `matmul`   the machine's fp32 matmul rate (256^3, the training shapes, and 1024^3), best of 5;
2. `training` steps/s of native IQL, TD3+BC and CQL against d3rlpy, alternating in one process
              (see bench_training.py), the ratios, and mask-enforcement overhead at sparsity 0.95;
3. `flops`    matmul FLOPs per update step, counted with torch's FlopCounterMode, divided by the
              measured step time: the fraction of the FLOP-bound limit (the matmul rate of 1.);
4. `pruning`  PaI scoring time per pruner (bench_pruning.py, run as is);
5. `dataset`  a synthetic 1M-transition D4RL-layout HDF5 file (hopper dims) loaded through
              `load_dataset` in a fresh process: seconds and peak memory against the raw arrays,
              and the TransitionBuffer built from it;
4b. `threads` IQL at 1 vs 2 torch threads, alternating, with libgomp's default wait policy and (in a
              child process) with OMP_WAIT_POLICY=PASSIVE: the evidence for the threads policy;
6. `eval`     evaluation throughput: env steps/s of a policy in the pooled vectorised rollouts the
              trainer uses (10 HalfCheetah episodes of 1000 steps, 10 at once).

Threads: torch's intra-op thread count for every section (default 1: on this 2-core machine a
second thread only pays off when the machine is otherwise idle; see the README's performance notes).
Measurements taken while other jobs run are not comparable in absolute terms: the JSON records the
load average at the start and at the end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_training as bt  # noqa: E402

from sparse_offline_rl.io import cpu_model  # noqa: E402

SECTIONS = ("matmul", "training", "flops", "threads", "pruning", "dataset", "eval")
TARGETS = {"ratio": 2.0, "mask_overhead": 0.05, "flop_fraction_iql": 0.5, "load_seconds": 5.0, "peak_over_raw": 2.0}


# ------------------------------------------------------------------------------------ machine
def machine(threads: int) -> dict[str, Any]:
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda_available": torch.cuda.is_available(),
        "git_commit": git.stdout.strip() or None,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------ 1. matmul
def matmul_rate(m: int, k: int, n: int, repeats: int = 5, seconds: float = 0.2) -> float:
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    flop = 2.0 * m * k * n
    for _ in range(3):
        torch.mm(a, b, out=out)
    t = time.perf_counter()
    torch.mm(a, b, out=out)
    iters = max(3, int(seconds / max(time.perf_counter() - t, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t) / iters)
    return flop / best / 1e9


def bench_matmul() -> dict[str, float]:
    shapes = {"256x256x256": (256, 256, 256), "256x256x7936 (CQL)": (7936, 256, 256), "1024x1024x1024": (1024, 1024, 1024)}
    return {name: round(matmul_rate(*s), 1) for name, s in shapes.items()}


# ------------------------------------------------------------------------------------ 3. flops
def count_flops(step, steps: int = 4) -> float:
    """Matmul FLOPs per call of `step` (forward, backward and anything else it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    step()  # lazily created state (Adam) and the delayed actor update are reached first
    with FlopCounterMode(display=False) as counter:
        for _ in range(steps):
            step()
    return counter.get_total_flops() / steps


# ------------------------------------------------------------------------------------ 5. dataset
def write_d4rl_hdf5(path: Path, n: int, obs_dim: int = 11, act_dim: int = 3, episode_len: int = 1000, seed: int = 0) -> int:
    """A D4RL-layout file (classic: no next_observations); returns the bytes of its arrays."""
    import h5py

    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[episode_len - 1::episode_len] = True
    arrays = {
        "observations": rng.standard_normal((n, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(n, dtype=np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": timeouts,
    }
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return int(sum(v.nbytes for v in arrays.values()))


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> int:
    """Resets the kernel's peak-RSS counter (VmHWM) to the current RSS and returns that, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def load_child(path: str) -> None:
    """Runs in a fresh process: load through the real loader, then build the training buffer."""
    import warnings

    from sparse_offline_rl.data import load_dataset
    from sparse_offline_rl.data.buffer import ObsNormalizer, TransitionBuffer

    warnings.simplefilter("ignore")
    import h5py  # noqa: F401  (imports are not the load's memory)

    base = reset_peak_rss()
    t = time.perf_counter()
    ds = load_dataset(path, env="hopper")
    load_s = time.perf_counter() - t
    peak_load = peak_rss() - base
    held = sum(getattr(ds, f).nbytes for f in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"))
    t = time.perf_counter()
    buf = TransitionBuffer(ds, normalizer=ObsNormalizer.from_dataset(ds))
    buffer_s = time.perf_counter() - t
    peak_all = peak_rss() - base
    print(json.dumps({"transitions": len(ds), "load_seconds": load_s, "peak_bytes_load": peak_load,
                      "dataset_bytes": held, "buffer_seconds": buffer_s, "buffer_bytes": buf.data.nbytes,
                      "peak_bytes_load_and_buffer": peak_all}))


def bench_dataset(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic-hopper-1m.hdf5"
        t = time.perf_counter()
        raw = write_d4rl_hdf5(path, n)
        write_s = time.perf_counter() - t
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_load-child", str(path)],
                              capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(raw_bytes=raw, write_seconds=write_s, peak_over_raw=res["peak_bytes_load"] / raw,
               file_layout="D4RL classic (no next_observations), hopper dims (obs 11, act 3)")
    return res


# ------------------------------------------------------------------------------------ 6. eval
def bench_eval(episodes: int = 10) -> dict[str, Any]:
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
    from sparse_offline_rl.data.buffer import ObsNormalizer
    from sparse_offline_rl.data.envs import make_env
    from sparse_offline_rl.evaluation.rollout import AgentPolicy, run_episodes

    torch.manual_seed(0)
    algo = make_algorithm("iql", ProblemSpec(17, 6))
    policy = AgentPolicy(algo, ObsNormalizer.identity(17))
    policy_s = [0.0]

    def timed_policy(obs: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = policy(obs)
        policy_s[0] += time.perf_counter() - t
        return out

    saved = os.dup(2)  # MuJoCo prints a deprecation warning per env to the C stderr
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            t = time.perf_counter()
            stats = run_episodes(timed_policy, lambda: make_env("halfcheetah"), seeds=range(episodes), max_parallel=episodes)
            total = time.perf_counter() - t
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    steps = int(stats.lengths.sum())
    return {"env": "HalfCheetah-v5", "episodes": episodes, "parallel": episodes, "env_steps": steps,
            "seconds": total, "env_steps_per_sec": steps / total, "policy_fraction": policy_s[0] / total}


# ------------------------------------------------------------------------------------ 3b. threads
def threads_child(with_d3rlpy: bool, rounds: int, seconds: float) -> None:
    dataset = bt.synthetic_dataset()
    replay = bt.d3rlpy_replay_buffer(dataset) if with_d3rlpy else None
    res = bt.bench_threads("iql", dataset, replay, rounds, seconds)
    print(json.dumps(res))


def bench_thread_policy(with_d3rlpy: bool, rounds: int, seconds: float) -> dict[str, Any]:
    """The same measurement in two fresh processes: libgomp's wait policy is fixed at start-up."""
    out = {}
    for policy in ("default", "PASSIVE"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_threads-child", "1" if with_d3rlpy else "0",
               "--rounds", str(max(2, rounds - 2)), "--seconds", str(seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        try:
            out[policy] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out[policy] = {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return out


# ------------------------------------------------------------------------------------ 4. pruning
def bench_pruning(threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(HERE / "bench_pruning.py"), "--repeats", "1", "--threads", str(threads)],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    rows, header = [], None
    for line in proc.stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if line.startswith("pruner"):
            header = cells
        elif header and len(cells) >= 5 and not line.startswith("---"):
            rows.append(dict(zip(header, cells)))
    return {"rows": rows, "output": proc.stdout}


# ------------------------------------------------------------------------------------ main
def fmt_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header, tuple("-" * w for w in widths), *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default=None, help="results/<name>.json (default: <hostname>-<UTC date>)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=2.0, help="per contender per round (CQL: 1.5x)")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s, 100k-row dataset: a smoke test")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    ap.add_argument("--algos", default="iql,td3bc,cql")
    ap.add_argument("--transitions", type=int, default=1_000_000)
    ap.add_argument("--_load-child", dest="load_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_threads-child", dest="threads_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_child:
        load_child(args.load_child)
        return
    if args.threads_child is not None:
        threads_child(args.threads_child == "1", args.rounds, args.seconds)
        return
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    if args.quick:
        args.rounds, args.seconds, args.transitions = 3, 0.5, 100_000
    skip = {s for s in args.skip.split(",") if s}
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "started_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(torch.get_num_threads()),
        "load_average_start": load_average(),
        "settings": {"batch_size": bt.BATCH, "dataset": f"random {bt.N} transitions, obs {bt.OBS}, act {bt.ACT}",
                     "rounds": args.rounds, "seconds_per_round": args.seconds, "threads": args.threads},
        "targets": TARGETS,
    }
    m = result["machine"]
    print(f"{m['cpu_model']}, {m['logical_cores']} cores, torch {m['torch']}, {m['torch_threads']} thread(s), "
          f"load average {result['load_average_start']}")
    try:
        import d3rlpy

        result["machine"]["d3rlpy"] = d3rlpy.__version__
    except ImportError:
        result["machine"]["d3rlpy"] = None

    if "matmul" not in skip:
        result["matmul_gflops"] = bench_matmul()
        print("\n[1] fp32 matmul GFLOP/s: " + ", ".join(f"{k} {v}" for k, v in result["matmul_gflops"].items()))

    dataset = bt.synthetic_dataset()
    replay = None
    if "d3rlpy" not in skip and result["machine"]["d3rlpy"]:
        replay = bt.d3rlpy_replay_buffer(dataset)
    if "training" not in skip:
        result["training"] = {}
        rows = []
        for name in args.algos.split(","):
            secs = args.seconds * (1.5 if name == "cql" else 1)
            res = bt.bench_algorithm(name, dataset, replay, args.rounds, secs)
            result["training"][name] = res
            rows += bt.format_rows(name, res)
        print(f"\n[2] training steps/s, batch {bt.BATCH}, alternating, median of {args.rounds} rounds "
              "(ratio: median of per-round native / contender)")
        print(fmt_table(("algo", "contender", "steps/s", "native / it"), rows))
        print("mask enforcement at sparsity 0.95, in the loop (sparse step with vs. without the mask hooks; "
              "in brackets: sparse vs. dense, and apply alone in warm caches / dense step):\n  "
              + ", ".join(f"{n} {100 * r['mask_overhead']:+.1f}% ({100 * r['mask_overhead_ab']:+.1f}%, "
                          f"{r['mask_apply_us']:.0f} us = {100 * r['mask_overhead_isolated']:.1f}%)"
                          for n, r in result["training"].items() if "mask_overhead" in r))

    if "flops" not in skip:
        peak = result.get("matmul_gflops", {}).get("256x256x256") or matmul_rate(256, 256, 256)
        flops, rows = {}, []
        for name in args.algos.split(","):
            native = bt.Native(name, dataset)
            per_step = count_flops(native.step)
            sps = result.get("training", {}).get(name, {}).get("steps_per_sec", {}).get("native")
            if sps is None:
                n, dt = native.run(3.0)
                sps = n / dt
            achieved = per_step * sps / 1e9
            entry = {"gflop_per_step": per_step / 1e9, "steps_per_sec": sps, "achieved_gflops": achieved,
                     "matmul_gflops": peak, "flop_bound_steps_per_sec": peak * 1e9 / per_step,
                     "fraction_of_flop_bound": achieved / peak}
            if replay is not None:
                own = bt.D3rlpyOwn(name, replay, bt.NATIVE_HIDDEN[name], presampled=True)
                entry["d3rlpy_gflop_per_step"] = count_flops(own.step) / 1e9
                d_sps = result.get("training", {}).get(name, {}).get("steps_per_sec", {}).get("d3rlpy upd")
                if d_sps:
                    entry["d3rlpy_fraction_of_flop_bound"] = entry["d3rlpy_gflop_per_step"] * d_sps / peak
            flops[name] = entry
            rows.append((name, f"{entry['gflop_per_step']:.3f}", f"{sps:.0f}", f"{achieved:.0f}",
                         f"{entry['flop_bound_steps_per_sec']:.0f}", f"{100 * entry['fraction_of_flop_bound']:.0f}%",
                         f"{entry.get('d3rlpy_gflop_per_step', float('nan')):.3f}",
                         f"{100 * entry.get('d3rlpy_fraction_of_flop_bound', float('nan')):.0f}%"))
        result["flops"] = flops
        print(f"\n[3] FLOPs per update step vs the 256^3 matmul rate ({peak:.0f} GFLOP/s)")
        print(fmt_table(("algo", "GFLOP/step", "steps/s", "GFLOP/s", "FLOP-bound steps/s", "of bound",
                         "d3rlpy GFLOP/step", "d3rlpy of bound"), rows))

    if "threads" not in skip:
        res = result["threads"] = bench_thread_policy(replay is not None, args.rounds, args.seconds)
        print("\n[3b] IQL steps/s at 1 and 2 torch threads, alternating (OMP wait policy: default / PASSIVE)")
        rows = []
        for policy, r in res.items():
            if "error" in r:
                rows.append((policy, r["error"], "", ""))
                continue
            sps = r["steps_per_sec"]
            for who in ("native", "d3rlpy upd"):
                if f"{who} @1t" in sps:
                    rows.append((policy, who, f"{sps[f'{who} @1t']:.0f}", f"{sps[f'{who} @2t']:.0f}",
                                 f"{r['ratios'][f'{who} @2t / @1t']:.2f}x"))
        print(fmt_table(("OMP_WAIT_POLICY", "contender", "1 thread", "2 threads", "2t / 1t"), rows))

    if "pruning" not in skip:
        result["pruning"] = bench_pruning(args.threads)
        print("\n[4] pruning at initialization (bench_pruning.py --repeats 1)")
        print(result["pruning"].get("output", result["pruning"].get("error", "")).rstrip())
        result["pruning"].pop("output", None)

    if "dataset" not in skip:
        res = result["dataset"] = bench_dataset(args.transitions)
        print(f"\n[5] dataset: {args.transitions} transitions, D4RL-layout HDF5 through load_dataset (fresh process)")
        if "error" in res:
            print("failed: " + res["error"])
        else:
            print(f"load {res['load_seconds']:.2f} s, peak +{res['peak_bytes_load'] / 2**20:.0f} MiB = "
                  f"{res['peak_over_raw']:.2f}x the file's raw arrays ({res['raw_bytes'] / 2**20:.0f} MiB; "
                  f"the loaded dataset holds {res['dataset_bytes'] / 2**20:.0f} MiB); TransitionBuffer "
                  f"{res['buffer_seconds']:.2f} s, {res['buffer_bytes'] / 2**20:.0f} MiB, peak with it "
                  f"+{res['peak_bytes_load_and_buffer'] / 2**20:.0f} MiB")

    if "eval" not in skip:
        res = result["eval"] = bench_eval()
        print(f"\n[6] evaluation: {res['env_steps_per_sec']:.0f} env steps/s ({res['episodes']} {res['env']} episodes, "
              f"{res['parallel']} at once; policy calls {100 * res['policy_fraction']:.0f}% of the time)")

    result["load_average_end"] = load_average()
    result["wall_seconds"] = time.perf_counter() - t_start
    summary = summarize(result)
    result["summary"] = summary
    print("\n" + fmt_table(("target", "measured", "holds"), [(k, v["measured"], v["holds"]) for k, v in summary.items()]))
    name = args.name or f"{socket.gethostname()}-{started.strftime('%Y%m%dT%H%M')}"
    from sparse_offline_rl.io import atomic_write_json

    out = HERE / "results" / f"{name}.json"
    atomic_write_json(out, result)
    print(f"\nload average at end {result['load_average_end']}; {result['wall_seconds']:.0f} s; wrote {out}")


def summarize(result: dict[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, res in result.get("training", {}).items():
        r = res["ratios"].get("native/d3rlpy upd")
        if r is not None:
            out[f"{name}: native / d3rlpy update >= {TARGETS['ratio']:.0f}x"] = {
                "measured": f"{r:.2f}x (fit path {res['ratios']['native/d3rlpy']:.2f}x)", "holds": str(r >= TARGETS["ratio"])}
        if "mask_overhead" in res:
            out[f"{name}: mask overhead at 0.95 <= 5%"] = {
                "measured": f"{100 * res['mask_overhead']:+.1f}% (sparse vs dense {100 * res['mask_overhead_ab']:+.1f}%)",
                "holds": str(res["mask_overhead"] <= TARGETS["mask_overhead"])}
    if "iql" in result.get("flops", {}):
        f = result["flops"]["iql"]["fraction_of_flop_bound"]
        out["iql: >= 50% of FLOP-bound"] = {"measured": f"{100 * f:.0f}%", "holds": str(f >= TARGETS["flop_fraction_iql"])}
    ds = result.get("dataset", {})
    if "load_seconds" in ds:
        out["1M load < 5 s"] = {"measured": f"{ds['load_seconds']:.2f} s", "holds": str(ds["load_seconds"] < TARGETS["load_seconds"])}
        out["1M load peak < 2x raw"] = {"measured": f"{ds['peak_over_raw']:.2f}x", "holds": str(ds["peak_over_raw"] < TARGETS["peak_over_raw"])}
    return out


if __name__ == "__main__":
    main()
