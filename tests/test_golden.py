"""No change of behaviour: the fixed short runs of `tests/golden/cases.py` reproduce, number for
number and tensor for tensor, what was recorded (re-record only for an intended change, and say so
in the commit)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from cases import CASES, GOLDEN, differences, run_case  # noqa: E402

RECORDED = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_reproduces_the_recorded_numbers_and_tensors(tmp_path, name):
    found = differences(RECORDED[name], run_case(name, tmp_path))
    assert not found, f"{len(found)} differences, first: " + "; ".join(sorted(found)[:8])


def test_the_comparison_sees_a_changed_tensor_and_a_changed_number():
    record = RECORDED["iql-snip-dense"]["seed0"]
    changed = json.loads(json.dumps(record))
    tensor_key = next(k for k, v in changed["checkpoint"].items() if isinstance(v, dict))
    changed["checkpoint"][tensor_key]["sha256"] = "0" * 64
    changed["summary"]["eval.return_mean"] += 1e-9
    found = differences(record, changed)
    assert len(found) == 2 and any(tensor_key in f for f in found) and any("return_mean" in f for f in found)
