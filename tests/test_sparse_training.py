"""Sparsity during training (pruner=gmp|set|rigl|gibbs, gibbs also by units): schedules, mask updates on the one mask mechanism,
dense and compressed layers, resume across an update, training FLOPs."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import sparse_offline_rl.sparse_training.gibbs as gibbs_module
import sparse_offline_rl.sparse_training.registry as registry
import sparse_offline_rl.training.trainer as trainer_module
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.io import load_checkpoint
from sparse_offline_rl.pruning import MaskSet, prunable_parameters
from sparse_offline_rl.pruning.allocation import keep_count
from sparse_offline_rl.sparse.wiring import layer_graph
from sparse_offline_rl.sparse.masks import layer_weights
from sparse_offline_rl.sparse.density import count_params_flops
from sparse_offline_rl.sparse_training.dynamic import (
    Gibbs,
    RigL,
    Schedule,
    SparseTraining,
    drop_and_grow,
    drop_fraction,
    gibbs_sample,
    gmp_sparsity,
    options,
)
from sparse_offline_rl.sparse_training.rule import MaskRule
from sparse_offline_rl.sparse.linear import SparseLinear
from sparse_offline_rl.pruning.units import UnitCollapseError, hidden_members, unit_scores, weight_masks
from sparse_offline_rl.training.trainer import StepInfo, train
from test_sparse_masks import DirectStep
from conftest import Interrupt, assert_same_state, interrupt_at


def update_steps(name: str, steps: int, **opts) -> list[int]:
    training = SparseTraining({"name": name, **opts}, steps, {"net": 0.9}, 8, seed=0)
    final_too = name in ("gmp", "gibbs")  # they reach the exact target at `end`, on the grid or not
    schedule = training.schedule
    return [s for s in range(1, steps + 1) if schedule.is_update(s) or (final_too and s == schedule.end_step)]


def test_schedules_follow_the_references():
    # GMP: every 1000 steps from 20% to 80%; SET / RigL: from the start until 80%, then fixed.
    assert update_steps("gmp", 10_000) == list(range(2000, 8001, 1000))
    assert update_steps("gibbs", 10_000) == list(range(1000, 8001, 1000))
    assert update_steps("set", 10_000) == list(range(1000, 8001, 1000))
    assert update_steps("rigl", 10_000, end=0.5, update_every=500) == list(range(500, 5001, 500))
    # GMP's last update is at `end` even off the grid, so the target is always reached.
    assert update_steps("gmp", 1000, update_every=300) == [300, 600, 800]
    # The cubic schedule from 0 to the target between begin and end.
    schedule = Schedule.of(options({"name": "gmp"}), 10_000)
    sparsity = {s: gmp_sparsity(0.9, schedule.progress(s)) for s in (1000, 2000, 5000, 8000, 9000)}
    assert sparsity[1000] == sparsity[2000] == 0.0
    assert sparsity[5000] == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert sparsity[8000] == sparsity[9000] == pytest.approx(0.9)
    # Drop fraction: the SAC config's init_drop_fraction 0.5, cosine-decayed to 0 at the end (constant on request).
    opts = options({"name": "set"})
    schedule = Schedule.of(opts, 10_000)
    assert [drop_fraction(opts, schedule.progress(s)) for s in (0, 4000, 8000)] == pytest.approx([0.5, 0.25, 0.0])
    assert drop_fraction(options({"name": "set", "drop_decay": "constant"}), 0.7) == 0.5
    # The sparse starts re-draw their kept weights to their fans under the mask (fixed_sparse_init = True).
    for name in ("set", "rigl"):
        assert SparseTraining({"name": name}, 10_000, {"net": 0.9}, 8, seed=0).initial_pruner()["sparse_init"] is True
        assert SparseTraining({"name": name, "sparse_init": False}, 10, {"net": 0.9}, 8, seed=0).initial_pruner()["sparse_init"] is False


@pytest.mark.parametrize("pruner, message", [
    ({"name": "gmp", "update_every": 0}, r"pruner.update_every=0 is invalid"),
    ({"name": "set", "begin": 0.9, "end": 0.5}, r"pruner.begin=0.9 is after pruner.end=0.5"),
    ({"name": "rigl", "drop_fraction": 1.5}, r"pruner.drop_fraction=1.5 is invalid"),
    ({"name": "rigl", "drop_decay": "linear"}, r"drop_decay='linear' is invalid; accepted: cosine, constant"),
    ({"name": "snip", "update_every": 100}, r"pruner.update_every is an option of the during-training pruners"),
    ({"name": "gmp", "budget_params": 1000}, r"pruner.budget_params is not supported by pruner=gmp"),
    ({"name": "gmp", "drop_fraction": 0.2}, r"pruner.drop_fraction applies to set and rigl, not to pruner=gmp"),
    ({"name": "rigl", "temperature_end": 0.1}, r"pruner.temperature_end applies to gibbs, not to pruner=rigl"),
    ({"name": "gibbs", "temperature_start": 0}, r"pruner.temperature_start=0 is invalid: a number in \(0, inf\)"),
    *[({"name": p, "structure": "units"}, rf"pruner.structure='units' is invalid with pruner={p}: {p} prunes single "
       "weights during training .* whole units are pruned during training by pruner=gibbs") for p in ("gmp", "set", "rigl")],
    ({"name": "gibbs", "structure": "units", "scope": "erk"},
     r"pruner.scope='erk' is invalid with pruner.structure=units: one of global, layer is required"),
    ({"name": "gibbs", "structure": "units", "keep_last_layer_dense": True},
     r"pruner.keep_last_layer_dense is not supported by pruner=gibbs with pruner.structure=units"),
    ({"name": "gmp", "sparse_init": True}, r"pruner.sparse_init applies to set, rigl and the pruners at initialization, not to pruner=gmp"),
    ({"name": "snip", "sparse_init": "yes"}, r"pruner.sparse_init='yes' is invalid: true or false is required"),
    ({"name": "snip", "structure": "units", "sparse_init": True}, r"pruner.sparse_init is not offered with pruner.structure=units"),
])
def test_bad_schedule_options_fail_in_one_line(fast_config, pruner, message):
    with pytest.raises(ConfigError, match=message):
        trainer_module.validate_config({**fast_config, "pruner": pruner})


def test_drop_and_grow_drops_the_smallest_and_grows_the_best_scores():
    weight = torch.tensor([[5.0, -4.0, 0.0, 3.0], [0.0, 2.0, -1.0, 0.0]])
    mask = weight != 0
    scores = torch.tensor([[0.0, 0.0, 9.0, 0.0], [8.0, 0.0, 0.0, 7.0]])
    new = drop_and_grow(weight, mask, scores, 0.6)  # 5 kept: drop 3 (|w| 1, 2, 3), grow the 3 best scores
    assert new.tolist() == [[True, True, True, False], [True, False, False, True]]
    assert int(new.sum()) == int(mask.sum())
    assert torch.equal(drop_and_grow(weight, mask, scores, 0.1), mask)  # half a weight: nothing moves


def test_gibbs_draws_the_target_count_in_expectation_and_anneals_to_magnitude():
    energy = torch.rand(20_000, generator=torch.Generator().manual_seed(1))
    top = energy >= energy.kthvalue(20_000 - 1000 + 1).values  # the 1000 largest
    generator = torch.Generator().manual_seed(0)
    hot = [gibbs_sample(energy, 1000, 1.0, generator) for _ in range(5)]
    cold = gibbs_sample(energy, 1000, 1e-9, generator)
    for draw in hot:  # about 1000 kept (binomial spread ~30), mostly not the top ones
        assert abs(int(draw.sum()) - 1000) < 200 and int((draw & top).sum()) < 500
    assert int((cold ^ top).sum()) <= 2  # cold: magnitude pruning (up to the boundary entry)
    schedule = Schedule.of(options({"name": "gibbs"}), 10_000)
    rule = Gibbs(options({"name": "gibbs"}), {}, {}, {}, "erk", seed=0)
    assert [rule.temperature(schedule, s) for s in (0, 4000, 8000)] == pytest.approx([1.0, 0.1, 0.01])


class TinyAlgo(DirectStep):
    """test_sparse_masks' algorithm (a hard target copy after each step) with Adam, and its own
    loss, which RigL takes its gradient of."""

    def __init__(self) -> None:
        super().__init__()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)

    def saliency_loss(self, network: str, batch: torch.Tensor) -> torch.Tensor:
        return (self.net(batch) - batch.sum(1, keepdim=True)).pow(2).mean()


def test_set_masks_zeroes_dropped_and_regrown_weights_targets_and_adam_state():
    algo = TinyAlgo()
    params = prunable_parameters(algo.net)
    masks = MaskSet({"net": {n: torch.rand(p.shape) < 0.5 for n, p in params.items()}}).bind(algo)
    for _ in range(3):
        algo.update(torch.randn(16, 4))
    old = {n: m.bool().clone() for n, m in masks.masks["net"].items()}
    new = {n: torch.rand(m.shape) < 0.5 for n, m in old.items()}
    changes = masks.set_masks(algo, {"net": new})
    targets = prunable_parameters(algo.target)
    for name, p in params.items():
        grown = new[name] & ~old[name]
        state = algo.opt.state[p]
        assert grown.any() and changes["net"][name] == (int((old[name] & ~new[name]).sum()), int(grown.sum()))
        for t in (p, targets[name], state["exp_avg"], state["exp_avg_sq"]):
            assert bool((t[grown] == 0).all()) and bool((t[~new[name]] == 0).all())
        assert bool((p[old[name] & new[name]] != 0).all())  # weights kept through the update keep their values
    algo.update(torch.randn(16, 4))  # the new masks are enforced from now on
    assert all(bool((p[~new[n]] == 0).all()) for n, p in params.items())


def test_rigl_regrows_where_the_dense_gradient_is_largest():
    algo = TinyAlgo()
    masks = MaskSet({"net": {n: torch.rand(p.shape) < 0.3 for n, p in prunable_parameters(algo.net).items()}}).bind(algo)
    for _ in range(3):
        algo.update(torch.randn(16, 4))
    batch = torch.randn(16, 4)
    before = {n: m.bool().clone() for n, m in masks.masks["net"].items()}
    weights = {n: p.detach().clone() for n, p in prunable_parameters(algo.net).items()}
    grads = torch.autograd.grad(algo.saliency_loss("net", batch), list(prunable_parameters(algo.net).values()))
    opts = {"name": "rigl", "update_every": 10, "drop_fraction": 0.5, "drop_decay": "constant"}
    training = SparseTraining(opts, 100, {"net": 0.7}, 16, seed=0)
    training.start(algo, masks, {})
    assert isinstance(training.rule, RigL)
    rng = torch.get_rng_state()
    training.after_step(10, algo, masks, batch)
    assert torch.equal(torch.get_rng_state(), rng)  # the gradient pass draws nothing from training's RNG
    fraction = drop_fraction(training.opts, training.schedule.progress(10))
    for (name, kept), grad in zip(before.items(), grads):
        k = int(fraction * int(kept.sum()))
        assert k > 0
        survivors = kept.clone().view(-1)
        survivors[torch.where(kept.view(-1))[0][weights[name].view(-1)[kept.view(-1)].abs().argsort()[:k]]] = False
        candidates = grad.abs().view(-1).masked_fill(survivors, -math.inf)
        expected = survivors.clone()
        expected[candidates.argsort(descending=True)[:k]] = True
        assert torch.equal(masks.masks["net"][name].bool().view(-1), expected), name


def test_a_rigl_checkpoint_that_counted_the_separate_pass_is_recounted_on_resume():
    """Checkpoints from before the Evci et al. count hold the separate-pass figure as `training_flops`."""
    algo = TinyAlgo()
    masks = MaskSet({"net": {n: torch.rand(p.shape) < 0.3 for n, p in prunable_parameters(algo.net).items()}}).bind(algo)
    opts = {"name": "rigl", "update_every": 10}
    training = SparseTraining(opts, 100, {"net": 0.7}, 16, seed=0)
    training.start(algo, masks, {})
    for step in range(1, 31):
        algo.update(torch.randn(16, 4))
        training.after_step(step, algo, masks, torch.randn(16, 4))
    state = training.state_dict()
    assert len(state["updates"]) == 3 and state["training_flops_separate_pass"] > state["training_flops"]
    old = {"training_flops": state["training_flops_separate_pass"], "updates": state["updates"], "generator": state["generator"]}
    resumed = SparseTraining(opts, 100, {"net": 0.7}, 16, seed=0)
    resumed.load_state_dict(old, algo, masks, {})
    for key in ("training_flops", "training_flops_separate_pass", "updates"):
        assert resumed.state_dict()[key] == state[key], key


class ForwardCheck:
    """A global forward pre-hook: every Linear / SparseLinear forward of the run's networks (online
    and target, whatever objects the layers are after a rebuild) is checked against the current
    masks, which the trainer's MaskSet holds (captured when the trainer binds it)."""

    def __init__(self) -> None:
        self.masks: MaskSet | None = None
        self.algo = None
        self.forwards = self.sparse_forwards = 0
        self.violations: list[str] = []
        self.handle = nn.modules.module.register_module_forward_pre_hook(self._check)

    def _layers(self):
        out = {}
        nets, targets = self.algo.networks(), self.algo.target_networks()
        for net_name, pm in self.masks.masks.items():
            for net in (nets[net_name], targets.get(net_name)):
                for mod_name, layer in (net.named_modules() if net is not None else ()):
                    if isinstance(layer, (nn.Linear, SparseLinear)):
                        out[id(layer)] = (f"{net_name}.{mod_name}", pm[f"{mod_name}.weight"])
        return out

    def _check(self, layer, args) -> None:
        if self.algo is None or not isinstance(layer, (nn.Linear, SparseLinear)):
            return
        found = self._layers().get(id(layer))
        if found is None:
            return
        where, mask = found
        self.forwards += 1
        weight = layer.dense_weight() if isinstance(layer, SparseLinear) else layer.weight.detach()
        self.sparse_forwards += isinstance(layer, SparseLinear)
        if bool((weight * (mask == 0)).any()):
            self.violations.append(where)


