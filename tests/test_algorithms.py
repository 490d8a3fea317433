"""Every built-in algorithm (IQL, CQL, TD3+BC) learns tasks whose answer is known, and honours the
`OfflineAlgorithm` protocol (saliency losses, exact resume, registry and config errors).

Learning tasks are fed as `Batch` streams with small networks so the whole file runs in well under a
minute on 2 CPU cores (one torch thread, set in conftest.py); the update rules, losses and all other
hyperparameters are the defaults, except where a test says otherwise.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from sparse_offline_rl.algorithms import (
    OfflineAlgorithm,
    ProblemSpec,
    UnknownNameError,
    available_algorithms,
    get_algorithm,
    make_algorithm,
)
from sparse_offline_rl.algorithms.networks import AgentRows
from sparse_offline_rl.data.buffer import Batch

ALGOS = ["iql", "cql", "td3bc"]
# Protocol tests also cover CQL's optional branches (Lagrange multiplier, entropy in the backup).
VARIANTS = [("iql", {}), ("iql", {"deterministic_actor": True}), ("cql", {}), ("cql", {"lagrange_threshold": 1.0, "backup_entropy": True}), ("td3bc", {})]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "algo"
SMALL = {"hidden": [128, 128]}  # the losses and schedules are the defaults; only the width is cut for speed


def build(name: str, obs_dim: int = 2, act_dim: int = 2, seed: int = 0, total_steps: int = 1000, **overrides):
    torch.manual_seed(seed)
    return make_algorithm(name, ProblemSpec(obs_dim, act_dim, total_steps=total_steps), {**SMALL, **overrides})


class Stream:
    """Batches drawn with replacement from fixed tensors, with its own generator."""

    def __init__(self, batch: Batch, batch_size: int, seed: int = 0) -> None:
        self.data, self.batch_size = batch, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> Batch:
        idx = torch.randint(0, len(self.data.rewards), (self.batch_size,), generator=self.generator)
        return Batch(*(t[idx] for t in self.data))


def best_action(obs: torch.Tensor) -> torch.Tensor:
    return torch.stack([0.5 * obs[:, 0] + 0.3, -0.5 * obs[:, 1] - 0.2], dim=1)


def bandit(n: int = 4096, good_fraction: float = 0.6, seed: int = 0) -> Batch:
    """One-step contextual bandit: reward -||a - a*(s)||^2, every transition terminal. Most actions are
    a*(s) plus small noise; the rest are uniform over the action box, so plain behaviour cloning is
    pulled towards 0 and only the learned Q tells good from bad."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, 2, generator=g) * 2 - 1
    a_star = best_action(obs)
    good = (a_star + 0.05 * torch.randn(n, 2, generator=g)).clamp(-1, 1)
    bad = torch.rand(n, 2, generator=g) * 2 - 1
    actions = torch.where((torch.rand(n, 1, generator=g) < good_fraction), good, bad)
    rewards = -(actions - a_star).pow(2).sum(1)
    return Batch(obs, actions, rewards, torch.zeros_like(obs), torch.ones(n))


R1, R2, GAMMA = 1.0, 2.0, 0.99


def chain(n: int = 1024, seed: int = 0) -> Batch:
    """Two-step chain: s0 -(r1)-> s1 -(r2)-> end, whatever the action. Q(s0, .) = r1 + gamma * r2
    is only reachable by bootstrapping through Q(s1, .)."""
    g = torch.Generator().manual_seed(seed)
    s0, s1, end = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    first = torch.rand(n, generator=g) < 0.5
    obs = torch.where(first[:, None], s0, s1)
    next_obs = torch.where(first[:, None], s1, end)
    actions = torch.rand(n, 2, generator=g) * 2 - 1
    rewards = torch.where(first, R1, R2)
    dones = (~first).float()
    return Batch(obs, actions, rewards, next_obs, dones)


def random_transitions(n: int = 512, seed: int = 0) -> Batch:
    """Unstructured data with bootstrapping (10% terminals), for the protocol tests."""
    g = torch.Generator().manual_seed(seed)
    obs, next_obs = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    actions = torch.rand(n, 2, generator=g) * 2 - 1
    return Batch(obs, actions, torch.randn(n, generator=g), next_obs, (torch.rand(n, generator=g) < 0.1).float())


def train(algo: OfflineAlgorithm, stream: Stream, steps: int) -> None:
    for _ in range(steps):
        algo.update(stream())


