"""Every command in docs/runbooks/ runs as written, in order, as a new user would.

`device$` lines run with a `fieldpass` that points at a simulated device root (the
only thing the test adds: this machine is not the robot), `hq$` lines with the real
`fieldpass-hq` on a fresh HQ home. Files carried between them share one folder.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import FIELDPASS, HQ, DeviceRoot, clean_env
from tests.hq.server import free_port, start_server
from tests.tls_pki import make_pki

RUNBOOKS = Path(__file__).resolve().parents[1] / "docs" / "runbooks"
PROMPT = re.compile(r"^\s*(device|hq|laptop|old-board|new-board)\$ (.+)$")


def commands(name: str, skip: str | None = None) -> list[tuple[str, str]]:
    """The runbook's commands in order; with ``skip``, not those of the section whose
    heading starts with it (a path the reader takes instead of another: 3a or 3b)."""
    found = []
    in_block = False
    skipping = 0  # the level of the heading being skipped
    for line in (RUNBOOKS / name).read_text().splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        heading = re.match(r"^(#+) ", line) if not in_block else None
        if heading:
            level = len(heading.group(1))
            if skipping and level <= skipping:
                skipping = 0
            if skip is not None and line.startswith(skip):
                skipping = level
        match = PROMPT.match(line)
        if in_block and match and not skipping:
            found.append((match.group(1), match.group(2)))
    assert found, f"no commands in {name}"
    return found


def run_all(
    name: str,
    workdir: Path,
    hq: HQ,
    device: DeviceRoot | None,
    extra_env: dict[str, str],
    boards: dict[str, DeviceRoot] | None = None,
    skip: str | None = None,
    exits: dict[str, list[int]] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run the runbook's commands. ``device$`` lines reach ``device``; other device
    prompts (``old-board$``, ``new-board$``) the device of that name in ``boards``.
    Each must exit 0, but a command holding a key of ``exits``: the codes the runbook
    says it exits with, in the order it runs (``skip``: as ``commands``)."""
    expected = {k: list(v) for k, v in (exits or {}).items()}
    targets = {"device": device, **(boards or {})}
    paths: dict[str, str] = {}
    for prompt, target in targets.items():
        wrappers = workdir / f".bin-{prompt}"
        wrappers.mkdir(exist_ok=True)
        if target is not None:
            wrapper = wrappers / "fieldpass"
            wrapper.write_text(f'#!/bin/sh\nexec "{FIELDPASS}" --root "{target.path}" "$@"\n')
            wrapper.chmod(0o755)
        paths[prompt] = f"{wrappers}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = clean_env(PATH=paths["device"], FIELDPASS_HQ_HOME=str(hq.home), **extra_env)
    results: list[subprocess.CompletedProcess[str]] = []
    background: list[subprocess.Popen[str]] = []

    def stop_laptop() -> None:
        for proc in background:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: stop and write the report
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            results.append(subprocess.CompletedProcess(proc.args, 0, out, err))
        background.clear()

    for where, command in commands(name, skip):
        if "field serve" in command:  # a server the technician leaves running
            background.append(
                subprocess.Popen(
                    ["sh", "-c", f"exec {command}"],
                    cwd=workdir,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
            wait_for_port(int(env["LAPTOP_PORT"]))
            continue
        if where == "hq" and background:
            stop_laptop()  # back at HQ: the laptop was stopped on site
        result = subprocess.run(
            ["sh", "-c", command],
            cwd=workdir,
            env={**env, "PATH": paths.get(where, paths["device"])},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        said = [k for k in expected if k in command]
        code = expected[said[0]].pop(0) if said else 0
        assert result.returncode == code, f"{where}$ {command}\n{result.stdout}{result.stderr}"
        results.append(result)
    stop_laptop()
    assert all(not codes for codes in expected.values()), f"not run: {expected}"
    return results


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def test_air_gapped_runbook(hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path) -> None:
    key = hq.setup()
    robot = make_device()
    hq.image(robot)
    work = tmp_path / "carried"
    work.mkdir()
    (work / "license.key").write_text(key + "\n")
    results = run_all("air-gapped.md", work, hq, robot, {"LICENSE_KEY": key})
    checks = [r for r in results if r.args[-1] == "fieldpass check"]
    assert len(checks) == 2
    assert "(365 days left)" in checks[0].stdout
    assert robot.verdict()["serial"] == 2  # the renewal is in force


def test_factory_runbook(hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path) -> None:
    key = hq.setup()
    work = tmp_path / "station"
    line = work / "line"
    robots = {}
    for name in ("robot-01", "robot-02", "robot-03", "robot-04", "robot-05"):
        robots[name] = DeviceRoot(line / name, os.urandom(16).hex())
    (line / "batch.csv").write_text(
        "name,fingerprint,root\n"
        + "".join(
            f"{n},{robots[n].fingerprint},{n}\n" for n in ("robot-02", "robot-03", "robot-04")
        )
    )
    hq.image(robots["robot-05"])  # its image carries HQ's keyring; it writes a request
    results = run_all(
        "factory.md",
        work,
        hq,
        robots["robot-05"],
        {"LICENSE_KEY": key, "FINGERPRINT": robots["robot-01"].fingerprint},
    )
    assert any("3 provisioned, 0 skipped, 0 failed" in r.stdout for r in results)
    for robot in robots.values():
        first_boot = robot.check()
        assert first_boot.returncode == 0, first_boot.stdout + first_boot.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in RUNBOOKS.glob("*.md")))
def test_every_runbook_is_tested(name: str) -> None:
    tested = {"air-gapped.md", "factory.md", "technician.md", "mainboard-swap.md"}
    assert name in tested, f"docs/runbooks/{name} has no test running its commands"


def test_technician_runbook(hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path) -> None:
    key = hq.setup()
    robot = make_device()
    hq.image(robot)
    hq.run("provision", key, "--fingerprint", robot.fingerprint, "--root", str(robot.path))
    assert robot.check().returncode == 0
    port = free_port()
    robot.write_config(
        '[online]\nserver = "http://127.0.0.1:9"\n'
        f'servers = ["http://127.0.0.1:{port}"]\ntimeout_s = 2\n'
    )
    work = tmp_path / "laptop"
    work.mkdir()
    (work / "site-7.txt").write_text(f"# site 7\n{robot.fingerprint}\n")
    license_id = str(hq.json("licenses", "show", key)["id"])
    results = run_all(
        "technician.md",
        work,
        hq,
        robot,
        {"LICENSE_ID": license_id, "LAPTOP_ADDRESS": "127.0.0.1", "LAPTOP_PORT": str(port)},
    )
    # 1: provisioned; 2: the bundle by license; 3: the bundle by site, which replaced it
    assert robot.verdict()["serial"] == 3
    assert any("site-7" in r.stdout and "1" in r.stdout for r in results if "SITE" in r.stdout)
    assert "1 of 1 device(s) picked up their renewal or revocation" in "".join(
        r.stdout for r in results
    )
    assert "recorded 1 pickup(s)" in results[-1].stdout


@pytest.mark.parametrize("path", ["3a", "3b"])
def test_mainboard_swap_runbook(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path, path: str
) -> None:
    """3a: the laptop relays to HQ over TLS (a real `serve` on 127.0.0.1); 3b: by hand.
    The old board has no TPM (tests/test_field_relay.py swaps a TPM-bound one): its
    seat waits for the operator, as the runbook says."""
    key = hq.setup(seats=1)
    old, new = make_device(), make_device()  # a new mainboard: a new fingerprint
    for board in (old, new):
        hq.image(board)
    work = tmp_path / "site"
    work.mkdir()
    (work / "license.key").write_text(key + "\n")
    first = work / "old.machine"
    hq.run("activate", key, "--fingerprint", old.fingerprint, "-o", str(first))
    assert (
        old.run("install", str(first), "--license-key-file", str(work / "license.key")).returncode
        == 0
    )
    old_act = str(hq.json("licenses", "show", key)["activations"][0]["activation_id"])  # type: ignore[index]
    port = free_port()
    old.write_config(
        f'[online]\nserver = "http://127.0.0.1:9"\nservers = ["http://127.0.0.1:{port}"]\n'
        "timeout_s = 2\n"
    )
    env = {
        "LICENSE_KEY": key,
        "LICENSE_ID": str(hq.json("licenses", "show", key)["id"]),
        "OLD_ACTIVATION": old_act,
        "LAPTOP_ADDRESS": "127.0.0.1",
        "LAPTOP_PORT": str(port),
    }
    server = None
    if path == "3a":  # HQ's API over TLS, its CA certificate on the laptop
        pki = make_pki(tmp_path)
        tls = ("--tls-cert", str(pki / "hq.pem"), "--tls-key", str(pki / "hq.key"))
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        server = start_server(hq.home, *tls, tls=context)
        shutil.copy(pki / "ca.pem", work / "hq-ca.pem")
        env["HQ_URL"] = server.url
    try:
        results = run_all(
            "mainboard-swap.md",
            work,
            hq,
            None,
            env,
            {"old-board": old, "new-board": new},
            skip="### 3b" if path == "3a" else "### 3a",
            exits={"field relay": [1, 0]} if path == "3a" else None,
        )
    finally:
        if server is not None:
            server.stop()
    assert old.check().returncode == 30  # the old board gave its license back
    # the laptop carries it; only HQ's signed acknowledgement would take it off the board
    assert (old.state_dir / "return.receipt").exists()
    assert new.check().returncode == 0  # the new one runs, on the one seat
    returns = [e for e in hq.json("audit", "--limit", "1000") if e["action"] == "return"]  # type: ignore[attr-defined]
    out = "".join(r.stdout + r.stderr for r in results)
    if path == "3a":  # the laptop relayed the receipt: HQ took it over HTTP
        assert [(e["activation_id"], e["actor"]) for e in returns] == [(old_act, "device")]
        assert f"seat_limit_reached: license {env['LICENSE_ID']} has all its seats" in out
        assert f"HQ took the return receipt of {old_act} (taken before): seat freed" in out
        assert "1 return receipt(s) HQ held already" in out  # the report's copy of it
    else:
        assert [(e["activation_id"], e["actor"][:6]) for e in returns] == [(old_act, "field:")]
        assert "1 return receipt(s), 0 seat(s) freed now" in out
        assert f"return receipt of {old_act}: taken before, seat freed" in out
    assert "mainboard swap" in hq.run("audit", "--json").stdout
