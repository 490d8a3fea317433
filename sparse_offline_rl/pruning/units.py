"""Structured pruning at initialization: whole hidden units removed, networks made physically narrower.

`pruner.structure=units` (default `unstructured`) reads `sparsity` as the fraction of each network's
hidden units removed (per network like any sparsity: a float or {network: fraction}). Hidden units
are the outputs of Linear layers that another Linear layer reads; network inputs and outputs are
never removed. Each hidden layer then becomes a smaller nn.Linear (its kept rows), and each layer
reading it loses the matching input columns, in online and target networks and optimizers alike:
the network is narrower, not masked. `pruner.weight_sparsity` (float or mapping, default 0) then
prunes the narrow layers' weights unstructured, with the same pruner and scope
(`prune_at_initialization` on the narrowed algorithm): units first, weights on top.

Unit scores, `pruner.unit_score`:
- `sum` (default, every method): the summed scores of every weight a unit's removal deletes, its
  incoming row and its outgoing column in each layer reading it: the saliency the unstructured pruner
  would lose with the unit, so every method keeps its meaning without a second implementation
  (magnitude becomes the L1 norm of the unit's weights, the filter-norm criterion; GraSP's signed
  scores are summed signed, higher still better). For SynFlow the sum is not twice one flow: in the
  linearised all-ones network a unit's output is y_u = sum_j |w_uj| x_j + |b_u|, so its incoming flow
  (y_u - |b_u|) dR/dy_u falls short of its outgoing flow y_u dR/dy_u by the bias's share; they are
  equal only in a network without biases.
- `gate` (snip and grasp only): the saliency of a gate c_u multiplying the unit's activation, at c = 1.
  It needs no forward hook: the gate scales the unit's outgoing columns, so dL/dc_u = sum, over the
  layers reading u, of sum_j g_ju w_ju, from the same weight gradients. SNIP: |sum_j gbar_ju w_ju|,
  gbar the gradient averaged over the batches as in SNIP's |gbar * w| (the gate saliency of the mean
  loss); the abs comes after the sum, so opposite signs cancel, and the incoming row does not count
  (the gate sits after the activation): it ranks units differently from `sum`. GraSP: the signed
  sum_j (w * Hg)_ju over the outgoing columns, GraSP's first-order change of the gradient norm for
  the perturbation that scales those columns; that change is linear in the perturbation, so it is
  `sum`'s signed sum without the incoming row. (A gated network's outgoing weights also get their
  own gradient scaled by c; GraSP's weight score likewise ignores that a removed weight's own
  gradient leaves the norm, so the gate score leaves it out too.)
Removed units' scores are summed only over weights still alive, and iterative schedules (`rounds`,
SynFlow's 100) remove units in the same keep^((e+1)/E) steps as weights, rescoring the
narrowed-by-masks network each round.

Scopes: `global` ranks the units of all hidden layers of an ensemble member together (each member
of a twin critic keeps the same fraction, ranked on its own), `layer` removes the same fraction in
every hidden layer. ERK is a rule for weight densities, not unit counts, and is refused. A hidden
layer always keeps at least one unit: under `global` each layer's best unit is kept first and the
rest goes to the top-scored units; a sparsity leaving fewer units than hidden layers (or, under
`layer`, no unit in some layer) is an error naming the network.

Budgets (`budget_params`, `budget_flops`, `budget_cost`) search the unit fraction instead of the
weight sparsity, by the bisection `budgets.search`, on the narrowed networks; the cost
function receives physically narrow copies, so a latency or size cost measures what deploys.

The layout (kept unit indices per layer, and which layer each layer reads) is in the pruning report
(`report["units"]`), which checkpoints keep: `narrow_algorithm(algo, layout)` rebuilds the narrow
shapes on a freshly built algorithm before its state is loaded (resume, evaluation, export).
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.errors import UnitCollapseError
from sparse_offline_rl.pruning.allocation import keep_count, top_mask
from sparse_offline_rl.pruning.batches import scoring_batches, seed_for
from sparse_offline_rl.pruning.budgets import budget_networks, cost_of, evaluate_cost, load_cost, search
from sparse_offline_rl.pruning.config import PrunerConfig, check_sparsity, per_network
from sparse_offline_rl.pruning.rng import untouched_rngs
from sparse_offline_rl.pruning.scorers import scorer_class
from sparse_offline_rl.pruning.scores import LossClosure, Scores, grasp_scores, masked_weights, snip_products
from sparse_offline_rl.pruning.weights import prune_weights
from sparse_offline_rl.sparse.density import count_params_flops
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.narrow import Units, layout_of, narrow_, narrow_algorithm
from sparse_offline_rl.sparse.wiring import LayerGraph, WiringError, layer_graph

Score = Callable[[Mapping[str, torch.Tensor] | None], Mapping[str, torch.Tensor]]


def check_options(pruner: Mapping[str, Any]) -> PrunerConfig:
    """The pruner.* keys, structure=units ones included, checked before data loads (ConfigError naming
    the key): `PrunerConfig.from_mapping`, which this name is kept for."""
    return PrunerConfig.from_mapping(pruner)


# -- which units ----------------------------------------------------------------------------------
def hidden_layers(graph: LayerGraph) -> list[str]:
    """Weight names of the layers whose outputs are hidden units (some other layer reads them)."""
    return [n for n, children in zip(graph.names, graph.children) if children]


def weight_masks(graph: LayerGraph, units: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights that remain when only `units` are kept: a removed unit loses its incoming row and
    its outgoing column in each layer reading it."""
    out = {}
    for name, layer, parent in zip(graph.names, graph.layers, graph.parents):
        rows = units.get(name, torch.ones(layer.out_features, dtype=torch.bool, device=layer.weight.device))
        cols = (units[graph.names[parent]] if parent is not None and graph.names[parent] in units
                else torch.ones(layer.in_features, dtype=torch.bool, device=layer.weight.device))
        out[name] = rows[:, None] & cols[None, :]
    return out


