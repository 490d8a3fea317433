"""`python -m sparse_offline_rl.compress` (training.compress): a trained agent fitted to budgets. The
budget holds on the compressed networks, weights pruned before never come back, every mask holds in
every forward of fine-tuning, the output exports exactly, seeds reproduce, bad input fails in one line."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST_CONFIG, REPO, random_dataset, write_d4rl_hdf5
from test_algorithms_plugins import masks_hold
from test_sparse_masks import ForwardProbe
from sparse_offline_rl import compress as command
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.evaluation.agent import load_agent
from sparse_offline_rl.export import MAX_ABS_DIFF, export_run
from sparse_offline_rl.io import load_checkpoint
from sparse_offline_rl.pruning import prunable_parameters
from sparse_offline_rl.pruning.budget_search import layer_key
from sparse_offline_rl.sparse.masks import layer_weights
from sparse_offline_rl.training.compress import CompressOptions, compress_run, finetune, start
from sparse_offline_rl.training.logger import MetricsLogger
from sparse_offline_rl.training.trainer import train

COST_MODULE = '''
import torch
from sparse_offline_rl.sparse.masks import prunable_parameters


def kept(networks):
    """Nonzero actor weights: an exact cost."""
    return float(sum(int(torch.count_nonzero(w)) for w in prunable_parameters(networks["actor"]).values()))


def first_layer_heavy(networks):
    """Nonzero actor weights, the input layer's at 4x: layers differ in price."""
    counts = [int(torch.count_nonzero(w)) for w in prunable_parameters(networks["actor"]).values()]
    return float(4 * counts[0] + sum(counts[1:]))


