"""What ``fieldpass-hq`` does differently on a terminal: it asks before revoking a
license (naming what stops working) and shows progress while exporting a field bundle.
The installed script runs on a real pseudo-terminal (stdin, stdout and stderr)."""

import os
import pty
import select
import subprocess
import time
from pathlib import Path

from .conftest import FIELDPASS_HQ, Run, fingerprint


def on_terminal(home: Path, *args: str, answer: bytes | None = None) -> tuple[int, str]:
    """Run ``fieldpass-hq ARGS`` on a pty; type ``answer`` once it asks [y/N]."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [FIELDPASS_HQ, "--home", str(home), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "100"},
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                seen += chunk
                if answer is not None and b"[y/N]" in seen:
                    os.write(master, answer)
                    answer = None
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, seen.decode(errors="replace")


def test_revoke_asks_on_a_terminal_and_names_what_stops(
    hq: Run, license_key: str, home: Path
) -> None:
    for n in (1, 2):
        hq("activate", license_key, "--fingerprint", fingerprint(n))
    lid = hq("licenses", "show", license_key, "--json").json()["id"]

    code, text = on_terminal(home, "licenses", "revoke", lid, answer=b"n\n")
    assert code == 130, text
    assert f"Revoke license {lid} (plan std) for good?" in text
    assert "2 live activation(s) stop working" in text and "never be reinstated" in text
    assert hq("licenses", "show", lid, "--json").json()["status"] == "active"

    code, text = on_terminal(home, "licenses", "revoke", lid, answer=b"y\n")
    assert code == 0, text
    assert f"license {lid} is now revoked" in text
    assert hq("licenses", "show", lid, "--json").json()["status"] == "revoked"


def test_revoke_without_a_terminal_needs_yes(hq: Run, license_key: str, home: Path) -> None:
    lid = hq("licenses", "show", license_key, "--json").json()["id"]
    res = subprocess.run(
        [FIELDPASS_HQ, "--home", str(home), "licenses", "revoke", lid],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--yes" in res.stderr
    assert hq("licenses", "show", lid, "--json").json()["status"] == "active"
    assert hq("licenses", "revoke", lid, "--yes").code == 0
    assert hq("licenses", "show", lid, "--json").json()["status"] == "revoked"


def test_field_export_shows_progress_on_a_terminal(hq: Run, home: Path, tmp_path: Path) -> None:
    hq("keys", "generate")
    hq("plans", "create", "fleet", "--offline-ttl", "30d", "--seats", "200")
    key = hq("licenses", "create", "--plan", "fleet").out.strip()
    for n in range(120):
        assert hq("activate", key, "--fingerprint", fingerprint(n)).code == 0
    bundle = tmp_path / "tour.bundle"
    code, text = on_terminal(home, "field", "export", "--all", "-o", str(bundle))
    assert code == 0, text
    assert "exporting" in text and "100%" in text
    assert "field bundle" in text and "120 renewed machine file(s)" in text
    # without a terminal: the label once, no bar
    res = subprocess.run(
        [FIELDPASS_HQ, "--home", str(home), "field", "export", "--all", "-o", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stderr == "exporting\n"
