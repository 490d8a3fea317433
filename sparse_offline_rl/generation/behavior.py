"""A compact online SAC, used only to make the behaviour policies that generate the datasets.

    python -m sparse_offline_rl.data.behavior train env=hopper steps=1000000 seed=0 [minutes=M] [work=DIR]
    python -m sparse_offline_rl.data.behavior finalize env=hopper
    python -m sparse_offline_rl.data.behavior plot env=hopper

Behaviour training takes hours of CPU per task, so `train` is built to be stopped and resumed:
- its full state (networks, optimizers, entropy temperature, every RNG, counters) is written atomically
  to a work folder every `every` env steps, beside the replay buffer, which is a memory-mapped file that
  only ever grows; `train` started again with the same env and seed continues from there (the episode
  that was running restarts, so a resumed run is equivalent to, not bit-identical with, an
  uninterrupted one). The work folder is `work=`, else `<cache>/behavior/<env>-seed<seed>` (cache:
  $SORL_CACHE_DIR, else ~/.cache/sparse_offline_rl);
- every `snapshot_every` steps a compact snapshot goes into the repository (`datasets/behavior/`):
  half-precision networks and temperature, the training log, and the actors of a sparse set of
  checkpoints, without replay buffer or optimizer state. Committed now and then, it lets a replaced
  machine resume: the buffer is refilled with `refill` env steps of the current policy and Adam
  restarts from fresh moments.
Every `every` steps the actor is also kept (for the medium / medium-replay choice) with a 10-episode
evaluation of the stochastic policy, the one that collects data.
`finalize` picks the quality levels from those checkpoints, measures them over 100 episodes and
writes the small shipped files under `datasets/policies/<env>/` (actors.npz + policies.json).
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from sparse_offline_rl.data.envs import Task, get_task
from sparse_offline_rl.data.project import POLICY_DIR, REPO_ROOT, reset_seed
from sparse_offline_rl.generation.collect import rollout
from sparse_offline_rl.generation.policies import ActorPolicy, RandomPolicy, actor_from_arrays, actor_to_arrays
from sparse_offline_rl.generation.sac import SAC, ReplayBuffer, TwinCritic, VectorLinear
from sparse_offline_rl.io import (
    atomic_save_figure,
    atomic_torch_save,
    atomic_write_bytes_with,
    atomic_write_json,
    cache_dir,
    file_lock,
)

SNAPSHOT_DIR = REPO_ROOT / "datasets" / "behavior"
TRAIN_SEED_OFFSET = 500  # training resets use seeds far from dataset (0..) and reference (900..) seeds
CHECKPOINT_EVAL_SEED = 800
CHECKPOINT_EVAL_EPISODES = 10
REFERENCE_SEED = 900  # 100-episode reference returns (random / medium / expert)
MEDIUM_FRACTION = 1.0 / 3.0
MEDIUM_CANDIDATES = 5  # checkpoints re-measured on `episodes` episodes when choosing medium
REPLAY_EVERY = 20_000  # medium-replay mixes the checkpoints every REPLAY_EVERY steps up to medium
GAMMA, TAU = 0.99, 0.005

# The SAC itself is generation.sac; its names stay importable from here, where they were before.
__all__ = ["CHECKPOINT_EVAL_EPISODES", "CHECKPOINT_EVAL_SEED", "MEDIUM_CANDIDATES", "MEDIUM_FRACTION", "REFERENCE_SEED",
           "REPLAY_EVERY", "SAC", "SNAPSHOT_DIR", "TRAIN_SEED_OFFSET", "BehaviourRun", "ReplayBuffer", "TwinCritic",
           "VectorLinear", "choose_levels", "finalize", "main", "measure_returns", "parse_kv", "plot_training",
           "snapshot_dir", "snapshot_keeps", "train", "work_dir"]


def work_dir(env: str, seed: int = 0) -> Path:
    return cache_dir() / "behavior" / f"{get_task(env).name}-seed{seed}"


def snapshot_dir(env: str, seed: int = 0) -> Path:
    return SNAPSHOT_DIR / f"{get_task(env).name}-seed{seed}"


def snapshot_keeps(step: int) -> bool:
    """Checkpoints whose actor goes into the committed snapshot: dense early (medium policies are
    reached early in training), sparse later, so the repository grows by a few MB per task."""
    return step % 10_000 == 0 if step <= 200_000 else step % 50_000 == 0


def _save_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    atomic_write_bytes_with(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def train(env: str, seed: int = 0, work: Path | str | None = None, **options: Any) -> Path:
    """Runs (or resumes) SAC, see `_train`. One process per work folder: a second one would interleave
    its checkpoints and buffer rows with the first's, so it stops at once with a clear error."""
    folder = Path(work) if work else work_dir(env, seed)
    with file_lock(folder / "train.lock", busy_error=f"{folder} is being trained by another process (its "
                                                      "state, buffer and snapshots are that process's): not starting"):
        return _train(env, seed=seed, work=folder, **options)


