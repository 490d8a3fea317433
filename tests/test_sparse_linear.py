"""SparseLinear computes what the dense-masked nn.Linear computes, and trains like it.

Tolerance: float32 sums in a different order (CSR kernels vs dense GEMM), so values and gradients
are compared with atol 1e-5 and rtol 1e-5, on unit-scale inputs and the output gradient of a
batch-mean loss (observed differences are at most a few 1e-6).
"""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from sparse_offline_rl.algorithms.networks import FusedAdam, TwinQ, frozen_params, polyak_update
from sparse_offline_rl.sparse.masks import prunable_parameters
from sparse_offline_rl.sparse.kernels import LayerCost, choose_layers, measure_layer
from sparse_offline_rl.sparse.linear import (
    SparseLinear,
    densify_,
    sparse_layers,
    sparsify_,
    swap_optimizer_params,
    to_dense,
    to_sparse,
)

ATOL = RTOL = 1e-5

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def random_mask(out_f: int, in_f: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(out_f, in_f, generator=g) < density


def masked_linear(in_f: int, out_f: int, mask: torch.Tensor, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=ATOL, rtol=RTOL)


def grads_both(dense: nn.Linear, sparse: SparseLinear, x: torch.Tensor, g: torch.Tensor):
    xd, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yd, ys = dense(xd), sparse(xs)
    yd.backward(g)
    ys.backward(g)
    return (yd, xd.grad, dense.weight.grad, dense.bias.grad), (ys, xs.grad, sparse.values.grad, sparse.bias.grad)


def separate(dense: nn.Linear, mask: torch.Tensor) -> SparseLinear:
    """A SparseLinear with its own copy of the bias (to_sparse shares it), so gradients stay apart."""
    sparse = to_sparse(dense, mask)
    sparse.bias = nn.Parameter(dense.bias.detach().clone())
    return sparse


@pytest.mark.parametrize("out_f,in_f", [(256, 17), (256, 256), (1, 256), (12, 256)])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("batch", [1, 256])
def test_forward_and_gradients_match_dense_masked(out_f, in_f, density, batch):
    mask = random_mask(out_f, in_f, density, seed=out_f + in_f)
    dense = masked_linear(in_f, out_f, mask)
    sparse = separate(dense, mask)
    assert sparse.nnz == int(mask.sum())
    x = torch.randn(batch, in_f)
    g = torch.randn(batch, out_f) / batch  # the gradient of a batch-mean loss, as in training
    (yd, gxd, gwd, gbd), (ys, gxs, gvs, gbs) = grads_both(dense, sparse, x, g)
    assert ys.shape == yd.shape and close(ys, yd)
    assert close(gxs, gxd)
    assert gvs.shape == (sparse.nnz,) and close(gvs, gwd[mask])
    assert close(gbs, gbd)


def test_feature_major_inputs_and_chained_layers():
    """The layer's own output layout (B, out) stored as (out, B) feeds the next layer, through an
    in-place ReLU, and gradients still match the dense-masked chain."""
    masks = [random_mask(256, 17, 0.2, 1), random_mask(256, 256, 0.05, 2), random_mask(3, 256, 0.3, 3)]
    dense = nn.Sequential(masked_linear(17, 256, masks[0]), nn.ReLU(inplace=True), masked_linear(256, 256, masks[1], 1),
                          nn.ReLU(inplace=True), masked_linear(256, 3, masks[2], 2))
    sparse = copy.deepcopy(dense)
    sparsify_(sparse, {"0.weight": masks[0], "2.weight": masks[1], "4.weight": masks[2]})
    assert all(isinstance(sparse[i], SparseLinear) for i in (0, 2, 4))
    x = torch.randn(64, 17)
    yd, ys = dense(x), sparse(x)
    assert close(ys, yd)
    g = torch.randn_like(yd)
    yd.backward(g)
    ys.backward(g)
    for i, m in zip((0, 2, 4), masks):
        assert close(sparse[i].values.grad, dense[i].weight.grad[m])
        assert close(sparse[i].bias.grad, dense[i].bias.grad)


def test_leading_dimensions_are_kept():
    mask = random_mask(8, 5, 0.5)
    dense = masked_linear(5, 8, mask)
    sparse = separate(dense, mask)
    x = torch.randn(3, 4, 5)
    assert sparse(x).shape == (3, 4, 8)
    assert close(sparse(x), dense(x))


def test_empty_rows_and_columns():
    mask = random_mask(16, 12, 0.5)
    mask[[0, 5, 15]] = False  # outputs with no inputs: bias only
    mask[:, [0, 3, 11]] = False  # inputs feeding nothing: zero input gradient
    dense = masked_linear(12, 16, mask)
    sparse = separate(dense, mask)
    x, g = torch.randn(7, 12), torch.randn(7, 16)
    (yd, gxd, gwd, gbd), (ys, gxs, gvs, gbs) = grads_both(dense, sparse, x, g)
    assert close(ys, yd) and close(gxs, gxd) and close(gvs, gwd[mask]) and close(gbs, gbd)
    assert torch.equal(ys[:, [0, 5, 15]], dense.bias.detach()[[0, 5, 15]].expand(7, 3))
    assert torch.count_nonzero(gxs[:, [0, 3, 11]]) == 0


def test_layer_with_every_weight_pruned():
    mask = torch.zeros(6, 4, dtype=torch.bool)
    dense = masked_linear(4, 6, mask)
    sparse = separate(dense, mask)
    assert sparse.nnz == 0
    x, g = torch.randn(5, 4), torch.randn(5, 6)
    (yd, _, _, gbd), (ys, gxs, gvs, gbs) = grads_both(dense, sparse, x, g)
    assert torch.equal(ys, dense.bias.detach().expand(5, 6))
    assert torch.count_nonzero(gxs) == 0 and gvs.shape == (0,)
    assert close(gbs, gbd)


def test_no_bias():
    mask = random_mask(10, 7, 0.4)
    torch.manual_seed(0)
    dense = nn.Linear(7, 10, bias=False)
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = to_sparse(dense, mask)
    assert sparse.bias is None
    x = torch.randn(4, 7, requires_grad=True)
    y = sparse(x)
    assert close(y, dense(x))
    y.sum().backward()
    assert close(sparse.values.grad, torch.ones(4, 10).t().mm(x.detach())[mask])


def test_frozen_weights_give_input_gradient_only():
    """The actor loss through a critic: weights frozen with `frozen_params`, gradient to the action."""
    torch.manual_seed(0)
    critic = TwinQ(11, 3, [64, 64])
    masks = {n: random_mask(*p.shape, 0.3, seed=i) for i, (n, p) in enumerate(prunable_parameters(critic).items())}
    with torch.no_grad():
        for n, p in prunable_parameters(critic).items():
            p.mul_(masks[n])
    sparse_critic = copy.deepcopy(critic)
    sparsify_(sparse_critic, masks)
    obs = torch.randn(32, 11)
    action = torch.randn(32, 3)
    actions = {k: action.clone().requires_grad_(True) for k in ("dense", "sparse")}
    for key, net in (("dense", critic), ("sparse", sparse_critic)):
        with frozen_params(net):
            (-net.q1(obs, actions[key]).mean()).backward()
        assert all(p.grad is None for p in net.parameters())
    assert torch.count_nonzero(actions["dense"].grad) > 0
    assert close(actions["sparse"].grad, actions["dense"].grad)


def test_no_graph_without_gradients():
    mask = random_mask(8, 8, 0.3)
    sparse = to_sparse(masked_linear(8, 8, mask), mask)
    with torch.no_grad():
        assert sparse(torch.randn(2, 8)).grad_fn is None
    with pytest.raises(RuntimeError):  # first order only: the backward is not itself differentiable
        x = torch.randn(2, 8, requires_grad=True)
        (gx,) = torch.autograd.grad(sparse(x).pow(2).sum(), x, create_graph=True)
        gx.sum().backward()


def test_first_call_under_inference_mode_then_training():
    mask = random_mask(8, 8, 0.4)
    dense = masked_linear(8, 8, mask)
    sparse = separate(dense, mask)
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert close(sparse(x), dense(x))
    xs = x.clone().requires_grad_(True)
    sparse(xs).sum().backward()
    assert close(xs.grad, torch.ones(3, 8) @ dense.weight.detach())


def test_dense_round_trip_and_mask():
    mask = random_mask(20, 9, 0.3)
    dense = masked_linear(9, 20, mask)
    sparse = to_sparse(dense, mask)
    assert torch.equal(sparse.mask(), mask)
    assert torch.equal(sparse.dense_weight(), dense.weight.detach())
    back = to_dense(sparse)
    assert isinstance(back, nn.Linear) and torch.equal(back.weight, dense.weight)
    assert back.bias is sparse.bias is dense.bias  # shared, so optimizers holding it need no change
    x = torch.randn(5, 9)
    assert close(back(x), sparse(x))


def test_deepcopy_and_polyak_follow_the_values():
    """Target networks are deep copies and move by a foreach lerp over `parameters()`."""
    mask = random_mask(32, 16, 0.2)
    online = nn.Sequential(masked_linear(16, 32, mask), nn.ReLU())
    sparsify_(online, {"0.weight": mask})
    target = copy.deepcopy(online).requires_grad_(False)
    assert target[0].values.data_ptr() != online[0].values.data_ptr()
    x = torch.randn(4, 16)
    target(x)  # builds the target's kernels before its values move
    with torch.no_grad():
        online[0].values.add_(1.0)
    polyak_update(target, online, 0.25)
    expected = 0.75 * (online[0].values.detach() - 1.0) + 0.25 * online[0].values.detach()
    assert close(target[0].values, expected)
    # The cached CSR aliases the values: the forward sees the Polyak step without rebuilding.
    assert close(target(x), torch.relu(nn.functional.linear(x, target[0].dense_weight(), target[0].bias)))


def test_values_moved_to_new_storage_are_seen():
    mask = random_mask(6, 5, 0.5)
    sparse = to_sparse(masked_linear(5, 6, mask), mask)
    x = torch.randn(3, 5)
    sparse(x)
    sparse.values.data = sparse.values.data * 2  # new storage, as module.to() / .double() make
    assert close(sparse(x), nn.functional.linear(x, sparse.dense_weight(), sparse.bias))
    sparse.double()
    assert sparse(x.double()).dtype == torch.float64


def test_state_dict_round_trip_and_pattern_check():
    mask = random_mask(12, 10, 0.3)
    sparse = to_sparse(masked_linear(10, 12, mask), mask)
    buf = io.BytesIO()
    torch.save(sparse.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    assert set(state) == {"values", "bias", "crow_indices", "col_indices"}
    other = to_sparse(masked_linear(10, 12, mask, seed=1), mask)
    other.load_state_dict(state)
    assert torch.equal(other.values, sparse.values) and torch.equal(other.bias, sparse.bias)
    x = torch.randn(2, 10)
    assert torch.equal(other(x), sparse(x))
    # Same number of kept weights in another pattern: refused, not scrambled.
    mask2 = mask.flatten()[torch.randperm(mask.numel())].view_as(mask)
    third = to_sparse(masked_linear(10, 12, mask2), mask2)
    assert third.nnz == sparse.nnz
    with pytest.raises(RuntimeError, match="sparsity pattern"):
        third.load_state_dict(state)


def make_adam(module: nn.Module, fused: bool) -> torch.optim.Adam:
    return FusedAdam(module.parameters(), lr=1e-2, fused=True) if fused else torch.optim.Adam(module.parameters(), lr=1e-2)


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_swap_continues_adam_on_kept_entries(fused):
    """Steps taken dense-masked, then the swap, then more steps: the sparse layer's values follow
    the dense-masked layer's kept entries (Adam moments and step count carried over)."""
    mask = random_mask(16, 24, 0.25)
    dense = masked_linear(24, 16, mask)
    dense_opt = make_adam(dense, fused)
    sparse_net = nn.Sequential(copy.deepcopy(dense))
    sparse_opt = make_adam(sparse_net, fused)
    data = [(torch.randn(8, 24), torch.randn(8, 16)) for _ in range(6)]

    def step(net, opt, x, t, pruned_weight=None):
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(net(x), t).backward()
        opt.step()
        if pruned_weight is not None:  # dense-masked training re-zeroes after each step
            with torch.no_grad():
                pruned_weight.mul_(mask)
                for v in opt.state[pruned_weight].values():
                    if v.shape == mask.shape:
                        v.mul_(mask)

    for x, t in data[:3]:
        step(dense, dense_opt, x, t, dense.weight)
        step(sparse_net, sparse_opt, x, t, sparse_net[0].weight)
    old_weight = sparse_net[0].weight
    swaps = sparsify_(sparse_net, {"0.weight": mask})
    swap_optimizer_params([sparse_opt], swaps)
    layer = sparse_net[0]
    assert sparse_opt.param_groups[0]["params"][0] is layer.values
    assert old_weight not in sparse_opt.state and layer.values in sparse_opt.state
    assert sparse_opt.state[layer.values]["exp_avg"].shape == (layer.nnz,)
    for x, t in data[3:]:
        step(dense, dense_opt, x, t, dense.weight)
        step(sparse_net, sparse_opt, x, t)
    assert close(layer.values, dense.weight.detach()[mask])
    assert close(layer.bias, dense.bias)
    assert close(sparse_opt.state[layer.values]["exp_avg_sq"], dense_opt.state[dense.weight]["exp_avg_sq"][mask])
    # The optimizer state dict round-trips like any other.
    sparse_opt.load_state_dict(copy.deepcopy(sparse_opt.state_dict()))


def test_densify_inverts_sparsify():
    mask = random_mask(16, 24, 0.25)
    net = nn.Sequential(masked_linear(24, 16, mask), nn.Tanh())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    swap_optimizer_params([opt], sparsify_(net, {"0.weight": mask}))
    net(torch.randn(4, 24)).sum().backward()
    opt.step()
    values = net[0].values.detach().clone()
    exp_avg = opt.state[net[0].values]["exp_avg"].clone()
    swap_optimizer_params([opt], densify_(net))
    weight = net[0].weight
    assert isinstance(net[0], nn.Linear) and torch.equal(weight.detach()[mask], values)
    assert torch.count_nonzero(weight.detach()[~mask]) == 0
    assert torch.equal(opt.state[weight]["exp_avg"][mask], exp_avg)
    assert torch.count_nonzero(opt.state[weight]["exp_avg"][~mask]) == 0


def test_sparsify_respects_choice_and_names():
    torch.manual_seed(0)
    critic = TwinQ(5, 2, [16, 16])
    masks = {n: random_mask(*p.shape, 0.3) for n, p in prunable_parameters(critic).items()}
    choice = {n: ("sparse" if n.endswith("2.weight") else "dense") for n in masks}
    swaps = sparsify_(critic, masks, choice)
    assert set(sparse_layers(critic)) == {n for n, c in choice.items() if c == "sparse"}
    assert len(swaps) == 2 and all(isinstance(critic.qs[i][2], SparseLinear) for i in range(2))
    assert isinstance(critic.qs[0][0], nn.Linear)
    with pytest.raises(KeyError):
        sparsify_(critic, {"qs.0.1.weight": torch.ones(1)})


def kinds(choice) -> dict[str, str]:
    return {p: c.kernel for p, c in choice.items()}


def test_choose_layers_modes_and_rules():
    torch.manual_seed(0)
    critic = TwinQ(5, 2, [16, 16])
    params = prunable_parameters(critic)
    masks = {n: random_mask(*p.shape, 0.3) for n, p in params.items()}
    masks["qs.0.0.weight"] = torch.ones_like(masks["qs.0.0.weight"], dtype=torch.bool)
    masks["qs.1.0.weight"] = torch.zeros_like(masks["qs.1.0.weight"], dtype=torch.bool)
    assert set(kinds(choose_layers(critic, masks, 256, mode="dense")).values()) == {"dense"}
    forced = choose_layers(critic, masks, 256, mode="sparse")
    # A layer nothing was pruned from stays dense even when sparse is forced: CSR would only be slower.
    assert kinds(forced)["qs.0.0.weight"] == "dense" and forced["qs.0.0.weight"].reason == "fully kept"
    rest = {n: c for n, c in forced.items() if n != "qs.0.0.weight"}
    assert {kinds(forced)[n] for n in rest} == {"sparse"} and {c.reason for c in rest.values()} == {"forced by mode"}
    calls = []

    def fake(out_f, in_f, nnz, batch, device, dtype):
        calls.append((out_f, in_f, nnz, batch))
        return LayerCost(100.0, 50.0 if out_f == 16 else 95.0)  # hidden layers pay, heads do not

    choice = choose_layers(critic, masks, 256, measure=fake)
    assert choice["qs.0.0.weight"].reason == "fully kept" and choice["qs.1.0.weight"].reason == "no weights kept"
    assert kinds(choice)["qs.0.0.weight"] == "dense" and kinds(choice)["qs.1.0.weight"] == "sparse"
    assert kinds(choice)["qs.0.2.weight"] == "sparse" and kinds(choice)["qs.0.4.weight"] == "dense"  # 0.95 > SPARSE_MARGIN
    assert choice["qs.0.2.weight"].cost == LayerCost(100.0, 50.0) and choice["qs.0.0.weight"].cost is None
    assert len(calls) == 4 and all(c[3] == 256 for c in calls)
    with pytest.raises(ValueError, match="accepted"):
        choose_layers(critic, masks, 256, mode="fast")


def test_only_layers_marked_eligible_are_ever_converted():
    """networks.mlp marks its layers (and deep copies keep the mark); a plain nn.Linear, e.g. one of
    d3rlpy's modules, stays dense in every mode, without being measured."""
    from sparse_offline_rl.algorithms.networks import mlp
    from sparse_offline_rl.sparse.linear import eligible

    framework = copy.deepcopy(mlp(6, 2, [8]))
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    assert all(eligible(m) for m in framework if isinstance(m, nn.Linear))
    assert not any(eligible(m) for m in plain)

    def never(*args, **kwargs):
        raise AssertionError("an ineligible layer was measured")

    for net, expected in ((framework, "sparse"), (plain, "dense")):
        masks = {n: random_mask(*p.shape, 0.3) for n, p in prunable_parameters(net).items()}
        for mode in ("sparse", "auto"):
            choice = choose_layers(net, masks, 64, mode=mode,
                                   measure=(lambda *a, **k: LayerCost(100.0, 10.0)) if net is framework else never)
            assert set(kinds(choice).values()) == {expected}, (mode, choice)
    assert {c.reason for c in choose_layers(plain, masks, 64, mode="sparse").values()} == {"not eligible"}


def test_measure_layer_is_cached_and_positive():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = measure_layer(32, 16, 50, 8, rounds=1, seconds=0.0)
        b = measure_layer(32, 16, 50, 8, rounds=1, seconds=0.0)
    assert a is b and a.dense_us > 0 and a.sparse_us > 0


def test_product_ignores_what_the_output_held():
    """Outputs are allocated uninitialised; the beta-0 product must not read them (NaN * 0 = NaN)."""
    from sparse_offline_rl.sparse.linear import _product

    weight = torch.randn(16, 8) * random_mask(16, 8, 0.3)
    dense = torch.randn(8, 5)
    out = torch.full((16, 5), float("nan"))
    _product(weight.to_sparse_csr(), dense, out)
    assert close(out, weight @ dense)


@pytest.mark.parametrize("algo_name", ["iql", "td3bc", "cql"])
def test_converted_algorithm_trains_like_dense_masked(algo_name):
    """Through the OfflineAlgorithm protocol only: online nets, targets and optimizers converted
    (hidden layers sparse, heads dense and still masked by a MaskSet); after 10 updates every
    parameter of online and target networks equals the dense-masked run's within ATOL/RTOL."""
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
    from sparse_offline_rl.data.buffer import Batch
    from sparse_offline_rl.sparse.masks import MaskSet
    from sparse_offline_rl.sparse.linear import sparsify_algorithm

    def build():
        torch.manual_seed(0)
        algo = make_algorithm(algo_name, ProblemSpec(obs_dim=11, act_dim=3, total_steps=100), {"hidden": [32, 32]})
        masks = {net: {p: random_mask(*w.shape, 0.3, seed=i) for i, (p, w) in enumerate(prunable_parameters(module).items())}
                 for net, module in algo.networks().items()}
        return algo, masks

    dense_algo, masks = build()
    MaskSet(masks).bind(dense_algo)
    sparse_algo, _ = build()
    # Two hidden layers: each MLP's head is its Sequential's item 4.
    choice = {net: {p: ("dense" if p.endswith("4.weight") else "sparse") for p in m} for net, m in masks.items()}
    MaskSet(masks).bind(sparse_algo).unbind()  # zero the pruned entries the dense layers keep
    sparsify_algorithm(sparse_algo, masks, choice)
    MaskSet({net: {p: m for p, m in pm.items() if choice[net][p] == "dense"} for net, pm in masks.items()}).bind(sparse_algo)
    for net, module in sparse_algo.networks().items():
        assert set(sparse_layers(module)) == {p for p, c in choice[net].items() if c == "sparse"}
    for net, module in sparse_algo.target_networks().items():
        assert set(sparse_layers(module)) == set(sparse_layers(sparse_algo.networks()[net]))

    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        batch = Batch(torch.randn(64, 11, generator=g), torch.rand(64, 3, generator=g) * 2 - 1,
                      torch.randn(64, generator=g), torch.randn(64, 11, generator=g), torch.zeros(64))
        dense_algo.update(batch)
        sparse_algo.update(batch)
    for which in ("networks", "target_networks"):
        for net, d_module in getattr(dense_algo, which)().items():
            s_module = getattr(sparse_algo, which)()[net]
            s_params = dict(s_module.named_parameters())
            for name, p in d_module.named_parameters():
                layer = name.rpartition(".")[0]
                if name.endswith(".weight") and f"{layer}.values" in s_params:
                    assert close(s_params[f"{layer}.values"], p.detach()[masks[net][name]]), (which, name)
                else:
                    assert close(s_params[name], p), (which, name)


def test_pattern_is_validated_once():
    bad_crow = torch.tensor([0, 2, 1], dtype=torch.int32)  # decreasing: not a CSR row pointer
    with pytest.raises(RuntimeError):
        SparseLinear(3, 2, bad_crow, torch.tensor([0], dtype=torch.int32), torch.ones(1))


def test_apply_sparse_kernels_after_pruning():
    """The trainer's step after pruning: the pruner's MaskSet stays whole (checkpoints, reports) and
    bound, its hooks now re-zeroing only the layers left dense-masked; training keeps every layer
    masked, and `restore_pruned` rebuilds the layout from a checkpoint's parts."""
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
    from sparse_offline_rl.data.buffer import Batch
    from sparse_offline_rl.pruning import prune_at_initialization
    from sparse_offline_rl.sparse.masks import layer_weights
    from sparse_offline_rl.sparse.checkpoint import restore_pruned
    from sparse_offline_rl.sparse.kernels import apply_sparse_kernels

    torch.manual_seed(0)
    algo = make_algorithm("td3bc", ProblemSpec(obs_dim=11, act_dim=3, total_steps=100), {"hidden": [64, 64]})
    g = torch.Generator().manual_seed(0)

    def batch() -> Batch:
        return Batch(torch.randn(64, 11, generator=g), torch.rand(64, 3, generator=g) * 2 - 1,
                     torch.randn(64, generator=g), torch.randn(64, 11, generator=g), torch.zeros(64))

    masks, _ = prune_at_initialization(algo, batch, {"name": "random", "scope": "layer"}, 0.9)
    full = {net: dict(pm) for net, pm in masks.masks.items()}
    # Hidden layers sparse, heads (item 4 of each two-hidden-layer MLP) dense-masked.
    kernels = {net: {p: ("dense" if p.endswith("4.weight") else "sparse") for p in pm} for net, pm in full.items()}
    assert apply_sparse_kernels(algo, masks, kernels) is masks
    assert {net: set(pm) for net, pm in masks.masks.items()} == {net: set(pm) for net, pm in full.items()}
    for net, module in algo.networks().items():
        assert set(sparse_layers(module)) == {p for p, kind in kernels[net].items() if kind == "sparse"}
    for _ in range(2):  # TD3+BC's actor steps every other update: then every optimizer has its state
        algo.update(batch())
    dense_layers = sum(kind == "dense" for layers in kernels.values() for kind in layers.values())
    assert masks.num_tensors == 4 * dense_layers  # weight, target copy, Adam's two moments; nothing for sparse layers
    for which in ("networks", "target_networks"):
        for net, module in getattr(algo, which)().items():
            for p, w in layer_weights(module).items():
                assert torch.count_nonzero(w.detach()[full[net][p] == 0]) == 0, (which, net, p)

    # Resuming: a fresh algorithm converted with the saved kernels (no measuring) loads the state
    # and continues bit-exactly.
    state = copy.deepcopy(algo.state_dict())
    torch.manual_seed(1)
    resumed = make_algorithm("td3bc", ProblemSpec(obs_dim=11, act_dim=3, total_steps=100), {"hidden": [64, 64]})
    restore_pruned(resumed, state, masks.state_dict(), kernels)
    b = batch()
    for a in (algo, resumed):  # TD3+BC's actor and its target move every other step: take two
        a.update(b)
        a.update(b)
    for which in ("networks", "target_networks"):
        for net, module in getattr(algo, which)().items():
            other = dict(getattr(resumed, which)()[net].named_parameters())
            assert all(torch.equal(p, other[n]) for n, p in module.named_parameters())
    # A mask that is not a converted layer's pattern is refused, not silently ignored.
    other_masks = masks.state_dict()
    sparse_name = next(p for p, kind in kernels["critic"].items() if kind == "sparse")
    other_masks["critic"][sparse_name] = ~other_masks["critic"][sparse_name]
    with pytest.raises(ValueError, match="differs from the sparsity pattern"):
        type(masks).from_state_dict(other_masks).bind(resumed)


def test_counts_and_densities_read_converted_layers_as_the_layers_they_replaced():
    """Params, FLOPs, network and layer densities of a network are the same before and after its
    layers become SparseLinear (a SparseLinear counts as out x in with its values kept), and equal
    what the pruning report counted from the masks."""
    from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
    from sparse_offline_rl.data.buffer import Batch
    from sparse_offline_rl.pruning import count_params_flops, network_density, prune_at_initialization
    from sparse_offline_rl.sparse.kernels import apply_sparse_kernels

    torch.manual_seed(0)
    algo = make_algorithm("iql", ProblemSpec(obs_dim=11, act_dim=3, total_steps=100), {"hidden": [32, 32]})
    batch = Batch(torch.randn(64, 11), torch.rand(64, 3) * 2 - 1, torch.randn(64), torch.randn(64, 11), torch.zeros(64))
    masks, report = prune_at_initialization(algo, lambda: batch, {"name": "random"}, 0.9)

    def counts():
        return ({net: (count_params_flops(m), network_density(m)) for net, m in algo.networks().items()},
                masks.layer_density(algo))

    before = counts()
    apply_sparse_kernels(algo, masks, {net: {p: "sparse" for p in pm} for net, pm in masks.masks.items()})
    assert all(set(sparse_layers(m)) == set(masks.masks[net]) for net, m in algo.networks().items())
    assert counts() == before
    for net, info in report["networks"].items():
        stats, density = before[0][net]
        assert {k: info[k] for k in stats} == stats and density == pytest.approx(info["density"])
        assert before[1][net] == pytest.approx(info["layer_density"])


def test_measuring_a_layer_leaves_the_global_rng_alone():
    """Layers are measured between pruning and training: a run must draw the same numbers whether
    the measurement ran or came from the cache."""
    state = torch.get_rng_state()
    measure_layer(24, 12, 40, 16, rounds=1, seconds=0.0)
    assert torch.equal(torch.get_rng_state(), state)
