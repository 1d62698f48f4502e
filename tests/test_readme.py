"""The README's "first license, by hand" runs as written: its ``sh`` block, extracted
from README.md, is run whole by ``sh -eu`` in an empty directory, with the installed
``fieldpass`` and ``fieldpass-hq`` on PATH and nothing else set (no HQ home, no
config): the commands themselves say where everything goes."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import clean_env

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## The first license, by hand"


def section_script() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 1, "the section holds one sh block"
    return str(blocks[0])


def test_the_first_license_by_hand_runs_as_written(tmp_path: Path) -> None:
    script = section_script()
    for needed in ("--license-key-file", "--root robot", "/etc/fieldpass/keyring", "key.txt"):
        assert needed in script
    env = clean_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HOME=str(tmp_path))
    done = subprocess.run(
        ["sh", "-eu", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    work = tmp_path / "try-fieldpass"
    key = (work / "key.txt").read_text().strip()
    assert key.startswith("FP-")
    assert (work / "key.txt").stat().st_mode & 0o077 == 0  # the umask kept it private
    assert "License valid until" in done.stdout and "(365 days left)" in done.stdout
    assert "Verdict:       valid (exit 0)" in done.stdout
    assert (work / "robot/run/fieldpass/verdict.json").is_file()
    assert (work / "hq/hq.sqlite3").is_file()
    assert key not in done.stdout + done.stderr  # into key.txt, and nowhere else
    # HQ's own hint names the key file the device needs
    assert "--license-key-file KEYFILE" in done.stderr
