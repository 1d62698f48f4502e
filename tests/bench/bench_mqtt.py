"""Benchmark: a fleet renewed through mosquitto on loopback by ``push`` and by two
``fieldpass-hq bridge`` replicas, the MQTT floor they stand on, and the daemon's idle
cost.

The fleet: N activations at HQ (SQLite, synchronous=FULL as HQ runs it), each with its
own device key (agents after 0.1.0: signed statuses and requests), written in one
transaction (not timed). SIM_PROCS processes simulate the devices and share one MQTT
subscription (``$share/sim/fieldpass/v1/dev/+/machine-file``, QoS 1): for every file a
simulated device does what the daemon's install does to the bytes
(``open_machine_file``: size cap, signature, decryption with its license key and
fingerprint, claims; then the serial check) and confirms with its signed status (QoS 1),
as ``fieldpass run`` does. Not simulated: each device's disk writes (about 0.5 ms per
file on its own flash, in parallel across the fleet).

- push: ``push`` in process on the whole license; timed from its start (selection,
  signing in one transaction, publishing) until it has verified every device's signed
  status with the new serial.
- bridges: two real ``fieldpass-hq bridge`` processes (replicas 1 and 2, one shared
  subscription, ``--min-interval 60s``); the simulated devices publish N signed due
  renewal requests (signed beforehand, not timed) and ask again after REASK_S if no
  file came; timed from the first request to every device holding a file. Checked: one
  ``renew`` audit line per device and one distinct file per device (none answered
  twice).
- floor: the same N round trips with no work at either end (a file-sized QoS 1 message
  out through the two simulator processes, a status-sized one back), so that the ratio
  push ÷ floor says what HQ's work costs on top of MQTT on this machine. Like push, the
  floor's publisher keeps at most ``connection.PUBLISH_WINDOW`` publishes awaiting
  their PUBACK (unbounded, paho's 16-bit packet ids wrapped past 65,535 in flight and
  the floor lost a fifth of its messages).

Beside the times: the CPU seconds (user + system, from ``/proc``) of push's process
(the benchmark's own, during push), of the simulator (or echo) processes and of
mosquitto, over each phase: what the shared machine blurs least; and the seconds push's
process spent in Python's cyclic garbage collector (``push_gc_s``).

Idle daemon: one real ``fieldpass run`` connected to the broker with nothing to do; its
peak RSS (VmHWM) and the CPU it uses over IDLE_S seconds.

``BENCH_MQTT_DEVICES`` (default 100,000), ``BENCH_MQTT_RUNS`` (repeats of push and
bridges, default 1), ``BENCH_MQTT_IDLE_S`` shrink or grow a run;
``BENCH_MQTT_PHASES`` (default ``floor,push,bridges,idle``) picks phases.
"""

import collections
import gc
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

N = int(os.environ.get("BENCH_MQTT_DEVICES", "100000"))
RUNS = int(os.environ.get("BENCH_MQTT_RUNS", "1"))
SIM_PROCS = 2
IDLE_S = float(os.environ.get("BENCH_MQTT_IDLE_S", "60"))
REASK_S = 30.0
PREFIX = "fieldpass/v1"
PHASES = os.environ.get("BENCH_MQTT_PHASES", "floor,push,bridges,idle").split(",")

# What the simulator processes inherit by fork: device id -> (fingerprint, activation
# id, device key seed), and the license key and keyring.
FLEET: dict[str, tuple[str, str, bytes]] = {}
LICENSE: dict[str, Any] = {}


