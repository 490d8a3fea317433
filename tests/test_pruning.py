"""Pruning at initialization, checked against small independent computations.

Everything runs on tiny modules and a fake algorithm defined here (the real algorithms are written
in parallel), so the whole file takes a few seconds on CPU.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sparse_offline_rl.data.buffer import Batch
from sparse_offline_rl.pruning import (
    LayerCollapseError,
    MaskSet,
    count_params_flops,
    format_density_table,
    prunable_parameters,
    prune_at_initialization,
    prune_module,
    saliency,
)
from sparse_offline_rl.pruning.iterative import prune_rounds as _iterate
from sparse_offline_rl.sparse_training.dynamic import SparseTraining
from sparse_offline_rl.pruning.allocation import allocate, erk_densities, first_last_layers, keep_count, top_mask

OBS, ACT = 5, 2


def mlp(*dims: int, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def regression_loss(x: torch.Tensor, y: torch.Tensor):
    return lambda m: ((m(x) - y) ** 2).mean()


def connected(masks: dict[str, torch.Tensor]) -> bool:
    """An input-output path survives in a chain of layers (product of the 0/1 masks is nonzero)."""
    path = None
    for m in masks.values():
        m = m.double()
        path = m if path is None else m @ path
    return bool(path.sum() > 0)


# -- fake algorithm following the OfflineAlgorithm protocol ----------------------------------------
class TwinCritic(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.qs = nn.ModuleList(mlp(OBS + ACT, hidden, hidden, 1) for _ in range(2))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1)
        return torch.stack([q(x).squeeze(-1) for q in self.qs])


class Actor(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = mlp(OBS, hidden, hidden, ACT)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class FakeAlgo:
    """TD3+BC-shaped: actor, twin critic with a target, Adam per network. With `leaky=True` each
    saliency loss also builds graph through the *other* network (no detach, no no_grad), so an
    implementation that backpropagates into `.grad` and reads it would mix the networks' scores."""

    def __init__(self, leaky: bool = False, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.config = None
        self.actor = Actor()
        self.critic = TwinCritic()
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=1e-2, foreach=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=1e-2, foreach=True)
        self.leaky = leaky
        self.steps = 0

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic}

    def target_networks(self) -> dict[str, nn.Module]:
        return {"critic": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    def actor_loss(self, b: Batch) -> torch.Tensor:
        pi = self.actor(b.observations)
        return -self.critic(b.observations, pi).mean() + ((pi - b.actions) ** 2).mean()

    def critic_loss(self, b: Batch) -> torch.Tensor:
        next_act = self.actor(b.next_observations)
        if not self.leaky:
            next_act = next_act.detach()
        target = b.rewards + 0.99 * (1 - b.dones) * self.critic_target(b.next_observations, next_act).min(0).values
        return ((self.critic(b.observations, b.actions) - target) ** 2).mean()

    def saliency_loss(self, network: str, batch: Batch) -> torch.Tensor:
        return self.actor_loss(batch) if network == "actor" else self.critic_loss(batch)

    def update(self, b: Batch) -> None:
        self.critic_opt.zero_grad()
        self.critic_loss(b).backward()
        self.critic_opt.step()
        self.steps += 1
        if self.steps % 2 == 0:  # delayed actor: its Adam state appears one step later
            self.actor_opt.zero_grad()
            for p in self.critic.parameters():
                p.requires_grad_(False)
            self.actor_loss(b).backward()
            for p in self.critic.parameters():
                p.requires_grad_(True)
            self.actor_opt.step()
        with torch.no_grad():
            for t, o in zip(self.critic_target.parameters(), self.critic.parameters()):
                t.lerp_(o, 0.5)


def make_sampler(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)

    def sample(batch_size: int = 32) -> Batch:
        return Batch(
            torch.randn(batch_size, OBS, generator=gen),
            torch.rand(batch_size, ACT, generator=gen) * 2 - 1,
            torch.randn(batch_size, generator=gen),
            torch.randn(batch_size, OBS, generator=gen),
            (torch.rand(batch_size, generator=gen) < 0.1).float(),
        )

    return sample


# -- scores against independent computations -------------------------------------------------------
def test_snip_equals_abs_grad_times_weight() -> None:
    torch.manual_seed(0)
    net = mlp(4, 6, 3)
    x, y = torch.randn(10, 4), torch.randn(10, 3)
    loss = regression_loss(x, y)
    scores = saliency("snip", net, loss)
    loss(net).backward()
    assert set(scores) == {"0.weight", "2.weight"}  # biases excluded
    for name, p in prunable_parameters(net).items():
        torch.testing.assert_close(scores[name], (p.grad * p).abs())


def test_grasp_hessian_gradient_product_matches_finite_differences() -> None:
    torch.manual_seed(0)
    net = mlp(3, 5, 2).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    loss = regression_loss(x, y)
    weights = list(prunable_parameters(net).values())
    g = [gi.detach() for gi in torch.autograd.grad(loss(net), weights)]

    def grad_at(step: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for w, gi in zip(weights, g):
                w.add_(step * gi)
        out = torch.autograd.grad(loss(net), weights)
        with torch.no_grad():
            for w, gi in zip(weights, g):
                w.sub_(step * gi)
        return out

    eps = 1e-5
    hg = [(a - b) / (2 * eps) for a, b in zip(grad_at(eps), grad_at(-eps))]
    scores = saliency("grasp", net, loss)
    for (name, w), h in zip(prunable_parameters(net).items(), hg):
        torch.testing.assert_close(scores[name], w.detach() * h, rtol=1e-6, atol=1e-9)
    # signed: some scores are negative and would be misranked by abs()
    assert any(bool((s < 0).any()) for s in scores.values())


@pytest.mark.parametrize("bias", [False, True])
def test_synflow_matches_closed_form_on_two_layer_linear_net(bias: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=bias), nn.Linear(3, 2, bias=bias))
    w1, w2 = (net[0].weight.detach().double().abs(), net[1].weight.detach().double().abs())
    b1 = net[0].bias.detach().double().abs() if bias else torch.zeros(3, dtype=torch.float64)
    # R = 1^T (|W2| (|W1| 1 + |b1|) + |b2|)
    expected1 = w1 * w2.sum(0)[:, None]  # dR/d|W1|_ij = sum_k |W2|_ki
    expected2 = w2 * (w1.sum(1) + b1)[None, :]  # dR/d|W2|_ki = (|W1| 1 + |b1|)_i
    scores = saliency("synflow", net, input_shape=(1, 4))
    assert scores["0.weight"].dtype == torch.float64
    torch.testing.assert_close(scores["0.weight"], expected1)
    torch.testing.assert_close(scores["1.weight"], expected2)
    assert net[0].weight.min() < 0  # the module's signs are untouched


def test_synflow_stays_connected_where_snip_collapses() -> None:
    # A narrow-input, wide-middle MLP at 99.8% sparsity: one-shot SNIP ranks the 10k middle weights
    # low and removes them all; SynFlow's iterative conservation keeps a path through every layer.
    torch.manual_seed(0)
    net = mlp(8, 100, 100, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    loss = regression_loss(x, y)
    total = sum(p.numel() for p in prunable_parameters(net).values())
    keep = keep_count(total, 0.002)
    snip = prune_module(net, "snip", keep, losses=[lambda: loss(net)], allow_layer_collapse=True)
    assert not connected(snip)
    with pytest.raises(LayerCollapseError, match="layer collapse"):
        prune_module(net, "snip", keep, losses=[lambda: loss(net)])
    synflow = prune_module(net, "synflow", keep)
    assert connected(synflow) and all(m.any() for m in synflow.values())
    assert sum(int(m.sum()) for m in synflow.values()) == keep


def test_synflow_scores_tanh_and_gaussian_style_networks() -> None:
    class Gaussian(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = mlp(OBS, 8, 8)
            self.mean = nn.Linear(8, ACT)
            self.log_std = nn.Linear(8, ACT)

        def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.relu(self.trunk(obs))
            return torch.tanh(self.mean(h)), self.log_std(h).clamp(-20, 2).exp()

    net = Gaussian()
    first, last = first_last_layers(net)
    assert first == ["trunk.0.weight"] and last == ["mean.weight", "log_std.weight"]
    scores = saliency("synflow", net)
    assert set(scores) == {"trunk.0.weight", "trunk.2.weight", "mean.weight", "log_std.weight"}
    assert all(bool((s > 0).all()) for s in scores.values())
    first, last = first_last_layers(TwinCritic())
    assert first == ["qs.0.0.weight", "qs.1.0.weight"] and last == ["qs.0.4.weight", "qs.1.4.weight"]


# -- iterative schedules ---------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer", "erk"])
def test_iterative_rounds_never_revive_pruned_weights(scope: str) -> None:
    shapes = {"a": (20, 10), "b": (30, 20), "c": (1, 30)}
    gen = torch.Generator().manual_seed(0)
    history: list[dict[str, torch.Tensor]] = []

    def adversarial(masks):
        # Pruned weights get the highest raw scores: only pinning keeps them dead.
        history.append(masks)
        s = {n: torch.rand(sh, generator=gen, dtype=torch.float64) for n, sh in shapes.items()}
        if masks is not None:
            s = {n: torch.where(masks[n], s[n], torch.full_like(s[n], 1e9)) for n in s}
        return s

    total = sum(math.prod(s) for s in shapes.values())
    final, _ = _iterate(adversarial, keep_count(total, 0.05), scope, (), rounds=10)
    seq = [m for m in history[1:]] + [final]
    for before, after in zip(seq[:-1], seq[1:]):
        for n in shapes:
            assert not bool((after[n] & ~before[n]).any()), f"weight revived in {n}"
    assert sum(int(m.sum()) for m in final.values()) == keep_count(total, 0.05)


def test_iterative_snip_through_saliency_pins_pruned() -> None:
    torch.manual_seed(0)
    net = mlp(4, 12, 12, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    scores = saliency("snip", net, regression_loss(x, y), sparsity=0.8, rounds=5)
    kept = sum(int(torch.isfinite(s).sum()) for s in scores.values())
    total = sum(s.numel() for s in scores.values())
    # the last round scores the network pruned by round 4; everything else is pinned at -inf
    assert keep_count(total, 0.2) <= kept < total
    before = copy.deepcopy(net.state_dict())
    saliency("grasp", net, regression_loss(x, y), sparsity=0.8, rounds=3)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])  # scoring never changes the module


# -- allocation ------------------------------------------------------------------------------------
def test_erk_densities_hit_the_target_and_follow_the_formula() -> None:
    shapes = {"l0": (256, 17), "l1": (256, 256), "l2": (6, 256)}
    total = sum(math.prod(s) for s in shapes.values())
    for sparsity in (0.5, 0.9, 0.95):
        keep = keep_count(total, 1 - sparsity)
        dens = erk_densities(shapes, keep)
        assert sum(dens[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(keep)
        sparse = [n for n in shapes if dens[n] < 1]
        ratios = {n: dens[n] / ((sum(shapes[n])) / math.prod(shapes[n])) for n in sparse}
        assert max(ratios.values()) == pytest.approx(min(ratios.values()))  # one scale eps
        scores = {n: torch.rand(s) for n, s in shapes.items()}
        masks = allocate(scores, keep, "erk")
        assert sum(int(m.sum()) for m in masks.values()) == keep
    # at 50% the small layers would exceed density 1: they are made dense and eps re-solved
    assert erk_densities(shapes, keep_count(total, 0.5))["l0"] == 1.0


@pytest.mark.parametrize("scope", ["global", "layer", "erk"])
def test_ties_never_exceed_the_target(scope: str) -> None:
    scores = {"a": torch.ones(7, 3), "b": torch.ones(5, 7), "c": torch.ones(2, 5)}
    total = 21 + 35 + 10
    for sparsity in (0.1, 0.33, 0.5, 0.77, 0.9):
        keep = keep_count(total, 1 - sparsity)
        masks = allocate(scores, keep, scope)
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == keep and kept / total <= 1 - sparsity + 1e-12


def test_top_mask_equals_a_stable_sort_with_index_tie_break() -> None:
    gen = torch.Generator().manual_seed(0)
    flat = torch.randint(0, 5, (500,), generator=gen).double()  # heavy ties
    flat[:50] = float("-inf")
    for k in (0, 1, 37, 250, 450, 499, 500):
        expected = torch.zeros(500, dtype=torch.bool)
        expected[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        assert torch.equal(top_mask(flat, k), expected)
    with pytest.raises(ValueError, match="NaN"):
        top_mask(torch.tensor([1.0, float("nan")]), 1)


def test_keep_count_rounds_down_exactly() -> None:
    assert keep_count(1000, 1 - 0.9) == 100
    assert keep_count(1000, 0.3) == 300
    assert keep_count(999, 0.1) == 99


def test_layer_collapse_raises_unless_allowed() -> None:
    torch.manual_seed(0)
    net = mlp(4, 20, 20, 2)
    with torch.no_grad():
        net[2].weight.mul_(1e-6)  # magnitude ranks the whole middle layer last
    total = sum(p.numel() for p in prunable_parameters(net).values())
    keep = keep_count(total, 0.2)
    with pytest.raises(LayerCollapseError, match=r"2\.weight kept 0 weights"):
        prune_module(net, "magnitude", keep)
    masks = prune_module(net, "magnitude", keep, allow_layer_collapse=True)
    assert not masks["2.weight"].any()
    # per-layer allocation cannot collapse a layer at this sparsity
    assert prune_module(net, "magnitude", keep, scope="layer")["2.weight"].any()


def test_allocate_counts_dense_layers_in_the_kept_total() -> None:
    torch.manual_seed(0)
    net = TwinCritic()
    total = sum(p.numel() for p in prunable_parameters(net).values())
    keep = keep_count(total, 0.5)
    first, last = first_last_layers(net)
    for scope in ("global", "layer", "erk"):
        masks = prune_module(net, "random", keep, scope=scope, dense_layers=first + last)
        assert all(bool(masks[n].all()) for n in first + last)
        assert sum(int(m.sum()) for m in masks.values()) == keep


# -- the trainer's entry point ---------------------------------------------------------------------
def test_errors_are_one_line_and_name_the_problem() -> None:
    algo = FakeAlgo()
    with pytest.raises(ValueError) as err:
        prune_at_initialization(algo, make_sampler(), {"name": "x"}, 0.5)
    assert str(err.value) == "unknown pruner 'x'; available: dense, grasp, magnitude, random, snip, synflow"
    with pytest.raises(ValueError, match=r"sparsity 1\.0 .*\[0, 1\)"):
        prune_at_initialization(algo, make_sampler(), {"name": "random"}, 1.0)
    with pytest.raises(ValueError, match="no entry for network"):
        prune_at_initialization(algo, make_sampler(), {"name": "random"}, {"actor": 0.5})
    with pytest.raises(ValueError, match="unknown pruner option"):
        prune_at_initialization(algo, make_sampler(), {"name": "random", "scop": "erk"}, 0.5)


def test_per_network_sparsity_mapping_and_report() -> None:
    algo = FakeAlgo()
    mask_set, report = prune_at_initialization(
        algo, make_sampler(), {"name": "snip", "scope": "erk", "num_batches": 2, "batch_size": 16}, {"actor": 0.5, "critic": 0.9}, seed=3
    )
    json.dumps(report)
    for name, sparsity in (("actor", 0.5), ("critic", 0.9)):
        net_report = report["networks"][name]
        total = net_report["prunable_weights"]
        assert net_report["kept_weights"] == keep_count(total, 1 - sparsity)
        assert net_report["density"] <= 1 - sparsity
        assert net_report["params"] < net_report["params_dense"] and net_report["flops"] < net_report["flops_dense"]
        assert mask_set.layer_density(algo)[name] == pytest.approx(net_report["layer_density"])
    table = format_density_table(report)
    assert "qs.1.2.weight" in table and "actor" in table and "snip" in table
    # dense is a no-op that still reports
    mask_set, report = prune_at_initialization(FakeAlgo(), make_sampler(), {"name": "dense"}, 0.0)
    assert not mask_set and report["networks"]["critic"]["density"] == 1.0


def test_same_seed_same_masks() -> None:
    cfg = {"name": "snip", "batch_size": 16}
    m1, _ = prune_at_initialization(FakeAlgo(seed=0), make_sampler(5), cfg, 0.8, seed=1)
    m2, _ = prune_at_initialization(FakeAlgo(seed=0), make_sampler(5), cfg, 0.8, seed=1)
    for net in m1.masks:
        for p in m1.masks[net]:
            assert torch.equal(m1.masks[net][p], m2.masks[net][p])


@pytest.mark.parametrize("kind", ["budget_params", "budget_flops"])
def test_budget_solves_to_the_right_count(kind: str) -> None:
    algo = FakeAlgo()
    dense = {n: count_params_flops(net) for n, net in algo.networks().items()}
    key = kind.split("_")[1]
    budget = {n: d[f"{key}_dense"] // 3 for n, d in dense.items()}
    _, report = prune_at_initialization(algo, make_sampler(), {"name": "magnitude", kind: budget}, 0.0)
    for n, info in report["networks"].items():
        assert info[key] <= budget[n] and info[key] >= budget[n] - 1  # FLOPs move in steps of 2
        assert info["target_from"] == kind
    with pytest.raises(ValueError, match="non-prunable"):
        prune_at_initialization(FakeAlgo(), make_sampler(), {"name": "random", kind: 3}, 0.0)


def test_count_params_flops_on_a_known_net() -> None:
    net = mlp(3, 4, 2)  # weights 12 + 8, biases 4 + 2
    dense = count_params_flops(net)
    assert dense == {"params_dense": 26, "params": 26, "flops_dense": 2 * 20 + 6, "flops": 2 * 20 + 6}
    masks = {"0.weight": torch.zeros(4, 3), "2.weight": torch.ones(2, 4)}
    masks["0.weight"][0, 0] = 1
    assert count_params_flops(net, masks) == {"params_dense": 26, "params": 26 - 11, "flops_dense": 46, "flops": 46 - 22}


def test_masks_stay_enforced_on_online_target_and_adam_state() -> None:
    algo = FakeAlgo()
    mask_set, _ = prune_at_initialization(algo, make_sampler(), {"name": "random"}, 0.7, seed=0)
    sample = make_sampler(9)
    for _ in range(5):
        algo.update(sample())
        mask_set.apply()

    def assert_masked() -> None:
        for net_name, masks in mask_set.masks.items():
            online = prunable_parameters(algo.networks()[net_name])
            targets = algo.target_networks()
            opt = algo.optimizers()[net_name]
            for pname, mask in masks.items():
                pruned = mask == 0
                assert bool((online[pname][pruned] == 0).all())
                assert bool((online[pname][~pruned] != 0).any())
                if net_name in targets:
                    assert bool((prunable_parameters(targets[net_name])[pname][pruned] == 0).all())
                state = opt.state[online[pname]]
                assert bool((state["exp_avg"][pruned] == 0).all()) and bool((state["exp_avg_sq"][pruned] == 0).all())

    assert_masked()  # includes the delayed actor, whose Adam state appeared after the first apply()
    # Resuming replaces the optimizer state objects; apply() must follow them.
    for opt in algo.optimizers().values():
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        algo.update(sample())
        mask_set.apply()
    assert_masked()
    restored = MaskSet.from_state_dict(mask_set.state_dict())
    assert restored.masks.keys() == mask_set.masks.keys()


def test_no_gradient_leakage_between_networks() -> None:
    algo = FakeAlgo(leaky=True)
    for net in algo.networks().values():  # junk gradients must be neither read nor kept
        for p in net.parameters():
            p.grad = torch.full_like(p, 123.0)
    # independent per-network SNIP scores on a copy with the same weights and batch
    ref = FakeAlgo(leaky=True)
    ref.actor.load_state_dict(algo.actor.state_dict())
    ref.critic.load_state_dict(algo.critic.state_dict())
    ref.critic_target.load_state_dict(algo.critic_target.state_dict())
    batch = make_sampler(4)(32)
    mask_set, _ = prune_at_initialization(algo, make_sampler(4), {"name": "snip", "batch_size": 32}, 0.5, seed=0)
    assert all(p.grad is None for net in algo.networks().values() for p in net.parameters())
    for name in ("actor", "critic"):
        net = ref.networks()[name]
        net.zero_grad()
        ref.saliency_loss(name, batch).backward()
        params = prunable_parameters(net)
        # each twin-critic member is ranked on its own and keeps half of its weights
        members = [[n for n in params if n.startswith(f"qs.{i}.")] for i in range(2)] if name == "critic" else [list(params)]
        for member in members:
            scores = torch.cat([(params[n].grad * params[n]).abs().flatten() for n in member])
            keep = keep_count(scores.numel(), 0.5)
            expected = torch.zeros_like(scores, dtype=torch.bool)
            expected[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
            got = torch.cat([mask_set.masks[name][n].bool().flatten() for n in member])
            assert torch.equal(got, expected), (name, member)


def test_sparsity_applies_to_the_pruned_layers_when_some_are_kept_dense() -> None:
    algo = FakeAlgo()
    cfg = {"name": "synflow", "rounds": 20, "scope": "erk", "keep_first_layer_dense": True, "keep_last_layer_dense": True}
    _, report = prune_at_initialization(algo, make_sampler(), cfg, 0.9)
    info = report["networks"]["critic"]
    assert info["dense_layers"] == ["qs.0.0.weight", "qs.1.0.weight", "qs.0.4.weight", "qs.1.4.weight"]
    assert all(info["layer_density"][n] == 1.0 for n in info["dense_layers"])
    pruned_total = sum(v["total"] for n, v in info["layers"].items() if n not in info["dense_layers"])
    pruned_kept = sum(v["kept"] for n, v in info["layers"].items() if n not in info["dense_layers"])
    assert pruned_kept == keep_count(pruned_total, 0.1) and info["pruned_layers_density"] <= 0.1
    assert "pruned layers" in format_density_table(report)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "pruner").glob("*.yaml")), ids=lambda p: p.stem)
def test_pruner_configs_are_accepted(path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(path.read_text())
    assert cfg["name"] == path.stem
    if cfg["name"] == "synflow":
        assert cfg["rounds"] == 100
        cfg["rounds"] = 5  # keep the test fast; the default is checked above
    # During-training pruners (gmp, set, rigl, gibbs) start from a PaI pruner: dense or random.
    initial = SparseTraining(cfg, 1000, {}, 8, seed=0).initial_pruner()
    mask_set, report = prune_at_initialization(FakeAlgo(), make_sampler(), initial, 0.5, seed=0)
    start = {"gmp": "dense", "gibbs": "dense", "set": "random", "rigl": "random"}.get(cfg["name"], cfg["name"])
    assert report["pruner"] == start and bool(mask_set) == (start != "dense")


# -- the typed pruner config and the scorer registry -----------------------------------------------
PRUNER_YAMLS = sorted((Path(__file__).resolve().parents[1] / "configs" / "pruner").glob("*.yaml"))
#: Keys whose YAML value is the method's own default, not the dataclass's (rounds: SynFlow 100;
#: scope, begin, sparse_init: the during-training methods').
PER_METHOD = {"name", "rounds", "scope", "begin", "sparse_init"}


@pytest.mark.parametrize("path", PRUNER_YAMLS, ids=lambda p: p.stem)
def test_pruner_yaml_mirrors_the_config_dataclass(path) -> None:
    import dataclasses

    import yaml

    from sparse_offline_rl.pruning.config import PrunerConfig
    from sparse_offline_rl.pruning.scorers import DEFAULT_ROUNDS

    on_disk = yaml.safe_load(path.read_text())
    assert on_disk["name"] == path.stem
    config = PrunerConfig.from_mapping(on_disk)  # every key a field, every value accepted
    defaults = dataclasses.asdict(PrunerConfig())
    assert {k: v for k, v in on_disk.items() if k not in PER_METHOD} == {
        k: defaults[k] for k in on_disk if k not in PER_METHOD}
    if path.stem in DEFAULT_ROUNDS and path.stem != "dense":  # dense ignores rounds
        assert on_disk["rounds"] == DEFAULT_ROUNDS[path.stem] == config.rounds


def test_pruner_config_covers_every_yaml_key_and_todays_defaults() -> None:
    import dataclasses

    import yaml

    from sparse_offline_rl.pruning.config import DURING_TRAINING_DEFAULTS, PRUNER_DEFAULTS, PrunerConfig
    from sparse_offline_rl.sparse_training.dynamic import DYNAMIC_DEFAULTS

    keys = set().union(*(yaml.safe_load(p.read_text()) for p in PRUNER_YAMLS))
    fields = {f.name for f in dataclasses.fields(PrunerConfig)}
    assert keys <= fields and fields - keys <= set(DURING_TRAINING_DEFAULTS)
    assert DURING_TRAINING_DEFAULTS == DYNAMIC_DEFAULTS
    assert set(PRUNER_DEFAULTS) | set(DURING_TRAINING_DEFAULTS) | {"name"} == fields


@pytest.mark.parametrize("change, words", [
    ({"scope": "local"}, "pruner.scope='local' is invalid: one of global, layer, erk or null is required"),
    ({"rounds": 0}, "pruner.rounds=0 is invalid: a positive integer or null is required"),
    ({"batch_size": True}, "pruner.batch_size=True is invalid: a positive integer is required"),
    ({"budget_params": {"actor": 0}}, "pruner.budget_params.actor=0 is invalid"),
    ({"update_every": 0}, "pruner.update_every=0 is invalid"),
    ({"drop_decay": "linear"}, "pruner.drop_decay='linear' is invalid; accepted: cosine, constant"),
    ({"temperature_end": 0}, r"pruner.temperature_end=0 is invalid: a number in (0, inf)"),
    ({"sparse_init": "yes"}, "pruner.sparse_init='yes' is invalid: true or false is required"),
    ({"budget_cost_max": 3}, "go together"),
    ({"budget_params": 10, "budget_flops": 10}, "give at most one of"),
    ({"structure": "units", "weight_sparsity": 0.5, "budget_params": 100}, "cannot be combined"),
    ({"unit_score": "gate"}, "pruner.unit_score='gate' applies with pruner.structure=units only"),
])
def test_pruner_config_checks_each_value_once(change, words) -> None:
    from sparse_offline_rl.errors import ConfigError
    from sparse_offline_rl.pruning.config import PrunerConfig

    with pytest.raises(ConfigError) as err:
        PrunerConfig.from_mapping({"name": "snip", **change})
    assert words in str(err.value)


def test_pruner_config_keeps_what_was_given_and_none_means_default() -> None:
    from sparse_offline_rl.pruning.config import PrunerConfig

    config = PrunerConfig.from_mapping({"name": "gibbs", "scope": None, "update_every": 10})
    assert config.scope == "global" and config.update_every == 10 and config.given == {"update_every"}


def test_the_registry_is_the_one_list_of_pruners() -> None:
    from sparse_offline_rl.pruning import DEFAULT_ROUNDS, PRUNERS
    from sparse_offline_rl.pruning.scorers import DATA_DRIVEN, SCORERS

    assert PRUNERS == tuple(sorted(SCORERS)) == ("dense", "grasp", "magnitude", "random", "snip", "synflow")
    assert DEFAULT_ROUNDS == {"synflow": 100, "snip": 1, "grasp": 1, "random": 1, "magnitude": 1, "dense": 0}
    assert set(DATA_DRIVEN) == {"snip", "grasp"}
    assert SCORERS["random"].rounds(7) == 1 and SCORERS["synflow"].rounds(None) == 100 and SCORERS["snip"].rounds(3) == 3
