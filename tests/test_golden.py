"""No change of behaviour: the fixed short runs of `tests/golden/cases.py` reproduce, number for
number and tensor for tensor, what was recorded (re-record only for an intended change, and say so
in the commit)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from cases import CASES, GOLDEN, differences, platform, record_path, run_case  # noqa: E402

RECORD = record_path()
RECORDED = json.loads(RECORD.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_reproduces_the_recorded_numbers_and_tensors(tmp_path, name):
    found = differences(RECORDED[name], run_case(name, tmp_path))
    hint = ("" if RECORD != GOLDEN else f" (platform {platform()} has no record of its own: if the code is unchanged "
            "and these are rounding differences, record one here with `python tests/golden/cases.py record --platform`)")
    assert not found, f"{len(found)} differences against {RECORD.name}{hint}, first: " + "; ".join(sorted(found)[:8])


def test_a_platform_compares_with_its_own_record_and_falls_back_to_the_code_record(tmp_path, monkeypatch):
    import cases
    monkeypatch.setattr(cases, "PLATFORMS", tmp_path)
    assert cases.record_path("x86_64-SomeVendor-AVX2-torch2.13.0") == GOLDEN
    (tmp_path / "x86_64-SomeVendor-AVX2-torch2.13.0.json").write_text("{}")
    assert cases.record_path("x86_64-SomeVendor-AVX2-torch2.13.0") == tmp_path / "x86_64-SomeVendor-AVX2-torch2.13.0.json"
    assert cases.record_path("x86_64-Other-AVX512-torch2.13.0") == GOLDEN
    assert "/" not in platform() and platform().startswith(cases.pyplatform.machine())


def test_the_comparison_sees_a_changed_tensor_and_a_changed_number():
    record = RECORDED["iql-snip-dense"]["seed0"]
    changed = json.loads(json.dumps(record))
    tensor_key = next(k for k, v in changed["checkpoint"].items() if isinstance(v, dict))
    changed["checkpoint"][tensor_key]["sha256"] = "0" * 64
    changed["summary"]["eval.return_mean"] += 1e-9
    found = differences(record, changed)
    assert len(found) == 2 and any(tensor_key in f for f in found) and any("return_mean" in f for f in found)