@pytest.fixture
def forward_check(monkeypatch):
    """A ForwardCheck on the trainer's algorithm and masks from the moment SparseTraining starts."""
    check = ForwardCheck()
    real_start = SparseTraining.start

    def start_then_check(self, algo, masks, kernels):
        real_start(self, algo, masks, kernels)
        check.algo, check.masks = algo, masks

    monkeypatch.setattr(SparseTraining, "start", start_then_check)
    yield check
    check.handle.remove()


@pytest.mark.parametrize("pruner, kernels, optim", [("gmp", "dense", "adam"), ("set", "sparse", "adam"), ("rigl", "dense", "adam"),
                                                    ("rigl", "sparse", "lamb"), ("gibbs", "sparse", "adam")])
def test_masks_change_and_no_forward_sees_a_pruned_weight(tmp_path, forward_check, fast_config, hopper_data, pruner, kernels,
                                                          optim):
    """Updates every 10 steps; the final masks hold exactly the target count per network; between
    updates every forward, in training and evaluation, sees zeros at the pruned entries (LAMB: its
    state and gradient masking follow the new masks too)."""
    cfg = copy.deepcopy(fast_config)
    cfg.update(algo={"name": "iql", "hidden": [32, 32]}, sparsity=0.9, steps=60, log_every=10, sparse_kernels=kernels,
               pruner={"name": pruner, "update_every": 10, "scope": "erk"}, optim=optim)
    cfg["eval"].update(every=30, episodes=1)
    check = forward_check
    moved: list[int] = []

    def count_changes(info: StepInfo) -> None:
        if info.step % 10 == 0:
            moved.append(sum(int(m.sum()) for pm in info.masks.masks.values() for m in pm.values()))

    summary = train(cfg, tmp_path, dataset=hopper_data, callbacks=[count_changes])
    assert check.forwards > 0 and check.violations == [], check.violations[:5]
    if kernels == "sparse":
        assert check.sparse_forwards > 0
    updates = summary["sparse_training"]["updates"]
    assert [u["step"] for u in updates] == {"gmp": [20, 30, 40, 48], "gibbs": [10, 20, 30, 40, 48]}.get(pruner, [10, 20, 30, 40])
    if pruner == "gmp":  # pruned gradually, from dense
        assert moved[0] > moved[2] > moved[-1] and updates[0]["grown"] == 0
    elif pruner == "gibbs":  # from dense to about the target at once, then redrawn colder and colder, exact at the end
        assert updates[0]["grown"] == 0 and all(u["grown"] > 0 for u in updates[1:-1])
        # geometric from 1 to 0.01 between begin (0) and end (48), the last update at zero temperature
        assert [u["temperature"] for u in updates] == pytest.approx([0.01 ** (s / 48) for s in (10, 20, 30, 40)] + [0.0])
    else:  # rewired: as many grown as dropped, fewer each time (cosine decay)
        assert all(u["dropped"] == u["grown"] for u in updates) and updates[0]["grown"] > updates[-1]["grown"]
        assert len(set(moved)) == 1
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm

    nets = make_algorithm("iql", ProblemSpec(11, 3), cfg["algo"]).networks()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    for name, net in nets.items():
        total = sum(p.numel() for p in prunable_parameters(net).values())
        kept = sum(int(m.sum()) for m in ckpt["masks"][name].values())
        assert kept == keep_count(total, 0.1), name  # exactly the target (global count for GMP, ERK for SET/RigL)
        assert summary["pruning"]["networks"][name]["kept_weights"] == kept
    assert summary["pruning"]["pruner"] == pruner
    assert summary["final_sparsity"] == pytest.approx(1 - sum(
        n["kept_weights"] for n in summary["pruning"]["networks"].values()) / sum(
        n["prunable_weights"] for n in summary["pruning"]["networks"].values()))