def _client(port: int, name: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.username_pw_set(name, "-")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    return client


def _simulate(
    index: int,
    port: int,
    mode: str,
    ready: Any,
    go: Any,
    stop: Any,
    seen: "mp.Queue[list[str]]",
) -> None:
    """One simulator process: installs the files it is handed and confirms them; in
    ``bridges`` mode it also asks for its half of the fleet's renewals."""
    from agent.daemon import topics
    from agent.wire.device_key import DeviceKey
    from agent.wire.errors import WireError
    from agent.wire.keys import Keyring
    from agent.wire.machine_file import open_machine_file
    from tests.mqtt.simdevices import SimDevice

    ring = Keyring.loads(LICENSE["keyring"])
    license_key = LICENSE["key"]
    sims = {
        dev: SimDevice(fingerprint, act_id, DeviceKey(seed), 1)
        for dev, (fingerprint, act_id, seed) in FLEET.items()
    }
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    client = _client(port, f"sim-{index}")
    file_share = "$share/sim/" + topics.topic(PREFIX, "+", topics.MACHINE_FILE)
    client.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(file_share, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    mine = sorted(FLEET)[index::SIM_PROCS]
    requests: list[tuple[str, bytes]] = []
    if mode == "bridges":
        requests = [(sims[dev].topic(topics.RENEW_REQUEST), sims[dev].renew()) for dev in mine]
    time.sleep(0.5)
    ready.set()
    go.wait()
    if requests:
        threading.Thread(target=_ask, args=(client, requests), daemon=True).start()
    batch: list[str] = []
    window = _Window()
    last_flush = time.monotonic()
    while True:
        try:
            name, payload = inbox.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                break
            if batch:
                seen.put(batch)
                batch = []
            continue
        parsed = topics.parse(PREFIX, name)
        if not payload or parsed is None or parsed[0] not in FLEET:
            continue
        device = sims[parsed[0]]
        try:
            claims = open_machine_file(payload, ring, license_key, device.fingerprint)
        except WireError:
            continue
        if claims.serial <= device.serial:
            continue
        device.serial = claims.serial
        window.publish(client, device.topic(topics.STATUS), device.status(claims.serial))
        dev = parsed[0]
        batch.append(f"{dev}:{claims.serial}:{claims.issued_at}")
        if len(batch) >= 500 or time.monotonic() - last_flush > 0.5:
            seen.put(batch)
            batch = []
            last_flush = time.monotonic()
    if batch:
        seen.put(batch)
    client.disconnect()
    client.loop_stop()


def _ask(client: Any, requests: list[tuple[str, bytes]]) -> None:
    window = _Window()
    for name, payload in requests:
        window.publish(client, name, payload)


class _Window:
    """Publishes (QoS 1) with at most ``connection.PUBLISH_WINDOW`` awaiting their
    PUBACK: the oldest is waited for first (see connection.py)."""

    def __init__(self) -> None:
        from provisioning.mqtt.connection import PUBLISH_WINDOW

        self.size = PUBLISH_WINDOW
        self.infos: collections.deque[Any] = collections.deque()

    def publish(self, client: Any, name: str, payload: bytes) -> None:
        while len(self.infos) >= self.size:
            self.infos.popleft().wait_for_publish(30)
        self.infos.append(client.publish(name, payload, qos=1))


def _echo(index: int, port: int, ready: Any, stop: Any) -> None:
    """The floor's far end: every message in is answered by one status-sized message."""
    client = _client(port, f"echo-{index}")
    answer = os.urandom(450)
    inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
    client.on_message = lambda c, u, m: inbox.put(m.topic)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("$share/echo/floor/+/out", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.5)
    ready.set()
    window = _Window()
    while not stop.is_set():
        try:
            name = inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        window.publish(client, name[: -len("out")] + "back", answer)
    client.disconnect()
    client.loop_stop()


def _fleet(home: Path, n: int) -> tuple[Any, str]:
    """HQ with one license and ``n`` activations, each with a device key, in one
    transaction. Returns the service and the license id."""
    from agent.daemon import topics
    from agent.wire.device_key import DeviceKey
    from provisioning.models import Activation, Actor, Plan
    from provisioning.services import HQ

    actor = Actor("bench", "local")
    hq = HQ(home)
    now = int(time.time())
    hq.generate_key(now, actor)
    hq.create_plan(Plan("fleet", "robot-os", 365 * 86400, 30 * 86400, n, None, now), actor)
    lic = hq.create_license("fleet", [], None, now, actor)
    FLEET.clear()
    with hq.store.write() as tx:
        for i in range(n):
            fingerprint = os.urandom(32).hex()
            key = DeviceKey.generate()
            act = Activation(
                id=f"act_{i:020x}",
                license_id=lic.id,
                fingerprint=fingerprint,
                serial=1,
                created_at=now,
                last_issued_at=now,
                last_expires_at=now + 365 * 86400,
                deactivated_at=None,
                device_key=key.public_key,
                agent_version="bench",
                claims_format=2,
            )
            tx.insert_activation(act)
            FLEET[topics.device_id(fingerprint)] = (fingerprint, act.id, key.seed)
    keyring = hq.keyring().dumps()
    LICENSE["key"] = lic.license_key
    LICENSE["keyring"] = keyring.encode() if isinstance(keyring, str) else keyring
    return hq, lic.id


def _start_sims(port: int, mode: str) -> tuple[list[Any], Any, Any, "mp.Queue[list[str]]"]:
    ctx = mp.get_context("fork")
    go, stop = ctx.Event(), ctx.Event()
    seen: mp.Queue[list[str]] = ctx.Queue()
    procs, readies = [], []
    for i in range(SIM_PROCS):
        ready = ctx.Event()
        p = ctx.Process(target=_simulate, args=(i, port, mode, ready, go, stop, seen), daemon=True)
        p.start()
        procs.append(p)
        readies.append(ready)
    for ready in readies:
        ready.wait(300)
    return procs, go, stop, seen


def _stop_sims(procs: list[Any], stop: Any, seen: "mp.Queue[list[str]]") -> list[str]:
    stop.set()
    rest: list[str] = []
    deadline = time.monotonic() + 30
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            rest += seen.get(timeout=0.2)
        except queue.Empty:
            pass
    for p in procs:
        p.join(5)
    while True:
        try:
            rest += seen.get_nowait()
        except queue.Empty:
            return rest


def _push(tmp: Path, port: int, broker_pid: int) -> dict[str, float]:
    from provisioning.models import Actor
    from provisioning.mqtt import connection
    from provisioning.mqtt import push as push_mod

    start = time.perf_counter()
    hq, license_id = _fleet(tmp / "hq-push", N)
    setup_s = time.perf_counter() - start
    procs, go, stop, seen = _start_sims(port, "push")
    go.set()
    confirmations = push_mod.Confirmations(hq)
    link = connection.open_link(
        f"mqtt://127.0.0.1:{port}",
        "fieldpass-hq-push",
        "fieldpass-hq-push",
        "-",
        on_message=confirmations.on_message,
        subscriptions=[f"{PREFIX}/dev/+/status"],
    )
    cpu = _Cpu(broker_pid, [p.pid for p in procs])
    gc_s = _GcTime()
    start = time.perf_counter()
    summary = push_mod.push(
        hq,
        link,
        confirmations,
        push_mod.Selection(license_id=license_id),
        prefix=PREFIX,
        ttl_s=None,
        wait_s=600,
        now=int(time.time()),
        actor=Actor("bench", "local"),
    )
    total_s = time.perf_counter() - start
    used = cpu.used()
    gc_used_s = gc_s.stop()
    link.close()
    installed = {line.split(":")[0] for line in _stop_sims(procs, stop, seen)}
    hq.store.close()
    return {
        "devices": float(N),
        "fleet_setup_s": round(setup_s, 1),
        "push_to_all_confirmed_s": round(total_s, 2),
        "push_renewals_per_s": round(summary.confirmed / total_s),
        "push_confirmed": float(summary.confirmed),
        "push_failed": float(summary.failed),
        "push_devices_installed": float(len(installed)),
        "push_cpu_push_s": used["self"],
        "push_cpu_devices_s": used["peers"],
        "push_cpu_mosquitto_s": used["broker"],
        "push_gc_s": gc_used_s,
    }


def _bridges(tmp: Path, port: int) -> dict[str, float]:
    from tests.conftest import FIELDPASS_HQ, clean_env

    home = tmp / "hq-bridges"
    start = time.perf_counter()
    hq, _ = _fleet(home, N)
    hq.store.close()
    setup_s = time.perf_counter() - start
    bridges = []
    for replica in (1, 2):
        log = open(tmp / f"bridge-{replica}.log", "wb")  # noqa: SIM115 - the process owns it
        url = f"mqtt://127.0.0.1:{port}"
        cmd = [FIELDPASS_HQ, "--home", str(home), "bridge", "--broker", url,
               "--replica", str(replica), "--min-interval", "60s"]  # fmt: skip
        bridges.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=clean_env()))
    for replica in (1, 2):
        deadline = time.monotonic() + 30
        while b"bridge connected" not in (tmp / f"bridge-{replica}.log").read_bytes():
            assert time.monotonic() < deadline, "a bridge did not connect"
            time.sleep(0.1)
    procs, go, stop, seen = _start_sims(port, "bridges")
    files: dict[str, set[str]] = {}
    start = time.perf_counter()
    go.set()
    deadline = start + 900
    while len(files) < N and time.perf_counter() < deadline:
        try:
            batch = seen.get(timeout=1)
        except queue.Empty:
            continue
        for line in batch:
            dev, serial, issued_at = line.split(":")
            files.setdefault(dev, set()).add(serial + ":" + issued_at)
    total_s = time.perf_counter() - start
    for line in _stop_sims(procs, stop, seen):
        dev, serial, issued_at = line.split(":")
        files.setdefault(dev, set()).add(serial + ":" + issued_at)
    for proc in bridges:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    from provisioning.services import HQ

    service = HQ(home)
    with service.store.read() as tx:
        renews = tx._one("SELECT COUNT(*) FROM audit WHERE action = 'renew'")[0]
    service.store.close()
    return {
        "bridges_to_all_answered_s": round(total_s, 2),
        "bridges_renewals_per_s": round(len(files) / total_s),
        "bridges_devices_answered": float(len(files)),
        "bridges_answered_twice": float(sum(1 for f in files.values() if len(f) > 1)),
        "bridges_renew_audit_lines": float(renews),
        "bridges_fleet_setup_s": round(setup_s, 1),
    }


