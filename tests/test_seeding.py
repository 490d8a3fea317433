"""Every random stream of a run derives from (run seed, purpose): a sweep's seeds are independent."""
from __future__ import annotations

import itertools

import torch

from conftest import random_dataset
from sparse_offline_rl.seeding import Stream, stream_seed
from sparse_offline_rl.training import setup as trainer
from sparse_offline_rl.training.trainer import setup_run, train

SEEDS = range(4)


def first_draws(seed: int) -> tuple[int, ...]:
    """The first draws of a torch generator seeded as a run seeds it."""
    return tuple(torch.randint(0, 2**62, (4,), generator=torch.Generator().manual_seed(seed)).tolist())


def test_no_two_runs_or_purposes_share_a_stream():
    draws = {(seed, stream): first_draws(stream_seed(seed, stream)) for seed in SEEDS for stream in Stream}
    for (a, x), (b, y) in itertools.combinations(draws.items(), 2):
        assert x != y, f"streams {a} and {b} start alike"
    # torch keeps the low 32 bits of a seed: those must differ too
    low = {key: stream_seed(*key) % 2**32 for key in draws}
    assert len(set(low.values())) == len(low)


def test_stream_seeds_are_fixed_values():
    # Results name their seed: the derivation must never change silently (SeedSequence is stable).
    assert stream_seed(0, Stream.TRAIN_BATCHES) == stream_seed(0, Stream.TRAIN_BATCHES)
    assert stream_seed(0, Stream.TRAIN_BATCHES) != stream_seed(1, Stream.TRAIN_BATCHES)
    assert [int(s) for s in Stream] == list(range(len(Stream)))


def batch_streams(tmp_path, cfg, data, seed: int, monkeypatch) -> dict[str, tuple]:
    """The first draws of every stream a set-up run owns that does not depend on the validation split
    (no split: every seed normalises alike, so equal draws would show as equal values)."""
    cfg = {**cfg, "seed": seed, "val_fraction": 0.0}
    pruning_batches: list[torch.Tensor] = []
    prune = trainer.prune_at_initialization

    def recording_prune(algo, sample_batch, *args, **kwargs):
        def sample():
            batch = sample_batch()
            pruning_batches.append(batch.observations[:4].clone())
            return batch
        return prune(algo, sample, *args, **kwargs)

    monkeypatch.setattr(trainer, "prune_at_initialization", recording_prune)
    run = setup_run(cfg, tmp_path / f"seed{seed}", data)
    set_run = setup_run({**cfg, "pruner": {"name": "set"}}, tmp_path / f"set{seed}", data)
    kept = torch.cat([p.detach().flatten() for p in next(iter(run.algo.networks().values())).parameters()])
    regrowth = int(torch.randint(0, 2**62, (1,), generator=set_run.sparse_training.rule.generator))
    return {
        "train_batches": tuple(run.buffer.sample(4).observations.flatten().tolist()),
        "pruning_batches": tuple(pruning_batches[0].flatten().tolist()),
        "set_regrowth": first_draws(regrowth),
        "train_probe": tuple(run.diagnostics.train_probe.observations[:2].flatten().tolist()),
        "init": tuple(kept[kept != 0][:4].tolist()),
    }


def split_streams(tmp_path, cfg, data, seed: int) -> dict[str, tuple]:
    run = setup_run({**cfg, "seed": seed, "val_fraction": 0.1}, tmp_path / f"split{seed}", data)
    return {
        "val_split": tuple(run.val_data.observations[:2].flatten().tolist()),
        "val_probe": tuple(run.diagnostics.val_probe.observations[:2].flatten().tolist()),
    }


def test_a_sweeps_runs_draw_from_streams_no_other_run_or_purpose_draws_from(tmp_path, fast_config, monkeypatch):
    cfg = {**fast_config, "pruner": {"name": "snip"}}
    data = random_dataset("hopper", n=5000)  # more rows than a diagnostics probe takes, so probes draw
    streams = {}
    for seed in SEEDS:
        found = {**batch_streams(tmp_path, cfg, data, seed, monkeypatch),
                 **split_streams(tmp_path, cfg, data, seed)}
        streams.update({(seed, purpose): draws for purpose, draws in found.items()})
    for (a, x), (b, y) in itertools.combinations(streams.items(), 2):
        assert x != y, f"{a} and {b} draw the same numbers"


def test_one_seed_still_reproduces_bit_for_bit(tmp_path, fast_config, hopper_data):
    cfg = {**fast_config, "pruner": {"name": "snip"}, "steps": 60, "eval": {"every": 60, "episodes": 1, "suite": None}}
    first = train(cfg, tmp_path / "a", dataset=hopper_data)
    second = train(cfg, tmp_path / "b", dataset=hopper_data)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["algo"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["algo"]
    assert first["eval"] == second["eval"]
    flat = lambda state: torch.cat([t.flatten().float() for t in _tensors(state)])  # noqa: E731
    assert torch.equal(flat(a), flat(b))


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _tensors(value)
