"""Offline selection scores: rank trained agents from the dataset alone, without one environment step.

Each score of a run (README, "Choosing without the simulator"):
- `td_error`: mean squared TD error of the agent's critics (the diagnostics' target: V(s') for IQL,
  else min target-critic Q'(s', pi(s'))) on held-out transitions, divided by reward_scale^2 (data
  reward units squared). Lower is better.
- `bc_mse`: mean squared difference between pi(s) and the data's action on held-out transitions.
  Lower is better.
- `q_s0`: the agent's own min-critic Q(s0, pi(s0)) / reward_scale, mean over the dataset's initial
  states. Higher is better (and biased upwards where the critic over-estimates).
- `fqe`: fitted Q evaluation of pi (evaluation.fqe): a fresh critic fitted on all the dataset's
  transitions for this policy, its mean Q(s0, pi(s0)); data reward units. Higher is better.
- `logme`, `logme_actor`: LogME (evaluation.logme) of the data's discounted returns-to-go
  (standardised) given the critic's penultimate features at (s, a) / the actor's at s, on held-out
  rows. Higher is better.

Held-out rows are the run's validation split (`val_fraction` > 0); a run without one is scored on
its training data and its record says so (`eval_split: train`). Every score also has bootstrap
replicates (rows, or initial states, resampled; LogME recomputed on each), from which a ranking
reads P(best) and the expected regret under the score's own noise (evaluation.ranking).

Randomness: the rows, the FQE critic and the replicates are drawn from the selection seed's own
streams (seeding.Stream.FQE, SELECTION_ROWS, SELECTION_BOOTSTRAP), the same for every run, inside
`untouched_rngs`: scoring draws nothing from training's generators and leaves every RNG as it was.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from sparse_offline_rl.data.buffer import TransitionBuffer
from sparse_offline_rl.data.dataset import OfflineDataset
from sparse_offline_rl.evaluation.agent import EvalAgent, load_agent
from sparse_offline_rl.evaluation.diagnostics import bc_mse_rows, td_error_rows
from sparse_offline_rl.evaluation.fqe import FQESettings, fit_fqe
from sparse_offline_rl.evaluation.logme import logme, logme_replicates, penultimate_features, returns_to_go
from sparse_offline_rl.evaluation.ranking import SCORES
from sparse_offline_rl.evaluation.suite import q_of_start_states
from sparse_offline_rl.io import atomic_write_json, code_version, load_checkpoint
from sparse_offline_rl.pruning.rng import untouched_rngs
from sparse_offline_rl.seeding import Stream, stream_seed

SCORES_FILE = "offline_scores.json"


@dataclass(frozen=True)
class SelectionSettings:
    seed: int = 0
    rows: int = 20_000  # held-out transitions for the TD error and BC loss (all when fewer)
    logme_rows: int = 4096  # of those, the ones LogME uses (its cost is rows x features^2 per replicate)
    reps: int = 100  # bootstrap replicates per score
    scores: tuple[str, ...] = tuple(SCORES)
    fqe: FQESettings = field(default_factory=FQESettings)


def _entry(values: np.ndarray, data: str, rng: np.random.Generator, reps: int, **extra: Any) -> dict[str, Any]:
    """A mean-type score: its value and the means of `reps` resamples of its items."""
    idx = rng.integers(0, len(values), (reps, len(values)))
    return {"value": float(values.mean()), "replicates": values[idx].mean(1).tolist(), "data": data,
            "n": int(len(values)), **extra}


def _none(reason: str) -> dict[str, Any]:
    return {"value": None, "reason": reason}


class _Scorer:
    """The scores of one agent; each method returns a score's record."""

    def __init__(self, agent: EvalAgent, dataset: OfflineDataset, settings: SelectionSettings) -> None:
        self.agent, self.dataset, self.settings = agent, dataset, settings
        self.split = "val" if agent.val_data is not None else "train"
        self.held_out = agent.val_data if agent.val_data is not None else agent.train_data
        order = np.random.default_rng(stream_seed(settings.seed, Stream.SELECTION_ROWS)).permutation(len(self.held_out))
        self.rows = np.sort(order[:settings.rows])
        buffer = TransitionBuffer(self.held_out, device=agent.device, normalizer=agent.normalizer,
                                  reward_scale=agent.reward_scale)
        self.batch = buffer.gather(torch.as_tensor(self.rows, device=buffer.device))
        self.data = f"{self.split} split, {len(self.rows)} of {len(self.held_out)} transitions"

    def rng(self, score: str) -> np.random.Generator:
        # One generator per score, from the selection seed only: scores over the same items (q_s0, fqe
        # over the dataset's initial states) resample the same items in every run (paired).
        return np.random.default_rng([stream_seed(self.settings.seed, Stream.SELECTION_BOOTSTRAP), list(SCORES).index(score)])

    def td_error(self) -> dict[str, Any]:
        rows = td_error_rows(self.agent.algo, self.batch, self.agent.discount)
        if rows is None:
            return _none("the algorithm has no network named 'critic'")
        values = rows.double().cpu().numpy() / self.agent.reward_scale ** 2
        return _entry(values, self.data, self.rng("td_error"), self.settings.reps)

    def bc_mse(self) -> dict[str, Any]:
        values = bc_mse_rows(self.agent.algo, self.batch).double().cpu().numpy()
        return _entry(values, self.data, self.rng("bc_mse"), self.settings.reps)

    def initial_obs(self) -> np.ndarray:
        return self.dataset.observations[self.dataset.episode_starts]

    def q_s0(self) -> dict[str, Any]:
        q = q_of_start_states(self.agent, self.initial_obs())
        if q is None:
            return _none("the algorithm has no network named 'critic'")
        data = f"all {len(q)} initial states of the dataset"
        return _entry(q / self.agent.reward_scale, data, self.rng("q_s0"), self.settings.reps)

    def fqe(self) -> dict[str, Any]:
        agent = self.agent
        buffer = TransitionBuffer(self.dataset, device=agent.device, normalizer=agent.normalizer)
        s0 = buffer.observations[torch.as_tensor(self.dataset.episode_starts, device=buffer.device)]
        result = fit_fqe(agent.algo.act, buffer, s0, agent.discount, self.settings.fqe,
                         seed=stream_seed(self.settings.seed, Stream.FQE), owners=(agent.algo,))
        data = f"fit on all {len(self.dataset)} transitions, value over its {len(s0)} initial states"
        return _entry(result.per_state, data, self.rng("fqe"), self.settings.reps, curve=result.curve,
                      settings=dataclasses.asdict(self.settings.fqe))

    def _logme(self, score: str, network: str, *inputs: torch.Tensor) -> dict[str, Any]:
        net = self.agent.algo.networks().get(network)
        features = None if net is None else penultimate_features(net, *inputs)
        if features is None:
            return _none(f"no network named '{network}' with a final layer to read features from")
        rtg = returns_to_go(self.held_out, self.agent.discount)[self.rows[:self.settings.logme_rows]]
        y = (rtg - rtg.mean()) / max(rtg.std(), 1e-12)  # standardised: the score reads alike on any reward scale
        f = features.double().cpu()
        fit = logme(f, y)
        data = f"{self.split} split, {len(y)} rows, {f.shape[1]} features, discounted returns-to-go"
        return {"value": fit.evidence, "replicates": logme_replicates(f, y, self.settings.reps, self.rng(score)).tolist(),
                "data": data, "n": len(y), "alpha": fit.alpha, "beta": fit.beta, "converged": fit.converged}

    def logme(self) -> dict[str, Any]:
        n = self.settings.logme_rows
        return self._logme("logme", "critic", self.batch.observations[:n], self.batch.actions[:n])

    def logme_actor(self) -> dict[str, Any]:
        return self._logme("logme_actor", "actor", self.batch.observations[:self.settings.logme_rows])


