"""The fault drill's cases (scripts/fault_drill.py) as tests: each injects one fault into a tiny run and must end
with nothing lost."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_drill.py"
spec = importlib.util.spec_from_file_location("fault_drill", SCRIPT)
fault_drill = importlib.util.module_from_spec(spec)
sys.modules["fault_drill"] = fault_drill
spec.loader.exec_module(fault_drill)


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    return fault_drill.Drill(tmp_path_factory.mktemp("drill"))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(fault_drill.CASES))
def test_fault_loses_nothing(drill, case):
    outcome = fault_drill.CASES[case](drill)
    assert not outcome.lost, f"{outcome.case}: {outcome.happened}"
