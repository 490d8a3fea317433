"""Every random stream of a run derives from (run seed, purpose).

Seeding a run's streams with neighbouring integers (seed, seed + 1, ...) couples a sweep's runs:
run s's second stream is run s + 1's first, so its seeds are not independent samples. Instead each
purpose has a fixed index, and its seed is hashed from (run seed, index) by numpy's `SeedSequence`,
so no stream of one run or purpose starts where another run's or purpose's does.

torch's CPU generator keeps only the low 32 bits of a seed, so two of n torch streams can still
coincide by chance, with probability about n^2 / 2^33 (1e-4 for a sweep of 1000 runs' streams);
numpy generators take the full 64 bits.
"""
from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
    """A run's random streams. The values are part of every result's identity: never renumber."""

    TORCH_GLOBAL = 0  # network initialisation; the algorithms' own generators are seeded from it
    NUMPY_GLOBAL = 1  # not drawn from by training; seeded so that nothing left unseeded varies
    TRAIN_BATCHES = 2  # the training batch sampler
    PRUNING_BATCHES = 3  # the batches pruning at initialization scores on
    PRUNING = 4  # stochastic scoring losses and the random pruner
    MASK_UPDATES = 5  # SET's regrowth, Gibbs' draws
    VAL_SPLIT = 6  # which episodes are held out for validation
    TRAIN_PROBE = 7  # the fixed training transitions the diagnostics probe
    VAL_PROBE = 8  # the fixed validation transitions the diagnostics probe
    # The offline selection scores (evaluation.selection) are seeded from the selection's own seed
    # (the `select` command's seed=), not the run's: every run is scored with the same draws, so two
    # runs' scores differ only by their agents (common random numbers).
    FQE = 9  # the FQE critic's initialisation and batches
    SELECTION_ROWS = 10  # which held-out transitions the TD error, BC loss and LogME use
    SELECTION_BOOTSTRAP = 11  # the bootstrap replicates of each score (P(best), expected regret)
    SPARSE_INIT = 12  # pruner.sparse_init's re-draw, from the pruning seed the run derived (PRUNING)
    BUDGET_SEARCH = 13  # pruner.budget_search=constrained: the allocator's samples of layer densities
    # `compress` (training.compress) draws these from its own seed= (default: the seed of the run it compresses).
    COMPRESS_ROWS = 14  # the held-out transitions its fidelity reward is measured on
    COMPRESS_BATCHES = 15  # the batches of its masked fine-tuning
    COMPRESS_INIT = 16  # the fresh algorithm it fine-tunes in: construction and its own generators (noise)
    COMPRESS_SEARCH = 17  # its allocator's samples of layer densities (budget_search=constrained)


def stream_seed(run_seed: int, stream: Stream) -> int:
    """The seed of `stream` in the run seeded `run_seed`: a 64-bit integer, the same on every machine."""
    sequence = np.random.SeedSequence(int(run_seed), spawn_key=(int(Stream(stream)),))
    return int(sequence.generate_state(1, np.uint64)[0])


__all__ = ["Stream", "stream_seed"]
