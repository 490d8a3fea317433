"""A compact online SAC, used only to make the behaviour policies that generate the datasets.

    python -m sparse_offline_rl.data.behavior train env=hopper steps=150000 minutes=14 seed=0
    python -m sparse_offline_rl.data.behavior finalize env=hopper

`train` keeps an actor checkpoint (and a 5-episode evaluation) every `every` steps in a work folder,
rewriting it at each checkpoint so an interrupted run still leaves everything up to there.
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
    ActorPolicy,
    GaussianActor,
    RandomPolicy,
    actor_from_arrays,
    actor_to_arrays,
)
from sparse_offline_rl.data.rollout import reset_seed, rollout

WORK_DIR = Path("/tmp/sorl_behavior")
TRAIN_SEED_OFFSET = 500  # training resets use seeds far from dataset (0..) and reference (900..) seeds
CHECKPOINT_EVAL_SEED = 800
REFERENCE_SEED = 900  # 100-episode reference returns (random / medium / expert)
MEDIUM_FRACTION = 1.0 / 3.0


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


def train(env: str, steps: int = 150_000, minutes: float = 14.0, seed: int = 0, every: int = 5_000,
          start_steps: int = 5_000, batch_size: int = 256, hidden: int = 256, out: Path | None = None) -> Path:
    """Runs SAC until `steps` env steps or `minutes` of wall time, whichever comes first."""
    torch.set_num_threads(1)  # the machine is shared: one core per training run
    torch.manual_seed(seed)
    task = get_task(env)
    out = Path(out or WORK_DIR / task.name)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gym_env = gym.make(task.env_id, disable_env_checker=True)
    gym_env.action_space.seed(seed)

    actor = GaussianActor(task.obs_dim, task.act_dim, hidden)
    critic = TwinCritic(task.obs_dim, task.act_dim, hidden)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    log_alpha = torch.zeros(1, requires_grad=True)
    opt_actor = torch.optim.Adam(actor.parameters(), lr=3e-4)
    opt_critic = torch.optim.Adam(critic.parameters(), lr=3e-4)
    opt_alpha = torch.optim.Adam([log_alpha], lr=3e-4)
    target_entropy, gamma, tau = -float(task.act_dim), 0.99, 0.005

    buf_obs = np.zeros((steps, task.obs_dim), np.float32)
    buf_next = np.zeros((steps, task.obs_dim), np.float32)
    buf_act = np.zeros((steps, task.act_dim), np.float32)
    buf_rew = np.zeros(steps, np.float32)
    buf_done = np.zeros(steps, np.float32)

    checkpoints: dict[str, dict[str, np.ndarray]] = {}
    log: dict[str, Any] = {"env": task.name, "env_id": task.env_id, "seed": seed, "algorithm": "SAC",
                           "command": "python -m sparse_offline_rl.data.behavior " + " ".join(sys.argv[1:]),
                           "hyperparameters": {"hidden": [hidden, hidden], "lr": 3e-4, "gamma": gamma, "tau": tau,
                                               "batch_size": batch_size, "start_steps": start_steps,
                                               "updates_per_step": 1, "target_entropy": target_entropy,
                                               "torch_threads": 1},
                           "step_cap": steps, "minute_cap": minutes, "checkpoints": []}

    def save_checkpoint(step: int, wall: float) -> None:
        name = f"step_{step:07d}"
        checkpoints[name] = actor_to_arrays(actor)
        eps = rollout(task.name, ActorPolicy(copy.deepcopy(actor)), CHECKPOINT_EVAL_SEED, episodes=5, n_envs=5)
        ret = float(np.mean([e.ret for e in eps]))
        log["checkpoints"].append({"name": name, "step": step, "wall_s": round(wall, 1), "eval_return_5ep": ret})
        log["steps_done"], log["wall_s"] = step, round(wall, 1)
        np.savez(out / "checkpoints.tmp.npz", **{f"{c}/{k}": v for c, arr in checkpoints.items() for k, v in arr.items()})
        (out / "checkpoints.tmp.npz").replace(out / "checkpoints.npz")
        (out / "train_log.json").write_text(json.dumps(log, indent=1))
        print(f"[{task.name}] step {step} wall {wall:.0f}s eval {ret:.1f} alpha {log_alpha.exp().item():.3f}", flush=True)

    t0 = time.time()
    episode = 0
    obs, _ = gym_env.reset(seed=reset_seed(TRAIN_SEED_OFFSET + seed, episode))
    save_checkpoint(0, 0.0)
    step = 0
    for step in range(1, steps + 1):
        if step <= start_steps:
            action = rng.uniform(-1, 1, task.act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
        next_obs, reward, term, trunc, _ = gym_env.step(action)
        i = step - 1
        buf_obs[i], buf_act[i], buf_rew[i], buf_next[i], buf_done[i] = obs, action, reward, next_obs, float(term)
        obs = next_obs
        if term or trunc:
            episode += 1
            obs, _ = gym_env.reset(seed=reset_seed(TRAIN_SEED_OFFSET + seed, episode))

        if step > start_steps:
            idx = torch.as_tensor(rng.integers(0, step, batch_size))
            o, a = torch.from_numpy(buf_obs)[idx], torch.from_numpy(buf_act)[idx]
            r, no, d = torch.from_numpy(buf_rew)[idx], torch.from_numpy(buf_next)[idx], torch.from_numpy(buf_done)[idx]
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                na, nlogp = actor.sample(no)
                target = r + gamma * (1 - d) * (critic_target(no, na).min(0).values - alpha * nlogp)
            critic_loss = ((critic(o, a) - target) ** 2).mean(1).sum()
            opt_critic.zero_grad(set_to_none=True)
            critic_loss.backward()
            opt_critic.step()

            critic.requires_grad_(False)
            pa, logp = actor.sample(o)
            actor_loss = (alpha * logp - critic(o, pa).min(0).values).mean()
            opt_actor.zero_grad(set_to_none=True)
            actor_loss.backward()
            opt_actor.step()
            critic.requires_grad_(True)

            alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
            opt_alpha.zero_grad(set_to_none=True)
            alpha_loss.backward()
            opt_alpha.step()
            with torch.no_grad():
                tp, p = list(critic_target.parameters()), list(critic.parameters())
                torch._foreach_mul_(tp, 1 - tau)
                torch._foreach_add_(tp, p, alpha=tau)

        wall = time.time() - t0
        if step % every == 0:
            save_checkpoint(step, wall)
        if wall > minutes * 60:
            break
    if step % every:
        save_checkpoint(step, time.time() - t0)
    log["finished"] = True
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return out


def finalize(env: str, work: Path | None = None, policy_dir: Path = POLICY_DIR, episodes: int = 100,
             top: int = 3) -> dict[str, Any]:
    """Choose expert / medium / medium-replay checkpoints, measure them over `episodes` episodes, ship them.

    expert = the checkpoint with the best 5-episode evaluation (then re-measured on 100 episodes);
    medium = the checkpoint whose evaluation is closest to random + (expert - random) / 3, as D4RL's
    "medium" SAC policy reached about a third of its expert; medium-replay = every checkpoint from the
    start of training up to medium (equal shares, as each covers the same number of training steps).
    """
    task = get_task(env)
    work = Path(work or WORK_DIR / task.name)
    log = json.loads((work / "train_log.json").read_text())
    with np.load(work / "checkpoints.npz") as data:
        all_arrays: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            name, param = key.split("/", 1)
            all_arrays.setdefault(name, {})[param] = data[key]
    ckpts = log["checkpoints"]

    def measure(policy: Any, label: str) -> dict[str, float]:
        eps = rollout(task.name, policy, REFERENCE_SEED, episodes=episodes, n_envs=20, progress=f"{task.name} {label}")
        rets = np.array([e.ret for e in eps])
        lens = np.array([len(e) for e in eps])
        return {"mean": float(rets.mean()), "std": float(rets.std()), "min": float(rets.min()),
                "max": float(rets.max()), "mean_length": float(lens.mean()), "episodes": len(eps)}

    random_stats = measure(RandomPolicy(task.act_dim), "random")
    # Re-measure the top few candidates on `episodes` episodes: 5-episode evaluations are noisy.
    best = sorted(ckpts, key=lambda c: c["eval_return_5ep"], reverse=True)[:top]
    candidates = {c["name"]: measure(ActorPolicy(actor_from_arrays(all_arrays[c["name"]], task.obs_dim, task.act_dim)),
                                     c["name"]) for c in best}
    expert_name = max(candidates, key=lambda n: candidates[n]["mean"])
    expert_stats = candidates[expert_name]
    target = random_stats["mean"] + MEDIUM_FRACTION * (expert_stats["mean"] - random_stats["mean"])
    expert_step = next(c["step"] for c in ckpts if c["name"] == expert_name)
    before = [c for c in ckpts if c["step"] <= expert_step]
    medium = min(before, key=lambda c: (abs(c["eval_return_5ep"] - target), c["step"]))
    medium_stats = measure(ActorPolicy(actor_from_arrays(all_arrays[medium["name"]], task.obs_dim, task.act_dim)),
                           medium["name"])
    replay = [c["name"] for c in ckpts if c["step"] <= medium["step"]]

    out = policy_dir / task.name
    out.mkdir(parents=True, exist_ok=True)
    keep = sorted(set(replay) | {expert_name, medium["name"]})
    np.savez_compressed(out / "actors.npz", **{f"{n}/{k}": v for n in keep for k, v in all_arrays[n].items()})
    info = {
        "env": task.name, "env_id": task.env_id,
        "training": {k: log[k] for k in ("algorithm", "seed", "command", "hyperparameters", "step_cap", "minute_cap",
                                         "steps_done", "wall_s")},
        "policies": {"expert": expert_name, "medium": medium["name"], "medium-replay": replay},
        "medium_rule": f"checkpoint (up to expert) whose 5-episode return is closest to random + {MEDIUM_FRACTION:.3f} "
                       f"* (expert - random) = {target:.1f}",
        "returns": {"random": random_stats, "medium": medium_stats, "expert": expert_stats},
        "expert_candidates": candidates,
        "reference_seed": REFERENCE_SEED,
        "ref_min_score": random_stats["mean"], "ref_max_score": expert_stats["mean"],
        "checkpoints": ckpts,
        "finalize_command": f"python -m sparse_offline_rl.data.behavior finalize env={task.name} episodes={episodes} top={top}",
    }
    (out / "policies.json").write_text(json.dumps(info, indent=1))
    return info


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
    if not argv or argv[0] not in ("train", "finalize"):
        raise SystemExit("usage: python -m sparse_offline_rl.data.behavior {train|finalize} env=NAME [key=value ...]")
    kv = parse_kv(argv[1:])
    if argv[0] == "train":
        train(kv["env"], steps=int(kv.get("steps", 150_000)), minutes=float(kv.get("minutes", 14)),
              seed=int(kv.get("seed", 0)), every=int(kv.get("every", 5_000)), out=kv.get("out"),
              batch_size=int(kv.get("batch", 256)), hidden=int(kv.get("hidden", 256)),
              start_steps=int(kv.get("start_steps", 5_000)))
    else:
        info = finalize(kv["env"], work=kv.get("work"), episodes=int(kv.get("episodes", 100)), top=int(kv.get("top", 3)))
        print(json.dumps({"policies": info["policies"], "returns": info["returns"]}, indent=1))


if __name__ == "__main__":
    main()
