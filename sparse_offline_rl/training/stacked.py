"""Many agents in one process: the runs of one sweep cell trained as one stacked algorithm.

`train_stacked(cfgs, run_dirs)` trains K runs that share algorithm (and its options), dataset,
steps, batch size and every other setting but the member keys (`MEMBER_KEYS`: seed, pruner,
sparsity, sparse kernels) as one. How:

1. Each member is set up exactly as its separate run (`setup.setup_run`: its seed, its data
   split, its network initialisation and noise generator, pruning with its own batches, its kernel
   choice), so its masks are the separate run's; or it is restored from its own checkpoint.
2. The K member algorithms are stacked into one algorithm object built with
   `ProblemSpec(members=K)`: every `mlp` becomes a `pruning.stacked.StackedMLP` (dense layers as one
   batched product, layers that every member compressed as one block-diagonal CSR product), other
   parameters get a leading member dimension, optimizer state is joined (Adam is elementwise: one
   stacked Adam is K Adams), and its NoiseSources become the members' own generators
   (`StackedNoise`). The algorithm's losses are per member (`networks.member_mean`), summed.
3. Each step the batch is the members' own batches (each from its own buffer generator) one after
   the other, and the algorithm's update runs once on it.
4. Masks that change during training (gmp, set, rigl, gibbs) change through the single-run code: at
   a step where any member updates its masks, the stacked state is written back into the members,
   each member's `SparseTraining.after_step` changes its masks on its own algorithm (RigL scores on
   the member's own rows of the batch), and the group is stacked again from the members, so new
   patterns, rebuilt sparse kernels and reset optimizer state carry over as they are.
5. Evaluation runs all members' episodes in one pool of environments, the stacked actor acting for
   every member in one call per env step (`evaluation.rollout.MembersPolicy`). Before every
   evaluation and checkpoint the stacked state is written back into the member algorithms, which
   log, checkpoint and summarise through the single-run code: each member's run directory is what
   its separate run would write (plus `summary.json["stacked"]`).

So member k follows its separate run up to float rounding (products summed in another order),
tested in tests/test_stacked.py. A member's checkpoint is a separate run's checkpoint: `resume`,
`load_agent`, `evaluate` and `export` read it unchanged. After a kill, members that checkpointed at
different steps are first brought level one by one (each alone, as its separate run), then stacked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from omegaconf import DictConfig

from sparse_offline_rl.algorithms import algorithm_config, get_algorithm, make_algorithm
from sparse_offline_rl.algorithms.networks import NoiseSource, StackedNoise
from sparse_offline_rl.data.buffer import Batch
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.data.envs import make_env
from sparse_offline_rl.evaluation.rollout import EpisodeStats, MembersPolicy, run_episodes
from sparse_offline_rl.errors import ConfigError
from sparse_offline_rl.pruning import MaskSet
from sparse_offline_rl.sparse_training.dynamic import DYNAMIC_PRUNERS
from sparse_offline_rl.sparse.checkpoint import restore_pruned
from sparse_offline_rl.sparse.stacked_layers import (
    Link,
    join_optimizer_state,
    layout,
    split_optimizer_state,
    split_parameters,
    stack_network,
)
from sparse_offline_rl.training.config import DEFAULTS, to_dict, validate_config
from sparse_offline_rl.training.loop import Callback, StepInfo, run_steps, single_step
from sparse_offline_rl.training.setup import Run, problem_spec, setup_run
from sparse_offline_rl.training.summary import finish_run, summarize_episodes

#: What members of one group may differ in.
MEMBER_KEYS = ("seed", "pruner", "sparsity", "sparse_kernels")
#: Settings that cannot change a result (as in the sweep directory names): ignored when grouping.
NEUTRAL_KEYS = ("resume", "threads", "progress", "tensorboard", "verbose", "plugins")


def group_key(cfg: Mapping[str, Any]) -> str:
    """Runs with equal keys can be trained as one stacked group."""
    rest = {k: v for k, v in to_dict(cfg).items() if k not in MEMBER_KEYS + NEUTRAL_KEYS}
    return json.dumps(rest, sort_keys=True, default=str)


def unstackable_reason(cfg: Mapping[str, Any]) -> str | None:
    """Why this run cannot be a member of a stacked group, in one line; None when it can."""
    name, pruner = cfg["algo"]["name"], cfg.get("pruner") or {}
    if getattr(get_algorithm(name).factory, "stackable", False) is not True:
        return (f"algo={name} cannot be stacked (its losses are not written per member); stackable: iql, td3bc, cql "
                "and plug-ins that set `stackable = True`; run its jobs one per process (hydra/launcher=local)")
    if cfg.get("optim", DEFAULTS["optim"]) != "adam":
        return (f"optim={cfg['optim']!r} cannot be stacked: LAMB's trust ratio is per tensor, so a stacked tensor "
                "would share one ratio across members; accepted: adam")
    if (pruner.get("structure") or "unstructured") != "unstructured" and pruner.get("name") not in DYNAMIC_PRUNERS:
        # Pruning units at initialization narrows the layers; unit Gibbs only masks them (same width).
        return (f"pruner.structure={pruner['structure']} cannot be stacked with pruner={pruner.get('name')}: removing "
                "whole units at initialization gives each member layers of its own width; accepted: unstructured, "
                "or structure=units with pruner=gibbs (masks, not narrowing)")
    return None


def stackable(cfg: Mapping[str, Any]) -> bool:
    """Whether this run can be trained stacked with others (`unstackable_reason` says why not)."""
    return unstackable_reason(cfg) is None


def check_group(cfgs: Sequence[Mapping[str, Any]]) -> None:
    """One clear line for a group that cannot be stacked."""
    if not cfgs:
        raise ConfigError("a stacked group needs at least one run")
    for cfg in cfgs:
        reason = unstackable_reason(cfg)
        if reason:
            raise ConfigError(reason)
        validate_config(cfg)
    first = group_key(cfgs[0])
    for cfg in cfgs[1:]:
        if group_key(cfg) != first:
            a, b = json.loads(first), json.loads(group_key(cfg))
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(f"runs of one stacked group may differ only in {', '.join(MEMBER_KEYS)}; "
                              f"these differ in {', '.join(keys)}")


class StackedAlgorithm:
    """The members' algorithms as one (see the module docstring): `algo` is a normal algorithm object
    with `members = K` whose networks are stacked; `sync()` writes its state back into the members."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = list(runs)
        members = [run.algo for run in runs]
        config = runs[0].config
        for run in runs[1:]:  # e.g. units removed at initialization give layers of other widths
            for name, net in run.algo.networks().items():
                if layout(net) != layout(members[0].networks()[name]):
                    raise ConfigError(f"{run.run_dir}: its network '{name}' has other layer shapes than "
                                      f"{runs[0].run_dir}'s, so the two cannot be stacked")
        with torch.random.fork_rng(devices=[]):  # building it must not move any member's randomness
            algo = make_algorithm(config.algo_name, problem_spec(config, runs[0].dataset, runs[0].device, len(runs)),
                                  algorithm_config(config.algo))
        # First an exact copy of member 0 (layout, then state: optimizer settings, schedules,
        # counters, which are the same in every member), then every network stacked from all members.
        restore_pruned(algo, members[0].state_dict(), runs[0].masks.state_dict(), runs[0].kernels).unbind()
        self.links: list[Link] = []
        self.target_links: list[Link] = []
        masks: dict[str, dict[str, torch.Tensor]] = {}
        replaced: dict[int, torch.nn.Parameter] = {}  # id(member 0's parameter in algo) -> its stacked one
        targets = algo.target_networks()
        for name, net in algo.networks().items():
            member_masks = [run.masks.masks.get(name, {}) for run in runs]
            links, net_masks, net_replaced = stack_network(net, [m.networks()[name] for m in members], member_masks)
            self.links += links
            masks[name] = net_masks
            replaced.update(net_replaced)
            if name in targets:
                self.target_links += stack_network(targets[name], [m.target_networks()[name] for m in members], member_masks)[0]
        # Other learned modules of the algorithm (CQL's temperature and Lagrange multiplier): one per member.
        networks = {id(net) for net in (*algo.networks().values(), *targets.values())}
        for attr, value in list(vars(algo).items()):
            if isinstance(value, torch.nn.Module) and id(value) not in networks and any(True for _ in value.parameters()):
                links, _, module_replaced = stack_network(value, [getattr(m, attr) for m in members], [{}] * len(members))
                self.links += links
                replaced.update(module_replaced)
        self.optimizer_names = list(algo.optimizers())
        for opt_name, opt in algo.optimizers().items():
            for group in opt.param_groups:  # the optimizers keep the replaced parameters alive until here
                group["params"] = [replaced.get(id(p), p) for p in group["params"]]
            join_optimizer_state(opt, [m.optimizers()[opt_name] for m in members], self.links)
        for attr, value in list(vars(algo).items()):
            if isinstance(value, NoiseSource):  # each member draws from its own generator
                setattr(algo, attr, StackedNoise([getattr(m, attr) for m in members]))
        self.algo = algo
        self.masks = MaskSet({n: m for n, m in masks.items() if m}).bind(algo)
        self.members = members

    def sync(self) -> None:
        """Write the stacked parameters, target parameters, optimizer state, schedules and counters
        into the member algorithms (before they are evaluated or checkpointed)."""
        split_parameters(self.links + self.target_links)
        for name in self.optimizer_names:
            split_optimizer_state(self.algo.optimizers()[name], [m.optimizers()[name] for m in self.members], self.links)
        for attr, value in vars(self.algo).items():
            for member in self.members:
                if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
                    getattr(member, attr).load_state_dict(value.state_dict())
                elif type(value) is int and attr != "members":  # step counters (TD3+BC's delayed actor)
                    setattr(member, attr, value)

    def batch(self, batch_size: int) -> Batch:
        """The members' own batches, member-major: one gather when they share their data (the usual
        case: same dataset, no validation split), else one per member."""
        buffers = [run.buffer for run in self.runs]
        idx = [b.sample_indices(batch_size) for b in buffers]
        if all(b.data is buffers[0].data for b in buffers):
            return buffers[0].gather(torch.cat(idx))
        return Batch(*(torch.cat(fields) for fields in zip(*(b.gather(i) for b, i in zip(buffers, idx)))))

    def split_metrics(self, metrics: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{k: v[i] for k, v in metrics.items()} for i in range(len(self.members))]

    def evaluate(self, step: int) -> list[dict[str, float]]:
        """Every member's evaluation episodes in one pool of environments, the stacked actor choosing
        all members' actions in one call per env step; each member logs its own results. The
        actions are those of the member's own actor up to float rounding (see module docstring)."""
        runs, env = self.runs, self.runs[0].config.env
        per_member = len(runs[0].seeds_for_eval)
        seeds = [seed for run in runs for seed in run.seeds_for_eval]
        policy = MembersPolicy(self.algo, [run.normalizer for run in runs], per_member, runs[0].device)
        stats = run_episodes(policy, lambda: make_env(env), seeds, discount=runs[0].discount,
                             max_parallel=len(seeds), policy_gets_episodes=True)
        results = []
        for k, run in enumerate(runs):
            rows = slice(k * per_member, (k + 1) * per_member)
            episodes = EpisodeStats(stats.returns[rows], stats.discounted_returns[rows], stats.lengths[rows],
                                    stats.first_observations[rows])
            results.append(run.log_eval(step, summarize_episodes(episodes, run.dataset, env), episodes))
        return results