def _train(env: str, steps: int = 1_000_000, minutes: float | None = None, seed: int = 0, every: int = 10_000,
          snapshot_every: int = 50_000, start_steps: int = 10_000, batch_size: int = 256, hidden: int = 256,
          lr: float = 3e-4, refill: int = 20_000, work: Path | str | None = None,
          snapshot: Path | str | None = None, progress: bool = True) -> Path:
    """Runs (or resumes) SAC until `steps` env steps, or until `minutes` of wall time in this call."""
    torch.set_num_threads(1)  # the machine is shared: one core per training run
    task = get_task(env)
    work = Path(work) if work else work_dir(task.name, seed)
    snap = Path(snapshot) if snapshot else snapshot_dir(task.name, seed)
    (work / "actors").mkdir(parents=True, exist_ok=True)
    hyper = {"hidden": [hidden, hidden], "lr": lr, "gamma": GAMMA, "tau": TAU, "batch_size": batch_size,
             "start_steps": start_steps, "updates_per_step": 1, "target_entropy": -float(task.act_dim),
             "initial_alpha": 1.0, "log_std_range": [-5.0, 2.0], "optimizer": "Adam", "torch_threads": 1,
             "checkpoint_every": every, "checkpoint_eval_episodes": CHECKPOINT_EVAL_EPISODES, "refill": refill}
    run = BehaviourRun(task, work, snap, seed, steps, snapshot_every, hidden, lr, hyper)
    resumed_from = run.resume(refill)
    if run.step >= steps:
        print(f"[{task.name}] already trained to {run.step} steps (step cap {steps})", flush=True)
        return work
    run.start_session(resumed_from)
    if run.step == 0:
        run.checkpoint()
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=run.step, desc=f"SAC {task.name}", unit="step", mininterval=2.0)
    while run.step < steps:
        refilling = run.refill_left > 0  # after a snapshot resume: collect with the current policy, no updates
        run.env_step(uniform=run.step < start_steps and not refilling)
        if refilling:
            run.refill_left -= 1
            continue
        run.step += 1
        if run.step > start_steps:
            run.sac.update(*run.buffer.sample(run.rng, batch_size))
        if bar is not None:
            bar.update(1)
        if run.step % every == 0 or run.step == steps:
            run.checkpoint()
        if minutes is not None and time.time() - run.t0 > minutes * 60:
            if run.step % every:
                run.checkpoint()
            break
    if bar is not None:
        bar.close()
    run.log["finished"] = run.step >= steps
    atomic_write_json(work / "train_log.json", run.log)
    return work