@pytest.mark.parametrize("pruner, kernels, structure", [("set", "sparse", "unstructured"), ("rigl", "dense", "unstructured"),
                                                       ("gmp", "sparse", "unstructured"), ("gibbs", "dense", "unstructured"),
                                                       ("gibbs", "sparse", "units")])
def test_resume_across_a_mask_update_is_bit_exact(tmp_path, fast_config, hopper_data, pruner, kernels, structure):
    """Checkpoints every 25 steps, updates every 20: the run cut at 55 resumes from 50 (after the
    updates at 20 and 40, before those at 60 and 80), SET's regrowth generator included."""
    cfg = {**fast_config, "algo": {"name": "td3bc", "hidden": [16, 16]}, "sparsity": 0.8, "steps": 100,
           "batch_size": 32, "checkpoint_every": 25, "log_every": 10, "sparse_kernels": kernels,
           "pruner": {"name": pruner, "update_every": 20, "structure": structure},
           "eval": {**fast_config["eval"], "every": 50, "episodes": 1}}
    full = train(cfg, tmp_path / "full", dataset=hopper_data)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=hopper_data, callbacks=[interrupt_at(55)])
    resumed = train({**cfg, "resume": True}, tmp_path / "cut", dataset=hopper_data)
    assert resumed["eval"] == full["eval"]
    assert resumed["training_flops"] == full["training_flops"]
    assert resumed["sparse_training"]["updates"] == full["sparse_training"]["updates"]
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("full", "cut"))
    for key in ("step", "algo", "masks", "sparse_kernels", "sparse_training", "buffer", "torch_rng"):
        assert_same_state(a[key], b[key], key)


