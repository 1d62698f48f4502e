"""The sysvinit agent script under Debian's start-stop-daemon and busybox's
(`make boot-test`; needs root: each run is in a private mount namespace where
/run/fieldpass is a scratch directory and, for busybox, /sbin/start-stop-daemon is
busybox itself, as on a busybox image).

The agent stands in as a Python script run by its interpreter, like /usr/bin/fieldpass:
the process's executable is python, which is why `start-stop-daemon --exec` never
matched it and `stop` left the agent running. start, start again, restart, stop and
status are checked by the processes that really run.
Run with `pytest -p no:cacheprovider tests/firmware/real_sysvinit.py`.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.firmware.staging import HOOKS

SCRIPT = HOOKS / "sysvinit/fieldpass-agent"
AGENT = f"""#!{sys.executable} -I
import time
time.sleep(600)
"""
STEPS = """
set -u
out={out}
step() {{ printf '%s ' "$1" >> "$out"; }}
pids() {{ pgrep -f "$FIELDPASS_BIN run" | tr '\\n' ' '; echo; }}
{mount}
mkdir -p /run/fieldpass
mount -t tmpfs tmpfs /run/fieldpass
"$script" start; step "start=$?"; pids >> "$out"
"$script" start; step "again=$?"; pids >> "$out"
"$script" status > /dev/null; step "status=$?"; echo >> "$out"
"$script" restart; step "restart=$?"; pids >> "$out"
"$script" stop; step "stop=$?"; pids >> "$out"
"$script" status > /dev/null; step "status=$?"; echo >> "$out"
[ -e /run/fieldpass/agent.pid ]; step "pidfile=$?"; echo >> "$out"
sleep 600 & other=$!
echo "$other" > /run/fieldpass/agent.pid
"$script" status > /dev/null; step "reused=$?"; echo >> "$out"
"$script" stop; kill -0 "$other"; step "survives=$?"; echo >> "$out"
kill "$other"
"""
IMPLEMENTATIONS = {
    "debian": "",
    "busybox": 'mount --bind "$(command -v busybox)" /sbin/start-stop-daemon',
}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_stop_and_restart_act_on_the_running_agent(tmp_path: Path, implementation: str) -> None:
    assert os.geteuid() == 0, "mount namespaces need root: run `make boot-test` as root"
    assert shutil.which("busybox"), "apt-get install busybox (.ci/apt-packages-boot.txt)"
    agent = tmp_path / "fieldpass"
    agent.write_text(AGENT)
    agent.chmod(0o755)
    out = tmp_path / "steps"
    steps = STEPS.format(out=out, mount=IMPLEMENTATIONS[implementation])
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", steps],
            env={
                "PATH": "/sbin:/bin:/usr/sbin:/usr/bin",
                "FIELDPASS_BIN": str(agent),
                "script": str(SCRIPT),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        # Whatever the script did, no stand-in agent of this test outlives it.
        left = subprocess.run(["pgrep", "-f", f"{agent} run"], capture_output=True, text=True)
        for pid in left.stdout.split():
            os.kill(int(pid), 9)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = out.read_text().splitlines()
    start, again, status, restart, stop, stopped, pidfile, reused, survives = (
        line.split() for line in lines
    )
    assert start[0] == "start=0" and len(start) == 2, lines  # exactly one agent
    assert again == ["again=0", start[1]], lines  # a second start starts nothing
    assert status == ["status=0"]
    assert restart[0] == "restart=0" and len(restart) == 2, lines
    assert restart[1] != start[1], "restart must replace the agent, not add one"
    assert stop == ["stop=0"], lines  # no agent left
    assert stopped == ["status=3"] and pidfile == ["pidfile=1"]
    # A pidfile whose pid now belongs to another process: not the agent, left alone.
    assert reused == ["reused=3"] and survives == ["survives=0"]