class BehaviourRun:
    """One call of `train`: the SAC, its replay buffer and RNGs, the training log and the counters that a
    checkpoint saves, with the steps that read or write them."""

    def __init__(self, task: Task, work: Path, snap: Path, seed: int, steps: int, snapshot_every: int, hidden: int,
                 lr: float, hyper: dict[str, Any]) -> None:
        self.task, self.work, self.snap, self.seed = task, work, snap, seed
        self.steps, self.snapshot_every = steps, snapshot_every
        torch.manual_seed(seed)
        self.sac = SAC(task.obs_dim, task.act_dim, hidden, lr, GAMMA, TAU)
        self.buffer = ReplayBuffer(work / "buffer.f32", steps, task.obs_dim, task.act_dim)
        self.rng = np.random.default_rng(seed)
        self.log: dict[str, Any] = {"env": task.name, "env_id": task.env_id, "seed": seed, "algorithm": "SAC",
                                    "hyperparameters": hyper, "step_cap": steps, "steps_done": 0, "wall_s": 0.0,
                                    "sessions": [], "checkpoints": [], "train_episodes": []}
        self.step, self.episode, self.refill_left = 0, 0, 0

    def resume(self, refill: int) -> str:
        """Continues from the work folder, else from the committed snapshot; says where it started."""
        work, snap, seed = self.work, self.snap, self.seed
        if (work / "state.pt").exists():
            state = torch.load(work / "state.pt", weights_only=True)
            self.sac.load_state_dict(state["sac"])
            torch.set_rng_state(state["torch_rng"])
            self.rng.bit_generator.state = json.loads(state["numpy_rng"])
            self.step, self.episode, self.buffer.size = int(state["step"]), int(state["episode"]), int(state["buffer_size"])
            self.log = json.loads((work / "train_log.json").read_text())
            return f"work folder at step {self.step}"
        if not (snap / "snapshot.npz").exists():
            return "scratch"
        arrays = _load_npz(snap / "snapshot.npz")
        self.sac.load_compact(arrays)
        self.log = json.loads((snap / "train_log.json").read_text())
        self.step, self.episode = int(arrays["step"]), int(arrays["episode"])
        self.rng = np.random.default_rng([seed, self.step])
        torch.manual_seed(seed * 1_000_003 + self.step)
        for name in (snap / "actors").glob("*.npz"):  # fp16 actors of the committed checkpoints
            _save_npz(work / "actors" / name.name, {k: v.astype(np.float32) for k, v in _load_npz(name).items()})
        self.refill_left = refill
        return f"committed snapshot at step {self.step} (buffer refilled with {refill} steps, fresh Adam moments)"

    def start_session(self, resumed_from: str) -> None:
        """Logs this call, opens the training env at the current episode and starts the clocks."""
        self.log["step_cap"] = self.steps
        self.log["sessions"].append({"from_step": self.step, "resumed_from": resumed_from,
                                     "command": "python -m sparse_offline_rl.data.behavior " + " ".join(sys.argv[1:])})
        print(f"[{self.task.name}] starting at step {self.step} from {resumed_from}", flush=True)
        self.env = gym.make(self.task.env_id, disable_env_checker=True)
        self.obs, _ = self.env.reset(seed=reset_seed(TRAIN_SEED_OFFSET + self.seed, self.episode))
        self.ep_return, self.ep_len = 0.0, 0
        self.wall_before = float(self.log["wall_s"])
        self.t0 = self.last_t = time.time()
        self.last_step = self.step

    def env_step(self, uniform: bool) -> None:
        """One env step with a uniform action or the current policy's, into the buffer; a finished
        episode goes into the log and the next one starts."""
        if uniform:
            action = self.rng.uniform(-1, 1, self.task.act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = self.sac.actor.sample(torch.as_tensor(self.obs, dtype=torch.float32)[None])[0][0].numpy()
        next_obs, reward, term, trunc, _ = self.env.step(action)
        self.buffer.add(self.obs, action, float(reward), next_obs, bool(term))
        self.ep_return, self.ep_len = self.ep_return + float(reward), self.ep_len + 1
        self.obs = next_obs
        if term or trunc:
            self.log["train_episodes"].append([self.step + 1, round(self.ep_return, 2), self.ep_len])
            self.episode += 1
            self.obs, _ = self.env.reset(seed=reset_seed(TRAIN_SEED_OFFSET + self.seed, self.episode))
            self.ep_return, self.ep_len = 0.0, 0

    def checkpoint(self) -> None:
        """Keeps the actor with a short evaluation, then writes the full state (and a snapshot when due)."""
        step, work, sac = self.step, self.work, self.sac
        _save_npz(work / "actors" / f"step_{step:07d}.npz", actor_to_arrays(sac.actor))
        eps = rollout(self.task.name, ActorPolicy(copy.deepcopy(sac.actor)), CHECKPOINT_EVAL_SEED,
                      episodes=CHECKPOINT_EVAL_EPISODES, n_envs=CHECKPOINT_EVAL_EPISODES)
        rets = [e.ret for e in eps]
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        wall_s = round(self.wall_before + now - self.t0, 1)
        self.log["checkpoints"].append({"name": f"step_{step:07d}", "step": step, "wall_s": wall_s,
                                        "eval_return": float(np.mean(rets)), "eval_return_std": float(np.std(rets)),
                                        "eval_length": float(np.mean([len(e) for e in eps])),
                                        "alpha": sac.log_alpha.exp().item()})
        self.log["steps_done"], self.log["wall_s"] = step, wall_s
        atomic_torch_save(work / "state.pt", {"sac": sac.state_dict(), "torch_rng": torch.get_rng_state(),
                                              "numpy_rng": json.dumps(self.rng.bit_generator.state), "step": step,
                                              "episode": self.episode, "buffer_size": self.buffer.size})
        self.buffer.rows.flush()
        atomic_write_json(work / "train_log.json", self.log)
        if step % self.snapshot_every == 0 or step >= self.steps:
            self.write_snapshot()
        speed = (f" {rate:.0f} steps/s, ETA {(self.steps - step) / rate / 3600:.1f} h"
                 if step > self.last_step and rate > 0 else "")
        print(f"[{self.task.name}] step {step} eval {np.mean(rets):.1f} ± {np.std(rets):.1f} alpha "
              f"{sac.log_alpha.exp().item():.3f}{speed}", flush=True)
        self.last_t, self.last_step = time.time(), step

    def write_snapshot(self) -> None:
        """The compact snapshot for the repository: fp16 networks, the log, the kept checkpoints' actors."""
        snap, work = self.snap, self.work
        (snap / "actors").mkdir(parents=True, exist_ok=True)
        for c in self.log["checkpoints"]:
            target = snap / "actors" / f"{c['name']}.npz"
            if snapshot_keeps(c["step"]) and not target.exists() and (work / "actors" / target.name).exists():
                arrays = _load_npz(work / "actors" / target.name)
                _save_npz(target, {k: v.astype(np.float16) for k, v in arrays.items()}, compressed=True)
        _save_npz(snap / "snapshot.npz", {**self.sac.compact_arrays(), "step": np.array(self.step),
                                          "episode": np.array(self.episode)}, compressed=True)
        atomic_write_json(snap / "train_log.json", self.log)


def finalize(env: str, work: Path | str | None = None, policy_dir: Path = POLICY_DIR, episodes: int = 100,
             top: int = 3, seed: int = 0, replay_every: int = REPLAY_EVERY) -> dict[str, Any]:
    """Choose expert / medium / medium-replay checkpoints, measure them over `episodes` episodes, ship them.

    expert = the checkpoint with the best 10-episode evaluation (then re-measured on 100 episodes);
    medium = of the checkpoints whose evaluation is closest to random + (expert - random) / 3 (D4RL's
    "medium" SAC policy reached about a third of its expert), the one whose `episodes`-episode return is
    closest; medium-replay = the checkpoints every REPLAY_EVERY steps from the start of training up to
    medium (equal shares, as each covers the same number of training steps).
    """
    task = get_task(env)
    work = Path(work) if work else work_dir(task.name, seed)
    if not (work / "train_log.json").exists():
        work = snapshot_dir(task.name, seed)  # a replaced machine: the committed snapshot's actors
    log = json.loads((work / "train_log.json").read_text())
    ckpts = [c for c in log["checkpoints"] if (work / "actors" / f"{c['name']}.npz").exists()]
    all_arrays = {c["name"]: {k: v.astype(np.float32) for k, v in _load_npz(work / "actors" / f"{c['name']}.npz").items()}
                  for c in ckpts}

    def measure(name: str) -> dict[str, float]:
        policy = (RandomPolicy(task.act_dim) if name == "random"
                  else ActorPolicy(actor_from_arrays(all_arrays[name], task.obs_dim, task.act_dim)))
        return measure_returns(task.name, policy, name, episodes)

    levels = choose_levels(ckpts, measure, top, replay_every)
    out = policy_dir / task.name
    out.mkdir(parents=True, exist_ok=True)
    # Replay-only actors go in half precision (their data is a mixture; this halves the repository's
    # growth); expert and medium stay float32, exactly the policies measured above.
    measured = {levels["expert"], levels["medium"]}
    keep = sorted(set(levels["medium-replay"]) | measured)
    _save_npz(out / "actors.npz", {f"{n}/{k}": (v if n in measured else v.astype(np.float16))
                                   for n in keep for k, v in all_arrays[n].items()}, compressed=True)
    info = {
        "env": task.name, "env_id": task.env_id,
        "training": {k: log[k] for k in ("algorithm", "seed", "hyperparameters", "step_cap", "steps_done", "wall_s",
                                         "sessions")},
        "policies": {k: levels[k] for k in ("expert", "medium", "medium-replay")},
        "medium_rule": f"of the {MEDIUM_CANDIDATES} checkpoints (up to expert) whose 10-episode return is nearest random + "
                       f"{MEDIUM_FRACTION:.3f} * (expert - random) = {levels['target']:.1f}, the one whose {episodes}-episode "
                       f"return is nearest",
        "medium_replay_rule": f"every checkpoint up to medium whose step is a multiple of {replay_every} (float16)",
        **{k: levels[k] for k in ("returns", "expert_candidates", "medium_candidates")},
        "reference_seed": REFERENCE_SEED,
        "ref_min_score": levels["returns"]["random"]["mean"], "ref_max_score": levels["returns"]["expert"]["mean"],
        "checkpoints": ckpts,
        "finalize_command": f"python -m sparse_offline_rl.data.behavior finalize env={task.name} episodes={episodes} top={top}",
    }
    atomic_write_json(out / "policies.json", info)
    plot_training(log, out / "return_curve.png")
    return info


def measure_returns(env: str, policy: Any, label: str, episodes: int) -> dict[str, float]:
    """Return statistics of `episodes` episodes from the reference seed."""
    eps = rollout(env, policy, REFERENCE_SEED, episodes=episodes, n_envs=20, progress=f"{env} {label}")
    rets = np.array([e.ret for e in eps])
    lens = np.array([len(e) for e in eps])
    return {"mean": float(rets.mean()), "std": float(rets.std()), "min": float(rets.min()),
            "max": float(rets.max()), "mean_length": float(lens.mean()), "episodes": len(eps)}


def choose_levels(ckpts: list[dict[str, Any]], measure: Callable[[str], dict[str, float]], top: int,
                  replay_every: int) -> dict[str, Any]:
    """The expert, medium and medium-replay checkpoint names (see `finalize`), the medium target, and
    the measured returns; `measure` takes a checkpoint name or "random"."""
    random_stats = measure("random")
    # Re-measure the top few candidates on `episodes` episodes: 10-episode evaluations are noisy.
    best = sorted(ckpts, key=lambda c: c["eval_return"], reverse=True)[:top]
    candidates = {c["name"]: measure(c["name"]) for c in best}
    expert_name = max(candidates, key=lambda n: candidates[n]["mean"])
    expert_stats = candidates[expert_name]
    target = random_stats["mean"] + MEDIUM_FRACTION * (expert_stats["mean"] - random_stats["mean"])
    step_of = {c["name"]: c["step"] for c in ckpts}
    # Medium: a policy half-way through learning is erratic (walker2d at ~1/3 of the expert: 10-episode
    # means off by 1000), so the few checkpoints nearest the target are re-measured and the closest kept.
    before = [c for c in ckpts if c["step"] <= step_of[expert_name]]
    near = sorted(before, key=lambda c: (abs(c["eval_return"] - target), c["step"]))[:MEDIUM_CANDIDATES]
    medium_candidates = {c["name"]: measure(c["name"]) for c in near}
    medium_name = min(medium_candidates, key=lambda n: abs(medium_candidates[n]["mean"] - target))
    replay = [c["name"] for c in ckpts if c["step"] <= step_of[medium_name] and c["step"] % replay_every == 0]
    return {"expert": expert_name, "medium": medium_name, "medium-replay": replay, "target": target,
            "returns": {"random": random_stats, "medium": medium_candidates[medium_name], "expert": expert_stats},
            "expert_candidates": candidates, "medium_candidates": medium_candidates}


def plot_training(log: dict[str, Any], path: Path) -> Path:
    """The return curve of a behaviour run: training episodes (smoothed) and the checkpoint evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    episodes = np.array(log["train_episodes"], dtype=np.float64).reshape(-1, 3)
    if len(episodes):
        width = max(1, len(episodes) // 100)
        smooth = np.convolve(episodes[:, 1], np.ones(width) / width, mode="valid")
        ax.plot(episodes[width - 1:, 0], smooth, color="0.6", lw=1, label=f"training episodes (mean of {width})")
    ckpts = log["checkpoints"]
    steps = np.array([c["step"] for c in ckpts])
    mean = np.array([c["eval_return"] for c in ckpts])
    std = np.array([c.get("eval_return_std", 0.0) for c in ckpts])
    ax.plot(steps, mean, "o-", ms=2.5, color="C0", label=f"checkpoint evaluation ({CHECKPOINT_EVAL_EPISODES} episodes, "
                                                          "stochastic policy)")
    ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.2, lw=0)
    task = get_task(log["env"])
    ax.axhline(task.d4rl_expert_score, color="C3", ls="--", lw=1, label=f"D4RL expert reference ({task.d4rl_expert_score:g})")
    ax.set_xlabel("env steps (= SAC updates)")
    ax.set_ylabel("episode return")
    ax.set_title(f"SAC behaviour training, {task.env_id}, seed {log['seed']} ({log['wall_s'] / 3600:.1f} h)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return atomic_save_figure(fig, path)


def parse_kv(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        if "=" not in a:
            raise SystemExit(f"expected key=value, got '{a}'")
        k, v = a.split("=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "finalize", "plot"):
        raise SystemExit("usage: python -m sparse_offline_rl.data.behavior {train|finalize|plot} env=NAME [key=value ...]")
    kv = parse_kv(argv[1:])
    seed = int(kv.get("seed", 0))
    if argv[0] == "train":
        train(kv["env"], steps=int(kv.get("steps", 1_000_000)), seed=seed,
              minutes=float(kv["minutes"]) if "minutes" in kv else None, every=int(kv.get("every", 10_000)),
              snapshot_every=int(kv.get("snapshot_every", 50_000)), start_steps=int(kv.get("start_steps", 10_000)),
              batch_size=int(kv.get("batch", 256)), hidden=int(kv.get("hidden", 256)), lr=float(kv.get("lr", 3e-4)),
              refill=int(kv.get("refill", 20_000)), work=kv.get("work"), snapshot=kv.get("snapshot"))
    elif argv[0] == "plot":
        source = Path(kv["work"]) if "work" in kv else work_dir(kv["env"], seed)
        if not (source / "train_log.json").exists():
            source = snapshot_dir(kv["env"], seed)
        out = Path(kv.get("out", snapshot_dir(kv["env"], seed) / "return_curve.png"))
        print(plot_training(json.loads((source / "train_log.json").read_text()), out))
    else:
        info = finalize(kv["env"], work=kv.get("work"), episodes=int(kv.get("episodes", 100)),
                        top=int(kv.get("top", 3)), seed=seed)
        print(json.dumps({"policies": info["policies"], "returns": info["returns"]}, indent=1))


if __name__ == "__main__":
    main()
