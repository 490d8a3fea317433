"""Export a trained run's actor as a standalone artefact.

  python -m sparse_offline_rl.export run_dir=DIR format=onnx|torchscript [batch=1] [threads=1]
                                     [storage=auto|dense|sparse]

writes DIR/export/actor.onnx (runs with onnxruntime alone) or DIR/export/actor.pt (runs with torch
alone: `torch.jit.load`), DIR/export/actor.json (file size, measured latency, storage, check) and
the same record under `export.<format>` in DIR/summary.json.

The artefact maps raw float32 observations (B, obs_dim) to the actions evaluation takes,
`algo.act(normalizer(obs))`: the run's observation normaliser and the actor's squashing and
max_action scaling are inside it. Before anything is written, its actions on every observation of
the run's dataset are checked against the framework's (`MAX_ABS_DIFF`).

Storage of pruned weights (`storage=auto` measures, at export time on this machine):
- TorchScript: dense (zeros stored) or sparse (every layer with pruned weights as a CSR matrix with
  32-bit indices, multiplied feature-major like `pruning.sparse_linear`); both are traced, frozen,
  loaded back from their bytes and timed at batch 1 and 256, alternating, each keeping its fastest
  round; sparse is kept only if it is faster at the requested batch by the margin the training
  kernels use (`SPARSE_MARGIN`), since noise must not flip a tie.
- ONNX: dense. onnxruntime has no kernel that multiplies by a weight stored sparse inside the
  model: its SparseToDenseMatMul takes the sparse matrix only as a graph input of sparse type, and
  a model's sparse initializers are made dense when the session loads them.

Bad input ends with one line naming the value and what is accepted (exit status 2).
"""
from __future__ import annotations

import copy
import inspect
import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sparse_offline_rl.checks import parse_overrides, to_int
from sparse_offline_rl.errors import ConfigError, ExportError, USER_ERRORS
from sparse_offline_rl.evaluation.agent import EvalAgent, load_agent
from sparse_offline_rl.io import atomic_write_bytes_with, atomic_write_json, cpu_model
from sparse_offline_rl.sparse.wiring import WiringError
from sparse_offline_rl.sparse.kernels import SPARSE_MARGIN, best_us
from sparse_offline_rl.sparse.linear import csr_pattern, densify_
from sparse_offline_rl.sparse.narrow import drop_unread_units_

FORMATS = {"onnx": "actor.onnx", "torchscript": "actor.pt"}
STORAGES = ("auto", "dense", "sparse")
KEYS = {"run_dir", "format", "batch", "threads", "storage"}
#: The batches whose latency every export reports (per call, i.e. per batch of observations).
REPORTED_BATCHES = (1, 256)
#: Largest |exported - framework| action difference accepted on the dataset's observations.
MAX_ABS_DIFF = 1e-5
#: Timing: rounds per artefact and batch, each a window of this many seconds (at least 2 calls). Short
#: windows on purpose: on a shared machine a window longer than a scheduler time slice always
#: includes time spent descheduled (measured: 30 ms windows read 40% slow under load 3 on 2 cores).
ROUNDS, WINDOW_S = 25, 0.002
ONNX_OPSET = 17


