"""Usage reports and return receipts over MQTT (issue 16), against the real mosquitto
(locked down by ``broker-config``), real ``fieldpass-hq bridge`` processes and real
``fieldpass run`` daemons; simulated devices (simdevices.py) where a test forges,
replays or reorders what a device would publish.
"""

import json
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import topics
from agent.wire.device_key import DeviceKey
from agent.wire.errors import WireError
from agent.wire.signed_time import verify_time
from provisioning.services import HQ as Service
from tests.conftest import HQ, DeviceRoot
from tests.mqtt.conftest import Client, Daemon, Fleet, connect_all, mqtt_config, wait_for
from tests.mqtt.simdevices import SimDevice, enroll

DAY = 86400
PASSWORD_LINE = 'password_file = "/etc/fieldpass/mqtt.password"'


def usage_by_activation(hq: HQ) -> dict[str, dict[str, object]]:
    return {str(row["activation_id"]): row for row in hq.json("usage", "show")}  # type: ignore[index, union-attr]


def device_counters(device: DeviceRoot) -> dict[str, int]:
    return json.loads(device.run("usage", "show", "--json").stdout)  # type: ignore[no-any-return]


def stopped_summary(fleet: Fleet) -> str:
    """What the bridge says it ignored when it stops (its last log line)."""
    fleet.stop_bridges()
    return fleet.bridge_log().strip().splitlines()[-1]


@pytest.fixture
def service(fleet: Fleet) -> Iterator[Service]:
    s = Service(fleet.hq.home)
    yield s
    s.store.close()


def test_reports_from_real_daemons_reach_hq_and_match_what_they_counted(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
) -> None:
    devices = [make_device() for _ in range(3)]
    for device in devices:
        fleet.enroll(device)
    fleet.lock_down(devices)
    fleet.start_bridge()
    for i, device in enumerate(devices):
        for _ in range(i):
            device.check()  # a boot recorded: devices that counted differently
    running = connect_all(daemons, devices)
    for d in running:
        d.wait_log("HQ acknowledged the usage report")
    shown = usage_by_activation(fleet.hq)
    for device in devices:
        row = shown[fleet.activations[device.path.name]]
        assert row["counters"] == device_counters(device)  # HQ's totals = the device's
        assert row["reports"] == 1
    # counters change while the daemons run: each tick sends the new counters (a new
    # report at most every report_interval_s: here every tick)
    for d in running:
        d.stop()
    for device in devices:
        device.write_config(
            mqtt_config(fleet.broker, PASSWORD_LINE, check_interval_s=1, report_interval_s=1)
        )
        device.check()
    running = connect_all(daemons, devices)

    def caught_up() -> bool:
        rows = usage_by_activation(fleet.hq)
        return all(
            rows[fleet.activations[dv.path.name]]["counters"]["boots"]  # type: ignore[index]
            == device_counters(dv)["boots"]
            for dv in devices
        )

    wait_for(caught_up, 20, "HQ to hold the new counters")
    wait_for(
        lambda: all(int(str(r["reports"])) >= 3 for r in usage_by_activation(fleet.hq).values()),
        20,
        "reports at every tick while operating time grows",
    )
    for d in running:
        d.stop()
    # the default interval: a tick every second, but one new report (on connect) a day
    before = {a: int(str(r["reports"])) for a, r in usage_by_activation(fleet.hq).items()}
    for device in devices:
        device.write_config(mqtt_config(fleet.broker, PASSWORD_LINE, check_interval_s=1))
    running = connect_all(daemons, devices)
    for d in running:
        d.wait_log("HQ acknowledged the usage report")
    time.sleep(3)  # three ticks
    for d in running:
        d.stop()
    after = {a: int(str(r["reports"])) for a, r in usage_by_activation(fleet.hq).items()}
    assert all(after[a] == before[a] + 1 for a in before), (before, after)
    for device in devices:
        row = usage_by_activation(fleet.hq)[fleet.activations[device.path.name]]
        counted = device_counters(device)
        assert row["counters"]["boots"] == counted["boots"]  # type: ignore[index]
        assert row["counters"]["operating_s"] > 0  # type: ignore[index, operator]
        assert row["counters"]["operating_s"] <= counted["operating_s"]  # type: ignore[index, operator]
    assert "error_" not in stopped_summary(fleet)