def test_training_flops_follow_the_flop_model(tmp_path, fast_config, hopper_data):
    """PaI: steps x (3 x forward FLOPs x batch per network + one forward per target network) at the
    pruned density. RigL: the same at its (constant) density plus, at each update, the dense gradient
    as Evci et al. 2020 count it (the update step's weight gradient dense: f_D - f_S per sample and
    network, i.e. 2 x pruned weights), and beside it, labelled, as this code runs it (a separate dense
    forward + backward, 3 f_D). GMP costs more than either: dense until 20%."""
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm

    cfg = {**fast_config, "steps": 40, "sparse_kernels": "dense", "eval": {**fast_config["eval"], "every": 40, "episodes": 1}}
    runs = {p: train({**cfg, "pruner": {"name": p, **({"update_every": 10} if p != "random" else {})}},
                     tmp_path / p, dataset=hopper_data) for p in ("random", "rigl", "gmp")}
    nets = make_algorithm("iql", ProblemSpec(11, 3), cfg["algo"]).networks()

    def flops_per_step(summary) -> int:
        per_net = {n: info["flops"] * cfg["batch_size"] for n, info in summary["pruning"]["networks"].items()}
        return sum(3 * f for f in per_net.values()) + per_net["critic"]  # IQL's one target network: the critic

    assert runs["random"]["training_flops"] == 40 * flops_per_step(runs["random"])
    # Updates at 10, 20, 30. By hand: a dense weight gradient in place of the sparse one costs 2 FLOPs
    # per pruned weight and sample (biases cancel).
    pruned = sum(n["prunable_weights"] - n["kept_weights"] for n in runs["rigl"]["pruning"]["networks"].values())
    assert runs["rigl"]["training_flops"] == 40 * flops_per_step(runs["rigl"]) + 3 * 2 * pruned * cfg["batch_size"]
    assert runs["rigl"]["sparse_training"]["dense_gradient_counted_as"] == "evci2020"
    dense_grad = sum(3 * cfg["batch_size"] * count_params_flops(net)["flops_dense"] for net in nets.values())
    assert runs["rigl"]["sparse_training"]["training_flops_separate_pass"] == 40 * flops_per_step(runs["rigl"]) + 3 * dense_grad
    assert runs["gmp"]["training_flops"] > runs["rigl"]["training_flops"] > runs["random"]["training_flops"]
    assert runs["gmp"]["final_sparsity"] == pytest.approx(runs["random"]["final_sparsity"], abs=1e-3)


