"""pruner.budget_search=constrained at initialization: per-layer counts under every budget, the
reward the pruner's retained score, masks that are what the report says, seeded, and one-line errors."""
from __future__ import annotations

import random
import sys
import types

import numpy as np
import pytest
import torch

from conftest import random_dataset
from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning import prunable_parameters, prune_at_initialization
from sparse_offline_rl.pruning.budget_search import LayerOrder, layer_key, retained_value


def kept(net) -> list[int]:
    return [int(torch.count_nonzero(w)) for w in prunable_parameters(net).values()]


def actor_kept(networks) -> float:
    return float(sum(kept(networks["actor"])))


def actor_first_kept(networks) -> float:
    return float(kept(networks["actor"])[0])


def actor_weighted(networks) -> float:
    """A cost where the layers differ in price: the input layer's weights cost 4x (say, a slow kernel)."""
    counts = kept(networks["actor"])
    return float(4 * counts[0] + sum(counts[1:]))


@pytest.fixture(autouse=True)
def cost_module(monkeypatch):
    module = types.ModuleType("search_cost_fixture")
    module.actor_kept, module.actor_first_kept, module.actor_weighted = actor_kept, actor_first_kept, actor_weighted
    module.consumes_rng = lambda networks: actor_kept(networks) + 0 * float(torch.rand(1)) + 0 * np.random.rand()
    monkeypatch.setitem(sys.modules, "search_cost_fixture", module)


@pytest.fixture(scope="module")
def dataset():
    return random_dataset("hopper")


