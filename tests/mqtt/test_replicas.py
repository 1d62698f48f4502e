"""Several ``fieldpass-hq bridge`` replicas on one broker and one database: they share
the requests through a shared subscription, each with its own broker user and client
id, and the rate limit holds whichever replica answers; one killed mid-stream leaves
the others to answer everything, within the bound docs/mqtt.md gives (the devices' own
``renew_timeout_s`` re-ask, answered by the replicas left)."""

import signal
import threading
import time

from agent.daemon import topics
from provisioning.services import HQ as Service
from tests.mqtt.conftest import Client, Fleet, add_user, wait_for
from tests.mqtt.simdevices import SimDevice, enroll

SIM, SIM_PASSWORD = "test-sim", "sim-password"
RENEW_TIMEOUT_S = 2.0  # how long a simulated device waits before it asks again


def _fleet_of(fleet: Fleet, n: int) -> list[SimDevice]:
    """``n`` simulated devices with their own keys, on a license with room for them."""
    fleet.hq.run("plans", "create", "fleet", "--offline-ttl", "365d", "--grace", "30d",
                 "--seats", str(n))  # fmt: skip
    key = str(fleet.hq.json("licenses", "create", "--plan", "fleet")["key"])
    service = Service(fleet.hq.home)
    try:
        return enroll(service, key, n)
    finally:
        service.store.close()


def _lock_down(fleet: Fleet) -> None:
    fleet.lock_down([])
    out = fleet.tmp / "broker-config"
    add_user(out, SIM, SIM_PASSWORD, "topic readwrite fieldpass/v1/dev/#")
    fleet.broker.restart()


def _renewals(fleet: Fleet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in fleet.audit():
        if e["action"] == "renew" and e["actor"] == "mqtt-bridge":
            counts[str(e["activation_id"])] = counts.get(str(e["activation_id"]), 0) + 1
    return counts


def test_two_replicas_issue_one_file_per_device_per_interval(fleet: Fleet) -> None:
    """2,000 requests that all say "serial 0", spread over two replicas by the broker:
    one new file, published again to the device that says it lacks it, and one audit
    line."""
    (device,) = _fleet_of(fleet, 1)
    _lock_down(fleet)
    fleet.start_bridge(replica=1, min_interval="60s")
    fleet.start_bridge(replica=2, min_interval="60s")
    sim = Client(fleet.broker, SIM, SIM_PASSWORD)
    sim.subscribe(device.topic(topics.MACHINE_FILE))
    request = device.renew(serial=0, due=False)
    for _ in range(2000):
        sim.client.publish(device.topic(topics.RENEW_REQUEST), request, qos=1)
    sim.publish(device.topic(topics.RENEW_REQUEST), request)
    wait_for(lambda: len(sim.received("machine-file")) >= 1000, 60, "the answers")
    time.sleep(1)
    files = {data for data in sim.received("machine-file") if data}
    sim.close()
    assert len(files) == 1  # the same file, however often it was asked for
    assert _renewals(fleet) == {device.activation_id: 1}
    assert all(p.poll() is None for p in fleet.bridges)
    fleet.stop_bridges()


class Simulator:
    """Devices that ask for a renewal and ask again every RENEW_TIMEOUT_S until a file
    arrives, as ``fieldpass run`` does (renew_timeout_s)."""

    def __init__(self, fleet: Fleet, devices: list[SimDevice]) -> None:
        self.devices = {d.device_id: d for d in devices}
        self.files: dict[str, set[bytes]] = {}
        self.lock = threading.Lock()
        self.client = Client(fleet.broker, SIM, SIM_PASSWORD)
        self.client.client.on_message = self._on_message
        self.client.subscribe(topics.topic(topics.DEFAULT_PREFIX, "+", topics.MACHINE_FILE))
        self.requests = 0

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        parsed = topics.parse(topics.DEFAULT_PREFIX, message.topic)  # type: ignore[attr-defined]
        payload = bytes(message.payload)  # type: ignore[attr-defined]
        if parsed is not None and payload:
            with self.lock:
                self.files.setdefault(parsed[0], set()).add(payload)

    def answered(self) -> int:
        with self.lock:
            return len(self.files)

    def ask(self, which: list[SimDevice]) -> None:
        for d in which:
            self.client.client.publish(d.topic(topics.RENEW_REQUEST), d.renew(), qos=1)
            self.requests += 1

    def waiting(self) -> list[SimDevice]:
        with self.lock:
            return [d for dev, d in self.devices.items() if dev not in self.files]


def test_one_replica_killed_mid_stream_the_other_answers_every_due_device(
    fleet: Fleet,
) -> None:
    n = 300
    devices = _fleet_of(fleet, n)
    _lock_down(fleet)
    fleet.start_bridge(replica=1, min_interval="60s")
    doomed = fleet.start_bridge(replica=2, min_interval="60s")
    sim = Simulator(fleet, devices)
    started = time.monotonic()
    sim.ask(devices[: n // 2])
    wait_for(lambda: sim.answered() >= n // 4, 60, "the first answers")
    doomed.send_signal(signal.SIGKILL)  # mid-stream: what it held dies with it
    doomed.wait(10)
    killed_after = sim.answered()
    sim.ask(devices[n // 2 :])
    bound_s = 60.0  # docs/mqtt.md: renew_timeout_s plus the survivors' answering time
    while sim.waiting() and time.monotonic() - started < bound_s:
        time.sleep(RENEW_TIMEOUT_S)
        sim.ask(sim.waiting())
    elapsed = time.monotonic() - started
    sim.client.close()
    assert sim.waiting() == [], f"{len(sim.waiting())} devices without a file after {elapsed:.0f} s"
    assert killed_after < n  # the kill did fall mid-stream
    # none answered twice: one new file per device, whichever replica issued it
    assert all(len(files) == 1 for files in sim.files.values())
    renewals = _renewals(fleet)
    assert sorted(renewals) == sorted(d.activation_id for d in devices)
    assert set(renewals.values()) == {1}
    assert fleet.bridges[0].poll() is None
    fleet.stop_bridges()