# -- structured Gibbs: whole hidden units ----------------------------------------------------------
def unit_masks_of(net: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kept units (rows with a kept weight) of `net`'s hidden layers under `masks`."""
    graph = layer_graph(net)
    return {h: masks[h].bool().any(1) for members in hidden_members(graph) for h in members}


@pytest.mark.parametrize("scope, kernels", [("global", "sparse"), ("layer", "dense")])
def test_unit_gibbs_masks_whole_units_and_ends_at_the_target_unit_count(tmp_path, forward_check, fast_config, hopper_data,
                                                                        scope, kernels):
    """pruner=gibbs pruner.structure=units: every mask is whole units (a unit's row and its outgoing
    columns kept or pruned together), exactly the target unit count at `end`, and no forward sees
    a pruned weight; the report says units."""
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
    from sparse_offline_rl.evaluation.agent import load_agent

    cfg = copy.deepcopy(fast_config)
    cfg.update(sparsity=0.5, steps=60, log_every=10, sparse_kernels=kernels,
               pruner={"name": "gibbs", "structure": "units", "scope": scope, "update_every": 10})
    cfg["eval"].update(every=60, episodes=1)
    seen: list[dict[str, dict[str, torch.Tensor]]] = []

    def keep_masks(info: StepInfo) -> None:
        if info.step % 10 == 0:
            seen.append({n: {p: m.bool().clone() for p, m in pm.items()} for n, pm in info.masks.masks.items()})

    summary = train(cfg, tmp_path, dataset=hopper_data, callbacks=[keep_masks])
    assert forward_check.forwards > 0 and forward_check.violations == [], forward_check.violations[:5]
    if kernels == "sparse":
        assert forward_check.sparse_forwards > 0
    nets = make_algorithm("iql", ProblemSpec(11, 3), cfg["algo"]).networks()
    for masks in seen:  # after every update (and between them): whole units only
        for name, net in nets.items():
            units = unit_masks_of(net, masks[name])
            assert all(bool(u.any()) for u in units.values()), name  # no layer emptied
            assert all(torch.equal(m, masks[name][p]) for p, m in weight_masks(layer_graph(net), units).items()), name
    final = load_checkpoint(tmp_path / "checkpoint.pt")["masks"]
    for name, net in nets.items():
        units = unit_masks_of(net, {p: m.bool() for p, m in final[name].items()})
        for member in hidden_members(layer_graph(net)):  # 32 + 32 units per member (twin critic: each Q)
            kept = [int(units[h].sum()) for h in member]
            assert (kept == [16, 16]) if scope == "layer" else (sum(kept) == keep_count(64, 0.5)), (name, kept)
        assert summary["pruning"]["networks"][name]["unit_sparsity"] == 0.5
    updates = summary["sparse_training"]["updates"]
    assert [u["step"] for u in updates] == [10, 20, 30, 40, 48] and updates[-1]["temperature"] == 0.0
    assert updates[-1]["unit_sparsity"] == 0.5 and all(0 < u["unit_sparsity"] < 1 for u in updates)
    assert summary["pruner"] == "gibbs-units" and summary["pruning"]["structure"] == "units"
    assert summary["sparse_training"]["structure"] == "units"
    agent = load_agent(tmp_path, dataset=hopper_data)  # masked, not narrowed: loads at the widths as built
    assert agent.meta["pruner"] == "gibbs-units"
    actor = layer_weights(agent.algo.networks()["actor"])
    assert actor["net.0.weight"].shape == (32, 11) and actor["net.2.weight"].shape == (32, 32)
    assert summary["final_sparsity"] == pytest.approx(1 - sum(
        n["kept_weights"] for n in summary["pruning"]["networks"].values()) / sum(
        n["prunable_weights"] for n in summary["pruning"]["networks"].values()))


class UnitAlgo(TinyAlgo):
    """TinyAlgo with two hidden layers of 8 units."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_a_unit_draw_never_empties_a_layer(monkeypatch, scope):
    """A draw keeping no unit of a layer keeps its highest-energy unit: the sum of w^2 over the unit's
    row and outgoing column. Hot draws at a high sparsity keep one unit or more in every layer."""
    algo = UnitAlgo()
    masks = MaskSet({})
    training = SparseTraining({"name": "gibbs", "structure": "units", "scope": scope, "update_every": 1}, 100,
                              {"net": 0.8}, 16, seed=0)
    training.start(algo, masks, {})
    graph = layer_graph(algo.net)
    energy = unit_scores(graph, {n: p.detach().pow(2) for n, p in prunable_parameters(algo.net).items()})
    with monkeypatch.context() as m:
        m.setattr(gibbs_module, "gibbs_sample", lambda e, *args: torch.zeros(e.shape, dtype=torch.bool))
        training.after_step(1, algo, masks, None)
    units = unit_masks_of(algo.net, masks.masks["net"])
    assert {h: torch.nonzero(u).flatten().tolist() for h, u in units.items()} == {
        h: [int(e.argmax())] for h, e in energy.items()}
    for step in range(2, 40):  # hot draws (T from 1 down), 2 of 8 units per layer in expectation
        algo.update(torch.randn(16, 4))
        training.after_step(step, algo, masks, None)
        units = unit_masks_of(algo.net, masks.masks["net"])
        assert all(bool(u.any()) for u in units.values()), step
        assert all(torch.equal(w, masks.masks["net"][p].bool()) for p, w in weight_masks(graph, units).items())
    too_sparse = SparseTraining({"name": "gibbs", "structure": "units", "scope": scope}, 100, {"net": 0.95}, 16, seed=0)
    with pytest.raises(UnitCollapseError, match="every layer keeps at least one unit" if scope == "global" else "with no unit"):
        too_sparse.start(UnitAlgo(), MaskSet({}), {})  # at the start, not at `end`


def test_the_registry_holds_every_rule_and_the_tables_follow_from_it():
    assert registry.DYNAMIC_PRUNERS == ("gmp", "set", "rigl", "gibbs")
    assert all(issubclass(rule, MaskRule) for rule in (*registry.RULES.values(), *registry.UNIT_RULES.values()))
    assert registry.BEGIN == {"gmp": 0.2, "set": 0.0, "rigl": 0.0, "gibbs": 0.0}
    assert registry.SPARSE_INIT == {"set": True, "rigl": True}
    assert registry.METHOD_OPTIONS == {"drop_fraction": ("set", "rigl"), "drop_decay": ("set", "rigl"),
                                       "temperature_start": ("gibbs",), "temperature_end": ("gibbs",)}
    assert [name for name, rule in registry.RULES.items() if rule.dense_gradient] == ["rigl"]


class Halve(MaskRule):
    """A rule added in one place (the registry): at each update keep the first half of each layer's
    kept weights, in storage order."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    @classmethod
    def for_run(cls, run, algo, masks):
        return cls([])

    def new_masks(self, schedule, step, algo, masks, batch):
        self.seen.append(step)
        out = {}
        for name, layers in masks.masks.items():
            out[name] = {}
            for pname, mask in layers.items():
                kept = torch.where(mask.reshape(-1).bool())[0]
                new = torch.zeros(mask.numel(), dtype=torch.bool)
                new[kept[: len(kept) // 2]] = True
                out[name][pname] = new.view(mask.shape)
        return out

    def logged(self, schedule, step):
        return {"halved": True}


def test_a_rule_added_to_the_registry_runs_under_the_driver(monkeypatch):
    monkeypatch.setitem(registry.RULES, "halve", Halve)
    assert options({"name": "halve", "update_every": 5})["begin"] == 0.0
    with pytest.raises(ValueError, match="pruner.drop_fraction applies to set and rigl, not to pruner=halve"):
        options({"name": "halve", "drop_fraction": 0.2})
    training = SparseTraining({"name": "halve", "update_every": 5}, 20, {"net": 0.5}, 16, seed=0)
    assert training.initial_pruner()["name"] == "random" and training.initial_pruner()["scope"] == "erk"
    algo = TinyAlgo()
    masks = MaskSet({"net": {n: torch.ones(p.shape) for n, p in prunable_parameters(algo.net).items()}}).bind(algo)
    training.start(algo, masks, {})
    for step in range(1, 21):
        algo.update(torch.randn(16, 4))
        training.after_step(step, algo, masks, None)
    assert training.rule.seen == [5, 10, 15]  # `end` 0.8 of 20 steps
    report = training.report()
    assert [u["step"] for u in report["updates"]] == [5, 10, 15] and all(u["halved"] for u in report["updates"])
    assert report["updates"][-1]["sparsity"] == pytest.approx(1 - 1 / 8, abs=0.02)
    assert training.state_dict()["generator"] is None  # it draws nothing
