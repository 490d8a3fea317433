"""Which draw of each dataset a results folder's runs trained on, against the draw this machine holds.

The same `make` command on two CPU platforms makes two draws of a dataset (docs/reproducibility.md).
A study continued on a machine whose local dataset is another draw would put runs of two draws into
one cell; `python -m sparse_offline_rl.report RESULTS --check-draws ENV[,ENV]` says so before any run
starts (studies/reference.sh calls it with the study's env overrides)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sparse_offline_rl.data.loaders import find_minari
from sparse_offline_rl.data.project import QUALITIES, minari_id
from sparse_offline_rl.report.collect import collect
from sparse_offline_rl.report.table import data_draw, draw_label


def published_draws(results_dir: str | Path) -> dict[tuple[str, str], set[str]]:
    """(env, project dataset id) -> the draws its finished runs trained on (runs on other data are left out)."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for job in collect(results_dir):
        if job.status != "done" or job.summary is None:
            continue
        env, dataset = job.summary.get("env", ""), job.summary.get("dataset", "")
        quality = dataset[len(env) + 1:] if dataset.startswith(f"{env}-") else ""
        draw = data_draw(job.summary)
        if quality in QUALITIES and draw:
            found[(env, minari_id(env, quality))].add(draw)
    return dict(found)


def local_draw(dataset_id: str) -> str | None:
    """The draw this machine's copy of a project dataset is, from its metadata; None if it has none."""
    root = find_minari(dataset_id)
    if root is None:
        return None
    meta = json.loads((root / dataset_id / "data" / "metadata.json").read_text())
    return draw_label(meta["total_episodes"], meta["sorl_return_mean"])


def check_draws(results_dir: str | Path, envs: list[str] | None = None) -> list[str]:
    """One line per dataset (of `envs`, default all) whose local copy is not the draw its published runs used."""
    problems = []
    for (env, dataset_id), draws in sorted(published_draws(results_dir).items()):
        if envs and env not in envs:
            continue
        here = local_draw(dataset_id)
        if here is not None and here not in draws:
            problems.append(f"{dataset_id}: this machine's copy is {here}; the runs in {results_dir} used "
                            f"{' and '.join(sorted(draws))} (another CPU platform's draw: docs/reproducibility.md)")
    return problems
