"""`optim=lamb`: the LAMB step against a hand-written reference, its trust ratio on a dense-masked
layer taken over the kept weights only, tensors with ndim <= 1 taking Adam's step (a zero-initialised
log-std moves, a scalar changes sign), `algo.weight_decay` reaching it (and refused under Adam), and
every built-in network trained by it. Pruned weights
staying zero, exact resume and sparse kernels against dense-masked layers under LAMB are cases of
the tests in test_training.py; a bad `optim=` value is a case of test_cli.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparse_offline_rl.algorithms import ProblemSpec, make_algorithm
from sparse_offline_rl.algorithms.networks import GaussianActor, Scalar
from sparse_offline_rl.algorithms.optimizers import FusedAdam, Lamb, make_optimizer
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.sparse.masks import MaskSet, prunable_parameters
from sparse_offline_rl.sparse.linear import sparsify_, swap_optimizer_params
from sparse_offline_rl.training.trainer import validate_config

BETAS, EPS = (0.9, 0.999), 1e-6


def reference_lamb(weights, grads_per_step, lr, weight_decay):
    """LAMB as the paper writes it, one tensor at a time, in float64; as in BERT's and NVIDIA's
    implementations, tensors with ndim <= 1 take neither the trust ratio nor weight decay."""
    weights = [w.double().clone() for w in weights]
    m = [torch.zeros_like(w) for w in weights]
    v = [torch.zeros_like(w) for w in weights]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (w, g) in enumerate(zip(weights, grads)):
            g = g.double()
            m[i] = BETAS[0] * m[i] + (1 - BETAS[0]) * g
            v[i] = BETAS[1] * v[i] + (1 - BETAS[1]) * g * g
            m_hat, v_hat = m[i] / (1 - BETAS[0] ** t), v[i] / (1 - BETAS[1] ** t)
            matrix = w.ndim >= 2
            u = m_hat / (v_hat.sqrt() + EPS) + (weight_decay * w if matrix else 0.0)
            w_norm, u_norm = w.norm(), u.norm()
            ratio = w_norm / u_norm if matrix and w_norm > 0 and u_norm > 0 else 1.0
            weights[i] = w - lr * ratio * u
    return weights


def test_lamb_step_matches_the_reference_over_two_steps():
    torch.manual_seed(0)
    # The matrix takes ||w|| / ||u||; a bias (zero at first, not after) and a scalar take Adam's step.
    start = [torch.randn(5, 4), torch.zeros(5), torch.tensor(0.7)]
    grads = [[torch.randn(5, 4), torch.randn(5), torch.randn(())] for _ in range(2)]
    for weight_decay in (0.0, 0.1):
        params = [nn.Parameter(w.clone()) for w in start]
        opt = Lamb(params, lr=0.01, betas=BETAS, eps=EPS, weight_decay=weight_decay)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        expected = reference_lamb(start, grads, 0.01, weight_decay)
        for p, e in zip(params, expected):
            assert torch.allclose(p.detach().double(), e, rtol=1e-5, atol=1e-7), weight_decay
        # Adam's state names, so mask enforcement and the sparse-kernel swap apply unchanged.
        assert all(set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"} and float(opt.state[p]["step"]) == 2 for p in params)
    # Weight decay changes the step: the two runs above compared against two different references.
    assert not torch.allclose(reference_lamb(start, grads, 0.01, 0.0)[0], reference_lamb(start, grads, 0.01, 0.1)[0])


def fit_log_std(opt_class, lr, steps=300):
    """The issue's probe: IQL's Gaussian actor fitted by likelihood to actions with sigma 0.3; its
    state-independent log-std starts at 0 and should head for log 0.3 = -1.20."""
    torch.manual_seed(0)
    actor = GaussianActor(11, 3, [16, 16], 1.0)
    opt = opt_class(actor.parameters(), lr=lr)
    obs = torch.randn(256, 11)
    actions = (0.5 * torch.tanh(obs[:, :3]) + 0.3 * torch.randn(256, 3)).clamp(-1, 1)
    for _ in range(steps):
        opt.zero_grad()
        (-actor.log_prob(obs, actions).mean()).backward()
        opt.step()
    return actor.log_std.detach()


def test_a_zero_initialised_log_std_moves_under_lamb_as_under_adam():
    adam, lamb = fit_log_std(torch.optim.Adam, 3e-3), fit_log_std(Lamb, 3e-3)
    # Under the trust ratio each step was lr times the log-std's own size: it stayed at about -0.007.
    assert (adam < -0.5).all()
    assert torch.allclose(lamb, adam, atol=0.1), (lamb, adam)


def test_a_scalar_changes_sign_under_lamb():
    """CQL's actor scalars (log-std multiplier 1, offset -1) are trained by LAMB: one pulled from
    0.5 towards -1 must cross zero, as under Adam (the ratio made its step proportional to itself)."""
    scalar = Scalar(0.5)
    opt = Lamb(scalar.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        (scalar() + 1).pow(2).backward()
        opt.step()
    assert scalar().item() < -0.5


def test_lamb_splits_matrices_from_the_rest_once_and_keeps_explicit_groups():
    actor = GaussianActor(4, 2, [8], 1.0)
    opt = Lamb(actor.parameters(), lr=0.01, weight_decay=0.1)
    ratio, plain = opt.param_groups
    assert all(p.ndim == 2 for p in ratio["params"]) and ratio["trust_ratio"] and ratio["weight_decay"] == 0.1
    assert any(p is actor.log_std for p in plain["params"]) and not plain["trust_ratio"] and plain["weight_decay"] == 0
    groups = [{"params": [actor.log_std], "trust_ratio": True}]
    assert Lamb(groups, lr=0.01).param_groups[0]["trust_ratio"]
    # A sparse-kernel swap turns a pruned matrix into its 1-D CSR values inside the same group, so
    # the values keep the ratio a dense-masked layer takes.
    mask = torch.rand(actor.net[0].weight.shape) < 0.5
    swap_optimizer_params([opt], sparsify_(actor.net, {"0.weight": mask}))
    assert any(p is actor.net[0].values for p in ratio["params"]) and actor.net[0].values.ndim == 1


def one_layer_algo():
    """The protocol's minimum for MaskSet.bind: one dense-masked Linear trained by LAMB."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8, bias=False))
    opt = Lamb(net.parameters(), lr=0.05, betas=BETAS, eps=EPS)
    return SimpleNamespace(net=net, opt=opt, networks=lambda: {"net": net}, target_networks=dict,
                           optimizers=lambda: {"net": opt})


