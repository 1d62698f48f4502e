"""Devices keep the agent they shipped with for years: the agent of release 0.1.0 (the
tag v0.1.0, kept here as tests/compat/agent-0.1.0.tar.gz, made by ``git archive v0.1.0
agent bin``) against this HQ: activation, renewal and validation over HTTP, the
air-gapped request, renewal over MQTT through the bridge, and a revocation. HQ answers
it in the forms it reads (version-1 claims, the version-1 signed status, its JSON
renewal request).
"""

import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.wire.license_key import license_id
from tests.conftest import HQ, DeviceRoot, clean_env, faketime_prefix
from tests.hq.server import Server, start_server
from tests.mqtt.conftest import Broker, wait_for

ARCHIVE = Path(__file__).parents[1] / "compat" / "agent-0.1.0.tar.gz"


@pytest.fixture(scope="module")
def old_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("agent-0.1.0")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(where, filter="data")
    text = (where / "agent" / "__init__.py").read_text()
    assert '__version__ = "0.1.0"' in text  # this really is the old agent
    assert not (where / "agent" / "asks.py").exists()
    return where


def old(
    agent: Path, device: DeviceRoot, *args: str, faketime: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The 0.1.0 ``fieldpass`` on ``device``: the old package first on the path."""
    prefix = faketime_prefix(faketime)
    cmd = [*prefix, sys.executable, "-c", "from agent.main import main; main()"]
    return subprocess.run(
        [*cmd, "--root", str(device.path), *args],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(agent)),
        cwd=str(agent),
        timeout=120,
        check=False,
    )


@pytest.fixture
def server(hq: HQ) -> Iterator[Server]:
    hq.setup()
    s = start_server(hq.home)
    yield s
    s.stop()


def test_an_agent_of_0_1_0_activates_renews_validates_and_deactivates_over_http(
    old_agent: Path, hq: HQ, server: Server, device: DeviceRoot
) -> None:
    key = str(hq.json("licenses", "create", "--plan", "industrial")["key"])
    lic = license_id(key)
    hq.image(device)
    act = old(old_agent, device, "activate", key, "--server", server.url)
    assert act.returncode == 0, act.stderr
    assert old(old_agent, device, "check").returncode == 0
    fresh = old(old_agent, device, "refresh", "--server", server.url, "--json")
    assert fresh.returncode == 0, fresh.stderr
    assert '"serial": 2' in fresh.stdout
    device.write_config(f'[online]\nserver = "{server.url}"\n')
    online = old(old_agent, device, "check", "--online")
    assert online.returncode == 0 and "warning" not in online.stderr, online.stderr
    # a revocation reaches it through its validate (the v1 signed status)
    hq.run("licenses", "suspend", lic)
    assert old(old_agent, device, "check", "--online").returncode == 32
    hq.run("licenses", "reinstate", lic)
    assert old(old_agent, device, "check", "--online").returncode == 0
    off = old(old_agent, device, "deactivate", "--server", server.url)
    assert off.returncode == 0, off.stderr
    assert old(old_agent, device, "check").returncode == 30


def test_an_agent_of_0_1_0_renews_air_gapped(old_agent: Path, hq: HQ, device: DeviceRoot) -> None:
    key = hq.setup()
    hq.image(device)
    out = device.path.parent / "first.machine"
    hq.run("activate", key, "--fingerprint", device.fingerprint, "-o", str(out))
    key_file = device.path.parent / "key.txt"
    key_file.write_text(key + "\n")
    assert (
        old(old_agent, device, "install", str(out), "--license-key-file", str(key_file)).returncode
        == 0
    )
    req = device.path.parent / "old.request"
    made = old(old_agent, device, "request", "-o", str(req))
    assert made.returncode == 0, made.stderr
    answer = device.path.parent / "answer.txt"
    hq.run("machine-file", "--request", str(req), "--armor", "-o", str(answer))
    assert old(old_agent, device, "install", str(answer)).returncode == 0
    assert old(old_agent, device, "check").returncode == 0
    assert old(old_agent, device, "status", "--json").stdout.count('"serial": 2') == 1


def test_an_agent_of_0_1_0_renews_over_mqtt_through_the_bridge(
    old_agent: Path,
    hq: HQ,
    broker: Broker,
    make_device: Callable[..., DeviceRoot],
    tmp_path: Path,
) -> None:
    from tests.mqtt.conftest import Fleet

    fleet = Fleet(hq, broker, tmp_path)
    robot = make_device()
    fleet.hq.image(robot)
    out = tmp_path / "robot.machine"
    fleet.hq.json(
        "activate", fleet.key, "--fingerprint", robot.fingerprint, "-o", str(out),
        faketime="-300d",
    )  # fmt: skip
    key_file = tmp_path / "key.txt"
    key_file.write_text(fleet.key + "\n")
    assert (
        old(old_agent, robot, "install", str(out), "--license-key-file", str(key_file)).returncode
        == 0
    )
    fleet.lock_down([robot])
    fleet.start_bridge()
    try:
        ran = old(old_agent, robot, "run", "--once")
        assert ran.returncode == 0, ran.stderr
        wait_for(lambda: old(old_agent, robot, "status", "--json").stdout.count('"serial": 2') == 1,
                 20, "the bridge's renewal")  # fmt: skip
        assert old(old_agent, robot, "check").returncode == 0
    finally:
        assert fleet.bridge is not None
        fleet.bridge.send_signal(signal.SIGTERM)
        fleet.bridge.wait(15)


def test_an_agent_of_0_1_0_that_stays_connected_is_told_of_its_deactivation(
    old_agent: Path,
    hq: HQ,
    broker: Broker,
    make_device: Callable[..., DeviceRoot],
    tmp_path: Path,
) -> None:
    """HQ's outbox tells a connected 0.1.0 daemon that its seat was freed, as a signed
    revocation with the reason it reads ("revoked": it knows no "deactivated"), and its
    JSON status confirms it."""
    from tests.mqtt.conftest import Fleet

    fleet = Fleet(hq, broker, tmp_path)
    robot = make_device()
    fleet.hq.image(robot)
    out = tmp_path / "robot.machine"
    act = fleet.hq.json("activate", fleet.key, "--fingerprint", robot.fingerprint, "-o", str(out))
    key_file = tmp_path / "key.txt"
    key_file.write_text(fleet.key + "\n")
    installed = old(old_agent, robot, "install", str(out), "--license-key-file", str(key_file))
    assert installed.returncode == 0
    fleet.lock_down([robot])
    fleet.start_bridge()
    log_path = tmp_path / "old-daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-c", "from agent.main import main; main()", "--root",
             str(robot.path), "run"],
            stdout=log, stderr=log, cwd=str(old_agent),
            env=clean_env(PYTHONPATH=str(old_agent), FIELDPASS_LOG_LEVEL="DEBUG"),
        )  # fmt: skip
    try:
        wait_for(lambda: b"-> CONNECTED" in log_path.read_bytes(), 20, "the old daemon connected")
        fleet.hq.run("deactivate", str(act["activation_id"]))
        wait_for(lambda: b"signed revocation" in log_path.read_bytes(), 20, "the deactivation")
        assert old(old_agent, robot, "check").returncode == 32
        wait_for(lambda: fleet.outbox() == [], 20, "its status confirming it")
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        fleet.stop_bridges()  # the test made its Fleet itself: no fixture stops them