def setup(dataset, seed: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    algo = make_algorithm("iql", ProblemSpec(11, 3, total_steps=10), {"hidden": [32, 32]})
    buffer = TransitionBuffer(dataset)
    buffer.seed(0)
    return algo, buffer


def constrained(cost, limit, **extra):
    return {"name": "snip", "batch_size": 16, "budget_cost": cost, "budget_cost_max": limit,
            "budget_search": "constrained", "budget_networks": ["actor"], "budget_search_probes": 160, **extra}


def test_the_budget_is_met_and_the_masks_are_the_reported_counts(dataset) -> None:
    algo, buffer = setup(dataset)
    total = actor_weighted(dict(algo.networks()))
    mask_set, report = prune_at_initialization(algo, buffer.sample,
                                               constrained("search_cost_fixture:actor_weighted", 0.2 * total), 0.9)
    search = report["budget_cost"]
    assert search["search"] == "constrained" and search["cost"] <= 0.2 * total
    assert actor_weighted(dict(algo.networks())) == search["cost"]  # the bound masks are the chosen ones
    for param, n in zip(prunable_parameters(algo.actor), kept(algo.actor)):
        assert search["counts"][layer_key("actor", param)] == n >= 1  # no layer collapses
    # the networks not searched keep their sparsity
    assert report["networks"]["critic"]["target_sparsity"] == pytest.approx(0.9)
    assert len(search["probes"]) <= 160 and search["updates"] and search["settings"]["probes"] == 160
    # the search starts where bisection ends (its answer is the first probe after the floor), and the
    # answer is never worse than that
    assert search["start"]["search"] == "bisect" and search["probes"][1]["feasible"]
    assert search["reward"] >= search["probes"][1]["reward"]


def test_a_cheaper_layer_gets_more_weights_than_a_uniform_split(dataset) -> None:
    """With the input layer 4x dearer, the search moves weights from it to the others, relative to
    bisection's one sparsity (its start), and retains more score within the same budget."""
    algo, buffer = setup(dataset)
    total = actor_weighted(dict(algo.networks()))
    _, report = prune_at_initialization(algo, buffer.sample,
                                        constrained("search_cost_fixture:actor_weighted", 0.3 * total,
                                                    budget_search_probes=300), 0.9)
    search = report["budget_cost"]
    counts = list(search["counts"].values())
    start = list(search["probes"][1]["counts"].values())  # bisection's allocation
    assert counts[0] < start[0] and sum(counts[1:]) > sum(start[1:])  # the dear layer pays for the others
    assert search["reward"] > 1.03 * search["probes"][1]["reward"]


def test_every_budget_is_met(dataset) -> None:
    algo, buffer = setup(dataset)
    nets = dict(algo.networks())
    limits = [0.3 * actor_kept(nets), 0.05 * actor_first_kept(nets)]
    cfg = constrained(["search_cost_fixture:actor_kept", "search_cost_fixture:actor_first_kept"], limits)
    _, report = prune_at_initialization(algo, buffer.sample, cfg, 0.9)
    search = report["budget_cost"]
    assert actor_kept(dict(algo.networks())) <= limits[0] and actor_first_kept(dict(algo.networks())) <= limits[1]
    assert search["cost"] == [actor_kept(dict(algo.networks())), actor_first_kept(dict(algo.networks()))]
    assert len(search["updates"][-1]["lambdas"]) == 2


def test_seeds_reproduce_and_training_randomness_is_untouched(dataset) -> None:
    def run(seed, cost="search_cost_fixture:actor_kept"):
        algo, buffer = setup(dataset)
        mask_set, report = prune_at_initialization(algo, buffer.sample, constrained(cost, 400), 0.9, seed=seed)
        rngs = [torch.get_rng_state(), torch.from_numpy(np.random.get_state()[1].copy()),
                torch.tensor(random.getstate()[1]), buffer.sample(4).observations]
        search = report["budget_cost"]
        return ((search["counts"], [p["counts"] for p in search["probes"]]),
                [w.clone() for w in prunable_parameters(algo.actor).values()], rngs)

    counts, weights, rngs = run(0)
    again = run(0, "search_cost_fixture:consumes_rng")
    assert again[0] == counts and all(map(torch.equal, weights, again[1])) and all(map(torch.equal, rngs, again[2]))
    other = run(1)
    assert other[0][1] != counts[1]  # another seed, other samples
    algo, buffer = setup(dataset)
    prune_at_initialization(algo, buffer.sample, {"name": "dense"}, 0.0)
    dense = [torch.get_rng_state(), torch.from_numpy(np.random.get_state()[1].copy()),
             torch.tensor(random.getstate()[1]), buffer.sample(4).observations]
    assert all(map(torch.equal, dense, rngs))


def test_an_impossible_budget_fails_in_one_line(dataset) -> None:
    algo, buffer = setup(dataset)
    with pytest.raises(ConfigError) as err:
        prune_at_initialization(algo, buffer.sample, constrained("search_cost_fixture:actor_kept", 2.0), 0.9)
    assert "no allocation keeping a weight in every layer meets the budget" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cfg, match", [
    ({"name": "snip", "budget_search": "constrained"}, "invalid without pruner.budget_cost"),
    ({"name": "dense", "budget_search": "constrained", "budget_cost": "search_cost_fixture:actor_kept",
      "budget_cost_max": 3}, "invalid with pruner=dense"),
    ({"name": "snip", "budget_search": "constrained", "budget_cost": "search_cost_fixture:actor_kept",
      "budget_cost_max": 3, "structure": "units"}, "invalid with pruner.structure=units"),
    ({"name": "snip", "budget_cost": ["search_cost_fixture:actor_kept"], "budget_cost_max": [1, 2]}, "one limit per cost"),
    ({"name": "snip", "budget_cost": ["search_cost_fixture:actor_kept"] * 2, "budget_cost_max": [1, 2]}, "each cost at most once"),
    ({"name": "snip", "budget_cost": "search_cost_fixture:actor_kept", "budget_cost_max": 3,
      "budget_search_probes": 10}, "applies with pruner.budget_search=constrained only"),
    ({"name": "snip", "budget_search": "constrained", "budget_cost": "search_cost_fixture:actor_kept",
      "budget_cost_max": 3, "budget_search_population": 5}, "even integer"),
    ({"name": "snip", "budget_search": "grid"}, "pruner.budget_search='grid' is invalid"),
])
def test_bad_search_options_fail_early(dataset, cfg, match) -> None:
    algo, buffer = setup(dataset)
    with pytest.raises(ConfigError, match=match):
        prune_at_initialization(algo, buffer.sample, cfg, 0.9)