class Policy(nn.Module):
    """Raw observations -> actions: the run's normaliser, then the actor, whose forward is `act`."""

    def __init__(self, actor: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.actor = actor
        self.units_removed: int | None = 0  # hidden units nothing read, left out (None: wiring not traced)
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        # The normaliser's own arithmetic, so the exported actions match evaluation's bit for bit.
        return self.actor((observations - self.mean) / self.std)


class CSRLinear(nn.Module):
    """Inference-only linear layer whose weight is a CSR buffer (kept entries only).

    Feature-major like SparseLinear: y^T = W x^T into a preallocated (out, B) output, whose
    transpose is the next layer's contiguous operand; `addmm(out=)` saves a pass over the output
    (measured on the 2x256 actor at batch 256: 13-25% faster than returning a new tensor)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        crow, col = csr_pattern(weight != 0)
        self.out_features = linear.out_features
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = torch.sparse_csr_tensor(crow, col, weight[weight != 0], weight.shape, check_invariants=True)
        self.register_buffer("weight", csr)
        bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(self.out_features, x.shape[0], dtype=x.dtype, device=x.device)
        torch.addmm(self.bias, self.weight, x.t().contiguous(), out=out)
        return out.t()


def exportable_policy(agent: EvalAgent, observations: np.ndarray) -> Policy:
    """The agent's actor behind its normaliser, as it deploys (`deployable_`). Only an actor whose
    forward is the algorithm's `act` can be exported alone: checked on `observations` rather than
    assumed, since plug-ins may act otherwise."""
    name = agent.meta.get("algo", type(agent.algo).__name__)
    actor = agent.algo.networks().get("actor")
    if actor is None:
        raise ExportError(f"algo '{name}' has no network named 'actor'; export needs one")
    obs = agent.normalizer(torch.as_tensor(observations[:256], dtype=torch.float32))
    with torch.no_grad():
        expected, got = agent.algo.act(obs), actor(obs)
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got, expected)):
        raise ExportError(f"algo '{name}' cannot be exported: its act(obs) is not its actor network's output, "
                          "so the actor alone does not give the framework's actions")
    policy = Policy(copy.deepcopy(actor), agent.normalizer.mean.cpu(), agent.normalizer.std.cpu())
    policy.units_removed = deployable_(policy.actor)
    return policy.requires_grad_(False).eval()


def deployable_(actor: nn.Module) -> int | None:
    """Make `actor` what deploys, in place: plain dense layers (SparseLinear back to nn.Linear), without
    the hidden units whose outgoing weights are all pruned (they compute nothing that is read).
    Returns how many units were left out; None when the wiring cannot be traced (kept at its width)."""
    densify_(actor)
    try:
        return drop_unread_units_(actor)
    except WiringError:
        return None


def pruned_layers(policy: nn.Module) -> list[str]:
    """The nn.Linear layers with pruned weights: the mask holds pruned entries at exactly zero."""
    return [name for name, m in policy.named_modules() if isinstance(m, nn.Linear) and bool((m.weight == 0).any())]


def with_sparse_storage(policy: nn.Module) -> nn.Module:
    """A copy with every layer that has pruned weights as a CSRLinear."""
    sparse = copy.deepcopy(policy)
    for name in pruned_layers(sparse):
        parent, _, child = name.rpartition(".")
        setattr(sparse.get_submodule(parent), child, CSRLinear(sparse.get_submodule(name)))
    return sparse


def serialize(policy: nn.Module, fmt: str, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # torch.jit and the TorchScript-based ONNX exporter are deprecated (torch 2.9+) but work:
        # TorchScript is the format asked for, and the ONNX exporter's successor needs onnxscript.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if fmt == "torchscript":
            # Traced, not scripted: any actor forward made of tensor ops traces. Frozen: weights
            # become constants, which drops the attribute lookups of every call.
            traced = torch.jit.trace(policy, example, check_trace=False)
            torch.jit.save(torch.jit.freeze(traced.eval()), buffer)
            return without_debug_records(buffer.getvalue())
        else:
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(policy, (example,), buffer, input_names=["observations"], output_names=["actions"],
                              dynamic_axes={"observations": {0: "batch"}, "actions": {0: "batch"}},
                              opset_version=ONNX_OPSET, **legacy)
    return buffer.getvalue()


def without_debug_records(artefact: bytes) -> bytes:
    """A TorchScript archive without its `.debug_pkl` records: the Python source ranges of the trace,
    which name the files and lines of whatever called `serialize` (so the size of the same actor
    moved with the caller), and which loading and running never need."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(artefact)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith(".debug_pkl"):
                dst.writestr(info, src.read(info.filename))
    return out.getvalue()


def runtime(fmt: str, artefact: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The artefact loaded as a deployment loads it (torch.jit.load / an onnxruntime session)."""
    if fmt == "torchscript":
        module = torch.jit.load(io.BytesIO(artefact))

        def run_torchscript(observations: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(observations)).numpy()

        return run_torchscript
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(artefact, options, providers=["CPUExecutionProvider"])
    return lambda observations: session.run(None, {"observations": observations})[0]


def batch_of(observations: np.ndarray, size: int) -> np.ndarray:
    """`size` rows of the dataset's observations (repeated if it has fewer), float32 and contiguous."""
    return np.ascontiguousarray(np.resize(observations, (size, observations.shape[1])), dtype=np.float32)


def time_calls(runners: Mapping[str, Callable[[], Any]], rounds: int = ROUNDS, seconds: float = WINDOW_S) -> dict[str, float]:
    """Microseconds per call of each runner. Rounds alternate between them, rotating the order, and
    each keeps its fastest round: other processes on the machine only ever slow a round down."""
    names = list(runners)
    for name in names:
        for _ in range(3):
            runners[name]()  # warm-up: allocator, thread pools, lazy kernel set-up
    best = {name: float("inf") for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            best[name] = min(best[name], best_us(runners[name], torch.device("cpu"), seconds))
    return best


def measure(artefacts: Mapping[str, bytes], fmt: str, observations: np.ndarray, threads: int,
            batches: Sequence[int] = REPORTED_BATCHES, rounds: int = ROUNDS) -> dict[str, dict[int, float]]:
    """{storage: {batch: microseconds per call}} of each serialised artefact, alternating between
    them, with `threads` threads (torch's for TorchScript, onnxruntime's for ONNX)."""
    runners = {name: runtime(fmt, data, threads) for name, data in artefacts.items()}
    out: dict[str, dict[int, float]] = {name: {} for name in artefacts}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in batches:
            obs = batch_of(observations, batch)
            times = time_calls({name: (lambda run=run: run(obs)) for name, run in runners.items()}, rounds)
            for name, us in times.items():
                out[name][batch] = us
    finally:
        torch.set_num_threads(before)
    return out


def _pruned_actor(networks: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
    """The actor of a pruning-time cost call as it deploys (`deployable_`), with a batch-1 zero observation."""
    actor = networks.get("actor")
    if actor is None:
        raise ExportError(f"this cost needs a network named 'actor'; networks: {', '.join(networks)}")
    actor = copy.deepcopy(actor).cpu()
    deployable_(actor)
    first = next((m for m in actor.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ExportError("this cost needs an actor with a Linear input layer")
    return actor.requires_grad_(False).eval(), torch.zeros(1, first.in_features)


def _artefacts(networks: Mapping[str, nn.Module]) -> tuple[dict[str, bytes], torch.Tensor]:
    actor, example = _pruned_actor(networks)
    artefacts = {"dense": serialize(actor, "torchscript", example)}
    if pruned_layers(actor):
        artefacts["sparse"] = serialize(with_sparse_storage(actor), "torchscript", example)
    return artefacts, example


def actor_bytes(networks: Mapping[str, nn.Module]) -> float:
    """Built-in cost for pruner.budget_cost=sparse_offline_rl.export:actor_bytes: bytes of the actor
    as a TorchScript artefact, the smaller of dense and CSR storage (the normaliser, 2 x obs_dim
    floats, is left out: it is not known before training). TorchScript's mangled class names move the
    size by a few dozen bytes from one call to the next."""
    artefacts, _ = _artefacts(networks)
    return float(min(len(a) for a in artefacts.values()))


def actor_latency_ms(networks: Mapping[str, nn.Module], batch: int = 1) -> float:
    """Built-in cost for pruner.budget_cost=sparse_offline_rl.export:actor_latency_ms: milliseconds per
    call at batch `batch` (1: one action) of the actor as a TorchScript artefact on this machine, 1
    thread, the faster of dense and CSR storage. A measurement: noisy, so a search it drives is
    approximate (the constrained search measures a cost near its limit more than once)."""
    artefacts, example = _artefacts(networks)
    latency = measure(artefacts, "torchscript", example.numpy(), threads=1, batches=(batch,))
    return min(by_batch[batch] for by_batch in latency.values()) / 1000.0


def actor_latency_ms_256(networks: Mapping[str, nn.Module]) -> float:
    """Built-in cost pruner.budget_cost=sparse_offline_rl.export:actor_latency_ms_256: `actor_latency_ms`
    at batch 256 (a batch of environments, or a planner's candidate states)."""
    return actor_latency_ms(networks, batch=256)


def choose_storage(latency: Mapping[str, Mapping[int, float]], batch: int) -> str:
    sparse = latency.get("sparse")
    return "sparse" if sparse is not None and sparse[batch] <= SPARSE_MARGIN * latency["dense"][batch] else "dense"


def max_abs_diff(agent: EvalAgent, run: Callable[[np.ndarray], np.ndarray], observations: np.ndarray,
                 chunk: int = 8192) -> float:
    """Largest |artefact - framework| action over `observations`, the framework acting as in evaluation."""
    worst = 0.0
    for start in range(0, len(observations), chunk):
        obs = np.ascontiguousarray(observations[start:start + chunk], dtype=np.float32)
        with torch.no_grad():
            expected = agent.algo.act(agent.normalizer(torch.from_numpy(obs))).cpu().numpy()
        worst = max(worst, float(np.abs(run(obs) - expected).max()))
    return worst


def dataset_observations(agent: EvalAgent) -> np.ndarray:
    """Every observation of the run's dataset: the training episodes and the held-out ones."""
    parts = [agent.train_data.observations] + ([agent.val_data.observations] if agent.val_data is not None else [])
    return np.concatenate(parts).astype(np.float32, copy=False)


def candidate_artefacts(dense: Policy, fmt: str, observations: np.ndarray, storage: str = "auto") -> dict[str, bytes]:
    """{storage: serialised artefact} that an export times and chooses between: `dense` (an
    `exportable_policy`), and unless `storage` is dense, CSR where the format has it (TorchScript) and
    the actor has pruned weights (a narrow actor from pruner.structure=units has none: its layers are
    small and dense)."""
    policies = {"dense": dense}
    if pruned_layers(dense) and fmt == "torchscript" and storage != "dense":
        policies["sparse"] = with_sparse_storage(dense)
    if storage == "sparse" and "sparse" not in policies:
        raise ConfigError("storage=sparse needs pruned weights; this actor has none")
    example = torch.from_numpy(batch_of(observations, 2))
    return {name: serialize(policy, fmt, example) for name, policy in policies.items()}


def export_agent(agent: EvalAgent, fmt: str, out_dir: Path | str, *, batch: int = 1, threads: int = 1,
                 storage: str = "auto") -> dict[str, Any]:
    """Write `out_dir/actor.<ext>` and `out_dir/actor.json`; returns the record written to the latter."""
    check_format(fmt, storage)
    observations = dataset_observations(agent)
    policy = exportable_policy(agent, observations)
    artefacts = candidate_artefacts(policy, fmt, observations, storage)
    latency = measure(artefacts, fmt, observations, threads, sorted({*REPORTED_BATCHES, batch}))
    chosen = storage if storage != "auto" else choose_storage(latency, batch)
    diff = max_abs_diff(agent, runtime(fmt, artefacts[chosen], threads), observations)
    if not diff <= MAX_ABS_DIFF:
        raise ExportError(f"the exported actor's actions differ from the framework's by up to {diff:.3g} "
                          f"(> {MAX_ABS_DIFF:g}) on the dataset's observations; nothing was written")
    path = Path(out_dir) / FORMATS[fmt]
    atomic_write_bytes_with(path, lambda f: f.write(artefacts[chosen]))
    record = {
        "format": fmt,
        "file": path.name,
        "bytes": path.stat().st_size,
        "storage": chosen,
        "hidden_units_removed": policy.units_removed,
        "batch": batch,
        "latency_us": {str(b): latency[chosen][b] for b in REPORTED_BATCHES},
        "candidates": {name: {"bytes": len(data), "latency_us": {str(b): us for b, us in latency[name].items()}}
                       for name, data in artefacts.items()},
        "max_abs_diff": diff,
        "observations_checked": len(observations),
        "input": f"raw observations, float32 (B, {observations.shape[1]}); output: actions (B, act_dim)",
        "measured_on": machine(threads, fmt),
    }
    atomic_write_json(path.with_suffix(".json"), record)
    return record


def machine(threads: int, fmt: str) -> dict[str, Any]:
    """What the latencies were measured on: they hold for this machine, thread count and load."""
    runtime_version = torch.__version__
    if fmt == "onnx":
        import onnxruntime

        runtime_version = onnxruntime.__version__
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": threads, "load_average": list(os.getloadavg()),
            "runtime": f"{'onnxruntime' if fmt == 'onnx' else 'torch'} {runtime_version}",
            "timing": f"microseconds per call (one batch), fastest of {ROUNDS} alternating rounds of {WINDOW_S * 1e3:g} ms"}


def check_format(fmt: str, storage: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is invalid; accepted: {', '.join(FORMATS)}")
    if storage not in STORAGES:
        raise ConfigError(f"storage={storage} is invalid; accepted: {', '.join(STORAGES)}")
    if fmt == "onnx" and storage == "sparse":
        raise ConfigError("storage=sparse is invalid with format=onnx: onnxruntime multiplies by dense weights only")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's ONNX exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("format=onnx needs onnx and onnxruntime: pip install -e '.[export]'") from None


def export_run(run_dir: Path | str, fmt: str, *, batch: int = 1, threads: int = 1, storage: str = "auto",
               dataset: Any = None) -> dict[str, Any]:
    """Export a finished run's actor to run_dir/export/ and record it in run_dir/summary.json
    (`export.<format>`, other fields kept). `dataset`: as for `load_agent`."""
    run_dir = Path(run_dir)
    check_format(fmt, storage)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={run_dir} does not exist")
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"run_dir={run_dir}: no summary.json there (export needs a finished run)")
    agent = load_agent(run_dir, dataset=dataset)
    record = export_agent(agent, fmt, run_dir / "export", batch=batch, threads=threads, storage=storage)
    summary = json.loads(summary_path.read_text())
    summary.setdefault("export", {})[fmt] = {**record, "file": f"export/{record['file']}"}
    atomic_write_json(summary_path, summary)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options, positional = parse_overrides(args, KEYS)
        if positional:
            raise ConfigError(f"unexpected argument '{positional[0]}'; use key=value (e.g. run_dir=runs/... format=onnx)")
        for key in ("run_dir", "format"):
            if key not in options:
                raise ConfigError(f"{key}= is required (run_dir=DIR format={'|'.join(FORMATS)})")
        # One thread by default: on a shared machine more threads only add contention (README,
        # "Performance"), and a deployed actor often shares its machine with the simulator.
        threads = to_int("threads", options.get("threads", "1"), 1)
        batch = to_int("batch", options.get("batch", "1"), 1)
        record = export_run(options["run_dir"], options["format"], batch=batch, threads=threads,
                            storage=options.get("storage", "auto"))
    except (ImportError, *USER_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lat = record["latency_us"]
    print(f"wrote {Path(options['run_dir']) / 'export' / record['file']} ({record['bytes']} bytes, {record['storage']} "
          f"storage): {lat['1']:.1f} us at batch 1, {lat['256']:.1f} us at batch 256; actions within "
          f"{record['max_abs_diff']:.1g} of the framework's on {record['observations_checked']} observations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
