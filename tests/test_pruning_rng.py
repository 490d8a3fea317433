"""Pruning leaves training's randomness alone: after any pruner every RNG training uses is where it
is after `pruner=dense` at the same seed, and GraSP takes g and H g from one loss evaluation."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from conftest import random_dataset
from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.pruning import prunable_parameters, prune_at_initialization, saliency
from sparse_offline_rl.pruning.rng import find_generators
from sparse_offline_rl.training.trainer import train

PRUNERS = ["snip", "grasp", "synflow", "random", "magnitude"]
# The sparsity-aware re-draw of the kept weights (pruner.sparse_init) has a generator of its own.
VARIANTS = [(p, {}) for p in PRUNERS] + [("snip", {"sparse_init": True}), ("random", {"sparse_init": True})]


@pytest.fixture(scope="module")
def dataset():
    return random_dataset("hopper")


def streams_after_pruning(algo_name: str, pruner: str, dataset, shared_sampler: bool,
                          options: dict | None = None) -> dict[str, list[torch.Tensor]]:
    """What training would draw next, after pruning at seed 0: the global RNG states, each of the
    algorithm's own generators, its next noise draws and the next training batches."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    algo = make_algorithm(algo_name, ProblemSpec(11, 3, total_steps=10), {"hidden": [32, 32]})
    buffer = TransitionBuffer(dataset)
    buffer.seed(0)
    # shared: pruning draws its batches from the training buffer itself (a library user's call)
    sampler = buffer.sample if shared_sampler else TransitionBuffer(dataset).sample
    cfg = {"name": pruner, "batch_size": 16, "rounds": 3 if pruner == "synflow" else None, "allow_layer_collapse": True,
           **(options or {})}
    prune_at_initialization(algo, sampler, cfg, 0.9, seed=0)
    generators = [g for g in find_generators(algo) if isinstance(g, torch.Generator)]
    return {
        "global states": [torch.get_rng_state(), torch.from_numpy(np.random.get_state()[1].copy()),
                          torch.tensor(random.getstate()[1])],
        "own generators": [g.get_state() for g in generators],
        "own draws": [torch.rand(5, generator=g) for g in generators],
        "batches": [buffer.sample(4).observations for _ in range(3)],
        "global draws": [torch.rand(3), torch.from_numpy(np.random.rand(3)), torch.tensor(random.random())],
    }


@pytest.mark.parametrize("algo", ["iql", "cql", "td3bc"])
def test_every_pruner_leaves_every_rng_where_dense_leaves_it(algo, dataset) -> None:
    for shared in (False, True):
        dense = streams_after_pruning(algo, "dense", dataset, shared)
        if algo in ("cql", "td3bc"):
            assert len(dense["own generators"]) == 1  # the NoiseSource of its policy / smoothing noise
        for pruner, options in VARIANTS:
            after = streams_after_pruning(algo, pruner, dataset, shared, options)
            for key in dense:
                assert len(after[key]) == len(dense[key]) and all(map(torch.equal, after[key], dense[key])), \
                    f"{algo}/{pruner}/{options}/shared={shared}: {key}"


@pytest.mark.parametrize("pruner", [{"name": "snip"}, {"name": "snip", "sparse_init": True}, {"name": "set"},
                                    {"name": "set", "sparse_init": False}])
def test_a_trained_run_draws_the_same_noise_after_pruning_as_after_dense(tmp_path, fast_config, hopper_data, pruner) -> None:
    """Through the trainer: after 3 steps, TD3+BC's smoothing noise generator and the batch stream
    are in the same state whichever pruner ran, with or without the sparsity-aware re-draw (SET's
    default: on)."""
    states, re_drawn = [], []
    for name, cfg_pruner in (("dense", {"name": "dense"}), ("pruned", pruner)):
        cfg = {**fast_config, "algo": {"name": "td3bc", "hidden": [32, 32]}, "pruner": cfg_pruner,
               "steps": 3, "eval": {**fast_config["eval"], "every": 1000, "episodes": 1}}
        re_drawn.append(train(cfg, tmp_path / name, dataset=hopper_data)["pruning"]["sparse_init"])
        ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        states.append((ckpt["algo"]["noise"]["generator"], ckpt["buffer"]["generator"], ckpt["torch_rng"]))
    assert re_drawn == [False, pruner.get("sparse_init", pruner["name"] == "set")]
    for a, b in zip(*states):
        assert torch.equal(a, b)


def test_grasp_takes_g_and_hg_from_a_single_evaluation_of_each_loss() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    draws: list[torch.Tensor] = []

    def noisy(m: nn.Module) -> torch.Tensor:  # like CQL's critic loss: fresh noise at every call
        draws.append(torch.randn(y.shape, generator=gen, dtype=torch.float64))
        return ((m(x) - y - draws[-1]) ** 2).mean()

    scores = saliency("grasp", net, noisy, num_batches=2)
    assert len(draws) == 2  # one evaluation per batch
    # Reference: the same two losses with their noise fixed, g and H g computed separately.
    fixed = [lambda m, d=d: ((m(x) - y - d) ** 2).mean() for d in draws]
    weights = list(prunable_parameters(net).values())
    g = [sum(gs) / 2 for gs in zip(*[torch.autograd.grad(f(net), weights) for f in fixed])]
    hg = [torch.zeros_like(w) for w in weights]
    for f in fixed:
        gb = torch.autograd.grad(f(net), weights, create_graph=True)
        z = sum((a * b.detach()).sum() for a, b in zip(gb, g))
        for acc, h in zip(hg, torch.autograd.grad(z, weights)):
            acc += h / 2
    for (name, w), h in zip(prunable_parameters(net).items(), hg):
        torch.testing.assert_close(scores[name], w.detach() * h)
