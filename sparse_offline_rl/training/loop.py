"""The training loop shared by one run and a stacked group: `run_steps` steps the runs from their start
to `steps`, logging, evaluating and checkpointing on the configured cadence; `single_step` is one
gradient step of one run (plus its mask updates and the callbacks)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from sparse_offline_rl.algorithms import OfflineAlgorithm
from sparse_offline_rl.pruning import MaskSet
from sparse_offline_rl.training.setup import Run


@dataclass
class StepInfo:
    """What callbacks see after every step (d3rlpy-style per-step hook)."""

    step: int
    algo: OfflineAlgorithm
    metrics: dict[str, torch.Tensor]
    masks: MaskSet


Callback = Callable[[StepInfo], None]


class Clock:
    """Training seconds of the runs: evaluations and checkpoints are not counted."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs, self.tick = runs, time.perf_counter()

    def stop(self) -> None:
        elapsed = time.perf_counter() - self.tick
        for run in self.runs:
            run.train_seconds += elapsed

    def restart(self) -> None:
        self.tick = time.perf_counter()

    def paused(self, sync: Callable[[], None], work: Callable[[], None]) -> None:
        """`work` on current algorithms (after `sync`), off the clock."""
        self.stop()
        sync()
        work()
        self.restart()


def run_steps(runs: Sequence[Run], start_step: int, step_fn: Callable[[int], Any],
              split_metrics: Callable[[Any], Sequence[Mapping[str, torch.Tensor]]],
              sync: Callable[[], None] = lambda: None, evaluate_runs: Callable[[int], list[dict[str, float]]] | None = None,
              desc: str = "", stop_step: int | None = None) -> list[dict[str, float]]:
    """The loop from `start_step` to the runs' `steps` (the same for all of them; `stop_step`: stop
    there, even at `steps`, with no final evaluation, returning []): `step_fn(step)` does
    one gradient step of every run and returns its metrics, which `split_metrics` turns into one dict
    per run (only on logging steps). Every `eval.every` and `checkpoint_every` steps (and at the end)
    `sync()` makes the runs' algorithms current (stacked members), then each run evaluates
    (`evaluate_runs`, default: one after the other) and saves its checkpoint. Returns the final
    evaluations."""
    config = runs[0].config
    steps, log_every, eval_every, ckpt_every = config.steps, config.log_every, config.eval.every, config.checkpoint_every
    evaluate_runs = evaluate_runs or (lambda step: [run.run_eval(step) for run in runs])
    bar = tqdm(total=steps, initial=start_step, desc=desc, unit="step", disable=not config.progress, dynamic_ncols=True)
    clock = Clock(runs)
    partial = stop_step is not None  # bringing a run level with others: no final evaluation, logger kept open
    stop = steps if stop_step is None else stop_step
    try:
        for step in range(start_step + 1, stop + 1):
            metrics = step_fn(step)
            if step % log_every == 0:
                for run, values in zip(runs, split_metrics(metrics)):
                    run.logger.log(step, "train", {k: float(v) for k, v in values.items()})
            if step % eval_every == 0 and step != steps:
                clock.paused(sync, lambda: record_evals(runs, evaluate_runs(step), bar))
            if step % ckpt_every == 0 and step != steps:
                clock.paused(sync, lambda: [run.save_checkpoint(step) for run in runs])
            bar.update(1)
        clock.stop()
        if partial:
            return []
        sync()
        final = evaluate_runs(steps)
    finally:
        bar.close()
        if not partial:
            for run in runs:
                run.logger.close()
    for run in runs:
        run.save_checkpoint(steps)
    return final


def record_evals(runs: Sequence[Run], results: Sequence[dict[str, float]], bar: tqdm) -> None:
    """An evaluation's results become the runs' `last_eval` (checkpointed) and the bar's score."""
    for run, result in zip(runs, results):
        run.last_eval = result
    bar.set_postfix(score=f"{runs[0].last_eval['normalized_score_mean']:.1f}")


def single_step(run: Run, callbacks: Sequence[Callback] = ()) -> Callable[[int], dict[str, torch.Tensor]]:
    """One gradient step of one run on its own batch (the `step_fn` of `run_steps`)."""
    algo, buffer, masks, batch_size = run.algo, run.buffer, run.masks, run.config.batch_size

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        # No masks.apply() here: the MaskSet re-zeroes pruned entries after every optimizer step.
        batch = buffer.sample(batch_size)
        metrics = algo.update(batch)
        # Mask updates of during-training pruners (new kernels when layers were rebuilt), FLOPs.
        run.kernels = run.sparse_training.after_step(step, algo, masks, batch) or run.kernels
        for callback in callbacks:
            callback(StepInfo(step, algo, metrics, masks))
        return metrics

    return step_fn
