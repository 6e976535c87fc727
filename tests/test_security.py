"""The security drill's cases (scripts/security_drill.py) as tests: each attack must end with nobody let in."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "security_drill.py"
spec = importlib.util.spec_from_file_location("security_drill", SCRIPT)
security_drill = importlib.util.module_from_spec(spec)
sys.modules["security_drill"] = security_drill
spec.loader.exec_module(security_drill)


@pytest.mark.parametrize("case", list(security_drill.CASES))
def test_attack_is_kept_out(case, tmp_path):
    outcome = security_drill.CASES[case](tmp_path)
    assert not outcome.let_in, f"{outcome.case}: {outcome.happened}"