def test_a_returned_daemon_sends_its_receipt_until_hq_holds_it(
    fleet: Fleet,
    make_device: Callable[..., DeviceRoot],
    daemons: Callable[[DeviceRoot], Daemon],
    service: Service,
) -> None:
    robot = make_device()
    fleet.enroll(robot)
    fleet.lock_down([robot])
    robot.write_config(mqtt_config(fleet.broker, PASSWORD_LINE, check_interval_s=1))
    fleet.start_bridge()
    daemon = daemons(robot)
    daemon.start()
    daemon.wait_log("HQ acknowledged the usage report")
    fleet.stop_bridges()
    given = robot.run("return", "--yes")
    assert given.returncode == 0, given.stderr
    receipt_file = robot.state_dir / "return.receipt"
    assert receipt_file.exists()
    # no bridge yet: the daemon keeps its receipt and sends it again at every tick
    time.sleep(2.5)
    assert receipt_file.exists()
    # the robot reboots: its new daemon has seen no machine file (the return removed
    # it); HQ's acknowledgement still verifies, against the receipt itself
    assert daemon.stop() == 0
    daemon = daemons(robot)
    daemon.start()
    fleet.start_bridge()
    daemon.wait_log("HQ holds the return receipt", 20)
    assert not receipt_file.exists()
    act_id = fleet.activations[robot.path.name]
    (ret,) = [e for e in fleet.audit() if e["action"] == "return"]
    assert ret["actor"] == "mqtt-bridge" and ret["activation_id"] == act_id
    record = service.store  # the return is recorded with the receipt itself
    with record.read() as tx:
        stored = tx.get_return(act_id)
    assert stored is not None and stored.via == "mqtt" and "RECEIPT" in stored.receipt
    # without a TPM the seat frees after the returned file's expiry and grace
    assert service.get_activation(act_id).deactivated_at is None
    # the returned device's counters no longer grow: no report after the last ack
    before = usage_by_activation(fleet.hq)[act_id]["reports"]
    time.sleep(3)  # three ticks
    assert usage_by_activation(fleet.hq)[act_id]["reports"] == before
    daemon.stop()
    summary = stopped_summary(fleet)
    assert "error_" not in summary


def _acks(observer: Client, dev: SimDevice) -> list[bytes]:
    return observer.received(dev.topic(topics.ACK))


def _acknowledges(token: bytes, dev: SimDevice, payload: bytes, service: Service) -> bool:
    act = service.get_activation(dev.activation_id)
    try:
        verify_time(
            token,
            service.keyring(),
            dev.fingerprint,
            topics.ack_nonce(payload),
            license_id=act.license_id,
            activation_id=act.id,
        )
    except WireError:
        return False
    return True


def _flip(data: bytes) -> bytes:
    i = len(data) - 10  # inside the signature
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