def test_trust_ratio_on_a_dense_masked_layer_is_taken_over_the_kept_weights():
    algo = one_layer_algo()
    weight = prunable_parameters(algo.net)["0.weight"]
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    mask[:, :2] = True  # kept weights: the first two inputs
    MaskSet({"net": {"0.weight": mask}}).bind(algo)
    kept_start = weight.detach()[mask].clone()
    x = torch.randn(32, 6)
    algo.opt.zero_grad()
    algo.net(x).pow(2).sum().backward()
    grad = weight.grad.clone()
    algo.opt.step()

    # First step: m_hat = g, v_hat = g^2, so u = g / (|g| + eps).
    def ratio(entries):
        u = grad[entries] / (grad[entries].abs() + EPS)
        return (weight_start[entries].norm() / u.norm()).item()

    weight_start = torch.zeros_like(weight)
    weight_start[mask] = kept_start
    kept, everything = ratio(mask), ratio(torch.ones_like(mask))
    u_kept = grad[mask] / (grad[mask].abs() + EPS)
    assert torch.allclose(weight.detach()[mask], kept_start - 0.05 * kept * u_kept, rtol=1e-5, atol=1e-7)
    assert (weight.detach()[~mask] == 0).all()
    assert (algo.opt.state[weight]["exp_avg"][~mask] == 0).all() and (algo.opt.state[weight]["exp_avg_sq"][~mask] == 0).all()
    # On the first step every nonzero entry of u is about +-1, so over the whole tensor (its 48
    # entries, 16 kept) ||u|| would be sqrt(3) times larger and the step sqrt(3) times smaller.
    assert everything == pytest.approx(kept / 3 ** 0.5, rel=1e-4)


def test_optim_lamb_trains_every_network_of_every_built_in_with_lamb():
    for name in ("iql", "td3bc", "cql"):
        algo = make_algorithm(name, ProblemSpec(11, 3, optim="lamb"), {"hidden": [16, 16]})
        owned = {id(p): type(opt) for opt in algo.optimizers().values() for g in opt.param_groups for p in g["params"]}
        for net in algo.networks().values():
            assert all(owned[id(p)] is Lamb for p in net.parameters()), name
        # CQL's temperature and Lagrange multiplier are single numbers and keep Adam.
        assert all(kind in (Lamb, FusedAdam) for kind in owned.values())
        default = make_algorithm(name, ProblemSpec(11, 3), {"hidden": [16, 16]})
        assert all(type(opt) is FusedAdam for opt in default.optimizers().values())


def test_algo_weight_decay_reaches_every_lamb_network_and_is_refused_under_adam(fast_config):
    for name in ("iql", "td3bc", "cql"):
        algo = make_algorithm(name, ProblemSpec(11, 3, optim="lamb"), {"hidden": [16, 16], "weight_decay": 0.01})
        lambs = [opt for opt in algo.optimizers().values() if isinstance(opt, Lamb)]
        assert len(lambs) == len(algo.networks()), name
        for opt in lambs:  # the weight matrices decay; biases and log-std parameters do not
            assert [(g["trust_ratio"], g["weight_decay"]) for g in opt.param_groups] == [(True, 0.01), (False, 0.0)]
    with pytest.raises(ValueError, match="weight_decay=0.01 is invalid with optim=adam"):
        make_optimizer(nn.Linear(2, 2), 1e-3, "adam", weight_decay=0.01)
    decayed = {**fast_config, "algo": {"name": "iql", "weight_decay": 0.01}}
    with pytest.raises(ConfigError, match=r"^algo.weight_decay=0.01 is invalid with optim=adam: .*0 is required unless optim=lamb$"):
        validate_config(decayed)
    with pytest.raises(ConfigError, match=r"^algo.weight_decay=-1 is invalid: a number >= 0 is required"):
        validate_config({**fast_config, "optim": "lamb", "algo": {"name": "iql", "weight_decay": -1}})
    # Accepted under LAMB, also where a per-network mapping makes the check build the networks.
    validate_config({**decayed, "optim": "lamb", "sparsity": {"actor": 0.9, "default": 0.5}})