def _floor(port: int, broker_pid: int) -> dict[str, float]:
    """N file-sized QoS 1 messages out through the two simulator processes, N
    status-sized ones back, no work at either end."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    readies = [ctx.Event() for _ in range(SIM_PROCS)]
    procs = [
        ctx.Process(target=_echo, args=(i, port, readies[i], stop), daemon=True)
        for i in range(SIM_PROCS)
    ]
    for p in procs:
        p.start()
    for ready in readies:
        ready.wait(30)
    back = [0]
    lock = threading.Lock()

    def on_back(c: object, u: object, m: object) -> None:
        with lock:
            back[0] += 1

    client = _client(port, "floor")
    client.on_message = on_back
    subscribed = threading.Event()
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("floor/+/back", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.wait(10)
    payload = os.urandom(600)
    cpu = _Cpu(broker_pid, [p.pid for p in procs if p.pid is not None])
    start = time.perf_counter()
    window = _Window()
    for i in range(N):
        window.publish(client, f"floor/d{i:024x}/out", payload)
    while back[0] < N and time.perf_counter() - start < 300:
        time.sleep(0.01)
    total_s = time.perf_counter() - start
    used = cpu.used()
    stop.set()
    for p in procs:
        p.join(10)
    client.disconnect()
    client.loop_stop()
    return {
        "floor_round_trips_s": round(total_s, 2),
        "floor_answered": float(back[0]),
        "floor_cpu_publisher_s": used["self"],
        "floor_cpu_echo_s": used["peers"],
        "floor_cpu_mosquitto_s": used["broker"],
    }


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _GcTime:
    """CPU seconds the cyclic garbage collector uses in this process from now on (each
    collection measured on the thread that runs it)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.thread_time()
        else:
            self.total += time.thread_time() - self.started

    def stop(self) -> float:
        gc.callbacks.remove(self._on_gc)
        return round(self.total, 2)