def test_forged_replayed_reordered_and_foreign_reports_and_receipts_change_nothing(
    fleet: Fleet, service: Service
) -> None:
    # activated two years ago: their files expired with their grace long since, so a
    # receipt frees the seat at once
    a, b = enroll(service, fleet.key, 2, now=int(time.time()) - 800 * DAY)
    fleet.lock_down([])
    fleet.start_bridge()
    observer = fleet.observer()
    for dev in (a, b):
        observer.subscribe(dev.topic(topics.ACK))
    good = a.report(2, {"units": 7, "boots": 3})
    observer.publish(a.topic(topics.REPORT), good)
    wait_for(lambda: a.activation_id in usage_by_activation(fleet.hq), 15, "the report")
    stranger = SimDevice(a.fingerprint, a.activation_id, DeviceKey.generate(), 1)
    older = a.report(1, {"units": 3, "boots": 2})
    refused = [
        (a.topic(topics.REPORT), good),  # replayed
        (a.topic(topics.REPORT), older),  # reordered: older than HQ's
        (a.topic(topics.REPORT), _flip(a.report(3, {"units": 10**9}))),  # forged
        (a.topic(topics.REPORT), stranger.report(4, {"units": 10**9})),  # unknown key
        (a.topic(topics.REPORT), b.report(5, {"units": 10**9})),  # foreign: b's on a's
        (a.topic(topics.RECEIPT), b.receipt()),  # foreign receipt
        (a.topic(topics.RECEIPT), stranger.receipt()),  # forged receipt
        (a.topic(topics.RECEIPT), _flip(a.receipt())),
    ]
    for name, payload in refused:
        observer.publish(name, payload)
    wait_for(lambda: len(_acks(observer, a)) >= 3, 15, "the acknowledgements")
    time.sleep(1)  # what else the bridge would publish
    rows = usage_by_activation(fleet.hq)
    assert set(rows) == {a.activation_id}
    assert (rows[a.activation_id]["last_seq"], rows[a.activation_id]["reports"]) == (2, 1)
    assert rows[a.activation_id]["counters"] == {"units": 7, "boots": 3}
    for dev in (a, b):
        assert service.get_activation(dev.activation_id).deactivated_at is None
    acks = _acks(observer, a)
    assert _acks(observer, b) == []
    # one for the report accepted, one each for the replay and the older one (HQ holds a
    # newer: the device may stop sending them), none for the rest
    assert len(acks) == 3
    assert sum(_acknowledges(t, a, good, service) for t in acks) == 2
    assert sum(_acknowledges(t, a, older, service) for t in acks) == 1
    # a's own receipt frees its seat, once
    receipt = a.receipt()
    observer.publish(a.topic(topics.RECEIPT), receipt)
    wait_for(
        lambda: service.get_activation(a.activation_id).deactivated_at is not None,
        15,
        "the seat freed",
    )
    observer.publish(a.topic(topics.RECEIPT), receipt)  # replayed: HQ has it already
    wait_for(lambda: len(_acks(observer, a)) >= 5, 15, "both acknowledged")
    assert all(_acknowledges(t, a, receipt, service) for t in _acks(observer, a)[3:])
    returns = [e for e in fleet.audit() if e["action"] == "return"]
    assert [(e["activation_id"], e["actor"]) for e in returns] == [(a.activation_id, "mqtt-bridge")]
    assert service.get_activation(b.activation_id).deactivated_at is None
    observer.close()
    summary = stopped_summary(fleet)
    for kind in ("'report_refused': 2", "'foreign_topic': 2", "'receipt_returned_already': 1"):
        assert kind in summary, summary
    assert "error_" not in summary


def test_a_device_writes_only_its_own_report_and_receipt_and_reads_no_ones(
    fleet: Fleet, service: Service
) -> None:
    a, b = enroll(service, fleet.key, 2)
    rows = fleet.lock_down([])
    fleet.start_bridge()
    seen: list[str] = []
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    intruder.username_pw_set(a.device_id, rows[a.device_id])
    intruder.on_message = lambda c, u, m: seen.append(m.topic)
    intruder.connect("127.0.0.1", fleet.broker.port)
    intruder.loop_start()
    try:
        for name in ("#", b.topic(topics.REPORT), b.topic(topics.RECEIPT), b.topic(topics.ACK)):
            intruder.subscribe(name, qos=1)
        time.sleep(0.5)
        # b's own report, published under b's credentials, reaches HQ and only HQ
        owner = Client(fleet.broker, b.device_id, rows[b.device_id])
        owner.publish(b.topic(topics.REPORT), b.report(1, {"units": 1}))
        wait_for(lambda: b.activation_id in usage_by_activation(fleet.hq), 15, "b's report")
        # a, posing as b on b's topics: the broker drops it
        for kind, payload in ((topics.REPORT, b.report(2, {"units": 10**6})),
                              (topics.RECEIPT, b.receipt())):  # fmt: skip
            intruder.publish(b.topic(kind), payload, qos=1).wait_for_publish(10)
        time.sleep(1)
        owner.close()
    finally:
        intruder.disconnect()
        intruder.loop_stop()
    assert seen == []
    row = usage_by_activation(fleet.hq)[b.activation_id]
    assert (row["last_seq"], row["counters"]) == (1, {"units": 1})
    assert service.get_activation(b.activation_id).deactivated_at is None
