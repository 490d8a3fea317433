"""Pruning at initialization, the orchestration: from a network (or an algorithm) to its masks.

- `saliency(method, module, loss_fn, input_shape, **opts)`: scores for any `nn.Module`.
- `prune_module(module, method, keep, ...)`: masks for one network: scoring rounds (iterative
  schedules), per-member budgets, the layer-collapse check.
- `prune_at_initialization(algo, sample_batch, pruner, sparsity, seed)`: what the trainer calls:
  pruner options, per-network sparsities or parameter / FLOP budgets, the scoring batches, every
  RNG left untouched, the bound `MaskSet` and the report (`density.network_report`).
"""
from __future__ import annotations

import copy
import importlib
import inspect
import numbers
import time
import zlib
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.pruning.allocation import SCOPES, allocate, check_layer_collapse, group_counts, keep_count, pin_pruned
from sparse_offline_rl.sparse.density import count_params_flops, network_report
from sparse_offline_rl.sparse.wiring import LayerGraph, WiringError, layer_graph, network_members
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.pruning.rng import untouched_rngs
from sparse_offline_rl.sparse.fan_init import check as check_sparse_init
from sparse_offline_rl.sparse.fan_init import sparse_init_
from sparse_offline_rl.pruning.scores import (
    LossClosure,
    Scores,
    grasp_scores,
    magnitude_scores,
    masked_weights,
    random_scores,
    snip_scores,
    synflow_scores,
)

PRUNERS = ("dense", "grasp", "magnitude", "random", "snip", "synflow")
DATA_DRIVEN = ("snip", "grasp")
#: Rounds when the config leaves `rounds` unset. Random / magnitude scores do not depend on the mask,
#: so iterating them would change nothing: they always run one round.
DEFAULT_ROUNDS = {"synflow": 100, "snip": 1, "grasp": 1, "random": 1, "magnitude": 1, "dense": 0}
PRUNER_DEFAULTS: dict[str, Any] = {
    "scope": "global",
    "num_batches": 1,
    "batch_size": 256,
    "rounds": None,
    "keep_first_layer_dense": False,
    "keep_last_layer_dense": False,
    "allow_layer_collapse": False,
    "budget_params": None,
    "budget_flops": None,
    "budget_cost": None,
    "budget_cost_max": None,
    "budget_networks": None,  # the networks whose sparsity a budget_cost search sets (default: all)
    "structure": "unstructured",  # or "units": whole hidden units removed (pruning/units.py)
    "weight_sparsity": None,  # structure=units: unstructured sparsity of the narrowed layers on top
    "sparse_init": False,  # re-draw the kept weights scaled to their fans under the mask (sparse/fan_init.py)
    "unit_score": "sum",  # structure=units: summed weight scores per unit, or "gate" (snip, grasp: a unit gate's saliency)
}
#: Bisection stops when the least feasible sparsity is bracketed this tightly (pruner.budget_cost).
BUDGET_COST_TOL = 1e-3
#: The sparsest probe of a cost search: no sparsity below 1 meets the budget if this one does not.
BUDGET_COST_MAX_SPARSITY = 1 - 1e-6


def _check_method(method: str) -> None:
    if method not in PRUNERS:
        raise ValueError(f"unknown pruner '{method}'; available: {', '.join(PRUNERS)}")


def _rounds(method: str, rounds: int | None) -> int:
    if method in ("random", "magnitude", "dense"):
        return DEFAULT_ROUNDS[method]
    value = DEFAULT_ROUNDS[method] if rounds is None else rounds
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rounds must be a positive integer, got {value!r}")
    return value


def _seed_for(seed: int, name: str) -> int:
    # A stable per-network stream (Python's hash() is salted per process).
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _wiring(module: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None) -> tuple[LayerGraph | None, str | None]:
    """The layer graph read from `forward`, or None and the reason it cannot be known. Only SynFlow
    and the keep_*_layer_dense options need it (and fail loudly without it); for the other pruners
    such a network is one member, and its dead units are not reported."""
    try:
        return layer_graph(module, example_inputs), None
    except WiringError as err:
        return None, str(err)


