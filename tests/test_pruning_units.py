"""pruner.structure=units: whole hidden units removed at initialization, networks physically narrower;
the kept units are the top-scored ones; every algorithm trains, resumes bit-exactly and exports."""
from __future__ import annotations

import copy
import itertools
import json
import random
import re
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FAST_CONFIG, Interrupt, assert_same_state, interrupt_at, random_dataset, write_d4rl_hdf5
from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.evaluation.agent import load_agent
from sparse_offline_rl.export import MAX_ABS_DIFF, dataset_observations, export_run, runtime
from sparse_offline_rl.io import load_checkpoint
from sparse_offline_rl.pruning import count_params_flops, prunable_parameters, prune_at_initialization, saliency
from sparse_offline_rl.sparse.wiring import layer_graph
from sparse_offline_rl.pruning.units import UnitCollapseError, gate_scorer, unit_aggregate, unit_scores
from sparse_offline_rl.training.trainer import train

HIDDEN = [16, 16]


@pytest.fixture(scope="module")
def dataset():
    return random_dataset("hopper")


def setup(dataset, algo: str = "iql", hidden=HIDDEN, seed: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    built = make_algorithm(algo, ProblemSpec(11, 3, total_steps=10), {"hidden": list(hidden)})
    buffer = TransitionBuffer(dataset)
    buffer.seed(0)
    return built, buffer


def widths(net: nn.Module) -> list[tuple[int, int]]:
    return [tuple(w.shape) for w in prunable_parameters(net).values()]


@pytest.mark.parametrize("algo", ["iql", "td3bc", "cql"])
def test_every_network_becomes_narrower_inputs_and_outputs_kept(algo, dataset):
    built, buffer = setup(dataset, algo)
    before = {n: widths(net) for n, net in built.networks().items()}
    prune_at_initialization(built, buffer.sample, {"name": "snip", "batch_size": 32, "structure": "units", "scope": "layer"},
                            0.5, seed=0)
    for name, net in built.networks().items():
        after = widths(net)
        for (out0, in0), (out1, in1), position in zip(before[name], after, range(len(after))):
            first, last = in0 in (11, 14), out0 in (1, 3, 6)
            assert in1 == (in0 if first else in0 // 2), (name, position)  # network inputs never removed
            assert out1 == (out0 if last else out0 // 2), (name, position)  # outputs never removed
        assert all(isinstance(m, nn.Linear) for m in net.modules() if "Linear" in type(m).__name__)
        target = built.target_networks().get(name)
        if target is not None:
            assert widths(target) == after
            assert all(torch.equal(a, b) for a, b in zip(target.parameters(), net.parameters()))
    # the optimizers train the new, narrow parameters
    owned = {id(p) for opt in built.optimizers().values() for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in owned for net in built.networks().values() for p in net.parameters() if p.requires_grad)


def test_twin_critic_members_are_pruned_each_on_its_own(dataset):
    built, buffer = setup(dataset, "iql")
    _, report = prune_at_initialization(built, buffer.sample, {"name": "magnitude", "structure": "units"}, 0.75, seed=0)
    units = report["units"]["critic"]["units"]
    for member in ("qs.0", "qs.1"):
        kept = sum(u["kept"] for layer, u in units.items() if layer.startswith(member))
        assert kept == 8, (member, kept)  # 25% of each member's 32 hidden units, ranked within the member


def full_masks_equivalent(net: nn.Module, kept: dict[str, torch.Tensor]) -> nn.Module:
    """The unpruned network with the removed units' outgoing weights zeroed: the function a narrowed
    network must compute (a removed unit's activation, relu(bias), never reaches the next layer)."""
    clone = copy.deepcopy(net)
    graph = layer_graph(clone)
    with torch.no_grad():
        for name, layer, parent in zip(graph.names, graph.layers, graph.parents):
            if parent is not None and graph.names[parent] in kept:
                layer.weight[:, ~kept[graph.names[parent]]] = 0
    return clone


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_kept_units_are_the_top_scored_and_the_narrow_net_computes_the_same(scope, dataset):
    built, buffer = setup(dataset)
    actor = built.networks()["actor"]
    original = copy.deepcopy(actor)
    graph = layer_graph(original)
    # magnitude: a unit's score is the summed |w| of its incoming row and outgoing column
    expected = unit_scores(graph, {n: w.abs() for n, w in prunable_parameters(original).items()})
    _, report = prune_at_initialization(built, buffer.sample, {"name": "magnitude", "structure": "units", "scope": scope},
                                        {"actor": 0.5, "default": 0.0}, seed=0)
    kept_idx = report["units"]["actor"]["layout"]["kept_units"]
    all_scores = torch.cat(list(expected.values()))
    for layer, scores in expected.items():
        kept = torch.zeros(len(scores), dtype=torch.bool)
        kept[kept_idx[layer]] = True
        if scope == "layer":
            assert kept.sum() == 8
            assert scores[kept].min() >= scores[~kept].max()
        else:  # one ranking over both hidden layers (each keeps its best unit first)
            threshold = torch.sort(all_scores, descending=True).values[15]
            assert all(s >= threshold or i == int(scores.argmax()) for i, s in enumerate(scores.tolist()) if kept[i])
    assert sum(len(v) for v in kept_idx.values()) == 16
    obs = torch.randn(64, 11)
    masks = {n: torch.zeros(len(s), dtype=torch.bool).index_fill_(0, torch.tensor(kept_idx[n]), True) for n, s in expected.items()}
    with torch.no_grad():
        assert torch.allclose(actor(obs), full_masks_equivalent(original, masks)(obs), atol=1e-6)


def test_snip_keeps_the_units_with_the_largest_summed_saliency(dataset):
    """Data-driven: the kept units are the top units by the SNIP saliency of the scoring batch,
    summed over each unit's incoming and outgoing weights."""
    built, buffer = setup(dataset)
    value = built.networks()["value"]
    graph = layer_graph(copy.deepcopy(value))
    batch = buffer.sample(64)
    expected = unit_scores(graph, saliency("snip", value, lambda net: built.saliency_loss("value", batch)))
    _, report = prune_at_initialization(built, lambda n: batch, {"name": "snip", "batch_size": 64, "structure": "units",
                                                                 "scope": "layer"}, 0.75, seed=0)
    kept = report["units"]["value"]["layout"]["kept_units"]
    for layer, scores in expected.items():
        assert kept[layer] == sorted(torch.topk(scores, 4).indices.tolist()), layer
    assert widths(value) == [(4, 11), (4, 4), (1, 4)]


# -- pruner.unit_score=gate: the saliency of a gate on each hidden unit's activation ---------------
class TwoHeads(nn.Module):
    """A trunk whose last hidden layer two heads read (as a Gaussian actor's mean and log-std)."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh())
        self.mu, self.log_std = nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.mu(h), self.log_std(h)], -1)


def gate_activations(net: nn.Module) -> dict[str, torch.Tensor]:
    """Gates of ones on `net` itself: each hidden Linear's activation (the next module of its
    Sequential) multiplied by a gate by a forward hook. {hidden layer weight name: gate}."""
    graph = layer_graph(net)
    gates = {}
    for name, layer, children in zip(graph.names, graph.layers, graph.children):
        if children:
            parent, _, index = name.rpartition(".")[0].rpartition(".")
            gate = torch.ones(layer.out_features, dtype=layer.weight.dtype, requires_grad=True)
            net.get_submodule(parent)[int(index) + 1].register_forward_hook(lambda m, i, out, c=gate: out * c)
            gates[name] = gate
    return gates


def toy_losses(net: nn.Module, seed: int = 0, batches: int = 2) -> list:
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(16, 5, generator=gen, dtype=torch.float64), torch.randn(16, 4, generator=gen, dtype=torch.float64))
            for _ in range(batches)]
    return [lambda x=x, y=y: ((net(x) - y) ** 2).mean() for x, y in data]


def test_snip_gate_score_is_the_gate_gradient_of_a_gated_copy():
    """|dL/dc_u| at c = 1 for the mean loss over the batches (SNIP's gbar), computed from the weight
    gradients alone, equals autograd's on a copy whose hidden activations are multiplied by gates;
    a unit two heads read sums both. And it is not the summed |g * w| ranking."""
    torch.manual_seed(0)
    net = TwoHeads().double()
    gated = copy.deepcopy(net)
    gates = gate_activations(gated)
    reference = torch.autograd.grad(sum(f() for f in toy_losses(gated)) / 2, list(gates.values()))
    graph = layer_graph(net)
    products = gate_scorer("snip", net, toy_losses(net), "toy")(None)
    scores = unit_aggregate("snip", "gate")(graph, products, None)
    assert list(scores) == list(gates) == ["trunk.0.weight", "trunk.2.weight"]
    for name, expected in zip(gates, reference):
        assert torch.allclose(scores[name], expected.abs(), rtol=1e-12, atol=0), name
    summed = unit_scores(graph, {n: p.abs() for n, p in products.items()})  # unit_score=sum: SNIP's |gbar * W|
    assert any(not torch.equal(torch.argsort(scores[n]), torch.argsort(summed[n])) for n in gates)


def test_grasp_gate_score_is_the_gate_derivative_of_the_gradient_flow():
    """GraSP's gate score, the signed sum of W * Hg over each unit's outgoing columns, equals the
    derivative at c = 1 of GraSP's z = sum_b g_b . stopgrad(gbar) / B on a gated copy. The gated copy
    multiplies each outgoing column by its unit's gate (the same forward as gating the activation)
    and takes g with respect to the weights the layers multiply by: with the gate on the activation
    instead, the outgoing weights' own gradient would carry a factor c too, which GraSP's weight
    score (and so its gate score) leaves out."""
    torch.manual_seed(1)
    net = TwoHeads().double()
    graph = layer_graph(net)
    params = prunable_parameters(net)
    gates = {n: torch.ones(l.out_features, dtype=torch.float64, requires_grad=True)
             for n, l, c in zip(graph.names, graph.layers, graph.children) if c}
    reads = {n: graph.names[p] for n, p in zip(graph.names, graph.parents) if p is not None and graph.names[p] in gates}
    weights = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    effective = {n: w * gates[reads[n]][None, :] if n in reads else w for n, w in weights.items()}
    state = {**dict(net.named_parameters()), **effective}
    losses = toy_losses(lambda x: torch.func.functional_call(net, state, (x,)))
    per_batch = [torch.autograd.grad(f(), list(effective.values()), create_graph=True) for f in losses]
    gbar = [sum(g[i] for g in per_batch).detach() / len(per_batch) for i in range(len(effective))]
    z = sum((a * b).sum() for g in per_batch for a, b in zip(g, gbar)) / len(per_batch)
    reference = dict(zip(gates, torch.autograd.grad(z, list(gates.values()))))
    scores = unit_aggregate("grasp", "gate")(graph, gate_scorer("grasp", net, toy_losses(net), "toy")(None), None)
    for name in gates:
        assert torch.allclose(scores[name], reference[name], rtol=1e-10, atol=1e-14), name
    assert (scores["trunk.0.weight"] < 0).any()  # signed: never ranked by abs


def test_snip_gate_keeps_the_units_with_the_largest_gate_gradient_in_each_member(dataset):
    """Through prune_at_initialization, two scoring batches: the kept units of each twin-critic
    member and of the value network are the top units by |dL/dc| of a gated copy of the algorithm."""
    built, buffer = setup(dataset)
    batches = [buffer.sample(32), buffer.sample(32)]
    reference = {}
    for name in ("critic", "value"):
        gated = copy.deepcopy(built)
        gates = gate_activations(gated.networks()[name])
        loss = sum(gated.saliency_loss(name, b) for b in batches) / 2
        reference[name] = dict(zip(gates, (g.abs() for g in torch.autograd.grad(loss, list(gates.values())))))
    assert len(reference["critic"]) == 4  # two hidden layers in each of the two Q-networks
    draws = itertools.cycle(batches)
    _, report = prune_at_initialization(built, lambda n: next(draws), {
        "name": "snip", "batch_size": 32, "num_batches": 2, "structure": "units", "scope": "layer", "unit_score": "gate"},
        0.75, seed=0)
    assert report["unit_score"] == "gate"
    for name, scores in reference.items():
        kept = report["units"][name]["layout"]["kept_units"]
        for layer, s in scores.items():
            assert kept[layer] == sorted(torch.topk(s, 4).indices.tolist()), (name, layer)


@pytest.mark.parametrize("method, rounds", [("snip", 1), ("grasp", 1), ("snip", 3)])
def test_unit_score_gate_changes_which_units_are_kept(method, rounds, dataset):
    kept = {}
    for unit_score in ("sum", "gate"):
        built, buffer = setup(dataset, hidden=[32, 32])
        _, report = prune_at_initialization(built, buffer.sample, {
            "name": method, "batch_size": 64, "structure": "units", "unit_score": unit_score, "rounds": rounds}, 0.5, seed=0)
        kept[unit_score] = {n: r["layout"]["kept_units"] for n, r in report["units"].items()}
        assert all(r["unit_sparsity"] == 0.5 for r in report["units"].values())
    assert kept["sum"] != kept["gate"]


def test_too_many_units_removed_is_one_clear_error(dataset):
    built, buffer = setup(dataset, hidden=[2, 2])
    with pytest.raises(UnitCollapseError, match="network 'actor'.*at least one unit"):
        prune_at_initialization(built, buffer.sample, {"name": "random", "structure": "units"}, 0.9, seed=0)
    built, buffer = setup(dataset, hidden=[2, 2])
    with pytest.raises(UnitCollapseError, match="layer net.0.weight of network 'actor' with no unit"):
        prune_at_initialization(built, buffer.sample, {"name": "random", "structure": "units", "scope": "layer"}, 0.6, seed=0)


def test_units_and_weights_combine(dataset):
    built, buffer = setup(dataset)
    mask_set, report = prune_at_initialization(
        built, buffer.sample, {"name": "snip", "batch_size": 32, "structure": "units", "scope": "layer", "weight_sparsity": 0.5},
        0.5, seed=0)
    actor = built.networks()["actor"]
    assert widths(actor) == [(8, 11), (8, 8), (3, 8)]
    kept = sum(int(m.sum()) for m in mask_set.masks["actor"].values())
    assert kept == (8 * 11 + 64 + 24) // 2
    info = report["networks"]["actor"]
    assert info["params_dense"] == count_params_flops(make_algorithm("iql", ProblemSpec(11, 3), {"hidden": HIDDEN}).networks()["actor"])["params_dense"]
    assert report["units"]["actor"]["unit_sparsity"] == 0.5 and info["weight_sparsity_target"] == 0.5


def test_parameter_budget_searches_the_unit_fraction_per_network(dataset):
    built, buffer = setup(dataset, hidden=[32, 32])
    budgets = {"actor": 600, "critic": 3000, "value": 100_000}
    _, report = prune_at_initialization(built, buffer.sample, {"name": "magnitude", "structure": "units", "budget_params": budgets},
                                        0.0, seed=0)
    for name, net in built.networks().items():
        params = count_params_flops(net)["params"]
        assert params <= budgets[name]
        assert report["unit_budget"]["networks"][name]["params"] == params
    assert report["units"]["value"]["unit_sparsity"] == 0.0  # a budget above the dense size prunes nothing
    # the least pruning meeting it: keeping one unit more would exceed the budget
    kept = sum(u["kept"] for u in report["units"]["actor"]["units"].values())
    denser, _ = setup(dataset, hidden=[32, 32])
    prune_at_initialization(denser, buffer.sample, {"name": "magnitude", "structure": "units"},
                            {"actor": 1 - (kept + 1) / 64, "default": 0.0}, seed=0)
    assert count_params_flops(denser.networks()["actor"])["params"] > budgets["actor"]


@pytest.fixture
def cost_module(monkeypatch):
    module = types.ModuleType("unit_cost_fixture")
    module.actor_params = lambda networks: float(sum(p.numel() for p in networks["actor"].parameters()))
    monkeypatch.setitem(sys.modules, "unit_cost_fixture", module)


def test_cost_budget_on_chosen_networks_narrows_only_those(dataset, cost_module):
    built, buffer = setup(dataset, hidden=[32, 32])
    pruner = {"name": "snip", "batch_size": 32, "structure": "units", "budget_cost": "unit_cost_fixture:actor_params",
              "budget_cost_max": 800.0, "budget_networks": ["actor"]}
    _, report = prune_at_initialization(built, buffer.sample, pruner, 0.0, seed=0)
    assert sum(p.numel() for p in built.networks()["actor"].parameters()) == report["unit_budget"]["cost"] <= 800
    assert widths(built.networks()["critic"])[0] == (32, 14)  # not searched: keeps its sparsity (0)
    with pytest.raises(ValueError, match="no unit sparsity meets budget_cost_max=10"):
        prune_at_initialization(setup(dataset)[0], buffer.sample, {**pruner, "budget_cost_max": 10.0}, 0.0, seed=0)


# -- through the trainer --------------------------------------------------------------------------
def units_config(algo: str, **changes) -> dict:
    cfg = copy.deepcopy(FAST_CONFIG)
    cfg.update(algo={"name": algo, "hidden": HIDDEN}, pruner={"name": "snip", "structure": "units", "weight_sparsity": 0.5},
               sparsity=0.5, steps=60, batch_size=32, checkpoint_every=25, log_every=10,
               eval={"every": 30, "episodes": 1, "suite": None})
    cfg.update(changes)
    return cfg


# "sparse": the narrow layers' pruned weights in compressed SparseLinear layers on top (narrowing,
# then the kernel layout, are both rebuilt before the checkpoint loads).
@pytest.mark.parametrize("algo, kernels", [("iql", "auto"), ("td3bc", "auto"), ("cql", "auto"), ("iql", "sparse")])
def test_each_algorithm_trains_narrow_and_resumes_bit_exact(algo, kernels, tmp_path, dataset):
    cfg = units_config(algo, sparse_kernels=kernels)
    full = train(cfg, tmp_path / "full", dataset=dataset)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=dataset, callbacks=[interrupt_at(55)])
    resumed = train({**cfg, "resume": True}, tmp_path / "cut", dataset=dataset)
    assert resumed["eval"] == full["eval"]
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("full", "cut"))
    for key in ("step", "algo", "masks", "buffer", "torch_rng"):
        assert_same_state(a[key], b[key], key)
    assert a["pruning_report"]["units"] == b["pruning_report"]["units"]
    trunk = "trunk" if algo == "cql" else "net"
    assert sum(a["algo"]["actor"][f"{trunk}.{i}.bias"].shape[0] for i in (0, 2)) == 16  # of 32 hidden units
    if kernels == "sparse":
        assert any(name.endswith(".values") for name in a["algo"]["critic"])
    assert full["pruner"] == "snip-units"
    # density against the network as built: half the units, then half the narrow weights
    assert 0 < full["density"]["actor"] < 0.3


def test_structured_actor_exports_narrow_and_exact(tmp_path, dataset):
    path = write_d4rl_hdf5(tmp_path / "hopper.hdf5", dataset)
    run = tmp_path / "run"
    train(units_config("td3bc", dataset=str(path), pruner={"name": "magnitude", "structure": "units", "scope": "layer"}, steps=30,
                       eval={"every": 30, "episodes": 1, "suite": None}), run)
    record = export_run(run, "torchscript")
    agent = load_agent(run)
    assert widths(agent.algo.networks()["actor"]) == [(8, 11), (8, 8), (3, 8)]
    assert record["storage"] == "dense" and record["max_abs_diff"] <= MAX_ABS_DIFF
    obs = dataset_observations(agent)
    with torch.no_grad():
        expected = agent.algo.act(agent.normalizer(torch.from_numpy(obs))).numpy()
    exported = runtime("torchscript", (run / "export" / record["file"]).read_bytes(), 1)(obs)
    assert np.abs(exported - expected).max() <= MAX_ABS_DIFF
    # the artefact itself holds the narrow dense weights (frozen TorchScript: graph constants)
    artefact = torch.jit.load(str(run / "export" / record["file"]))
    matrices = {tuple(n.t("value").shape) for n in artefact.graph.nodes()
                if n.kind() == "prim::Constant" and n.hasAttribute("value") and n.kindOf("value") == "t" and n.t("value").dim() == 2}
    assert matrices == {(8, 11), (8, 8), (3, 8)}
    onnx = pytest.importorskip("onnx")
    export_run(run, "onnx")
    model = onnx.load(str(run / "export" / "actor.onnx"))
    assert {tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 2} == {(8, 11), (8, 8), (3, 8)}


@pytest.mark.parametrize("change, words", [
    ({"structure": "channels"}, "pruner.structure='channels' is invalid: one of unstructured, units"),
    ({"structure": "units", "scope": "erk"}, "pruner.scope='erk' is invalid with pruner.structure=units"),
    ({"weight_sparsity": 0.5}, "pruner.weight_sparsity applies with pruner.structure=units only"),
    ({"structure": "units", "weight_sparsity": 1.5}, "pruner.weight_sparsity=1.5 is invalid"),
    ({"budget_networks": ["actor"]}, "pruner.budget_networks applies to pruner.budget_cost only"),
    ({"budget_networks": ["policy"], "budget_cost": "sparse_offline_rl.export:actor_bytes", "budget_cost_max": 1e4},
     "pruner.budget_networks=['policy'] is invalid: a non-empty list of networks out of actor, critic, value"),
    ({"structure": "units", "weight_sparsity": {"actor": 0.5, "policy": 0.5}}, "weight_sparsity given for unknown network"),
    ({"name": "gmp", "structure": "units"}, "pruner.structure='units' is invalid with pruner=gmp"),
    ({"structure": "units", "unit_score": "norm"}, "pruner.unit_score='norm' is invalid: one of sum, gate is required"),
    ({"unit_score": "gate"}, "pruner.unit_score='gate' applies with pruner.structure=units only"),
    *[({"name": name, "structure": "units", "unit_score": "gate"},
       f"pruner.unit_score='gate' is invalid with pruner={name}: a unit gate's saliency is defined for snip, grasp; "
       "accepted here: sum") for name in ("synflow", "magnitude", "random", "gibbs")],
])
def test_bad_structure_options_fail_before_data(change, words, tmp_path):
    cfg = units_config("iql", pruner={"name": "snip", **change}, dataset="no-such-dataset")
    with pytest.raises(ConfigError, match=re.escape(words)):
        train(cfg, tmp_path)


def test_structured_pruning_leaves_every_rng_where_it_was(dataset):
    """Training after units pruning draws what it draws after no pruning (narrowing included)."""
    draws = []
    for pruner in ({"name": "dense"}, {"name": "snip", "batch_size": 32, "structure": "units", "weight_sparsity": 0.3}):
        built, buffer = setup(dataset)
        prune_at_initialization(built, buffer.sample, pruner, 0.5, seed=0)
        draws.append((torch.rand(3), np.random.rand(), random.random(), buffer.sample(4).observations))
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1:3] == draws[1][1:3]
    assert torch.equal(draws[0][3], draws[1][3])


def test_return_vs_latency_preset_and_figure_path(tmp_path, dataset):
    """The sweep preset crosses units with weights; its figure path turns finished runs into a
    table, JSON and figure with both kinds on the latency axis (tiny runs: the numbers mean nothing)."""
    import yaml

    from conftest import REPO

    preset = yaml.safe_load((REPO / "configs" / "sweep" / "return_vs_latency.yaml").read_text())
    params = preset["hydra"]["sweeper"]["params"]
    assert params["pruner.structure"] == "unstructured,units" and params["algo"] == "iql"
    assert params["dataset"] == "hopper-medium"
    path = write_d4rl_hdf5(tmp_path / "hopper.hdf5", dataset)
    for structure in ("unstructured", "units"):
        train(units_config("iql", dataset=str(path), sparsity=0.5, steps=10, eval={"every": 10, "episodes": 1, "suite": None},
                           pruner={"name": "magnitude", "scope": "layer", "structure": structure}),
              tmp_path / "sweep" / structure)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import return_vs_latency
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "result"
    return_vs_latency.main([str(tmp_path / "sweep"), "--rounds", "2", "--out", str(out), "--plot", str(tmp_path / "fig.png")])
    result = json.loads(out.with_suffix(".json").read_text())
    labels = {g["label"]: g for g in result["groups"]}
    assert set(labels) == {"magnitude", "magnitude-units"}
    assert all(set(g["latency_us"]) == {"1", "256"} for g in labels.values())
    assert labels["magnitude-units"]["bytes"] < labels["magnitude"]["bytes"]  # narrow layers: a smaller file
    assert (tmp_path / "fig.png").stat().st_size > 0 and "magnitude-units" in out.with_suffix(".md").read_text()


def test_the_library_entry_point_checks_the_structure_options_too(dataset):
    built, buffer = setup(dataset)
    with pytest.raises(ValueError, match="pruner.structure='channels' is invalid"):
        prune_at_initialization(built, buffer.sample, {"name": "random", "structure": "channels"}, 0.5)
    with pytest.raises(ValueError, match="pruner.weight_sparsity applies with pruner.structure=units only"):
        prune_at_initialization(built, buffer.sample, {"name": "random", "weight_sparsity": 0.5}, 0.5)
    with pytest.raises(ValueError, match="pruner.scope='erk' is invalid with pruner.structure=units"):
        prune_at_initialization(built, buffer.sample, {"name": "random", "structure": "units", "scope": "erk"}, 0.5)
    with pytest.raises(ValueError, match="pruner.unit_score='gate' applies with pruner.structure=units only"):
        prune_at_initialization(built, buffer.sample, {"name": "snip", "unit_score": "gate"}, 0.5)
    with pytest.raises(ValueError, match="pruner.unit_score='gate' is invalid with pruner=synflow"):
        prune_at_initialization(built, buffer.sample, {"name": "synflow", "structure": "units", "unit_score": "gate"}, 0.5)


def test_units_nothing_reads_are_dropped_until_none_is_left_exactly():
    """drop_unread_units_: unit 3 of the second hidden layer is read by no output weight, and unit 5
    of the first is read only by that unit: both go (the second in a second pass); unit 0 of the
    second layer is read by one weight and stays. The outputs do not change."""
    from sparse_offline_rl.sparse.narrow import drop_unread_units_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[4].weight[:, 3] = 0.0
        net[4].weight[:, 0] = 0.0
        net[4].weight[1, 0] = 0.5
        net[2].weight[:, 5] = 0.0
        net[2].weight[3, 5] = 1.0
    x = torch.randn(64, 4)
    expected = net(x)
    assert drop_unread_units_(net) == 2
    assert (net[0].out_features, net[2].out_features) == (7, 5)
    assert torch.allclose(net(x), expected, atol=1e-6, rtol=0)
    assert drop_unread_units_(net) == 0  # nothing left to drop