def critic_kept(networks):
    return float(sum(int(torch.count_nonzero(w)) for w in prunable_parameters(networks["critic"]).values()))
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny IQL run (50 steps, hidden [32, 32], random pruner at 0.5, a held-out split), its
    dataset on disk so that a subprocess loads it by path, and the cost module on sys.path."""
    root = tmp_path_factory.mktemp("compress")
    (root / "compress_costs.py").write_text(COST_MODULE)
    sys.path.insert(0, str(root))
    data = random_dataset("hopper", n=1000)
    path = write_d4rl_hdf5(root / "hopper.hdf5", data)
    cfg = copy.deepcopy(FAST_CONFIG)
    cfg.update(dataset=str(path), steps=50, log_every=25, checkpoint_every=50, sparsity=0.5, val_fraction=0.2)
    cfg["eval"] = {"every": 50, "episodes": 1, "suite": None}
    train(cfg, root / "run")
    # TD3+BC: a target actor, and actor updates every other step
    train({**cfg, "algo": {"name": "td3bc", "hidden": [32, 32]}}, root / "run-td3bc")
    yield root
    sys.path.remove(str(root))


def options(**extra) -> CompressOptions:
    settings = {"budget_cost": "compress_costs:kept", "budget_cost_max": 500.0, "probes": 40, "rows": 256,
                "eval_episodes": 1, **extra}
    return CompressOptions(**settings)


def actor_nonzeros(algo) -> dict[str, torch.Tensor]:
    return {p: w.detach() != 0 for p, w in prunable_parameters(algo.networks()["actor"]).items()}


@pytest.mark.parametrize("search", ["constrained", "bisect"])
def test_the_budget_is_met_and_pruned_weights_never_come_back(trained, search):
    source = load_agent(trained / "run")
    summary, already = compress_run(trained / "run", options(budget_search=search), trained / f"out-{search}")
    assert not already
    agent = load_agent(trained / f"out-{search}")
    nets = agent.algo.networks()
    import compress_costs

    cost = compress_costs.kept(nets)
    assert cost <= 500 and summary["compress"]["cost"]["after_finetune"] == cost
    # the counts the search reports are the output's nonzeros, and a subset of the trained ones
    trained_nonzero, kept = actor_nonzeros(source.algo), actor_nonzeros(agent.algo)
    for param, mask in kept.items():
        assert summary["compress"]["search"]["counts"][layer_key("actor", param)] == int(mask.sum()) >= 1
        assert not bool((mask & ~trained_nonzero[param]).any())  # already-zero weights stay zero
    # the critic was not compressed: its weights are the trained ones, bit for bit (the source stores
    # some layers as CSR SparseLinear, the output all dense-masked)
    for name, weight in layer_weights(source.algo.networks()["critic"]).items():
        assert torch.equal(weight, layer_weights(nets["critic"])[name])
    assert summary["pruner"] == f"compress-{search}" and summary["eval"]["episodes"] == 1
    # sparsity and densities over every prunable weight of every network, as any run's summary
    weights = [w for net in nets.values() for w in layer_weights(net).values()]
    nonzero, total = sum(int(torch.count_nonzero(w)) for w in weights), sum(w.numel() for w in weights)
    assert summary["final_sparsity"] == pytest.approx(1 - nonzero / total) and summary["compress"]["within_budget"]
    assert summary["density"]["actor"] == pytest.approx(cost / 1472)  # hopper's [32, 32] actor: 1472 weights
    assert (trained / f"out-{search}" / "budget_search.png").exists() == (search == "constrained")
    if search == "constrained":  # started at bisection's answer, so never less reward than it
        start = summary["compress"]["search"]["start"]
        assert start["search"] == "bisect" and summary["compress"]["search"]["reward"] >= start["reward"]
    if search == "bisect":  # the least feasible sparsity of those probed
        probes = summary["compress"]["search"]["probes"]
        chosen = summary["compress"]["search"]["sparsity"]
        assert all(p["feasible"] == (p["sparsity"] >= chosen) for p in probes)
    # re-running the same compression finds it finished and does nothing
    again, already = compress_run(trained / "run", options(budget_search=search), trained / f"out-{search}")
    assert already and again == summary


def test_the_reward_is_the_fidelity_of_the_chosen_masks(trained):
    job = start(trained / "run", options(), trained / "unused")
    assert job.fidelity.reward_of(job.agent.algo) == 0.0  # the trained networks themselves
    # the masked fresh agent is the probe the search scored: the same reward
    assert job.fidelity.reward_of(job.algo) == pytest.approx(job.search["reward"], rel=1e-12)
    assert job.search["reward"] == max(p["reward"] for p in job.search["probes"] if p["feasible"])
    assert job.search["rows"] == 200 and job.search["rows_split"] == "val"  # all of the 200 held-out rows


def test_the_reward_follows_its_formula(trained):
    job = start(trained / "run", options(networks=("actor", "critic")), trained / "unused")
    reference, rows = job.agent.algo, job.fidelity.rows
    generator = torch.Generator().manual_seed(0)
    masks = {n: {p: torch.rand(w.shape, generator=generator) < 0.7 for p, w in prunable_parameters(net).items()}
             for n, net in reference.networks().items() if n in ("actor", "critic")}
    reward = job.fidelity(masks)
    pruned = copy.deepcopy(reference)
    with torch.no_grad():
        for n, layers in masks.items():
            for p, w in prunable_parameters(pruned.networks()[n]).items():
                w.mul_(layers[p])
        obs, data_actions = rows.observations.double(), rows.actions
        a, a_c = reference.act(rows.observations), pruned.act(rows.observations)
        e_act = ((a_c - a).double() ** 2).sum() / ((a - a.mean(0)).double() ** 2).sum()
        critic = reference.networks()["critic"]
        q, q_c = critic(rows.observations, a).min(0).values, critic(rows.observations, a_c).min(0).values
        e_val = (q - q_c).clamp_min(0).double().mean() / q.double().std()
        heads, heads_c = critic(rows.observations, data_actions), pruned.networks()["critic"](rows.observations, data_actions)
        e_crit = ((heads_c - heads).double() ** 2).mean() / heads.double().var(unbiased=False)
    assert obs.shape[0] == 200
    assert reward == pytest.approx(-float(e_act + e_val + e_crit), rel=1e-6)
    assert reward < 0 and float(e_val) > 0  # this pruning costs value


@pytest.mark.parametrize("run", ["run", "run-td3bc"])
def test_every_mask_holds_in_every_forward_of_fine_tuning(trained, tmp_path, run):
    job = start(trained / run, options(finetune_steps=12), tmp_path)
    before = {p: w.detach().clone() for p, w in prunable_parameters(job.algo.networks()["actor"]).items()}
    probe = ForwardProbe(job.algo, job.masks)
    # every forward (online and target copies) is probed; after every step, weights and targets are checked
    finetune(job, MetricsLogger(tmp_path, tensorboard=False), callbacks=[masks_hold])
    probe.remove()
    assert probe.forwards > 12 * 2 and probe.violations == []
    # fine-tuning moved the kept weights, and the pruned ones' optimizer state is zero too
    after = prunable_parameters(job.algo.networks()["actor"])
    assert any(not torch.equal(before[p], after[p]) for p in before)
    for param, weight in after.items():
        pruned = job.masks.masks["actor"][param] == 0
        assert bool(pruned.any())
        for value in job.algo.actor_opt.state[weight].values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                assert bool((value[pruned] == 0).all())


def test_the_export_reproduces_the_compressed_actor_exactly(trained, tmp_path):
    out = tmp_path / "out"
    compress_run(trained / "run", options(finetune_steps=10), out)
    record = export_run(out, "torchscript")
    assert record["max_abs_diff"] <= MAX_ABS_DIFF and record["observations_checked"] == 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export"]["torchscript"]["file"] == "export/actor.pt" and "compress" in summary


def test_seeds_reproduce_and_differ(trained, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        summary, _ = compress_run(trained / "run", options(finetune_steps=6, seed=seed, eval_episodes=0), tmp_path / name)
        runs[name] = (summary["compress"], load_checkpoint(tmp_path / name / "checkpoint.pt"))
    (rec_a, ckpt_a), (rec_b, ckpt_b), (rec_c, _) = runs["a"], runs["b"], runs["c"]
    assert rec_a["options"]["eval_episodes"] == 0  # evaluation skipped: no episode, NaN scores
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["eval"]["episodes"] == 0 and summary["eval"]["normalized_score_mean"] != summary["eval"]["normalized_score_mean"]
    assert rec_a["search"]["probes"] == rec_b["search"]["probes"] and rec_a["reward"] == rec_b["reward"]
    for net, state in ckpt_a["algo"].items():
        if isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values()):
            assert all(torch.equal(v, ckpt_b["algo"][net][k]) for k, v in state.items()), net
    assert rec_c["search"]["probes"] != rec_a["search"]["probes"]  # another seed: other rows and samples
    # an output directory holding another compression is never overwritten
    with pytest.raises(ConfigError, match="already holds a compression with other options"):
        compress_run(trained / "run", options(finetune_steps=6, seed=5, eval_episodes=0), tmp_path / "a")


def test_a_compressed_critic_keeps_its_budget(trained, tmp_path):
    summary, _ = compress_run(trained / "run", options(budget_cost="compress_costs:critic_kept", budget_cost_max=2500.0,
                                                       networks=("critic",), budget_search="bisect"), tmp_path)
    import compress_costs

    assert compress_costs.critic_kept(load_agent(tmp_path).algo.networks()) <= 2500
    assert summary["compress"]["reward"]["terms_after_finetune"].keys() == {"critic_value"}


@pytest.mark.parametrize("args, names", [
    (["budget_cost=compress_costs:kept", "budget_cost_max=5"], "run_dir="),
    (["run_dir=x", "budget_cost=compress_costs:kept", "budget_cost_max=5", "colour=red"], "unknown option 'colour'"),
    (["run_dir=x", "budget_cost=compress_costs:kept"], "budget_cost_max="),
    (["run_dir=x", "budget_cost=compress_costs:kept", "budget_cost_max=-1"], "budget_cost_max=-1 is invalid"),
    (["run_dir=x", "budget_cost=[compress_costs:kept,compress_costs:critic_kept]", "budget_cost_max=5"],
     "one number per path"),
    (["run_dir=x", "budget_cost=compress_costs:kept", "budget_cost_max=5", "budget_search=grid"],
     "budget_search='grid' is invalid"),
    (["run_dir=x", "budget_cost=compress_costs:kept", "budget_cost_max=5", "networks=value"], "networks=value is invalid"),
    (["run_dir=x", "budget_cost=compress_costs:kept", "budget_cost_max=5", "finetune_steps=-3"], "finetune_steps=-3"),
    (["run_dir=/no/such/run", "budget_cost=compress_costs:kept", "budget_cost_max=5"], "no checkpoint.pt there"),
])
def test_bad_input_fails_in_one_line_naming_the_key(args, names, capsys):
    assert command.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err, err


def compress_cli(*args: str, root: Path) -> subprocess.CompletedProcess:
    # The loader's warning that the test's D4RL-layout file is evaluated on v5 dynamics is not the
    # command's output: filtered by its module, so stderr holds what the command itself says.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(root)]),
           "PYTHONWARNINGS": "ignore::UserWarning:sparse_offline_rl.data.loaders"}
    return subprocess.run([sys.executable, "-m", "sparse_offline_rl.compress", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_writes_a_run_and_an_impossible_budget_fails_in_one_line(trained):
    run = str(trained / "run")
    done = compress_cli(f"run_dir={run}", "budget_cost=[compress_costs:kept,compress_costs:first_layer_heavy]",
                        "budget_cost_max=[500,900]", "probes=40", "rows=128", "eval_episodes=1", "finetune_steps=5",
                        root=trained)
    assert done.returncode == 0, done.stderr
    out = next((trained / "run").glob("compressed-*"))
    summary = json.loads((out / "summary.json").read_text())
    assert [c <= b for c, b in zip(summary["compress"]["cost"]["after_finetune"], (500, 900))] == [True, True]
    again = compress_cli(f"run_dir={run}", "budget_cost=[compress_costs:kept,compress_costs:first_layer_heavy]",
                         "budget_cost_max=[500,900]", "probes=40", "rows=128", "eval_episodes=1", "finetune_steps=5",
                         root=trained)
    assert again.returncode == 0 and "already holds this compression" in again.stdout
    for search in ("constrained", "bisect"):
        failed = compress_cli(f"run_dir={run}", "budget_cost=compress_costs:kept", "budget_cost_max=0.5",
                              f"budget_search={search}", "probes=20", "rows=64", root=trained)
        assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
        assert "budget_cost" in failed.stderr and "0.5" in failed.stderr and "pruner." not in failed.stderr


def test_a_run_still_training_is_compressed_at_its_last_checkpoint(trained, tmp_path):
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained / "run", unfinished)
    (unfinished / "summary.json").unlink()
    summary, _ = compress_run(unfinished, options(budget_search="bisect"), tmp_path / "out")
    assert summary["compress"]["source_finished"] is False and summary["steps"] == 50
    assert summary["compress"]["within_budget"]
