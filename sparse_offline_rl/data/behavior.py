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
import math
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from sparse_offline_rl.data.envs import get_task
from sparse_offline_rl.data.policies import (
    POLICY_DIR,
    REPO_ROOT,
    ActorPolicy,
    GaussianActor,
    RandomPolicy,
    actor_from_arrays,
    actor_to_arrays,
)
from sparse_offline_rl.data.rollout import reset_seed, rollout
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


def work_dir(env: str, seed: int = 0) -> Path:
    return cache_dir() / "behavior" / f"{get_task(env).name}-seed{seed}"


def snapshot_dir(env: str, seed: int = 0) -> Path:
    return SNAPSHOT_DIR / f"{get_task(env).name}-seed{seed}"


def snapshot_keeps(step: int) -> bool:
    """Checkpoints whose actor goes into the committed snapshot: dense early (medium policies are
    reached early in training), sparse later, so the repository grows by a few MB per task."""
    return step % 10_000 == 0 if step <= 200_000 else step % 50_000 == 0


class VectorLinear(nn.Module):
    """`n` independent linear layers applied in one batched matmul (the twin critics)."""

    def __init__(self, n: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n: int = 2) -> None:
        super().__init__()
        self.n = n
        self.net = nn.Sequential(
            VectorLinear(n, obs_dim + act_dim, hidden), nn.ReLU(),
            VectorLinear(n, hidden, hidden), nn.ReLU(),
            VectorLinear(n, hidden, 1),
        )

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(self.n, -1, -1)
        return self.net(x).squeeze(-1)  # (n, B)


