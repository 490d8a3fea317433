"""checks: the command-line parsing shared by the evaluate and export commands."""
from __future__ import annotations

import pytest

from sparse_offline_rl.checks import parse_overrides
from sparse_offline_rl.errors import ConfigError


def test_a_sweep_job_directory_with_equals_signs_is_a_path_not_an_option(tmp_path, monkeypatch):
    job = tmp_path / "algo=iql,env=hopper,pruner=snip,seed=0,sparsity=0.95"
    job.mkdir()
    monkeypatch.chdir(tmp_path)
    options, positional = parse_overrides([str(job), job.name, "out=x.json"], {"out"})
    assert positional == [str(job), job.name] and options == {"out": "x.json"}


def test_an_unknown_option_that_is_no_path_is_still_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="unknown option 'algo'; accepted: out"):
        parse_overrides(["algo=iql,env=hopper"], {"out"})
