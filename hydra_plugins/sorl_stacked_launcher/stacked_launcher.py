"""`hydra/launcher=stacked`: the jobs of a sweep that can share a process run as one stacked group.

    python run.py -m hydra/launcher=stacked seed=0,1,2,3 sparsity=0.9,0.95 hydra.launcher.n_jobs=2

Jobs whose configs differ only in seed, pruner, scope, sparsity or sparse kernels (and settings that
cannot change a result) form a group (`sparse_offline_rl.training.stacked.group_key`), at most
`max_members` jobs each; jobs of an algorithm that cannot be stacked are groups of one. Each group
runs in its own worker process (joblib's loky backend, as `hydra/launcher=local`), `n_jobs` groups
at a time, through `sparse_offline_rl.cli.run_group`: finished jobs are skipped, interrupted ones
resume, the others train together. Every job still gets its own directory, `.hydra/` files and
JobReturn, exactly as with the other launchers. `hydra/launcher=stacked_slurm`
(stacked_submitit_launcher.py) groups the jobs the same way and submits one group per SLURM job.

Hydra finds launchers only in the `hydra_plugins` namespace package: this folder sits at the
repository root, which is on `sys.path` when running `python run.py` from a checkout, and setup.cfg
installs it with the package.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.sorl_stacked_launcher.stacked_launcher.StackedLauncher"
    n_jobs: int = 2  # groups running at once, one process each
    max_members: int = 16  # the largest group; a bigger sweep cell is split


ConfigStore.instance().store(group="hydra/launcher", name="stacked_plugin", node=StackedLauncherConf, provider="sorl")


class GroupLauncher(Launcher):
    """What the stacked launchers share: the sweep's jobs grouped (`groups`), each group run by `execute_group`."""

    def __init__(self, max_members: int = 16) -> None:
        if int(max_members) < 1:
            raise ValueError(f"hydra.launcher.max_members={max_members}: accepted: a positive integer")
        self.max_members = int(max_members)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def groups(self, job_overrides: Sequence[Sequence[str]], workers: int = 1) -> list[list[int]]:
        """The jobs (indices into job_overrides) of each group, logged; also sets up Hydra's globals,
        logging and the sweep directory, as every launcher does before running jobs. Cells are split
        so that `workers` processes all have a group where the sweep has enough jobs."""
        from sparse_offline_rl.training.stacked import group_key, stackable

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups: dict[str, list[int]] = {}
        for idx, overrides in enumerate(job_overrides):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            task = OmegaConf.to_container(cfg, resolve=False)
            task.pop("hydra", None)
            try:
                key = group_key(task) if stackable(task) else f"alone {idx}"
            except Exception:  # a bad config fails in its own job, with its own failed.json
                key = f"alone {idx}"
            groups.setdefault(key, []).append(idx)
        batches = split_cells(list(groups.values()), self.max_members, workers)
        log.info(f"{type(self).__name__}: {len(job_overrides)} jobs in {len(batches)} groups")
        for batch in batches:
            log.info("\tgroup: " + " | ".join(" ".join(filter_overrides(job_overrides[i])) for i in batch))
        return batches


class StackedLauncher(GroupLauncher):
    def __init__(self, n_jobs: int = 2, max_members: int = 16) -> None:
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs}: accepted: a positive integer")
        super().__init__(max_members)
        self.n_jobs = int(n_jobs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed  # type: ignore

        batches = self.groups(job_overrides, workers=self.n_jobs)
        log.info(f"Stacked launcher: {self.n_jobs} groups at a time")
        state = Singleton.get_state()
        results = Parallel(n_jobs=self.n_jobs, backend="loky")(
            delayed(execute_group)([initial_job_idx + i for i in batch], [list(job_overrides[i]) for i in batch],
                                   self.hydra_context, self.config, state)
            for batch in batches)
        return in_job_order(batches, results)


def split_cells(cells: list[list[int]], max_members: int, workers: int) -> list[list[int]]:
    """Each cell (jobs that can stack) cut into groups of at most `max_members`, and cut further until
    there are at least `workers` groups (or every group is one job): one big group in one process
    leaves the other workers idle, which costs more than stacking gains (measured: 8 IQL jobs as one
    group on 2 cores took 1.8x as long as two groups of 4, 205 s against 112 s end to end). Cuts go
    to the cell whose groups are largest, and a cell's groups differ in size by at most one."""
    parts = [-(-len(cell) // max_members) for cell in cells]
    while sum(parts) < workers:
        sizes = [len(cell) / n if n < len(cell) else 0 for cell, n in zip(cells, parts)]
        widest = max(range(len(cells)), key=sizes.__getitem__, default=None)
        if widest is None or sizes[widest] == 0:
            break
        parts[widest] += 1
    batches = []
    for cell, n in zip(cells, parts):
        cuts = [len(cell) * k // n for k in range(n + 1)]
        batches += [cell[a:b] for a, b in zip(cuts, cuts[1:])]
    return batches


def in_job_order(batches: list[list[int]], results: Sequence[Sequence[JobReturn]]) -> list[JobReturn]:
    """The groups' JobReturns back in the sweep's job order, as Hydra expects them."""
    by_index = {i: ret for batch, rets in zip(batches, results) for i, ret in zip(batch, rets)}
    return [by_index[i] for i in range(len(by_index))]


def execute_group(indices: list[int], overrides: list[list[str]], hydra_context: HydraContext, config: DictConfig,
                  singleton_state: dict[Any, Any]) -> list[JobReturn]:
    """In a worker process: each job's directory and `.hydra/` files through Hydra's own `run_job`
    (whose task only reports the job's config and directory), then the group trained at once."""
    from hydra.core.hydra_config import HydraConfig

    from sparse_offline_rl.cli import run_group

    setup_globals()
    Singleton.set_state(singleton_state)
    returns: list[JobReturn] = []
    for idx, job_overrides in zip(indices, overrides):
        sweep_config = hydra_context.config_loader.load_sweep_config(config, job_overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        returns.append(run_job(hydra_context=hydra_context, config=sweep_config,
                               task_function=lambda cfg: (cfg, HydraConfig.get().runtime.output_dir),
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
    scores = run_group([ret.return_value[0] for ret in returns], [ret.return_value[1] for ret in returns])
    for ret, score in zip(returns, scores):
        ret.return_value = score
        ret.status = JobStatus.FAILED if isinstance(score, BaseException) else JobStatus.COMPLETED
    return returns