class ReplayBuffer:
    """Transitions in one memory-mapped float32 file (obs, act, reward, next_obs, terminal per row).

    Rows are only ever appended, so the file written up to a checkpoint is exactly the buffer of that
    checkpoint; rows written after it are simply overwritten when training resumes."""

    def __init__(self, path: Path, capacity: int, obs_dim: int, act_dim: int) -> None:
        self.obs_dim, self.act_dim = obs_dim, act_dim
        width = 2 * obs_dim + act_dim + 2
        if path.exists():  # keep what is there; grow the file if training now runs longer
            capacity = max(capacity, path.stat().st_size // (width * 4))
            with open(path, "r+b") as f:
                f.truncate(capacity * width * 4)
            self.rows = np.memmap(path, dtype=np.float32, mode="r+", shape=(capacity, width))
        else:
            self.rows = np.memmap(path, dtype=np.float32, mode="w+", shape=(capacity, width))
        self.size = 0

    def add(self, obs: np.ndarray, act: np.ndarray, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        if self.size == len(self.rows):
            raise RuntimeError(f"replay buffer full ({self.size} rows): raise steps= to train longer")
        o, a = self.obs_dim, self.act_dim
        row = self.rows[self.size]
        row[:o], row[o:o + a], row[o + a], row[o + a + 1:2 * o + a + 1], row[-1] = obs, act, reward, next_obs, terminal
        self.size += 1

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        batch = torch.from_numpy(self.rows[np.sort(rng.integers(0, self.size, batch_size))])
        o, a = self.obs_dim, self.act_dim
        return batch[:, :o], batch[:, o:o + a], batch[:, o + a], batch[:, o + a + 1:2 * o + a + 1], batch[:, -1]


class SAC:
    """Twin critics, automatic entropy temperature (target -|A|), Polyak targets: SB3 / rl-zoo's MuJoCo
    settings, with this project's tanh-Gaussian actor (log-std clamped to [-5, 2])."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, lr: float, gamma: float, tau: float) -> None:
        self.actor = GaussianActor(obs_dim, act_dim, hidden)
        self.critic = TwinCritic(obs_dim, act_dim, hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=lr, fused=True)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=lr, fused=True)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=lr)
        self.target_entropy, self.gamma, self.tau = -float(act_dim), gamma, tau

    def update(self, o: torch.Tensor, a: torch.Tensor, r: torch.Tensor, no: torch.Tensor, d: torch.Tensor) -> None:
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            na, nlogp = self.actor.sample(no)
            target = r + self.gamma * (1 - d) * (self.critic_target(no, na).min(0).values - alpha * nlogp)
        critic_loss = ((self.critic(o, a) - target) ** 2).mean(1).sum()
        self.opt_critic.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.opt_critic.step()

        self.critic.requires_grad_(False)  # the actor loss differentiates through Q into actions only
        pa, logp = self.actor.sample(o)
        actor_loss = (alpha * logp - self.critic(o, pa).min(0).values).mean()
        self.opt_actor.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.opt_actor.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.opt_alpha.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.opt_alpha.step()
        with torch.no_grad():
            tp, p = list(self.critic_target.parameters()), list(self.critic.parameters())
            torch._foreach_mul_(tp, 1 - self.tau)
            torch._foreach_add_(tp, p, alpha=self.tau)

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def state_dict(self) -> dict[str, Any]:
        return {**{k: m.state_dict() for k, m in self.modules().items()}, "log_alpha": self.log_alpha.detach().clone(),
                "opt_actor": self.opt_actor.state_dict(), "opt_critic": self.opt_critic.state_dict(),
                "opt_alpha": self.opt_alpha.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for k in ("opt_actor", "opt_critic", "opt_alpha"):
            if k in state:
                getattr(self, k).load_state_dict(state[k])

    def compact_arrays(self) -> dict[str, np.ndarray]:
        """Half-precision networks and temperature: what a committed snapshot needs to resume."""
        out = {f"{k}/{n}": v.detach().numpy().astype(np.float16)
               for k in ("actor", "critic") for n, v in self.modules()[k].state_dict().items()}
        out["log_alpha"] = self.log_alpha.detach().numpy().astype(np.float32)
        return out

    def load_compact(self, arrays: dict[str, np.ndarray]) -> None:
        for k in ("actor", "critic"):
            self.modules()[k].load_state_dict(
                {n[len(k) + 1:]: torch.as_tensor(v.astype(np.float32)) for n, v in arrays.items() if n.startswith(k + "/")})
        self.critic_target.load_state_dict(self.critic.state_dict())
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(arrays["log_alpha"]))


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
    gamma, tau = 0.99, 0.005
    hyper = {"hidden": [hidden, hidden], "lr": lr, "gamma": gamma, "tau": tau, "batch_size": batch_size,
             "start_steps": start_steps, "updates_per_step": 1, "target_entropy": -float(task.act_dim),
             "initial_alpha": 1.0, "log_std_range": [-5.0, 2.0], "optimizer": "Adam", "torch_threads": 1,
             "checkpoint_every": every, "checkpoint_eval_episodes": CHECKPOINT_EVAL_EPISODES, "refill": refill}

    torch.manual_seed(seed)
    sac = SAC(task.obs_dim, task.act_dim, hidden, lr, gamma, tau)
    buffer = ReplayBuffer(work / "buffer.f32", steps, task.obs_dim, task.act_dim)
    rng = np.random.default_rng(seed)
    log: dict[str, Any] = {"env": task.name, "env_id": task.env_id, "seed": seed, "algorithm": "SAC",
                           "hyperparameters": hyper, "step_cap": steps, "steps_done": 0, "wall_s": 0.0,
                           "sessions": [], "checkpoints": [], "train_episodes": []}
    step, episode, refill_left = 0, 0, 0
    if (work / "state.pt").exists():
        state = torch.load(work / "state.pt", weights_only=True)
        sac.load_state_dict(state["sac"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        step, episode, buffer.size = int(state["step"]), int(state["episode"]), int(state["buffer_size"])
        log = json.loads((work / "train_log.json").read_text())
        resumed_from = f"work folder at step {step}"
    elif (snap / "snapshot.npz").exists():
        arrays = _load_npz(snap / "snapshot.npz")
        sac.load_compact(arrays)
        log = json.loads((snap / "train_log.json").read_text())
        step, episode = int(arrays["step"]), int(arrays["episode"])
        rng = np.random.default_rng([seed, step])
        torch.manual_seed(seed * 1_000_003 + step)
        for name in (snap / "actors").glob("*.npz"):  # fp16 actors of the committed checkpoints
            _save_npz(work / "actors" / name.name, {k: v.astype(np.float32) for k, v in _load_npz(name).items()})
        refill_left = refill
        resumed_from = f"committed snapshot at step {step} (buffer refilled with {refill} steps, fresh Adam moments)"
    else:
        resumed_from = "scratch"
    if step >= steps:
        print(f"[{task.name}] already trained to {step} steps (step cap {steps})", flush=True)
        return work
    log["step_cap"] = steps
    log["sessions"].append({"from_step": step, "resumed_from": resumed_from,
                            "command": "python -m sparse_offline_rl.data.behavior " + " ".join(sys.argv[1:])})
    print(f"[{task.name}] starting at step {step} from {resumed_from}", flush=True)

    gym_env = gym.make(task.env_id, disable_env_checker=True)
    obs, _ = gym_env.reset(seed=reset_seed(TRAIN_SEED_OFFSET + seed, episode))
    ep_return, ep_len = 0.0, 0
    wall_before = float(log["wall_s"])
    t0 = last_t = time.time()
    last_step = step

    def checkpoint() -> None:
        nonlocal last_t, last_step
        arrays = actor_to_arrays(sac.actor)
        _save_npz(work / "actors" / f"step_{step:07d}.npz", arrays)
        eps = rollout(task.name, ActorPolicy(copy.deepcopy(sac.actor)), CHECKPOINT_EVAL_SEED,
                      episodes=CHECKPOINT_EVAL_EPISODES, n_envs=CHECKPOINT_EVAL_EPISODES)
        rets = [e.ret for e in eps]
        now = time.time()
        rate = (step - last_step) / max(now - last_t, 1e-9)
        log["checkpoints"].append({"name": f"step_{step:07d}", "step": step, "wall_s": round(wall_before + now - t0, 1),
                                   "eval_return": float(np.mean(rets)), "eval_return_std": float(np.std(rets)),
                                   "eval_length": float(np.mean([len(e) for e in eps])),
                                   "alpha": sac.log_alpha.exp().item()})
        log["steps_done"], log["wall_s"] = step, round(wall_before + now - t0, 1)
        atomic_torch_save(work / "state.pt", {"sac": sac.state_dict(), "torch_rng": torch.get_rng_state(),
                                              "numpy_rng": json.dumps(rng.bit_generator.state), "step": step,
                                              "episode": episode, "buffer_size": buffer.size})
        buffer.rows.flush()
        atomic_write_json(work / "train_log.json", log)
        if step % snapshot_every == 0 or step >= steps:
            write_snapshot()
        speed = f" {rate:.0f} steps/s, ETA {(steps - step) / rate / 3600:.1f} h" if step > last_step and rate > 0 else ""
        print(f"[{task.name}] step {step} eval {np.mean(rets):.1f} ± {np.std(rets):.1f} alpha "
              f"{sac.log_alpha.exp().item():.3f}{speed}", flush=True)
        last_t, last_step = time.time(), step

    def write_snapshot() -> None:
        (snap / "actors").mkdir(parents=True, exist_ok=True)
        for c in log["checkpoints"]:
            target = snap / "actors" / f"{c['name']}.npz"
            if snapshot_keeps(c["step"]) and not target.exists() and (work / "actors" / target.name).exists():
                arrays = _load_npz(work / "actors" / target.name)
                _save_npz(target, {k: v.astype(np.float16) for k, v in arrays.items()}, compressed=True)
        _save_npz(snap / "snapshot.npz", {**sac.compact_arrays(), "step": np.array(step), "episode": np.array(episode)},
                  compressed=True)
        atomic_write_json(snap / "train_log.json", log)

    if step == 0:
        checkpoint()
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=step, desc=f"SAC {task.name}", unit="step", mininterval=2.0)
    while step < steps:
        refilling = refill_left > 0  # after a snapshot resume: collect with the current policy, no updates
        if step < start_steps and not refilling:
            action = rng.uniform(-1, 1, task.act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = sac.actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
        next_obs, reward, term, trunc, _ = gym_env.step(action)
        buffer.add(obs, action, float(reward), next_obs, bool(term))
        ep_return, ep_len = ep_return + float(reward), ep_len + 1
        obs = next_obs
        if term or trunc:
            log["train_episodes"].append([step + 1, round(ep_return, 2), ep_len])
            episode += 1
            obs, _ = gym_env.reset(seed=reset_seed(TRAIN_SEED_OFFSET + seed, episode))
            ep_return, ep_len = 0.0, 0
        if refilling:
            refill_left -= 1
            continue
        step += 1
        if step > start_steps:
            sac.update(*buffer.sample(rng, batch_size))
        if bar is not None:
            bar.update(1)
        if step % every == 0 or step == steps:
            checkpoint()
        if minutes is not None and time.time() - t0 > minutes * 60:
            if step % every:
                checkpoint()
            break
    if bar is not None:
        bar.close()
    log["finished"] = step >= steps
    atomic_write_json(work / "train_log.json", log)
    return work

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

    def measure(policy: Any, label: str) -> dict[str, float]:
        eps = rollout(task.name, policy, REFERENCE_SEED, episodes=episodes, n_envs=20, progress=f"{task.name} {label}")
        rets = np.array([e.ret for e in eps])
        lens = np.array([len(e) for e in eps])
        return {"mean": float(rets.mean()), "std": float(rets.std()), "min": float(rets.min()),
                "max": float(rets.max()), "mean_length": float(lens.mean()), "episodes": len(eps)}

    def policy_of(name: str) -> ActorPolicy:
        return ActorPolicy(actor_from_arrays(all_arrays[name], task.obs_dim, task.act_dim))

    random_stats = measure(RandomPolicy(task.act_dim), "random")
    # Re-measure the top few candidates on `episodes` episodes: 10-episode evaluations are noisy.
    best = sorted(ckpts, key=lambda c: c["eval_return"], reverse=True)[:top]
    candidates = {c["name"]: measure(policy_of(c["name"]), c["name"]) for c in best}
    expert_name = max(candidates, key=lambda n: candidates[n]["mean"])
    expert_stats = candidates[expert_name]
    target = random_stats["mean"] + MEDIUM_FRACTION * (expert_stats["mean"] - random_stats["mean"])
    step_of = {c["name"]: c["step"] for c in ckpts}
    expert_step = step_of[expert_name]
    # Medium: a policy half-way through learning is erratic (walker2d at ~1/3 of the expert: 10-episode
    # means off by 1000), so the few checkpoints nearest the target are re-measured and the closest kept.
    before = [c for c in ckpts if c["step"] <= expert_step]
    near = sorted(before, key=lambda c: (abs(c["eval_return"] - target), c["step"]))[:MEDIUM_CANDIDATES]
    medium_candidates = {c["name"]: measure(policy_of(c["name"]), c["name"]) for c in near}
    medium_name = min(medium_candidates, key=lambda n: abs(medium_candidates[n]["mean"] - target))
    medium_stats = medium_candidates[medium_name]
    medium_step = step_of[medium_name]
    replay = [c["name"] for c in ckpts if c["step"] <= medium_step and c["step"] % replay_every == 0]

    out = policy_dir / task.name
    out.mkdir(parents=True, exist_ok=True)
    # Replay-only actors go in half precision (their data is a mixture; this halves the repository's
    # growth); expert and medium stay float32, exactly the policies measured above.
    measured = {expert_name, medium_name}
    keep = sorted(set(replay) | measured)
    _save_npz(out / "actors.npz", {f"{n}/{k}": (v if n in measured else v.astype(np.float16))
                                   for n in keep for k, v in all_arrays[n].items()}, compressed=True)
    info = {
        "env": task.name, "env_id": task.env_id,
        "training": {k: log[k] for k in ("algorithm", "seed", "hyperparameters", "step_cap", "steps_done", "wall_s",
                                         "sessions")},
        "policies": {"expert": expert_name, "medium": medium_name, "medium-replay": replay},
        "medium_rule": f"of the {MEDIUM_CANDIDATES} checkpoints (up to expert) whose 10-episode return is nearest random + "
                       f"{MEDIUM_FRACTION:.3f} * (expert - random) = {target:.1f}, the one whose {episodes}-episode "
                       f"return is nearest",
        "medium_replay_rule": f"every checkpoint up to medium whose step is a multiple of {replay_every} (float16)",
        "returns": {"random": random_stats, "medium": medium_stats, "expert": expert_stats},
        "expert_candidates": candidates,
        "medium_candidates": medium_candidates,
        "reference_seed": REFERENCE_SEED,
        "ref_min_score": random_stats["mean"], "ref_max_score": expert_stats["mean"],
        "checkpoints": ckpts,
        "finalize_command": f"python -m sparse_offline_rl.data.behavior finalize env={task.name} episodes={episodes} top={top}",
    }
    atomic_write_json(out / "policies.json", info)
    plot_training(log, out / "return_curve.png")
    return info


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