def _live(scores: Mapping[str, torch.Tensor], name: str, alive: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """The scores of layer `name` in float64, zero where a weight is no longer alive."""
    s = scores[name].detach().to(torch.float64)
    return s if alive is None else torch.where(alive[name], s, torch.zeros((), dtype=s.dtype, device=s.device))


def unit_scores(graph: LayerGraph, scores: Mapping[str, torch.Tensor],
                alive: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per hidden unit: the summed scores of its incoming row and of its outgoing columns, over the
    weights still alive (`alive`: bool masks; None = all). pruner.unit_score=sum."""
    out = {}
    for i, name in enumerate(graph.names):
        if graph.children[i]:
            out[name] = _live(scores, name, alive).sum(1) + sum(
                _live(scores, graph.names[c], alive).sum(0) for c in graph.children[i])
    return out


def gate_scores(graph: LayerGraph, products: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor] | None = None,
                absolute: bool = False) -> dict[str, torch.Tensor]:
    """Per hidden unit: the derivative at c = 1 of a gate c multiplying its activation, from signed
    per-weight products (SNIP: gbar * W, so this is dL/dc; GraSP: W * Hg): their sum over the unit's
    outgoing column in every layer reading it (the gate scales exactly those weights), alive weights
    only. `absolute`: SNIP's |dL/dc|. pruner.unit_score=gate."""
    out = {}
    for i, name in enumerate(graph.names):
        if graph.children[i]:
            total = sum(_live(products, graph.names[c], alive).sum(0) for c in graph.children[i])
            out[name] = total.abs() if absolute else total
    return out


def gate_scorer(method: str, net: nn.Module, losses: Sequence[LossClosure], what: str
                ) -> Callable[[Mapping[str, torch.Tensor] | None], Scores]:
    """score(alive) for unit_score=gate (method snip or grasp, `check_options`): the signed per-weight
    products `gate_scores` sums (SNIP's gbar * W before its abs, GraSP's own signed W * Hg), the
    removed weights zeroed while scoring."""
    params = prunable_parameters(net)
    products = {"snip": snip_products, "grasp": grasp_scores}[method]

    def score(alive: Mapping[str, torch.Tensor] | None) -> Scores:
        with masked_weights(params, alive):
            return products(params, losses, what)

    return score


def unit_aggregate(method: str, unit_score: str) -> Callable[..., dict[str, torch.Tensor]]:
    """(graph, weight scores, alive) -> per-unit scores, for pruner.unit_score."""
    return partial(gate_scores, absolute=method == "snip") if unit_score == "gate" else unit_scores


def select_units(scores: Mapping[str, torch.Tensor], members: Sequence[Sequence[str]], density: float, scope: str,
                 network: str, sparsity: float) -> Units:
    """Kept units per hidden layer at `density` (fraction of units kept), per member."""
    kept: Units = {}
    for member in members:
        if scope == "layer":
            for name in member:
                k = keep_count(scores[name].numel(), density)
                if k < 1:
                    raise UnitCollapseError(
                        f"pruner.structure=units: sparsity {sparsity:g} (scope layer) leaves layer {name} of network "
                        f"'{network}' with no unit ({scores[name].numel()} units); a layer keeps at least one: lower it")
                kept[name] = top_mask(scores[name], k)
            continue
        sizes = [scores[n].numel() for n in member]
        k = keep_count(sum(sizes), density)
        if k < len(member):
            raise UnitCollapseError(
                f"pruner.structure=units: sparsity {sparsity:g} keeps {k} of the {sum(sizes)} hidden units of network "
                f"'{network}', fewer than its {len(member)} hidden layers; every layer keeps at least one unit: lower "
                "the sparsity")
        # Each layer's best unit first (+inf), then the top-scored units of the member.
        flat = []
        for n in member:
            s = scores[n].clone()
            s[int(torch.argmax(s))] = float("inf")
            flat.append(s)
        picked = top_mask(torch.cat(flat), k)
        kept.update(zip(member, picked.split(sizes)))
    return kept


def hidden_members(graph: LayerGraph) -> list[list[str]]:
    """The hidden layers of each ensemble member (the units `global` ranks together)."""
    hidden = set(hidden_layers(graph))
    return [m for m in ([n for n in member if n in hidden] for member in graph.members()) if m]


def max_unit_sparsity(graph: LayerGraph, scope: str) -> float:
    """The largest unit sparsity that keeps a unit in every hidden layer (the sparsest budget probe)."""
    units = {n: l.out_features for n, l, c in zip(graph.names, graph.layers, graph.children) if c}
    if scope == "layer":
        return 1 - 1 / min(units.values())
    return min(1 - len(m) / sum(units[n] for n in m) for m in hidden_members(graph))


def choose_units(score: Callable[[Mapping[str, torch.Tensor] | None], Mapping[str, torch.Tensor]], graph: LayerGraph,
                 sparsity: float, scope: str, rounds: int, network: str,
                 aggregate: Callable[..., dict[str, torch.Tensor]] = unit_scores) -> tuple[Units, dict[str, torch.Tensor]]:
    """Kept units at `sparsity` in `rounds` steps (keep ratio d^((e+1)/E) at round e, rescoring with the
    removed units' weights masked, removed units never revived). `aggregate(graph, scores, alive)`
    turns `score`'s per-weight scores into unit scores. Returns the units and last scores."""
    members = hidden_members(graph)
    density = 1 - sparsity
    kept: Units | None = None
    scores: dict[str, torch.Tensor] = {}
    for e in range(rounds):
        alive = None if kept is None else weight_masks(graph, kept)
        scores = aggregate(graph, score(alive), alive)
        if kept is not None:
            scores = {n: s.masked_fill(~kept[n], float("-inf")) for n, s in scores.items()}
        kept = select_units(scores, members, density ** ((e + 1) / rounds), scope, network, sparsity)
    assert kept is not None
    return kept, scores


# -- the entry point ------------------------------------------------------------------------------
def unit_graph(net: nn.Module, name: str) -> LayerGraph:
    """The wiring structure=units needs (WiringError naming the network where it cannot be read)."""
    try:
        return layer_graph(net)
    except WiringError as err:
        raise WiringError(f"pruner.structure=units needs the wiring of network '{name}': {err}") from None


class FirstRound:
    """A network's scorer whose first-round scores are computed once: they do not depend on the
    target, so a budget search reuses them at every probe."""

    def __init__(self, score: Score) -> None:
        self.score, self.first = score, None

    def __call__(self, alive: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor]:
        if alive is not None:
            return self.score(alive)
        if self.first is None:
            self.first = self.score(None)
        return self.first


class UnitPass:
    """structure=units for one algorithm: the wiring of every network, its scorer (once the scoring
    batches are drawn) and the units kept at a unit sparsity, narrowed copies for budget probes."""

    def __init__(self, algo: Any, cfg: PrunerConfig, seed: int) -> None:
        self.algo, self.cfg, self.seed = algo, cfg, seed
        self.scorer = scorer_class(cfg.name)
        self.pruning = cfg.name != "dense"
        self.nets: dict[str, nn.Module] = dict(algo.networks())
        self.names = list(self.nets)
        self.rounds = self.scorer.rounds(cfg.rounds)
        self.graphs = {n: unit_graph(net, n) for n, net in self.nets.items()} if self.pruning else {}
        self.unpruned = {n: {**count_params_flops(net), "weights": sum(p.numel() for p in prunable_parameters(net).values())}
                         for n, net in self.nets.items()}
        # Units per hidden layer as built (the graphs keep referring to the layers narrowing replaces).
        self.sizes = {n: {h: g.layers[g.names.index(h)].out_features for h in hidden_layers(g)}
                      for n, g in self.graphs.items()}
        self.aggregate = unit_aggregate(cfg.name, cfg.unit_score)
        self.scorers: dict[str, FirstRound] = {}

    def draw(self, sample_batch: Callable[..., Any]) -> None:
        """The scoring batches (all networks see the same ones) and each network's scorer."""
        cfg = self.cfg
        batches = scoring_batches(sample_batch, self.scorer.needs_data, cfg.num_batches, cfg.batch_size)
        for name in self.graphs:
            losses = [partial(self.algo.saliency_loss, name, b) for b in batches]
            score = (gate_scorer(cfg.name, self.nets[name], losses, name) if cfg.unit_score == "gate" else
                     self.scorer(self.nets[name], losses, None, seed_for(self.seed, name), name, self.graphs[name]).score)
            self.scorers[name] = FirstRound(score)

    def units_at(self, name: str, s: float) -> Units | None:
        if not self.pruning or s <= 0:
            return None
        kept, _ = choose_units(self.scorers[name], self.graphs[name], s, self.cfg.scope, self.rounds, name, self.aggregate)
        return kept

    def narrowed(self, name: str, s: float) -> nn.Module:
        kept = self.units_at(name, s)
        net = copy.deepcopy(self.nets[name])
        if kept is not None:
            narrow_(net, layout_of(self.graphs[name], kept))
        return net

    def count_budget(self, targets: dict[str, float]) -> dict[str, Any]:
        """budget_params / budget_flops: per network the least unit sparsity within its budget."""
        kind = self.cfg.budget_kind
        key = kind.split("_")[1]
        budgets = per_network(getattr(self.cfg, kind), self.names, kind)
        report: dict[str, Any] = {"kind": kind, "networks": {}}
        for name in self.names:
            limit = int(budgets[name])
            top = max_unit_sparsity(self.graphs[name], self.cfg.scope)
            # Bracketed to a quarter of one unit: the least feasible unit count itself.
            chosen, probes = search(lambda s, name=name: count_params_flops(self.narrowed(name, s))[key], limit, top,
                                    tol=1 / (4 * sum(self.sizes[name].values())))
            if chosen is None:
                raise ValueError(f"pruner.{kind}={limit} for network '{name}' is below what one unit per "
                                 f"hidden layer needs ({probes[-1][1]:g} {key}) with pruner.structure=units")
            targets[name] = chosen
            report["networks"][name] = {"budget": limit, "unit_sparsity": chosen, key: cost_of(probes, chosen),
                                        "probes": len(probes)}
        return report

    def cost_budget(self, targets: dict[str, float], searched: list[str]) -> dict[str, Any]:
        """budget_cost: the least unit sparsity of the searched networks whose cost (on narrow copies)
        is within budget_cost_max."""
        path, limit = self.cfg.budget_cost, float(self.cfg.budget_cost_max)
        fn = load_cost(path)

        def cost_at(s: float) -> float:
            return evaluate_cost(fn, path, {n: self.narrowed(n, s if n in searched else targets[n]) for n in self.names}, {})

        top = min(max_unit_sparsity(self.graphs[n], self.cfg.scope) for n in searched)
        chosen, probes = search(cost_at, limit, top)
        if chosen is None:
            raise ValueError(f"pruner.budget_cost={path!r}: no unit sparsity meets budget_cost_max={limit:g} "
                             f"(cost {probes[-1][1]:g} at unit sparsity {top:.4f}, one unit per hidden layer "
                             f"left; {probes[0][1]:g} unpruned)")
        targets.update({n: chosen for n in searched})
        return {"kind": "budget_cost", "budget_cost": path, "budget_cost_max": limit, "networks": searched,
                "unit_sparsity": chosen, "cost": cost_of(probes, chosen),
                "probes": [{"sparsity": s, "cost": v} for s, v in probes]}


def choose_layouts(run: UnitPass, sample_batch: Callable[..., Any], targets: dict[str, float]
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The kept units of every network ({network: layout}) and the budget search's report; every
    RNG put back after scoring. `targets` (unit sparsities) is updated by a budget."""
    searched = budget_networks(run.cfg, run.names)
    budget_report = None
    layouts: dict[str, Any] = {}
    with untouched_rngs(run.algo, sample_batch):
        torch.manual_seed(run.seed)
        run.draw(sample_batch)
        if run.pruning and run.cfg.budget_kind in ("budget_params", "budget_flops"):
            budget_report = run.count_budget(targets)
        elif run.pruning and run.cfg.budget_kind == "budget_cost":
            budget_report = run.cost_budget(targets, searched)
        for name in run.names:
            kept = run.units_at(name, targets[name])
            if kept is not None:
                layouts[name] = layout_of(run.graphs[name], kept)
    return layouts, budget_report


def prune_units(algo: Any, sample_batch: Callable[..., Any], cfg: PrunerConfig | Mapping[str, Any],
                sparsity: float | Mapping[str, float], seed: int = 0) -> tuple[MaskSet, dict[str, Any]]:
    """`prune_at_initialization` for structure=units (it dispatches here): remove units, narrow the
    networks, then prune the narrow weights to `weight_sparsity` with the same pruner. Same RNG
    contract: every RNG is put back after scoring."""
    cfg = cfg if isinstance(cfg, PrunerConfig) else PrunerConfig.from_mapping(cfg)
    run = UnitPass(algo, cfg, seed)
    targets = {n: check_sparsity(s, n) for n, s in per_network(sparsity, run.names, "sparsity").items()}
    layouts, budget_report = choose_layouts(run, sample_batch, targets)
    narrow_algorithm(algo, layouts)
    weight_sparsity = cfg.weight_sparsity if cfg.weight_sparsity is not None else 0.0
    mask_set, report = prune_weights(algo, sample_batch, cfg.weights_only(), weight_sparsity, seed=seed)
    units_report = add_units_report(report, run, targets, layouts)
    report.update({"structure": "units", "units": units_report, "unit_budget": budget_report,
                   "weight_sparsity": cfg.weight_sparsity, "unit_score": cfg.unit_score})
    return mask_set, report


def add_units_report(report: dict[str, Any], run: UnitPass, targets: Mapping[str, float],
                     layouts: Mapping[str, Any]) -> dict[str, Any]:
    """The weight pass's report made the units': per network its targets and what it had as built,
    and the totals again. Returns the kept units of each network (`report["units"]`)."""
    units_report: dict[str, Any] = {}
    for name in run.names:
        info = report["networks"][name]
        layout = layouts.get(name, {"kept_units": {}, "inputs_from": {}})
        units = {layer: {"kept": len(idx), "total": run.sizes[name][layer]} for layer, idx in layout["kept_units"].items()}
        kept_n, total_n = sum(u["kept"] for u in units.values()), sum(u["total"] for u in units.values())
        units_report[name] = {
            "target_unit_sparsity": targets[name] if run.pruning else 0.0,
            "unit_sparsity": 1 - kept_n / total_n if total_n else 0.0,
            "units": units,
            "layout": layout,
            "prunable_weights_unpruned": run.unpruned[name]["weights"],
        }
        # What the network had as built: params / FLOPs in the report and the density table compare to it.
        info["params_dense"], info["flops_dense"] = run.unpruned[name]["params_dense"], run.unpruned[name]["flops_dense"]
        info["weight_sparsity_target"] = info.pop("target_sparsity")
        info["target_sparsity"] = units_report[name]["target_unit_sparsity"]
        info["target_from"] = run.cfg.budget_kind or "sparsity"
        info["target_applies_to"] = "hidden units"
    report["total"] = {k: sum(r[k] for r in report["networks"].values()) for k in report["total"]}
    return units_report