def _share_data(runs: Sequence[Run]) -> None:
    """Members prepared from the same data hold equal buffers: keep one copy (a 1M-transition buffer
    is about 170 MB per member)."""
    last = runs[-1].buffer
    for run in runs[:-1]:
        other = run.buffer
        if other.data.shape == last.data.shape and torch.equal(other.data, last.data):
            last.data = other.data
            return


def stacked_step(runs: Sequence[Run], current: dict[str, StackedAlgorithm],
                 callbacks: Sequence[Callback]) -> Callable[[int], dict[str, torch.Tensor]]:
    """One gradient step of the whole group (the `step_fn` of `run_steps`). After a mask update the
    group is stacked again into `current["stacked"]`, where the loop's other closures read it."""
    batch_size = runs[0].config.batch_size

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        stacked = current["stacked"]
        batch = stacked.batch(batch_size)
        metrics = stacked.algo.update(batch)
        # Masks change per member, through the single-run code: the stacked state goes back into
        # the members, each changes its masks (RigL on its own rows of the batch), and the group is
        # stacked again from them (new patterns, kernels, optimizer state). Every step: FLOPs.
        updating = any(run.sparse_training.updates_masks(step, run.masks) for run in runs)
        if updating:
            stacked.sync()
        for k, run in enumerate(runs):
            rows = Batch(*(field[k * batch_size:(k + 1) * batch_size] for field in batch)) if updating else None
            run.kernels = run.sparse_training.after_step(step, run.algo, run.masks, rows) or run.kernels
        if updating:
            stacked = current["stacked"] = StackedAlgorithm(runs)
        for callback in callbacks:
            callback(StepInfo(step, stacked.algo, metrics, stacked.masks))
        return metrics

    return step_fn


