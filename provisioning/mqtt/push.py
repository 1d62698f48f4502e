"""``fieldpass-hq push``: renew a chosen set of devices over MQTT and count who got it.

The set: a license's live activations, a plan's, a list of activations (ids or
fingerprints), or all whose last file expires within a given time; combined options
narrow the set. Each device gets a fresh machine file, retained on its
``machine-file`` topic (a device offline now receives it when it reconnects). A device
confirms by publishing a status with the new serial; ``push`` waits for confirmations
up to ``wait_s`` and reports sent, confirmed, failed (not issued or not published) and
pending (sent, not yet confirmed). Never waits without a bound, and never publishes a
license key (each file is encrypted to its device).
"""

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.daemon import messages, topics

from ..errors import HQError
from ..models import Activation, Actor
from ..services import HQ, Issued


@dataclass
class Selection:
    license_id: str | None = None
    plan: str | None = None
    devices: tuple[str, ...] = ()
    expiring_within_s: int | None = None


@dataclass
class Summary:
    selected: int = 0
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.sent - self.confirmed

    def doc(self) -> dict[str, object]:
        return {
            "selected": self.selected,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "failed": self.failed,
            "pending": self.pending,
            "failures": self.failures[:100],
        }


def select(hq: HQ, sel: Selection, now: int) -> list[Activation]:
    live = [a for a in hq.list_activations(sel.license_id) if a.deactivated_at is None]
    if sel.plan is not None:
        plans = {lic.id: lic.plan for lic in hq.list_licenses()}
        live = [a for a in live if plans.get(a.license_id) == sel.plan]
    if sel.devices:
        wanted = set(sel.devices)
        live = [a for a in live if a.id in wanted or a.fingerprint in wanted]
    if sel.expiring_within_s is not None:
        live = [a for a in live if a.last_expires_at <= now + sel.expiring_within_s]
    return live


STATUS_ACTOR = Actor("mqtt-push", "mqtt")


class Confirmations:
    """Collects the devices' status messages: device id -> newest serial reported."""

    def __init__(self, hq: HQ | None = None) -> None:
        self.hq = hq
        self.serials: dict[str, int] = {}
        self.lock = threading.Lock()

    def on_message(self, client: object, userdata: object, message: object) -> None:
        payload = bytes(message.payload)  # type: ignore[attr-defined]
        parsed = topics.parse(topics.DEFAULT_PREFIX, message.topic)  # type: ignore[attr-defined]
        if parsed is None or parsed[1] != topics.STATUS:
            return
        serial = self.serial_of(parsed[0], payload)
        if type(serial) is int:
            with self.lock:
                if serial > self.serials.get(parsed[0], 0):
                    self.serials[parsed[0]] = serial

    def serial_of(self, dev_id: str, payload: bytes) -> object:
        """The serial a device reports holding: its signed status (agents after 0.1.0,
        verified against the activation's device key), or the JSON of 0.1.0."""
        if payload[:1] == b"{":
            try:
                return messages.parse_status(payload).get("serial")
            except (messages.MessageError, json.JSONDecodeError, RecursionError):
                return None
        if self.hq is None:
            return None
        try:
            verified = self.hq.device.verify(payload, "status")
            self.hq.device.register(verified, int(time.time()), STATUS_ACTOR)
        except HQError:
            return None
        if topics.device_id(verified.activation.fingerprint) != dev_id:
            return None
        return verified.message["serial"]

    def confirmed(self, expected: dict[str, int]) -> int:
        with self.lock:
            return sum(1 for d, s in expected.items() if self.serials.get(d, 0) >= s)


def issue(
    hq: HQ, sel: Selection, chosen: list[Activation], ttl_s: int | None, now: int, actor: Actor
) -> Iterable[Issued | HQError]:
    """Fresh files for ``chosen``: one transaction for a whole license, else one each."""
    if sel.license_id is not None and not (sel.plan or sel.devices or sel.expiring_within_s):
        try:
            yield from hq.renew_all(sel.license_id, ttl_s, now, actor)
        except HQError as e:
            yield e
        return
    for act in chosen:
        try:
            yield hq.renew(now, actor, activation_id=act.id, ttl_s=ttl_s)
        except HQError as e:
            yield e


def push(
    hq: HQ,
    client: object,
    confirmations: Confirmations,
    sel: Selection,
    *,
    prefix: str,
    ttl_s: int | None,
    wait_s: float,
    now: int,
    actor: Actor,
    progress: Callable[[int], None] = lambda n: None,
) -> Summary:
    chosen = select(hq, sel, now)
    summary = Summary(selected=len(chosen))
    expected: dict[str, int] = {}
    pending = []
    for result in issue(hq, sel, chosen, ttl_s, now, actor):
        if isinstance(result, HQError):
            summary.failed += 1
            summary.failures.append(result.message)
            progress(1)
            continue
        dev_id = topics.device_id(result.activation.fingerprint)
        name = topics.topic(prefix, dev_id, topics.MACHINE_FILE)
        info = client.publish(name, result.machine_file, qos=1, retain=True)  # type: ignore[attr-defined]
        pending.append((info, dev_id, result.claims.serial))
        progress(1)
    for info, dev_id, serial in pending:
        try:
            info.wait_for_publish(30)
            ok = info.is_published()
        except (RuntimeError, ValueError):
            ok = False
        if ok:
            summary.sent += 1
            expected[dev_id] = serial
        else:
            summary.failed += 1
            summary.failures.append(f"device {dev_id}: not accepted by the broker")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and confirmations.confirmed(expected) < len(expected):
        time.sleep(0.05)
    summary.confirmed = confirmations.confirmed(expected)
    return summary
