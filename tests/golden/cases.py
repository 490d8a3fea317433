"""Short fixed runs whose every summary number, logged metric and checkpoint tensor is recorded
(`python tests/golden/cases.py record`) so a change that should not alter behaviour (a refactor)
can prove it did not: `tests/test_golden.py` re-runs them and compares.

Float results are reproducible bit for bit on one CPU platform only: another vector width or BLAS
kernel path rounds differently (seen: 1e-8 relative in IQL's weights, up to 1e-3 in CQL's after 120
steps). `golden.json` is the record of the code's behaviour; `platforms/<platform>.json` holds the
same code's numbers on another platform (`record --platform`, made there), and a platform compares
with its own file when it has one. An intended change of behaviour re-records `golden.json` and
deletes the platform files, which then no longer describe the code.

Each case composes the YAML configs as `python run.py` does, so a changed default shows up too.
Timings (seconds, steps/s, measured kernel costs) and the code version are left out: they differ
between two runs of the same code."""
from __future__ import annotations

import hashlib
import json
import platform as pyplatform
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GOLDEN = HERE / "golden.json"
PLATFORMS = HERE / "platforms"
SKIP = re.compile(r"(seconds|steps_per_sec|cost_us|^code\.)")

COMMON = ["env=hopper", "dataset=random-hopper", "steps=120", "batch_size=64", "checkpoint_every=60",
          "log_every=30", "eval.every=60", "eval.episodes=2", "threads=1", "tensorboard=false",
          "progress=false", "verbose=false", "sparsity=0.95", "pruner=snip"]
SMALL = ["algo.hidden=[64,64]"]
CASES: dict[str, dict[str, Any]] = {
    **{f"{algo}-snip-{kernels}": {"overrides": [f"algo={algo}", f"sparse_kernels={kernels}", *SMALL]}
       for algo in ("iql", "cql", "td3bc") for kernels in ("sparse", "dense")},
    "iql-snip-stacked3": {"overrides": ["algo=iql", "sparse_kernels=dense", *SMALL], "seeds": [0, 1, 2]},
    "iql-rigl": {"overrides": ["algo=iql", "pruner=rigl", "pruner.update_every=30", "sparse_kernels=dense", *SMALL]},
    "iql-snip-units": {"overrides": ["algo=iql", "pruner.structure=units", "sparsity=0.5", "sparse_kernels=dense",
                                     *SMALL]},
}


def compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=[*COMMON, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def tensor_record(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_dense()
    data = t.contiguous().numpy().tobytes()
    as64 = t.double() if t.is_floating_point() else t.to(torch.float64)
    return {"shape": list(t.shape), "dtype": str(t.dtype), "sha256": hashlib.sha256(data).hexdigest(),
            "sum": float(as64.sum()), "abs_sum": float(as64.abs().sum())}


def record_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """Everything a run wrote that the same code must reproduce exactly (paths relative to `root`)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False, map_location="cpu")
    out: dict[str, Any] = {"summary": {}, "metrics": {}, "checkpoint": {}}
    for key, value in flatten(summary):
        if not SKIP.search(key):
            out["summary"][key] = value.replace(str(root), "ROOT") if isinstance(value, str) else value
    for i, row in enumerate(metrics):
        for key, value in flatten(row):
            if not SKIP.search(key):
                out["metrics"][f"{i}.{key}"] = value
    out["eval_csv"] = (run_dir / "eval.csv").read_text().splitlines()
    for key, value in flatten(checkpoint):
        if SKIP.search(key):
            continue
        out["checkpoint"][key] = tensor_record(value) if torch.is_tensor(value) else value
    return out


def run_case(name: str, root: Path) -> dict[str, dict[str, Any]]:
    """Train case `name` under `root`; returns {run label: record}."""
    sys.path.insert(0, str(HERE.parent))
    from conftest import random_dataset
    from sparse_offline_rl.training.stacked import train_stacked
    from sparse_offline_rl.training.trainer import train

    case = CASES[name]
    dataset = random_dataset("hopper")
    if "seeds" in case:
        cfgs = [compose([*case["overrides"], f"seed={seed}"]) for seed in case["seeds"]]
        dirs = [root / name / f"seed{seed}" for seed in case["seeds"]]
        train_stacked(cfgs, dirs, dataset=dataset)
        return {f"seed{seed}": record_run(d, root) for seed, d in zip(case["seeds"], dirs)}
    train(compose(case["overrides"]), root / name, dataset=dataset)
    return {"seed0": record_run(root / name, root)}


def differences(expected: Any, actual: Any, rel: float = 0.0, prefix: str = "") -> list[str]:
    """Paths where `actual` differs from `expected` (floats within `rel` relative, tensors by hash)."""
    if isinstance(expected, dict) and "sha256" in expected and isinstance(actual, dict):
        if expected["sha256"] == actual.get("sha256"):
            return []
        if rel and expected["shape"] == actual["shape"] and all(
                abs(expected[k] - actual[k]) <= rel * max(abs(expected[k]), 1e-12) for k in ("sum", "abs_sum")):
            return []
        return [f"{prefix}: tensor differs (sum {expected['sum']!r} -> {actual['sum']!r})"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{prefix}.{k}: missing" for k in expected if k not in actual]
        out += [f"{prefix}.{k}: new" for k in actual if k not in expected]
        for k in expected.keys() & actual.keys():
            out += differences(expected[k], actual[k], rel, f"{prefix}.{k}" if prefix else k)
        return out
    if isinstance(expected, float) and isinstance(actual, float) and rel:
        return [] if abs(expected - actual) <= rel * max(abs(expected), 1e-12) else [f"{prefix}: {expected!r} -> {actual!r}"]
    return [] if expected == actual else [f"{prefix}: {expected!r} -> {actual!r}"]


def platform() -> str:
    """What decides float rounding: machine, CPU vendor, the vector ISA torch dispatches to, torch itself."""
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        vendor = ""
    parts = [pyplatform.machine(), vendor or pyplatform.processor() or "cpu",
             torch.backends.cpu.get_cpu_capability(), f"torch{torch.__version__}"]
    return re.sub(r"[^A-Za-z0-9.]+", "_", "-".join(parts))


def record_path(name: str | None = None) -> Path:
    """This platform's own record if it has one, else golden.json."""
    own = PLATFORMS / f"{name or platform()}.json"
    return own if own.exists() else GOLDEN


def main(for_platform: bool) -> None:
    import tempfile
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        golden = {name: run_case(name, Path(tmp)) for name in CASES}
    from sparse_offline_rl.io import code_version
    golden["_recorded_at"] = code_version()
    golden["_platform"] = platform()
    target = PLATFORMS / f"{platform()}.json" if for_platform else GOLDEN
    if not for_platform:
        for stale in PLATFORMS.glob("*.json"):
            stale.unlink()
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(golden, indent=0, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {target} ({target.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    if sys.argv[1:] not in (["record"], ["record", "--platform"]):
        sys.exit("usage: python tests/golden/cases.py record [--platform]  (--platform: this platform's numbers "
                 "for unchanged code; without it: the code's new record, other platforms' files deleted)")
    main(for_platform=sys.argv[2:] == ["--platform"])
