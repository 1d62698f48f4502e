"""Benchmark: renewing a fleet through mosquitto on loopback, and the daemon's idle cost.

Fleet: N activations at HQ (in-process service, SQLite synchronous=NORMAL); SIM_PROCS
processes simulate the devices, sharing one MQTT subscription
(``$share/sim/fieldpass/v1/dev/+/machine-file``, QoS 1): for every file a simulated device
does what the daemon's install does to the bytes (``open_machine_file``: size cap,
signature, decryption with its license key and fingerprint, claims; then the serial
check), keeps it, and confirms with a status message (QoS 1), as ``fieldpass run`` does.
Timed: from the start of ``push`` (selection, signing in one transaction, publishing)
until push has counted every device's confirmation. Not simulated: each device's disk
writes (about 0.5 ms per file on its own flash, in parallel across the fleet).

Idle daemon: one real ``fieldpass run`` connected to the broker with nothing to do; its
peak RSS (VmHWM) and the CPU it uses over IDLE_S seconds.
"""

import multiprocessing as mp
import os
import queue
import tempfile
import time
from pathlib import Path

N = int(os.environ.get("BENCH_MQTT_DEVICES", "10000"))
SIM_PROCS = 2
IDLE_S = float(os.environ.get("BENCH_MQTT_IDLE_S", "60"))


def _simulate(
    port: int,
    fleet: dict[str, str],
    license_key: str,
    keyring: bytes,
    ready: "mp.synchronize.Event",
    stop: "mp.synchronize.Event",
    done: "mp.Queue[int]",
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.daemon import messages, topics
    from agent.wire.errors import WireError
    from agent.wire.keys import Keyring
    from agent.wire.machine_file import open_machine_file

    ring = Keyring.loads(keyring)
    serials: dict[str, int] = {}
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(
        "$share/sim/" + topics.topic(topics.DEFAULT_PREFIX, "+", topics.MACHINE_FILE), qos=1
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.5)
    ready.set()
    handled = 0
    while True:
        try:
            name, payload = inbox.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                break
            continue
        if not payload:
            continue
        parsed = topics.parse(topics.DEFAULT_PREFIX, name)
        if parsed is None or parsed[0] not in fleet:
            continue
        try:
            claims = open_machine_file(payload, ring, license_key, fleet[parsed[0]])
        except WireError:
            continue
        if claims.serial <= serials.get(parsed[0], 1):
            continue
        serials[parsed[0]] = claims.serial
        status = messages.status({"verdict": "valid", "serial": claims.serial})
        client.publish(topics.topic(topics.DEFAULT_PREFIX, parsed[0], topics.STATUS), status, 1)
        handled += 1
    client.disconnect()
    client.loop_stop()
    done.put(handled)


def _fleet(tmp: Path) -> tuple[object, str, str, dict[str, str]]:
    from agent.daemon import topics
    from provisioning.models import Actor, Plan
    from provisioning.services import HQ
    from provisioning.storage import sqlite

    actor = Actor("bench", "local")
    home = tmp / "hq"
    hq = HQ(home, database=sqlite.url(home / sqlite.DB_NAME, synchronous="NORMAL"))
    now = int(time.time())
    hq.generate_key(now, actor)
    hq.create_plan(Plan("fleet", "robot-os", 365 * 86400, 30 * 86400, N, None, now), actor)
    lic = hq.create_license("fleet", [], None, now, actor)
    fleet = {}
    for _ in range(N):
        fingerprint = os.urandom(32).hex()
        hq.activate(lic.license_key, fingerprint, now, actor)
        fleet[topics.device_id(fingerprint)] = fingerprint
    return hq, lic.id, lic.license_key, fleet


def _fleet_renewal(tmp: Path, port: int) -> dict[str, float]:
    from provisioning.models import Actor
    from provisioning.mqtt import connection
    from provisioning.mqtt import push as push_mod

    start = time.perf_counter()
    hq, license_id, license_key, fleet = _fleet(tmp)
    setup_s = time.perf_counter() - start
    keyring = hq.keyring().dumps()  # type: ignore[attr-defined]
    if isinstance(keyring, str):
        keyring = keyring.encode("utf-8")
    stop = mp.get_context("fork").Event()
    ctx = mp.get_context("fork")
    done: mp.Queue[int] = ctx.Queue()
    readies = []
    procs = []
    for _ in range(SIM_PROCS):
        ready = ctx.Event()
        p = ctx.Process(
            target=_simulate,
            args=(port, fleet, license_key, keyring, ready, stop, done),
            daemon=True,
        )
        p.start()
        readies.append(ready)
        procs.append(p)
    for ready in readies:
        ready.wait(30)
    confirmations = push_mod.Confirmations()
    client = connection.connect(
        f"mqtt://127.0.0.1:{port}",
        "bench-push",
        "fieldpass-hq",
        "-",
        on_message=confirmations.on_message,
        subscriptions=["fieldpass/v1/dev/+/status"],
    )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    summary = push_mod.push(
        hq,  # type: ignore[arg-type]
        client,
        confirmations,
        push_mod.Selection(license_id=license_id),
        prefix="fieldpass/v1",
        ttl_s=None,
        wait_s=120,
        now=int(time.time()),
        actor=Actor("bench", "local"),
        progress=lambda n: None,
    )
    total_s = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    stop.set()
    handled = sum(done.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    timings.update(
        devices=float(N),
        fleet_setup_s=round(setup_s, 2),
        push_to_all_confirmed_s=round(total_s, 2),
        renewals_per_s=round(summary.confirmed / total_s, 0),
        confirmed=float(summary.confirmed),
        failed=float(summary.failed),
        simulated_devices_installed=float(handled),
    )
    return timings


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _idle_daemon(tmp: Path, port: int) -> dict[str, float]:
    import subprocess

    from tests.conftest import FIELDPASS, DeviceRoot, Signer, clean_env

    device = DeviceRoot(tmp / "device", os.urandom(16).hex())
    signer = Signer()
    signer.provision(device)
    device.write_config(f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{port}"]\n')
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [FIELDPASS, "--root", str(device.path), "run"],
        stdout=log,
        stderr=log,
        env=clean_env(FIELDPASS_LOG_LEVEL="DEBUG"),
    )
    try:
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline and b"-> CONNECTED" not in (tmp / "daemon.log").read_bytes()
        ):
            time.sleep(0.1)
        time.sleep(2)  # settle: retained messages, first status
        cpu0 = _proc_cpu_s(proc.pid)
        time.sleep(IDLE_S)
        cpu_s = _proc_cpu_s(proc.pid) - cpu0
        hwm = _proc_kib(proc.pid, "VmHWM")
        rss = _proc_kib(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(15)
    return {
        "idle_window_s": IDLE_S,
        "idle_cpu_ms": round(cpu_s * 1000, 1),
        "idle_cpu_percent": round(100 * cpu_s / IDLE_S, 3),
        "daemon_peak_rss_mib": round(hwm / 1024, 1),
        "daemon_rss_mib": round(rss / 1024, 1),
    }


def main() -> dict[str, float]:
    from tests.mqtt.conftest import Broker

    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as name:
        tmp = Path(name)
        broker = Broker(tmp / "broker")
        broker.start()
        try:
            results = _fleet_renewal(tmp, broker.port)
            results.update(_idle_daemon(tmp, broker.port))
        finally:
            broker.stop()
    return results


if __name__ == "__main__":
    for k, v in main().items():
        print(f"{k:28} {v}")