def _example_inputs(net: nn.Module, batch: Any) -> tuple[torch.Tensor, ...] | None:
    """A batch as the protocol feeds a network: `critic(obs, act)`, `value(obs)`, `actor(obs)`,
    told apart by how many inputs its forward requires."""
    required = [p for p in inspect.signature(net.forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return {1: (batch.observations,), 2: (batch.observations, batch.actions)}.get(len(required))


def _scorer(
    method: str,
    module: nn.Module,
    losses: Sequence[LossClosure],
    input_shape: Sequence[int] | None,
    seed: int,
    what: str,
    graph: LayerGraph | None = None,
) -> Callable[[Mapping[str, torch.Tensor] | None], Scores]:
    """score(masks) for one round; masks (bool) mark the weights still alive, None in round one."""
    params = prunable_parameters(module)
    if method in DATA_DRIVEN and not losses:
        raise ValueError(f"pruner '{method}' is data-driven: pass loss_fn(module) -> scalar tensor")
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda masks: random_scores(params, generator)
    if method == "magnitude":
        return lambda masks: magnitude_scores(params)
    if method in DATA_DRIVEN:
        fn = snip_scores if method == "snip" else grasp_scores

        def data_scores(masks: Mapping[str, torch.Tensor] | None) -> Scores:
            with masked_weights(params, masks):
                return fn(params, losses, what)

        return data_scores
    if method == "synflow":
        wiring = graph if graph is not None else layer_graph(module)  # WiringError: scores would be guesses
        return lambda masks: synflow_scores(module, masks, input_shape, wiring)
    raise ValueError(f"pruner '{method}' has no scores (available: {', '.join(p for p in PRUNERS if p != 'dense')})")


def _iterate(
    score: Callable[[Mapping[str, torch.Tensor] | None], Scores],
    keep: int,
    scope: str,
    dense: Sequence[str],
    rounds: int,
    members: Sequence[Sequence[str]] | None = None,
) -> tuple[dict[str, torch.Tensor], Scores]:
    """Prune to `keep` weights in `rounds` steps with keep ratio k^((e+1)/E) at round e, rescoring
    the pruned network each round. Each member (groups of layer names, default: one for the whole
    network) keeps its own fixed share of `keep` (`group_counts`) and is ranked on its own, so one
    member's larger scores can never take another's weights. Pruned weights are pinned to -inf and
    each layer's count is capped at what it kept, so no weight is ever revived (for every scope)."""
    masks: dict[str, torch.Tensor] | None = None
    scores: Scores = {}
    groups: list[tuple[list[str], int, int]] = []  # (layer names, final keep, prunable weights)
    for e in range(rounds):
        scores = score(masks)
        if not groups:
            sizes = {n: s.numel() for n, s in scores.items()}
            names = [list(g) for g in members] if members is not None else [list(scores)]
            keeps = group_counts(sizes, names, keep, dense)
            groups = [(g, k, sum(sizes[n] for n in g)) for g, k in zip(names, keeps)]
        caps = None
        if masks is not None:
            scores = pin_pruned(scores, masks)
            caps = {n: int(m.sum()) for n, m in masks.items()}
        new: dict[str, torch.Tensor] = {}
        for names_g, keep_g, total_g in groups:
            ratio = keep_g / total_g if total_g else 1.0
            keep_e = keep_g if e == rounds - 1 else max(keep_g, keep_count(total_g, ratio ** ((e + 1) / rounds)))
            new.update(allocate(
                {n: scores[n] for n in names_g}, keep_e, scope, [n for n in dense if n in names_g],
                None if caps is None else {n: caps[n] for n in names_g},
            ))
        masks = new
    assert masks is not None
    return masks, scores


def _closures(loss_fn: Callable[[nn.Module], torch.Tensor] | None, module: nn.Module, num_batches: int) -> list[LossClosure]:
    return [] if loss_fn is None else [partial(loss_fn, module) for _ in range(num_batches)]


def saliency(
    method: str,
    module: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    **opts: Any,
) -> dict[str, torch.Tensor]:
    """Scores for every prunable weight of `module` (Linear weights), keyed by parameter name.

    `loss_fn(module)` returns the scalar data-driven loss (snip, grasp); it is called `num_batches`
    times (default 1) and the gradients averaged, so it may draw a fresh batch per call.
    `input_shape` is the shape of SynFlow's all-ones input (default `(1, in_features)`).

    Options: `num_batches`; `seed` (random); `masks` ({name: bool/0-1 tensor}: score the network
    with those weights removed, pruned entries pinned to -inf); `sparsity` with `rounds` and `scope`
    (global|layer|erk): run the iterative schedule (synflow: 100 rounds) and return the scores of
    the final round, pruned entries pinned to -inf. Without `sparsity` one round is scored.
    Higher is better for every method (GraSP scores are signed: rank them, never abs them).
    """
    _check_method(method)
    if method == "dense":
        raise ValueError("pruner 'dense' has no scores; it keeps every weight")
    known = {"num_batches", "seed", "masks", "sparsity", "rounds", "scope"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for saliency(); accepted: {', '.join(sorted(known))}")
    num_batches = int(opts.get("num_batches", 1))
    graph, _ = _wiring(module)
    score = _scorer(method, module, _closures(loss_fn, module, num_batches), input_shape, int(opts.get("seed", 0)),
                    type(module).__name__, graph)
    masks = opts.get("masks")
    if masks is not None:
        masks = {n: m.to(torch.bool) for n, m in masks.items()}
        return pin_pruned(score(masks), masks)
    if opts.get("sparsity") is None:
        return score(None)
    sparsity = _check_sparsity(opts["sparsity"], type(module).__name__)
    total = sum(p.numel() for p in prunable_parameters(module).values())
    rounds = _rounds(method, opts.get("rounds"))
    _, scores = _iterate(score, keep_count(total, 1 - sparsity), opts.get("scope", "global"), (), rounds, network_members(module, graph))
    return scores


def _check_sparsity(value: Any, network: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < 1:
        raise ValueError(f"sparsity {value!r} for network '{network}' is outside the accepted range [0, 1)")
    return float(value)


def _budget_keep(module: nn.Module, kind: str, budget: int, network: str) -> int:
    """Kept prunable weights meeting a parameter or FLOP budget (per forward pass, see count_params_flops)."""
    params = prunable_parameters(module)
    total = sum(p.numel() for p in params.values())
    stats = count_params_flops(module, {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
    if kind == "budget_params":
        fixed = stats["params_dense"] - total  # biases, norms, other non-prunable parameters
        keep = budget - fixed
    else:
        fixed = stats["flops_dense"] - 2 * total  # bias additions
        keep = (budget - fixed) // 2
    if keep < 0:
        raise ValueError(
            f"{kind}={budget} for network '{network}' is below its {fixed} non-prunable {kind.split('_')[1]}"
        )
    return min(total, int(keep))


def load_cost(path: Any) -> Callable[[dict[str, nn.Module]], float]:
    """The callable named by pruner.budget_cost, 'package.module:function' (or 'package.module.function')."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"pruner.budget_cost={path!r} is invalid: a Python path 'module:function' is required")
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"pruner.budget_cost={path!r} is invalid: a Python path 'module:function' is required")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"pruner.budget_cost={path!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"pruner.budget_cost={path!r} is not callable")
    return fn


def _evaluate_cost(fn: Callable[..., Any], path: str, nets: Mapping[str, nn.Module],
                   masks: Mapping[str, Mapping[str, torch.Tensor]]) -> float:
    """cost({name: copy of the network with its pruned weights zeroed}) as a float."""
    pruned: dict[str, nn.Module] = {}
    for name, net in nets.items():
        clone = copy.deepcopy(net)
        weights = prunable_parameters(clone)
        with torch.no_grad():
            for pname, mask in masks.get(name, {}).items():
                weights[pname].mul_(mask.to(weights[pname].dtype))
        pruned[name] = clone
    value = fn(pruned)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        raise ValueError(f"pruner.budget_cost={path!r} returned {type(value).__name__} {value!r}, not a number")
    value = float(value)
    if value != value:
        raise ValueError(f"pruner.budget_cost={path!r} returned NaN")
    return value


def least_sparsity_within(cost_at: Callable[[float], float], limit: float, top: float = BUDGET_COST_MAX_SPARSITY,
                          tol: float = BUDGET_COST_TOL) -> float | None:
    """The least s in [0, top] with cost_at(s) <= limit, assuming the cost does not increase with s:
    0 if the unpruned cost fits, None if not even `top` does, else bisection until the least feasible
    probe is bracketed to `tol` (the returned s is always a probed, feasible one)."""
    if cost_at(0.0) <= limit:
        return 0.0
    if cost_at(top) > limit:
        return None
    lo, hi = 0.0, top
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost_at(mid) <= limit else (mid, hi)
    return hi


def per_network(value: Any, nets: Sequence[str], what: str) -> dict[str, Any]:
    """A single value for every network, or a mapping {network: value} (key 'default' as fallback)."""
    if not isinstance(value, Mapping):
        return {n: value for n in nets}
    unknown = sorted(set(value) - set(nets) - {"default"})
    if unknown:
        raise ValueError(f"{what} given for unknown network(s) {', '.join(unknown)}; networks: {', '.join(nets)}")
    missing = [n for n in nets if n not in value and "default" not in value]
    if missing:
        raise ValueError(
            f"{what} mapping has no entry for network(s) {', '.join(missing)} and no 'default': name each or add "
            f"{what}.default; networks: {', '.join(nets)}"
        )
    return {n: value.get(n, value.get("default")) for n in nets}


def prune_module(
    module: nn.Module,
    method: str,
    keep: int,
    *,
    scope: str = "global",
    dense_layers: Sequence[str] = (),
    losses: Sequence[LossClosure] = (),
    input_shape: Sequence[int] | None = None,
    rounds: int | None = None,
    seed: int = 0,
    allow_layer_collapse: bool = False,
    name: str = "network",
    graph: LayerGraph | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks for one network keeping exactly `keep` prunable weights (collapse-checked).

    Ensemble members (the connected groups of the traced layer graph, e.g. the two Q-networks of a
    twin critic) each keep the same fraction of their weights; a network whose wiring cannot be
    traced is one member. Collapse: a layer left with no weight, or an output layer no kept path
    from the input reaches (when the wiring is known). `graph`: the wiring, if already read."""
    _check_method(method)
    params = prunable_parameters(module)
    total = sum(p.numel() for p in params.values())
    if method == "dense" or keep >= total:
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    if graph is None:
        graph, _ = _wiring(module)
    score = _scorer(method, module, losses, input_shape, seed, name, graph)
    masks, _ = _iterate(score, keep, scope, list(dense_layers), _rounds(method, rounds), network_members(module, graph))
    context = f"{method}, scope={scope}, density {keep / total:.4f}"
    check_layer_collapse(masks, name, allow_layer_collapse, context, graph)
    return masks


def budget_networks(cfg: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The networks whose sparsity a pruner.budget_cost search sets: pruner.budget_networks (a list of
    names), default all; the others keep their configured sparsity."""
    value = cfg.get("budget_networks")
    if value is None:
        return list(names)
    if cfg.get("budget_cost") is None:
        raise ValueError("pruner.budget_networks applies to pruner.budget_cost only (budget_params / budget_flops "
                         "are given per network)")
    chosen = [value] if isinstance(value, str) else list(value)
    unknown = [n for n in chosen if n not in names]
    if not chosen or unknown:
        raise ValueError(f"pruner.budget_networks={value!r} is invalid: a non-empty list of networks out of "
                         f"{', '.join(names)} is required")
    return chosen


def _draw_batch(sample_batch: Callable[..., Any], batch_size: int) -> Any:
    """One batch of `batch_size` rows: `sample_batch(batch_size)` if it takes a size (e.g.
    `buffer.sample`), otherwise `sample_batch()` repeated and concatenated / cut to size."""
    try:
        takes_size = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in inspect.signature(sample_batch).parameters.values()
        )
    except (TypeError, ValueError):
        takes_size = False
    if takes_size:
        return sample_batch(batch_size)
    parts = [sample_batch()]
    have = len(parts[0][0])
    while have < batch_size:
        parts.append(sample_batch())
        have += len(parts[-1][0])
    fields = [torch.cat(column)[:batch_size] if len(parts) > 1 else column[0][:batch_size] for column in zip(*parts)]
    return type(parts[0])(*fields)


def prune_at_initialization(
    algo: Any,
    sample_batch: Callable[..., Any],
    pruner: Mapping[str, Any],
    sparsity: float | Mapping[str, float],
    seed: int = 0,
) -> tuple[MaskSet, dict[str, Any]]:
    """Prune every online network of `algo` once, before training; return the bound MaskSet and a
    JSON-serialisable report.

    Each network is scored on its own loss, `algo.saliency_loss(name, batch)`, over `num_batches`
    batches of `batch_size` transitions drawn once (all networks see the same batches). Target
    networks share their online network's mask. `sparsity` is a float for all networks or a mapping
    {network: sparsity} (key 'default' as fallback); `budget_params` / `budget_flops` in `pruner`
    replace it by the sparsity that meets that per-network budget. `budget_cost` ('module:function')
    with `budget_cost_max` replaces it by the least sparsity s, applied to every network, whose
    cost({name: copy of the network with its pruned weights zeroed}) <= budget_cost_max: bisection on
    s to BUDGET_COST_TOL, re-pruning with the configured pruner at each probe; the cost is assumed not
    to increase with s. `budget_networks` (a list) limits that search to the named networks; the
    others keep their `sparsity`. `structure="units"` removes whole hidden units instead and makes the
    networks narrower (`structured.prune_units`, which comes back here for `weight_sparsity`).

    Pruning consumes none of training's randomness: every RNG (torch, numpy and Python globals, and
    every generator reachable from `algo` and `sample_batch`, e.g. CQL's and TD3+BC's noise) is put
    back after scoring, so training after any pruner draws exactly what it draws after `dense`.
    While scoring, the torch RNG is seeded with `seed` so a stochastic saliency loss is reproducible.
    `sparse_init=True` re-draws the kept weights once the masks are final (`sparse_init.sparse_init_`,
    from a generator of its own derived from `seed`); off by default, so the dense initialisation stays
    (the SSP protocol's), `structure=units` refuses it.
    """
    cfg = dict(pruner)
    method = cfg.pop("name", "dense")
    _check_method(method)
    unknown = sorted(set(cfg) - set(PRUNER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown pruner option(s) {', '.join(unknown)}; accepted: name, {', '.join(sorted(PRUNER_DEFAULTS))}"
        )
    sparse_init = check_sparse_init(cfg)  # before the units branch, which has no weight masks to re-draw under
    if (cfg.get("structure") not in (None, "unstructured") or cfg.get("weight_sparsity") is not None
            or cfg.get("unit_score") not in (None, "sum")):
        from sparse_offline_rl.pruning.units import check_options, prune_units

        check_options({"name": method, **cfg})  # a structure it knows; weight_sparsity, unit_score only with units
        return prune_units(algo, sample_batch, {"name": method, **cfg}, sparsity, seed)
    cfg = {**PRUNER_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    scope = cfg["scope"]
    if scope not in SCOPES:
        raise ValueError(f"unknown scope '{scope}'; available: {', '.join(SCOPES)}")
    for key in ("num_batches", "batch_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"pruner.{key} must be a positive integer, got {cfg[key]!r}")
    given = [k for k in ("budget_params", "budget_flops", "budget_cost") if cfg[k] is not None]
    if len(given) > 1:
        raise ValueError("give at most one of pruner.budget_params, pruner.budget_flops and pruner.budget_cost")
    cost_fn = None
    if (cfg["budget_cost"] is None) != (cfg["budget_cost_max"] is None):
        raise ValueError("pruner.budget_cost and pruner.budget_cost_max go together: give both or neither")
    if cfg["budget_cost"] is not None:
        limit = cfg["budget_cost_max"]
        if isinstance(limit, bool) or not isinstance(limit, numbers.Real) or limit != limit:
            raise ValueError(f"pruner.budget_cost_max={limit!r} is invalid: a number is required")
        cost_fn = load_cost(cfg["budget_cost"])
    rounds = _rounds(method, cfg["rounds"])

    nets: dict[str, nn.Module] = dict(algo.networks())
    names = list(nets)
    targets = {n: _check_sparsity(s, n) for n, s in per_network(sparsity, names, "sparsity").items()}
    budget_kind = "budget_params" if cfg["budget_params"] is not None else "budget_flops" if cfg["budget_flops"] is not None else None
    budgets = per_network(cfg[budget_kind], names, budget_kind) if budget_kind else {}
    searched = budget_networks(cfg, names)

    start = time.perf_counter()
    devices = sorted({p.device.index or 0 for net in nets.values() for p in net.parameters() if p.device.type == "cuda"})
    setups: dict[str, tuple[int, LayerGraph | None, str | None, list[str], int]] = {}
    cost_report: dict[str, Any] | None = None
    with untouched_rngs(algo, sample_batch, devices=devices):
        torch.manual_seed(seed)
        batches: list[Any] = []
        if method in DATA_DRIVEN:
            batches = [_draw_batch(sample_batch, cfg["batch_size"]) for _ in range(cfg["num_batches"])]
        example_batch = batches[0] if batches else None

        def setup(name: str, net: nn.Module) -> tuple[int, LayerGraph | None, str | None, list[str], int]:
            """Size, wiring and dense layers of one network, read once (the first pass, in network order)."""
            nonlocal example_batch
            if name in setups:
                return setups[name]
            params = prunable_parameters(net)
            total = sum(p.numel() for p in params.values())
            graph, wiring_error = _wiring(net)
            if graph is None and sample_batch is not None:
                # Code fx cannot trace (d3rlpy's encoders assert isinstance(x, Tensor)) is run on a batch.
                example_batch = example_batch if example_batch is not None else _draw_batch(sample_batch, 2)
                example = _example_inputs(net, example_batch)
                if example is not None:
                    graph, wiring_error = _wiring(net, example)
            needs_wiring = [k for k in ("keep_first_layer_dense", "keep_last_layer_dense") if cfg[k] and method != "dense"]
            needs_wiring += ["pruner=synflow"] if method == "synflow" else []
            if graph is None and needs_wiring:
                raise WiringError(f"{' and '.join(needs_wiring)} need(s) the wiring of network '{name}': {wiring_error}")
            dense_layers: list[str] = []
            if graph is not None and method != "dense":
                first = graph.first_layers() if cfg["keep_first_layer_dense"] else []
                dense_layers = list(dict.fromkeys(first + (graph.last_layers() if cfg["keep_last_layer_dense"] else [])))
            dense_n = sum(params[n].numel() for n in dense_layers)
            setups[name] = (total, graph, wiring_error, dense_layers, dense_n)
            return setups[name]

        def prune_all(targets: Mapping[str, float], allow_collapse: bool
                      ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
            masks: dict[str, dict[str, torch.Tensor]] = {}
            networks_report: dict[str, Any] = {}
            for name, net in nets.items():
                total, graph, wiring_error, dense_layers, dense_n = setup(name, net)
                if budget_kind:
                    # A budget is about the whole network, so the dense layers are paid out of it.
                    keep = _budget_keep(net, budget_kind, int(budgets[name]), name)
                    target = 1 - keep / total if total else 0.0
                else:
                    # A sparsity applies to the layers being pruned: keeping a layer dense means "do not
                    # prune it", not "prune the others harder" (at 95% the 17x256 input layer alone would
                    # exceed the budget of a 17-256-256-1 value net).
                    target = targets[name] if method != "dense" else 0.0
                    keep = dense_n + keep_count(total - dense_n, 1 - target)
                net_masks: dict[str, torch.Tensor] | None = None
                if method != "dense" and keep < total:
                    losses = [partial(algo.saliency_loss, name, b) for b in batches]
                    net_masks = prune_module(
                        net, method, keep, scope=scope, dense_layers=dense_layers, losses=losses, rounds=rounds,
                        seed=_seed_for(seed, name), allow_layer_collapse=allow_collapse, name=name, graph=graph,
                    )
                    masks[name] = net_masks
                networks_report[name] = network_report(net, net_masks, target, keep, total, dense_layers, budget_kind,
                                                       budgets.get(name), graph, wiring_error)
                if method == "dense" and targets[name] > 0:
                    networks_report[name]["ignored_sparsity"] = targets[name]
            return masks, networks_report

        if cost_fn is not None:
            path, limit = cfg["budget_cost"], float(cfg["budget_cost_max"])
            probes: list[tuple[float, float]] = []

            def cost_at(s: float) -> float:
                # Every probe starts from the same torch RNG state, so the chosen probe's masks are
                # the final masks (re-pruned below with the configured collapse check).
                torch.manual_seed(seed)
                probe_masks, _ = prune_all({n: s if n in searched else targets[n] for n in names}, True)
                value = _evaluate_cost(cost_fn, path, nets, probe_masks)
                probes.append((s, value))
                return value

            chosen = least_sparsity_within(cost_at, limit)
            if chosen is None:
                raise ValueError(
                    f"pruner.budget_cost={path!r}: no sparsity below 1 meets budget_cost_max={limit:g} "
                    f"(cost {probes[-1][1]:g} at sparsity {BUDGET_COST_MAX_SPARSITY}, {probes[0][1]:g} dense)"
                )
            targets = {n: chosen if n in searched else targets[n] for n in names}
            achieved = next(v for s_, v in reversed(probes) if s_ == chosen)
            cost_report = {"budget_cost": path, "budget_cost_max": limit, "cost": achieved, "sparsity": chosen,
                           "networks": searched,
                           "tolerance": BUDGET_COST_TOL, "probes": [{"sparsity": s_, "cost": v} for s_, v in probes]}
            torch.manual_seed(seed)
        masks, networks_report = prune_all(targets, cfg["allow_layer_collapse"])
        if cost_report is not None:
            for name in searched:
                networks_report[name]["target_from"] = "budget_cost"
    # Scoring never touches `.grad`, but a saliency_loss that calls backward itself would; the first
    # optimizer step must not see such gradients.
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    scoring_seconds = time.perf_counter() - start

    mask_set = MaskSet(masks).bind(algo)
    if sparse_init:  # the masks are final: only now are the fans under them known
        sparse_init_(algo, mask_set, seed)
    totals = {k: sum(r[k] for r in networks_report.values()) for k in ("params_dense", "params", "flops_dense", "flops")}
    report: dict[str, Any] = {
        "pruner": method,
        "scope": scope,
        "num_batches": cfg["num_batches"] if method in DATA_DRIVEN else 0,
        "batch_size": cfg["batch_size"] if method in DATA_DRIVEN else 0,
        "rounds": rounds,
        "keep_first_layer_dense": bool(cfg["keep_first_layer_dense"]),
        "keep_last_layer_dense": bool(cfg["keep_last_layer_dense"]),
        "allow_layer_collapse": bool(cfg["allow_layer_collapse"]),
        "budget_params": cfg["budget_params"] if not isinstance(cfg["budget_params"], Mapping) else dict(cfg["budget_params"]),
        "budget_flops": cfg["budget_flops"] if not isinstance(cfg["budget_flops"], Mapping) else dict(cfg["budget_flops"]),
        "budget_cost": cost_report,
        "seed": int(seed),
        "sparse_init": sparse_init and bool(mask_set),
        "scoring_seconds": scoring_seconds,
        "networks": networks_report,
        "total": totals,
    }
    return mask_set, report
