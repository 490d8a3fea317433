"""python -m sparse_offline_rl.data {list | make env=.. quality=.. [size=1000000] [seed=0] [out=DIR] [id=..] | stats ID [ID ...]}

`stats` prints a Markdown table of each dataset's transitions, episodes, mean episode length and return
(mean ± std, and on D4RL's scale), making or downloading datasets that are missing as a run would."""
from __future__ import annotations

import sys
import time

from sparse_offline_rl.data.envs import d4rl_normalized_score
from sparse_offline_rl.data.loaders import available_ids, load_dataset, load_minari
from sparse_offline_rl.data.project import DEFAULT_SIZE, datasets_root, minari_id
from sparse_offline_rl.errors import DatasetError
from sparse_offline_rl.generation.behavior import parse_kv
from sparse_offline_rl.generation.generate import make_dataset

USAGE = __doc__


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("list", "make", "stats"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "list":
        for dataset_id in available_ids():
            print(dataset_id)
        return 0
    if argv[0] == "stats":
        try:
            print(stats_table(argv[1:]))
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    kv = parse_kv(argv[1:])
    missing = [k for k in ("env", "quality") if k not in kv]
    if missing:
        print(f"missing {', '.join(missing)}; {USAGE}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        size, seed = int(kv.get("size", DEFAULT_SIZE)), int(kv.get("seed", 0))
        dataset_id = kv.get("id") or minari_id(kv["env"], kv["quality"], size, seed)
        path = make_dataset(kv["env"], kv["quality"], size=size, seed=seed, out=kv.get("out"), dataset_id=dataset_id)
        ds = load_minari(dataset_id, root=datasets_root(kv.get("out")))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rets = ds.episode_returns()
    print(f"wrote {path} ({len(ds)} transitions, {ds.num_episodes} episodes, return mean {rets.mean():.1f} "
          f"min {rets.min():.1f} max {rets.max():.1f}, normalized {ds.normalized_score(rets.mean()):.1f}) "
          f"in {time.time() - t0:.0f}s")
    return 0


def stats_table(ids: list[str]) -> str:
    lines = ["| dataset | transitions | episodes | mean length | return mean ± std | D4RL-scale return |",
             "|---|---|---|---|---|---|"]
    for name in ids:
        ds = load_dataset(name)
        rets = ds.episode_returns()
        d4rl = float(d4rl_normalized_score(ds.env_id, rets.mean())) if ds.env_id else float("nan")
        lines.append(f"| `{name}` | {len(ds):,} | {ds.num_episodes:,} | {len(ds) / ds.num_episodes:.0f} | "
                     f"{rets.mean():.1f} ± {rets.std():.1f} | {d4rl:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