def train_stacked(cfgs: Sequence[Mapping[str, Any] | DictConfig], run_dirs: Sequence[Path | str],
                  dataset: OfflineDataset | None = None, callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
    """Train the runs `cfgs` (each to its own `run_dirs[k]`) as one stacked group; returns their
    summaries. `callbacks` see the stacked algorithm (`StepInfo.algo`, metrics of shape (K,))."""
    cfgs = [to_dict(cfg) for cfg in cfgs]
    if len(cfgs) != len(run_dirs):
        raise ConfigError(f"{len(cfgs)} configs but {len(run_dirs)} run directories")
    check_group(cfgs)
    threads = torch.get_num_threads()
    try:
        if dataset is None:  # loaded once for the group
            from sparse_offline_rl.data import load_dataset

            dataset = load_dataset(cfgs[0]["dataset"], env=cfgs[0]["env"])
        runs: list[Run] = []
        for cfg, run_dir in zip(cfgs, run_dirs):
            runs.append(setup_run(cfg, run_dir, dataset))
            _share_data(runs)
        start = max(run.start_step for run in runs)
        for run in runs:  # a kill between two members' checkpoints: bring the others level, alone
            if run.start_step < start:
                run_steps([run], run.start_step, single_step(run), lambda m: [m], stop_step=start,
                          desc=f"catch up {run.run_dir.name}")
        # Rebuilt from the members after a mask update, so the closures below read it from here.
        current = {"stacked": StackedAlgorithm(runs)}
        step_fn = stacked_step(runs, current, callbacks)
        final = run_steps(runs, start, step_fn, current["stacked"].split_metrics, sync=lambda: current["stacked"].sync(),
                          evaluate_runs=lambda step: current["stacked"].evaluate(step),
                          desc=f"{runs[0].config.algo_name} x{len(runs)} stacked")
        group = {"members": len(runs), "run_dirs": [str(run.run_dir) for run in runs]}
        return [finish_run(run, result, extra={"stacked": group}) for run, result in zip(runs, final)]
    finally:
        torch.set_num_threads(threads)