def score_agent(agent: EvalAgent, dataset: OfflineDataset, settings: SelectionSettings = SelectionSettings()) -> dict[str, Any]:
    """Every requested score of `agent`, trained on (a split of) `dataset`."""
    unknown = [s for s in settings.scores if s not in SCORES]
    if unknown:
        raise ValueError(f"scores={','.join(settings.scores)}: unknown score(s) {', '.join(unknown)}; accepted: {', '.join(SCORES)}")
    out: dict[str, Any] = {}
    with untouched_rngs(agent.algo), torch.no_grad():
        scorer = _Scorer(agent, dataset, settings)
        for name in settings.scores:
            start = time.perf_counter()
            with torch.enable_grad() if name == "fqe" else torch.no_grad():  # only FQE trains anything
                out[name] = getattr(scorer, name)()
            out[name]["seconds"] = time.perf_counter() - start
    return {"eval_split": scorer.split, "scores": out}


def true_result(run_dir: Path | str) -> dict[str, Any] | None:
    """The run's final evaluation in the simulator (summary.json), when it has one."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    final = json.loads(path.read_text()).get("eval") or {}
    if final.get("return_mean") is None:
        return None
    return {"return_mean": final["return_mean"], "normalized_score_mean": final.get("normalized_score_mean")}


def run_dataset_key(run_dir: Path | str) -> tuple[str, str]:
    cfg = load_checkpoint(Path(run_dir) / "checkpoint.pt")["config"]
    return cfg["dataset"], cfg["env"]


def score_run(run_dir: Path | str, dataset: OfflineDataset, settings: SelectionSettings = SelectionSettings(),
              device: str = "cpu") -> dict[str, Any]:
    """The run's record: who it is, its scores, its true result if any; written to RUN_DIR/offline_scores.json."""
    start = time.perf_counter()
    agent = load_agent(run_dir, dataset=dataset, device=device)
    record = {"run_dir": str(run_dir), "meta": agent.meta, **score_agent(agent, dataset, settings),
              "true": true_result(run_dir), "settings": settings_record(settings), "code": code_version()}
    record["seconds"] = time.perf_counter() - start
    atomic_write_json(Path(run_dir) / SCORES_FILE, record)
    return record


