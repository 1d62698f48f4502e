"""`make demo` does what the README says, step by step."""

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = clean_env(
        FIELDPASS_DEMO_BIN=str(Path(sys.executable).parent),
        FIELDPASS_DEMO_DIR=str(tmp_path / "demo-run"),
    )
    result = subprocess.run(
        [str(REPO / "scripts/demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    exits = re.findall(r"-> exit (\d+)", result.stdout)
    assert exits == ["30", "0", "0", "10", "20", "40", "31"], result.stdout
    assert "Offline license expires in 65 days: connect to extend" in result.stdout
    assert "limited mode for 25 more days" in result.stdout
    assert "FIELDPASS_LIMITED='1'" in result.stdout