def q_values(algo: OfflineAlgorithm, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return algo.networks()["critic"](obs, actions).min(0).values


# -- learning -------------------------------------------------------------------------------------
# (steps, batch size): CQL's update costs ~7x the others (3 x 10 proposal actions per state), so it
# gets smaller batches; TD3+BC's actor moves only every second step.
BANDIT_RUN = {"iql": (600, 256), "cql": (600, 64), "td3bc": (900, 256)}
CHAIN_RUN = {"iql": (400, 64), "cql": (300, 64), "td3bc": (600, 64)}


def bandit_result(name: str, seed: int = 0, **options) -> tuple[float, float]:
    """(mean ||act(s) - a*(s)||, fraction of states where Q(s, a*) > Q(s, a 0.5 away from a*))."""
    steps, batch_size = BANDIT_RUN[name]
    algo = build(name, seed=seed, total_steps=steps, **options)
    train(algo, Stream(bandit(seed=seed), batch_size, seed=seed), steps)
    g = torch.Generator().manual_seed(123)
    obs = torch.rand(512, 2, generator=g) * 2 - 1
    a_star = best_action(obs)
    error = (algo.act(obs) - a_star).norm(dim=1).mean().item()
    far = (a_star + 0.5 * torch.nn.functional.normalize(torch.randn(512, 2, generator=g), dim=1)).clamp(-1, 1)
    ranked = (q_values(algo, obs, a_star) > q_values(algo, obs, far)).float().mean().item()
    return error, ranked


def chain_result(name: str, seed: int = 0) -> tuple[float, float]:
    """(Q(s0, .), Q(s1, .)) averaged over random actions."""
    steps, batch_size = CHAIN_RUN[name]
    # A faster target (tau 0.1) shortens the bootstrapping through two Polyak-lagged targets.
    algo = build(name, seed=seed, tau=0.1, total_steps=steps)
    train(algo, Stream(chain(seed=seed), batch_size, seed=seed), steps)
    actions = torch.rand(256, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    q0 = q_values(algo, torch.tensor([[1.0, 0.0]]).expand(256, 2), actions).mean().item()
    q1 = q_values(algo, torch.tensor([[0.0, 1.0]]).expand(256, 2), actions).mean().item()
    return q0, q1


@pytest.mark.parametrize("name, options", [(name, {}) for name in ALGOS] + [("iql", {"deterministic_actor": True})])
def test_bandit_acts_well_and_ranks_actions(name, options):
    error, ranked = bandit_result(name, **options)
    # Behaviour cloning of this data lands near 0.6 * a*(s): a mean error of about 0.2.
    assert error < 0.1, f"{name}: mean distance of act(s) from a*(s) is {error:.3f}"
    assert ranked > 0.95, f"{name}: Q ranks a*(s) above a worse action in only {ranked:.0%} of states"


@pytest.mark.parametrize("name", ALGOS)
def test_chain_bootstraps_value_of_first_state(name):
    q0, q1 = chain_result(name)
    assert q1 == pytest.approx(R2, abs=0.1), f"{name}: Q(s1) = {q1:.3f}, want {R2}"
    assert q0 == pytest.approx(R1 + GAMMA * R2, abs=0.15), f"{name}: Q(s0) = {q0:.3f}, want {R1 + GAMMA * R2}"


# -- protocol -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALGOS)
def test_conforms_to_protocol(name):
    algo = build(name)
    assert isinstance(algo, OfflineAlgorithm)
    nets, targets = algo.networks(), algo.target_networks()
    assert set(targets) <= set(nets)
    for key, target in targets.items():  # targets start as exact copies and never take gradients
        assert all(not p.requires_grad for p in target.parameters())
        for p, q in zip(nets[key].parameters(), target.parameters()):
            assert torch.equal(p, q)
    batch = Stream(random_transitions(256), 32)()
    metrics = algo.update(batch)
    assert metrics and all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    action = algo.act(batch.observations)
    assert action.shape == batch.actions.shape and not action.requires_grad
    assert torch.equal(action, algo.act(batch.observations))  # deterministic


@pytest.mark.parametrize("name,options", VARIANTS)
def test_saliency_loss_reaches_only_its_network(name, options):
    algo = build(name, **options)
    batch = Stream(random_transitions(256), 64)()
    algo.update(batch)  # leave the optimizers with state, as after a few steps
    nets = algo.networks()
    everything = [p for m in [*nets.values(), *algo.target_networks().values()] for p in m.parameters()]
    everything += [p for opt in algo.optimizers().values() for group in opt.param_groups for p in group["params"]]
    for name_ in nets:
        for p in everything:
            p.grad = None
        loss = algo.saliency_loss(name_, batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        own = {id(p) for p in nets[name_].parameters()}
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets[name_].parameters())
        leaked = [p for p in everything if id(p) not in own and p.grad is not None and p.grad.abs().sum() > 0]
        assert not leaked, f"{name}: saliency_loss('{name_}') put gradients outside '{name_}'"
    with pytest.raises(KeyError):
        algo.saliency_loss("no_such_network", batch)


@pytest.mark.parametrize("name,options", VARIANTS)
def test_state_dict_round_trip_resumes_exactly(name, options):
    stream = Stream(random_transitions(512), 32)
    algo = build(name, **options)
    train(algo, stream, 3)  # odd, so TD3+BC's delayed actor step falls inside the compared steps
    state = copy.deepcopy(algo.state_dict())  # state_dict tensors alias the live ones
    batches = [stream() for _ in range(3)]
    expected = [algo.update(b) for b in batches]

    resumed = build(name, seed=99, **options)  # different initial weights and noise, all overwritten by the state
    resumed.load_state_dict(state)
    got = [resumed.update(b) for b in batches]
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for key in e:
            assert torch.equal(e[key], g[key]), f"{name}: '{key}' differs after resume"
    for key, net in algo.networks().items():
        for p, q in zip(net.parameters(), resumed.networks()[key].parameters()):
            assert torch.equal(p, q)


@pytest.mark.parametrize("threshold,direction", [(-100.0, 1), (100.0, -1)])
def test_cql_lagrange_multiplier_tracks_threshold(threshold, direction):
    """The multiplier on the conservative penalty grows while the penalty's gap exceeds the
    threshold and shrinks while it is below."""
    algo = build("cql", lagrange_threshold=threshold)
    start = algo.log_alpha_prime().item()
    metrics = [algo.update(b) for b in [Stream(random_transitions(256), 32)() for _ in range(3)]]
    assert "alpha_prime" in metrics[-1]
    assert (algo.log_alpha_prime().item() - start) * direction > 0


# -- fidelity to CORL -----------------------------------------------------------------------------
def test_iql_critic_target_uses_the_value_network_before_its_update():
    """CORL computes V(s') before the value step; the critic's step must equal one taken towards
    r + gamma * (1 - d) * V_before(s')."""
    algo = build("iql")
    b = Stream(random_transitions(256), 64)()
    reference = copy.deepcopy(algo)
    with torch.no_grad():
        target = b.rewards + 0.99 * (1.0 - b.dones) * reference.value(b.next_observations)
    qs = reference.critic(b.observations, b.actions)
    loss = torch.nn.functional.mse_loss(qs, target.expand_as(qs))
    reference.critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    reference.critic_opt.step()

    algo.update(b)
    assert any(not torch.equal(p, q) for p, q in zip(algo.value.parameters(), reference.value.parameters()))
    for p, q in zip(algo.critic.parameters(), reference.critic.parameters()):
        assert torch.equal(p, q)


def test_cql_actor_log_std_and_learning_rates_follow_corl():
    algo = build("cql", obs_dim=4, act_dim=2)
    actor = algo.actor
    # log std = multiplier * head + offset, both learned by the actor's optimizer, starting at 1 and -1
    assert actor.log_std_multiplier().item() == 1.0 and actor.log_std_offset().item() == -1.0
    trained = {id(p) for group in algo.actor_opt.param_groups for p in group["params"]}
    assert id(actor.log_std_multiplier.value) in trained and id(actor.log_std_offset.value) in trained
    obs = torch.randn(8, 4)
    head = actor.trunk(obs)[:, 2:]
    assert torch.equal(actor._mean_log_std(obs)[1], (head - 1.0).clamp(-20.0, 2.0))
    # the temperature learns at the actor's lr (CORL ties it to policy_lr); the Lagrange multiplier at the critic's
    assert algo.alpha_opt.param_groups[0]["lr"] == algo.config.actor_lr == 1e-4
    assert algo.alpha_prime_opt.param_groups[0]["lr"] == algo.config.critic_lr == 3e-4
    assert build("cql", alpha_lr=3e-4).alpha_opt.param_groups[0]["lr"] == 3e-4
    plain = build("cql", obs_dim=4, act_dim=2, log_std_multiplier=None, log_std_offset=None).actor
    assert torch.equal(plain._mean_log_std(obs)[1], plain.trunk(obs)[:, 2:].clamp(-20.0, 2.0))


def test_cql_reference_init_is_corls():
    algo = build("cql", obs_dim=4, act_dim=2, reference_init=True)  # hidden 128 x 128
    for q in algo.critic.qs:
        first, hidden, out = (m for m in q if isinstance(m, torch.nn.Linear))
        # orthogonal with gain sqrt(2): first (128 x 6) has orthogonal columns, hidden (128 x 128) is square
        assert torch.allclose(first.weight.T @ first.weight, 2 * torch.eye(6), atol=1e-5)
        assert torch.allclose(hidden.weight @ hidden.weight.T, 2 * torch.eye(128), atol=1e-4)
        assert out.weight.norm().item() == pytest.approx(1e-2, rel=1e-5)  # one orthogonal row, gain 1e-2
        for layer in (first, hidden, out):
            assert not layer.bias.any()
    trunk = [m for m in algo.actor.trunk if isinstance(m, torch.nn.Linear)]
    bound = 1e-2 * (6 / (128 + 4)) ** 0.5  # Xavier-uniform, gain 1e-2, fan 128 -> 2 * act_dim
    assert trunk[-1].weight.abs().max().item() <= bound and trunk[-1].weight.abs().max().item() > bound / 2
    assert not trunk[-1].bias.any() and trunk[0].bias.any()  # hidden layers keep PyTorch's default
    default = build("cql", obs_dim=4, act_dim=2)
    assert default.critic.qs[0][0].bias.any() and default.critic.qs[0][-1].weight.norm().item() > 0.1


# -- stacked agents' rows (networks.AgentRows) -------------------------------------------------------
def test_agent_rows_are_the_plain_operations_for_one_agent():
    rows, x = AgentRows(1), torch.randn(2, 6)
    assert torch.equal(rows.mean(x), x.mean()) and rows.mean(x).dim() == 0
    assert rows.split(x) is x
    assert torch.equal(rows.cat(x[0], x[1]), torch.cat([x[0], x[1]]))
    assert torch.equal(rows.align(torch.tensor(2.0), x), torch.tensor(2.0))


def test_agent_rows_keep_each_stacked_agents_rows_apart():
    rows = AgentRows(3)
    a, b = torch.randn(3 * 4, 2), torch.randn(3 * 5, 2)  # 4 and 5 rows per agent, agent-major
    assert torch.allclose(rows.mean(a, dim=0), torch.stack([a[4 * k:4 * (k + 1)].mean() for k in range(3)]))
    joined = rows.cat(a, b)  # agent k: its 4 rows of a, then its 5 of b
    assert torch.equal(joined[9:13], a[4:8]) and torch.equal(joined[13:18], b[5:10])
    q = rows.split(torch.randn(2, 3 * 9))  # (critics, K * rows) -> (critics, K, rows)
    assert q.shape == (2, 3, 9)
    aligned = rows.align(torch.tensor([1.0, 2.0, 3.0]), a)
    assert aligned.shape == (12, 1) and torch.equal(aligned[4:8, 0], torch.full((4,), 2.0))


# -- registry and configuration --------------------------------------------------------------------
def test_unknown_algorithm_lists_known_ones():
    assert set(ALGOS) <= set(available_algorithms())
    with pytest.raises(UnknownNameError) as err:
        make_algorithm("no_such_algo", ProblemSpec(2, 2))
    for name in ALGOS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ALGOS)
def test_unknown_config_key_lists_accepted_ones(name):
    with pytest.raises(ValueError) as err:
        make_algorithm(name, ProblemSpec(2, 2), {"learning_rate_typo": 1.0})
    message = str(err.value)
    assert "learning_rate_typo" in message
    for field in dataclasses.fields(get_algorithm(name).config_cls):
        assert field.name in message


@pytest.mark.parametrize("name", ALGOS)
def test_yaml_equals_dataclass_defaults(name):
    on_disk = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert on_disk == {"name": name, **dataclasses.asdict(get_algorithm(name).config_cls())}