class _Cpu:
    """CPU seconds used from now on by this process, by ``peers`` and by the broker."""

    def __init__(self, broker_pid: int, peers: list[int]) -> None:
        self.broker_pid, self.peers = broker_pid, peers
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        return {
            "self": time.process_time(),
            "peers": sum(_proc_cpu_s(pid) for pid in self.peers),
            "broker": _proc_cpu_s(self.broker_pid),
        }

    def used(self) -> dict[str, float]:
        now = self._now()
        return {k: round(now[k] - self.start[k], 1) for k in now}


def _proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _idle_daemon(tmp: Path, port: int) -> dict[str, float]:
    from tests.conftest import FIELDPASS, DeviceRoot, Signer, clean_env

    device = DeviceRoot(tmp / "device", os.urandom(16).hex())
    signer = Signer()
    signer.provision(device)
    device.write_config(
        f'[mqtt]\nbrokers = ["mqtt://127.0.0.1:{port}"]\nusername = "idle-device"\n'
        'password_file = "/etc/fieldpass/mqtt.password"\n'
    )
    (device.path / "etc/fieldpass/mqtt.password").write_text("-\n")
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

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as name:
        tmp = Path(name)
        broker = Broker(tmp / "broker")
        # As broker-config sets it up (client ids bound to user names); anonymous, no
        # ACL: a password file for 100,000 devices is not what is measured here.
        broker.configure("allow_anonymous true\nuse_username_as_clientid true\n")
        broker.start()
        try:
            for run in range(RUNS):
                suffix = "" if RUNS == 1 else f"_{run + 1}"
                pid = broker.proc.pid if broker.proc else 0
                if "floor" in PHASES:
                    for key, value in _floor(broker.port, pid).items():
                        results[key + suffix] = value
                if "push" in PHASES:
                    for key, value in _push(tmp / f"run{run}", broker.port, pid).items():
                        results[key + suffix] = value
                if "floor" in PHASES and "push" in PHASES:
                    results["push_over_floor" + suffix] = round(
                        results["push_to_all_confirmed_s" + suffix]
                        / results["floor_round_trips_s" + suffix],
                        2,
                    )
                if "bridges" in PHASES:
                    for key, value in _bridges(tmp / f"run{run}", broker.port).items():
                        results[key + suffix] = value
                broker.restart()  # a fresh broker: no retained files of the last run
            if "idle" in PHASES:
                results.update(_idle_daemon(tmp, broker.port))
        finally:
            broker.stop()
    return results


if __name__ == "__main__":
    for k, v in main().items():
        print(f"{k:32} {v}")
