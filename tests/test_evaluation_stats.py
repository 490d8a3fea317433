"""IQM, stratified bootstrap CIs and probability of improvement against hand-worked examples."""
from __future__ import annotations

import numpy as np
import pytest

from sparse_offline_rl.evaluation.stats import (
    as_strata, iqm, mean, performance_profile, probability_of_improvement, probability_of_improvement_ci,
    stratified_bootstrap_ci,
)


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # drop 1 and 4
    assert iqm([10, 1, 2, 3, 100]) == pytest.approx(5.0)  # n=5: drop floor(1.25)=1 each end -> mean(2, 3, 10)
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # drop 1, 2 and 7, 8
    assert iqm([1, 2, 9]) == pytest.approx(4.0)  # n=3: floor(0.75)=0 dropped, like scipy.trim_mean
    assert iqm(np.array([[1, 100], [2, 3]])) == pytest.approx(2.5)  # all values of a (runs, tasks) matrix


def test_runs_tasks_matrix_is_split_by_column():
    strata = as_strata(np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]))
    assert [s.tolist() for s in strata] == [[1, 2, 3], [10, 20, 30]]


def test_bootstrap_ci_of_two_values_hand_worked():
    # Resampling [0, 1] gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th and 97.5th
    # percentiles are 0 and 1.
    point, low, high = stratified_bootstrap_ci([[0.0, 1.0]], mean, reps=4000, seed=3)
    assert (point, low, high) == (0.5, 0.0, 1.0)


def test_bootstrap_is_stratified_by_task():
    # Task A runs all score 0, task B runs all score 1: a stratified resample always keeps two of each,
    # so the mean never moves. Pooled (unstratified) resampling would spread over [0.25, 0.75].
    point, low, high = stratified_bootstrap_ci([[0.0, 0.0], [1.0, 1.0]], mean, reps=500, seed=0)
    assert point == low == high == 0.5


def test_bootstrap_is_seeded():
    scores = np.random.default_rng(0).normal(size=(5, 3))
    assert stratified_bootstrap_ci(scores, seed=7) == stratified_bootstrap_ci(scores, seed=7)
    point, low, high = stratified_bootstrap_ci(scores, seed=7)
    assert low < point < high and point == iqm(scores)


def test_probability_of_improvement_hand_worked():
    # x=1 loses twice, x=2 ties twice (1/2 each), x=3 wins twice: (0 + 1 + 2) / 6
    assert probability_of_improvement([[1, 2, 3]], [[2, 2]]) == pytest.approx(0.5)
    # 3 beats 1, 2 and ties 3 (2.5); 4 beats all three (3): 5.5 / 6
    assert probability_of_improvement([[3, 4]], [[1, 2, 3]]) == pytest.approx(5.5 / 6)
    # averaged over tasks: task 1 certain win (1.0), task 2 certain loss (0.0)
    assert probability_of_improvement([[5, 6], [0]], [[1], [9, 9]]) == pytest.approx(0.5)
    assert probability_of_improvement([[1, 2]], [[1, 2]]) == pytest.approx(0.5)


def test_probability_of_improvement_ci_and_errors():
    point, low, high = probability_of_improvement_ci([[10, 11, 12]], [[1, 2, 3]], reps=200)
    assert point == low == high == 1.0
    with pytest.raises(ValueError, match="tasks"):
        probability_of_improvement([[1], [2]], [[1]])
    with pytest.raises(ValueError, match="at least one run"):
        as_strata([[1.0], []])


def test_performance_profile_hand_worked():
    # task A runs 1, 2, 3, 4; task B runs 10, 20. At tau=2.5: A 2/4, B 2/2 -> (0.5 + 1) / 2 = 0.75.
    # At tau=15: A 0/4, B 1/2 -> 0.25. At tau=0: everything is above -> 1. At tau=20: nothing (strict) -> 0.
    frac, low, high = performance_profile([[1, 2, 3, 4], [10, 20]], [0, 2.5, 15, 20], reps=300)
    assert frac.tolist() == pytest.approx([1.0, 0.75, 0.25, 0.0])
    assert (low <= frac + 1e-12).all() and (frac <= high + 1e-12).all()
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0  # certain at the ends
    assert (np.diff(frac) <= 0).all()  # a profile never rises with tau
