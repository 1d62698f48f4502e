"""HQ's side against a real mosquitto with the generated password and ACL files: the
real ``fieldpass-hq bridge`` / ``push`` / ``broker-config`` and real ``fieldpass run``."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import FIELDPASS_HQ, DeviceRoot, clean_env
from tests.mqtt.conftest import Client, Daemon, Fleet, connect_all, device_topic, wait_for


def test_bridge_renews_then_revokes_acl_confines(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot, other = make_device(), make_device()
    fleet.enroll(robot, faketime="-300d")  # due: 300 of 365 days gone
    fleet.enroll(other)
    rows = fleet.lock_down([robot, other])
    fleet.start_bridge()
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("serial") == 2, 20, "the bridge's renewal")
    assert robot.check().returncode == 0 and robot.verdict()["days_left"] == 365
    assert daemon.stop() == 0
    assert any(e["action"] == "renew" and e["actor"] == "mqtt-bridge" for e in fleet.audit())

    # the other device, with its own valid credentials, reads nothing of the robot's
    other_id = device_topic(other, "x").split("/")[3]
    intruder = Client(fleet.broker, other_id, rows[other_id])
    intruder.subscribe(device_topic(robot, "machine-file"))
    intruder.subscribe("fieldpass/v1/dev/+/machine-file")
    intruder.subscribe("#")
    forged = b'{"v":1,"serial":0,"expires_at":0,"due":true}'
    intruder.publish(device_topic(robot, "renew-request"), forged)
    hq_side = fleet.observer()
    hq_side.subscribe(device_topic(robot, "#"))
    wait_for(lambda: hq_side.received("machine-file"), what="HQ's own view of the retained file")
    time.sleep(1)
    assert intruder.received("") == []
    assert not hq_side.received("renew-request")  # the ACL dropped the forged request
    intruder.close()
    hq_side.close()

    # revoked at HQ: the robot learns it on its next connection, and it sticks offline
    fleet.hq.run("licenses", "revoke", fleet.license_id, "--yes")
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("verdict") == "revoked", 20, "the revocation")
    assert daemon.stop() == 0
    fleet.broker.stop()
    assert robot.check().returncode == 32
    assert any(e["action"] == "mqtt_revocation" for e in fleet.audit())
    fleet.broker.start()


def test_push_renews_a_license_and_counts_confirmations(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robots = [make_device() for _ in range(3)]
    for robot in robots:
        fleet.enroll(robot)
    fleet.lock_down(robots)
    running = connect_all(daemons, robots[:2])
    result = fleet.hq.run(
        "push", "--broker", fleet.broker.url, "--license", fleet.license_id, "--wait", "5s",
        "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["selected"] == 3 and summary["sent"] == 3 and summary["failed"] == 0
    assert summary["confirmed"] == 2 and summary["pending"] == 1  # the third is offline
    # the offline one gets its retained file when it comes back
    late = daemons(robots[2])
    late.start()
    wait_for(lambda: robots[2].verdict().get("serial") == 2, 20, "the retained file")
    for d in [*running, late]:
        assert d.stop() == 0
    for robot in robots:
        assert robot.check().returncode == 0


def test_suspended_then_reinstated_device_is_lifted_by_a_fresh_file(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot = make_device()
    fleet.enroll(robot)
    fleet.lock_down([robot])
    fleet.start_bridge()
    fleet.hq.run("licenses", "suspend", fleet.license_id)
    daemon = daemons(robot)
    daemon.start()
    wait_for(lambda: robot.verdict().get("verdict") == "revoked", 20, "the suspension")
    assert robot.check().returncode == 32
    # a file lifts a revocation only if HQ issued it later (in whole seconds)
    time.sleep(1.1)
    fleet.hq.run("licenses", "reinstate", fleet.license_id)
    daemon.stop()
    daemon.start()  # its request says it holds a revocation: HQ answers with a new file
    wait_for(lambda: robot.verdict().get("verdict") == "valid", 20, "the lifting file")
    assert robot.verdict()["serial"] == 2
    assert daemon.stop() == 0
    assert robot.check().returncode == 0


def test_bridge_says_connected_only_once_the_broker_accepted_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    def bridge(*args: str) -> subprocess.CompletedProcess[str]:
        return fleet.hq.run("bridge", *args, check=False)

    wrong_scheme = bridge("--broker", f"http://127.0.0.1:{fleet.broker.port}")
    assert wrong_scheme.returncode == 2
    assert wrong_scheme.stderr.count("\n") == 1 and "mqtt://" in wrong_scheme.stderr
    assert "connected" not in wrong_scheme.stderr

    bad = tmp_path / "wrong.password"
    bad.write_text("not-the-password\n")
    fleet.lock_down([])
    refused = bridge("--broker", fleet.broker.url, "--password-file", str(bad))
    assert refused.returncode == 69 and "refused HQ" in refused.stderr
    assert "connected" not in refused.stderr

    fleet.broker.stop()
    unreachable = bridge("--broker", fleet.broker.url)
    assert unreachable.returncode == 69 and "cannot reach the broker" in unreachable.stderr
    assert "connected" not in unreachable.stderr and "Errno" not in unreachable.stderr
    fleet.broker.start()

    proc = subprocess.Popen(
        [FIELDPASS_HQ, "--home", str(fleet.hq.home), "bridge", "--broker", fleet.broker.url,
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line.startswith("fieldpass.hq"):  # log lines from the bridge, if any
            line = proc.stderr.readline()
        assert line == f"fieldpass-hq: bridge connected to {fleet.broker.url}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc == {
        "broker": fleet.broker.url,
        "stopped": True,
        "ignored": {},
        "told": {},
        "heard": {},
    }


def test_push_exits_1_when_a_device_failed(fleet: Fleet) -> None:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2 * 86400))
    doc = fleet.hq.json("licenses", "create", "--plan", "industrial", "--expires", expires)
    fleet.hq.run("activate", str(doc["key"]), "--fingerprint", "ab" * 32)
    push = [
        "push", "--broker", fleet.broker.url, "--license", str(doc["id"]), "--wait", "0s",
        "--json",
    ]  # fmt: skip
    ok = fleet.hq.run(*push, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sent"] == 1
    # ten days on, the license has expired: HQ issues nothing, and says so by its exit code
    failed = fleet.hq.run(*push, faketime="+10d", check=False)
    assert failed.returncode == 1, failed.stderr
    summary = json.loads(failed.stdout)
    assert summary["failed"] == 1 and summary["sent"] == 0
    assert "expired" in summary["failures"][0]


def _verdict(device: DeviceRoot) -> dict[str, object]:
    try:
        return device.verdict()
    except (OSError, ValueError):
        return {}


def _revoked(device: DeviceRoot, reason: str = "") -> Callable[[], bool]:
    def check() -> bool:
        doc = _verdict(device)
        return doc.get("verdict") == "revoked" and reason in str(doc.get("reason", ""))

    return check


def test_a_connected_device_learns_a_revocation_and_an_offline_one_when_it_returns(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    """The daemon stays connected and asks nothing (its file is months from due): HQ's
    outbox tells it, within seconds of ``licenses revoke``, and tells the device that
    was offline then as soon as it is back."""
    online, offline = make_device(), make_device()
    for robot in (online, offline):
        fleet.enroll(robot)
    fleet.lock_down([online, offline])
    fleet.start_bridge()
    daemon = daemons(online)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    fleet.hq.run("licenses", "revoke", fleet.license_id, "--yes")
    wait_for(_revoked(online, "revoked"), 10, "the revocation on the connected device")
    assert online.check().returncode == 32
    assert daemon.running()  # still the same connection: nothing asked, HQ told
    away = fleet.activations[offline.path.name]
    wait_for(lambda: [e.activation_id for e in fleet.outbox()] == [away], 10, "a confirmation")
    late = daemons(offline)
    late.start()
    wait_for(_revoked(offline, "revoked"), 20, "the revocation after the device's return")
    wait_for(lambda: fleet.outbox() == [], 10, "every device's confirmation")
    assert daemon.stop() == 0 and late.stop() == 0
    revocations = [e for e in fleet.audit() if e["action"] == "mqtt_revocation"]
    assert len(revocations) == 2  # made once per device, however often it was published
    assert offline.check().returncode == 32


def test_suspend_reinstate_and_deactivate_reach_a_device_that_stays_connected(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot = make_device()
    fleet.enroll(robot)
    fleet.lock_down([robot])
    fleet.start_bridge()
    daemon = daemons(robot)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    fleet.hq.run("licenses", "suspend", fleet.license_id)
    wait_for(_revoked(robot, "suspended"), 10, "the suspension")
    fleet.hq.run("licenses", "reinstate", fleet.license_id)  # a newer file lifts it
    wait_for(lambda: _verdict(robot).get("verdict") == "valid", 10, "the reinstatement")
    assert _verdict(robot)["serial"] == 2 and robot.check().returncode == 0
    wait_for(lambda: fleet.outbox() == [], 10, "the reinstatement confirmed")
    fleet.hq.run("deactivate", fleet.activations[robot.path.name])
    wait_for(_revoked(robot, "deactivated"), 10, "the deactivation")
    assert robot.check().returncode == 32
    wait_for(lambda: fleet.outbox() == [], 10, "the deactivation confirmed")
    assert daemon.running() and daemon.stop() == 0
    # confirmed: the retained deactivation is cleared, and the device keeps its verdict
    # (the bridge publishes the clear just after it recorded the confirmation: an
    # observer may still see the retained message, then the clear)
    observer = fleet.observer()
    observer.subscribe(device_topic(robot, "revocation"))
    time.sleep(1)  # what the broker retains has arrived
    wait_for(lambda: observer.received("revocation")[-1:] in ([], [b""]), 10, "the clear")
    observer.close()
    late = fleet.observer()  # a new subscriber: nothing is retained any more
    late.subscribe(device_topic(robot, "revocation"))
    time.sleep(1)
    assert late.received("revocation") in ([], [b""])
    late.close()
    assert robot.check().returncode == 32


def test_the_outbox_outlives_a_bridge_outage_and_a_broker_that_lost_everything(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robot = make_device()
    fleet.enroll(robot)
    fleet.lock_down([robot])
    daemon = daemons(robot)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    # No bridge runs when HQ suspends: the entry waits in the database.
    fleet.hq.run("licenses", "suspend", fleet.license_id)
    time.sleep(1)
    assert _verdict(robot).get("verdict") == "valid"
    fleet.start_bridge()
    wait_for(_revoked(robot, "suspended"), 10, "the suspension once a bridge runs")
    wait_for(lambda: fleet.outbox() == [], 10, "the suspension confirmed")
    assert daemon.stop() == 0
    # Reinstated while the device is away; then the broker goes down and comes back
    # with nothing (its store lost, the retained file with it). The bridge publishes
    # again what no status has confirmed, so the device finds a file when it returns.
    fleet.hq.run("licenses", "reinstate", fleet.license_id)
    wait_for(lambda: fleet.outbox()[0].sent_at is not None, 10, "the file published")
    fleet.broker.stop()
    for name in fleet.broker.home.glob("*.db"):
        name.unlink()
    fleet.broker.start()
    wait_for(lambda: "connected to the broker again" in fleet.bridge_log(), 20, "the bridge back")
    daemon.start()
    wait_for(lambda: _verdict(robot).get("verdict") == "valid", 20, "the file after the outage")
    wait_for(lambda: fleet.outbox() == [], 15, "the reinstatement confirmed")
    assert daemon.stop() == 0


def test_push_delivers_what_hq_must_tell_and_counts_it_so(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    robots = [make_device() for _ in range(3)]
    for robot in robots:
        fleet.enroll(robot)
    fleet.lock_down(robots)
    running = connect_all(daemons, robots[:2])
    # the third robot is offline: a push that waits for it takes the whole --wait
    push = ["push", "--broker", fleet.broker.url, "--license", fleet.license_id, "--wait", "5s",
            "--json"]  # fmt: skip

    def pushed() -> dict[str, object]:
        result = fleet.hq.run(*push, check=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    fleet.hq.run("licenses", "suspend", fleet.license_id)  # no bridge: push tells
    summary = pushed()
    assert summary["failed"] == 0 and summary["sent"] == 0
    assert summary["revocations_sent"] == 3 and summary["revocations_confirmed"] == 2
    assert summary["pending"] == 1  # the third is offline
    for robot in robots[:2]:
        assert robot.check().returncode == 32
    time.sleep(1.1)  # a file lifts a revocation only if issued in a later second
    fleet.hq.run("licenses", "reinstate", fleet.license_id)
    summary = pushed()
    assert (summary["sent"], summary["confirmed"], summary["failed"]) == (3, 2, 0)
    for robot in robots[:2]:
        assert robot.check().returncode == 0
    fleet.hq.run("deactivate", fleet.activations[robots[0].path.name])
    summary = pushed()
    assert summary["deactivations_sent"] == 1 and summary["deactivations_confirmed"] == 1
    assert summary["sent"] == 2  # one renewal, and the reinstatement still to confirm
    assert robots[0].check().returncode == 32
    late = daemons(robots[2])  # offline all along: the reinstatement's file waits
    late.start()
    wait_for(lambda: _verdict(robots[2]).get("serial") == 3, 20, "the retained file")
    summary = pushed()  # no bridge heard it: push tells again, with a newer file
    assert (summary["selected"], summary["sent"], summary["confirmed"]) == (2, 2, 2)
    assert fleet.outbox() == []
    for d in [*running, late]:
        assert d.stop() == 0
    assert robots[2].check().returncode == 0


def test_bridge_renews_each_device_with_a_key_its_keyring_holds(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    """Phase 2 of a key rotation taken before every image carries the new key: the
    renewal over MQTT names the device's keyring, and the bridge signs with a key in it
    (docs/hq.md, "Which key signs for a device")."""
    from tests.hq.test_key_selection import keys_by_kid, signer_of

    only_old, both = make_device(), make_device()
    fleet.enroll(only_old, faketime="-300d")  # its image: the old key only; a file due
    (old,) = keys_by_kid(fleet.hq)
    new = str(fleet.hq.json("keys", "generate", "--standby")["kid"])
    fleet.enroll(both, faketime="-300d")  # its image: [old, new]
    fleet.lock_down([only_old, both])
    fleet.hq.run("keys", "activate", new)
    fleet.start_bridge()
    running = connect_all(daemons, [only_old, both])
    for device in (only_old, both):
        wait_for(lambda d=device: d.verdict().get("serial") == 2, 20, "the bridge's renewal")  # type: ignore[misc]
    for daemon in running:
        assert daemon.stop() == 0
    assert signer_of(both) == new and both.check().returncode == 0
    assert signer_of(only_old) == old and only_old.check().returncode == 0


def test_a_status_over_mqtt_tells_hq_the_keyring_of_an_updated_image(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    """A device renewed over MQTT, then updated to an image whose keyring holds a new
    key: its next status names it, and HQ records it (what `keys list` counts and
    `keys retire` checks), with no renewal due."""
    from tests.hq.test_key_selection import keys_by_kid

    device = make_device()
    fleet.enroll(device, faketime="-300d")  # a file due: the renewal registers its key
    (old,) = keys_by_kid(fleet.hq)
    fleet.lock_down([device])
    fleet.start_bridge()
    (daemon,) = connect_all(daemons, [device])
    wait_for(lambda: device.verdict().get("serial") == 2, 20, "the bridge's renewal")
    assert daemon.stop() == 0
    assert keys_by_kid(fleet.hq)[old]["reported_by"] == 1
    new = str(fleet.hq.json("keys", "generate", "--standby")["kid"])
    fleet.hq.image(device)  # the image update: [old, new]
    (daemon,) = connect_all(daemons, [device])
    wait_for(lambda: keys_by_kid(fleet.hq)[new]["reported_by"] == 1, 20, "the keyring heard")
    assert daemon.stop() == 0
    assert device.verdict().get("serial") == 2  # nothing renewed: the status said it