def test_layer_order_masks_are_prefixes_of_one_ranking() -> None:
    scores = {"net": {"a": torch.tensor([[0.1, 0.9], [0.5, 0.5]]), "b": torch.tensor([3.0, -1.0, 2.0])}}
    order = LayerOrder(scores, {"net": ["b"]})
    assert order.sizes == {"net/a": 4}
    masks = order.masks({"net/a": 2})
    assert masks["net"]["a"].tolist() == [[False, True], [True, False]]  # the tie at 0.5 goes to the lower index
    assert masks["net"]["b"].all()
    assert retained_value(scores, masks, {"net": ["b"]}) == pytest.approx((0.9 + 0.5) / 2.0)


def test_the_reward_counts_only_weights_that_can_reach_the_output() -> None:
    """A hidden unit the next layer no longer reads carries no reward, whatever its weights' scores:
    otherwise an allocator keeps a dense hidden layer behind a one-weight output layer for free."""
    from torch import nn

    from sparse_offline_rl.sparse.wiring import layer_graph

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    graph = layer_graph(net)
    values = {"net": {"0.weight": torch.ones(4, 3), "2.weight": torch.ones(2, 4)}}
    only_unit_0_read = {"net": {"0.weight": torch.ones(4, 3, dtype=torch.bool),
                                "2.weight": torch.tensor([[True, False, False, False], [False] * 4])}}
    blind = retained_value(values, only_unit_0_read, {})
    assert blind == pytest.approx((12 + 1) / 20)
    assert retained_value(values, only_unit_0_read, {}, {"net": graph}) == pytest.approx((3 + 1) / 20)


@pytest.mark.slow  # a subprocess: python run.py
def test_a_run_records_the_search_and_draws_it(tmp_path) -> None:
    import json

    from conftest import run_cli, write_cost_module, write_d4rl_hdf5

    data = write_d4rl_hdf5(tmp_path / "hopper.hdf5", random_dataset("hopper", n=2000))
    write_cost_module(tmp_path)
    result = run_cli("algo=iql", f"dataset={data}", "pruner=snip", "sparsity=0.9", "steps=20", "batch_size=32",
                     "algo.hidden=[32,32]", "eval.every=20", "eval.episodes=1", "tensorboard=false", "progress=false",
                     f"hydra.run.dir={tmp_path}/run", "pruner.budget_search=constrained", "pruner.budget_search_probes=40",
                     "pruner.budget_cost=[mycosts:actor_kept,sparse_offline_rl.export:actor_bytes]",
                     "pruner.budget_cost_max=[400,12000]", "pruner.budget_networks=[actor]",
                     cwd=tmp_path, pythonpath=[str(tmp_path), *sys.path])
    assert result.returncode == 0, result.stderr[-2000:]
    search = json.loads((tmp_path / "run" / "summary.json").read_text())["pruning"]["budget_cost"]
    assert search["search"] == "constrained" and search["cost"][0] <= 400 and search["cost"][1] <= 12000
    assert search["budget_cost"] == ["mycosts:actor_kept", "sparse_offline_rl.export:actor_bytes"]
    assert all({"counts", "reward", "costs", "feasible"} <= set(p) for p in search["probes"])
    assert (tmp_path / "run" / "budget_search.png").stat().st_size > 10_000


def test_bisection_reports_the_reward_on_the_same_scale(dataset) -> None:
    algo, buffer = setup(dataset)
    cfg = {**constrained("search_cost_fixture:actor_kept", 600), "budget_search": "bisect", "budget_search_probes": None}
    _, report = prune_at_initialization(algo, buffer.sample, cfg, 0.9)
    bisect = report["budget_cost"]
    assert bisect["search"] == "bisect" and bisect["cost"] <= 600 and 0 < bisect["sparsity"] < 1
    assert 0 < bisect["reward"] < 1 and bisect["seconds"] > 0