def settings_record(settings: SelectionSettings) -> dict[str, Any]:
    """The settings as offline_scores.json keeps them (JSON: tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def scored_before(run_dir: Path | str, settings: SelectionSettings) -> dict[str, Any] | None:
    """RUN_DIR/offline_scores.json if it scored this checkpoint (same step) with these settings, its
    true result read again (a run may have finished since); else None. Scoring a study's runs again
    after more of them finish then costs only the new ones."""
    prior = read_scores(run_dir)
    if prior is None or prior.get("settings") != settings_record(settings):
        return None
    if prior.get("meta", {}).get("step") != load_checkpoint(Path(run_dir) / "checkpoint.pt").get("step"):
        return None
    return {**prior, "true": true_result(run_dir), "reused": True}


def select_runs(run_dirs: Sequence[Path | str], settings: SelectionSettings = SelectionSettings(), device: str = "cpu",
                load: Callable[[str, str], OfflineDataset] | None = None,
                progress: Callable[[Mapping[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Score every run (reusing `scored_before` records); each dataset is loaded once (`load(dataset,
    env)`, default `data.load_dataset`)."""
    if load is None:
        from sparse_offline_rl.data import load_dataset as load_by_id

        def load(name: str, env: str) -> OfflineDataset:
            return load_by_id(name, env=env)
    for run_dir in run_dirs:
        if not (Path(run_dir) / "checkpoint.pt").exists():
            raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint.pt there (train the run first, or check the path)")
    datasets: dict[tuple[str, str], OfflineDataset] = {}
    records = []
    for run_dir in run_dirs:
        record = scored_before(run_dir, settings)
        if record is None:
            key = run_dataset_key(run_dir)
            if key not in datasets:
                datasets[key] = load(*key)
            record = score_run(run_dir, datasets[key], settings, device)
        records.append(record)
        if progress is not None:
            progress(records[-1])
    return records


def read_scores(run_dir: Path | str) -> dict[str, Any] | None:
    path = Path(run_dir) / SCORES_FILE
    return json.loads(path.read_text()) if path.exists() else None


__all__ = ["SCORES", "SCORES_FILE", "SelectionSettings", "read_scores", "score_agent", "score_run", "select_runs",
           "true_result"]
