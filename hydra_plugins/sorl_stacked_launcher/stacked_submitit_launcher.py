"""`hydra/launcher=stacked_slurm`: one stacked group per SLURM job, through submitit.

    python run.py -m hydra/launcher=stacked_slurm hydra.launcher.partition=cpu +sweep=paper

The sweep's jobs are grouped exactly as `hydra/launcher=stacked` groups them (`GroupLauncher.groups`);
the groups are then submitted as one submitit job array, each task running one group through
`execute_group` (and so `sparse_offline_rl.cli.run_group`). A task cut by its time limit or by
preemption is resubmitted, at most `max_num_timeout` times after time-outs: its finished members are
skipped and the others resume from their checkpoints. `cluster: local` (`hydra/launcher=
stacked_submitit_local`) runs the same pickled jobs with submitit's local executor, to try a sweep
on one machine before sending it to a cluster.

submitit is imported only when a sweep is launched, so Hydra's plugin discovery works without it.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from .stacked_launcher import GroupLauncher, execute_group, in_job_order

log = logging.getLogger(__name__)
CLUSTERS = ("slurm", "local")
SLURM_ONLY = ("partition", "account", "qos", "constraint", "array_parallelism", "signal_delay_s",
              "additional_parameters")


@dataclass
class StackedSubmititConf:
    _target_: str = "hydra_plugins.sorl_stacked_launcher.stacked_submitit_launcher.StackedSubmititLauncher"
    cluster: str = "slurm"  # or local: submitit's local executor, every group at once on this machine
    max_members: int = 16  # the largest group; a bigger sweep cell is split
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    name: str = "${hydra.job.name}"
    timeout_min: int = 720  # per group
    cpus_per_task: Optional[int] = None  # also the torch threads of each group when threads=null
    gpus_per_node: Optional[int] = None
    mem_gb: Optional[int] = None
    max_num_timeout: int = 3  # resubmissions after a time-out
    setup: list[str] = field(default_factory=list)  # shell lines run before each group
    # SLURM only (ignored by cluster=local):
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    array_parallelism: int = 256  # groups running at once
    signal_delay_s: int = 120  # how long before its time limit a group is told to resubmit itself
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # other sbatch options


ConfigStore.instance().store(group="hydra/launcher", name="stacked_submitit_plugin", node=StackedSubmititConf,
                             provider="sorl")


class StackedSubmititLauncher(GroupLauncher):
    def __init__(self, cluster: str = "slurm", max_members: int = 16, max_num_timeout: int = 3,
                 submitit_folder: str = ".submitit/%j", **params: Any) -> None:
        if cluster not in CLUSTERS:
            raise ValueError(f"hydra.launcher.cluster={cluster!r}: accepted: {', '.join(CLUSTERS)}")
        if int(max_num_timeout) < 0:
            raise ValueError(f"hydra.launcher.max_num_timeout={max_num_timeout}: accepted: an integer >= 0")
        super().__init__(max_members)
        self.cluster, self.max_num_timeout, self.folder = cluster, int(max_num_timeout), str(submitit_folder)
        self.params = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in params.items()}

    def executor(self) -> Any:
        """A submitit executor for `cluster` with the launcher's resources: the generic ones
        (timeout_min, cpus_per_task, ...) as they are, the SLURM ones as `slurm_<key>`."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                         **{f"{self.cluster}_max_num_timeout": self.max_num_timeout})
        params = {k: v for k, v in self.params.items() if not (self.cluster != "slurm" and k in SLURM_ONLY)}
        prefixed = {k: f"{self.cluster}_{k}" for k in (*SLURM_ONLY, "setup")}
        executor.update_parameters(**{prefixed.get(k, k): v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        batches = self.groups(job_overrides)
        assert self.hydra_context is not None and self.config is not None
        job = GroupJob(self.hydra_context, self.config)
        state = Singleton.get_state()
        jobs = self.executor().map_array(job, [[initial_job_idx + i for i in batch] for batch in batches],
                                         [[list(job_overrides[i]) for i in batch] for batch in batches],
                                         [state] * len(batches))
        log.info(f"Submitted {len(jobs)} groups to submitit ({self.cluster}): job ids "
                 f"{', '.join(j.job_id for j in jobs)}; logs in {self.folder}")
        results, failed = [], []
        for batch, submitted in zip(batches, jobs):
            try:
                results.append(submitted.result())
            except Exception as err:  # a whole group lost (killed, out of memory, out of resubmissions)
                failed.append(f"job {submitted.job_id} ({len(batch)} runs, log {submitted.paths.stderr}): "
                              f"{str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}")
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(jobs)} stacked groups failed: " + "; ".join(failed))
        return in_job_order(batches, results)


class GroupJob:
    """One group as a submitit job (pickled with the sweep's Hydra context and config). On a time-out
    or preemption submitit calls `checkpoint`, which resubmits the same group: `run_group` then skips
    its finished members and resumes the others from their checkpoints."""

    def __init__(self, hydra_context: HydraContext, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config

    def __call__(self, indices: list[int], overrides: list[list[str]], singleton_state: dict[Any, Any]) -> list[JobReturn]:
        return execute_group(indices, overrides, self.hydra_context, self.config, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
