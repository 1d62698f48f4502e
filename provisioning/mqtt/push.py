"""``fieldpass-hq push``: renew a chosen set of devices over MQTT and count who got it.

The set: a license's activations, a plan's, a list of activations (ids or
fingerprints), or all whose last file expires within a given time; combined options
narrow the set. Live activations, and deactivated ones that still have to be told so.

A device with an outbox entry (services/outbox.py: HQ suspended, revoked or reinstated
its license, or deactivated it, and its status has not confirmed it yet) is sent that:
a signed revocation, a signed deactivation, or the reinstatement's file. Every other
device gets a fresh machine file. Everything is retained on the device's topic (a device
offline now receives it when it reconnects). A device confirms with its status; ``push``
waits for confirmations up to ``wait_s`` and counts, by kind, what was sent and
confirmed, what failed (not issued, or not accepted by the broker) and what is pending.

Statuses are read on paho's thread under a guard: whatever a device publishes is
bounded (inbound.py), and a payload HQ cannot use is counted, never the end of paho's
loop. Never waits without a bound, and never publishes a license key (each file is
encrypted to its device).
"""

import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from agent.daemon import topics
from agent.wire.device_key import key_id

from ..errors import ActivationReturned, HQError
from ..models import Activation, Actor, OutboxEntry
from ..services import HQ, Issued
from ..services.outbox import Delivery, Held, confirms
from . import inbound
from .bridge import told
from .link import Link


@dataclass
class Selection:
    license_id: str | None = None
    plan: str | None = None
    devices: tuple[str, ...] = ()
    expiring_within_s: int | None = None


KINDS = ("revocation", "deactivation")


@dataclass
class Summary:
    """``sent``/``confirmed``: machine files (renewals and reinstatements);
    ``revocations_*`` and ``deactivations_*``: what the outbox had to tell;
    ``returned``: devices selected that gave their license back (before push or while
    it ran), which get no file."""

    selected: int = 0
    returned: int = 0
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    told_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    told_confirmed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        """Sent, of every kind, and not confirmed yet."""
        told = sum(self.told_sent.values()) - sum(self.told_confirmed.values())
        return self.sent - self.confirmed + told

    def doc(self) -> dict[str, object]:
        return {
            "selected": self.selected,
            "returned": self.returned,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "failed": self.failed,
            "pending": self.pending,
            "failures": self.failures[:100],
            "revocations_sent": self.told_sent["revocation"],
            "revocations_confirmed": self.told_confirmed["revocation"],
            "deactivations_sent": self.told_sent["deactivation"],
            "deactivations_confirmed": self.told_confirmed["deactivation"],
            "ignored": dict(self.ignored),
        }


def kind_of(entry: OutboxEntry) -> str:
    if entry.is_file:
        return "file"
    return "deactivation" if entry.action == "deactivate" else "revocation"


def select(hq: HQ, sel: Selection, now: int) -> list[Activation]:
    telling = {e.activation_id for e in hq.outbox.pending(sel.license_id)}
    chosen = [
        a
        for a in hq.list_activations(sel.license_id)
        if a.deactivated_at is None or a.id in telling
    ]
    if sel.plan is not None:
        plans = {lic.id: lic.plan for lic in hq.list_licenses()}
        chosen = [a for a in chosen if plans.get(a.license_id) == sel.plan]
    if sel.devices:
        wanted = set(sel.devices)
        chosen = [a for a in chosen if a.id in wanted or a.fingerprint in wanted]
    if sel.expiring_within_s is not None:
        chosen = [a for a in chosen if a.last_expires_at <= now + sel.expiring_within_s]
    return chosen


STATUS_ACTOR = Actor("mqtt-push", "mqtt")


class Confirmations:
    """Collects the devices' status messages (what each device id says it holds), and
    counts, as they arrive, the confirmations of what push sent: a file's serial, or an
    outbox entry (``confirms``), which it also records at HQ, as it records the keyring
    a verified status names (``DeviceRequests.keyring_heard``: a write only when it
    changed, the activation at hand kept up to date)."""

    def __init__(self, hq: HQ | None = None) -> None:
        self.hq = hq
        self.held: dict[str, Held] = {}
        self.known: dict[str, tuple[str, Activation]] = {}  # device id -> key id, activation
        self.files: dict[str, int] = {}  # device id -> serial sent, not confirmed yet
        self.telling: dict[str, tuple[OutboxEntry, Activation]] = {}  # not confirmed yet
        self.counts: dict[str, int] = dict.fromkeys(("file", *KINDS), 0)
        self.ignored: dict[str, int] = {}
        self.lock = threading.Lock()

    def know(self, activations: list[Activation]) -> None:
        for act in activations:
            self.device_id(act)

    def device_id(self, act: Activation) -> str:
        """The device id of an activation push sends to, known from now on: its
        statuses verify against the key at hand (its key id computed once, here),
        without a database read each. Push calls it as it sends, so that the work
        is spread over the stream rather than done for the whole fleet first. Of two
        activations on one device id, a live one is the one known."""
        dev_id = topics.device_id(act.fingerprint)
        if act.device_key is not None:
            kid = key_id(act.device_key)
            with self.lock:
                current = self.known.get(dev_id)
                if current is None or act.deactivated_at is None or current[1].id == act.id:
                    self.known[dev_id] = (kid, act)
        return dev_id

    def expect_file(self, dev_id: str, serial: int) -> None:
        with self.lock:
            self.files[dev_id] = serial
            self._settle(dev_id)

    def expect_told(self, dev_id: str, entry: OutboxEntry, act: Activation) -> None:
        with self.lock:
            self.telling[dev_id] = (entry, act)
            self._settle(dev_id)

    def _settle(self, dev_id: str) -> bool:
        """Count what the device's newest status confirms (the lock held); True if it
        confirmed an outbox entry."""
        held = self.held.get(dev_id)
        if held is None:
            return False
        serial = self.files.get(dev_id)
        if serial is not None and held.serial >= serial:
            del self.files[dev_id]
            self.counts["file"] += 1
        told = self.telling.get(dev_id)
        if told is not None and confirms(told[0], told[1], held):
            del self.telling[dev_id]
            self.counts[kind_of(told[0])] += 1
            return True
        return False

    def on_message(self, client: object, userdata: object, message: object) -> None:
        """paho's callback: nothing it raises may escape into paho's thread."""
        try:
            self._read(message)
        except inbound.BadMessage as e:
            self._ignore(e.kind)
        except Exception as e:  # one device's status never stops push
            self._ignore("error_" + type(e).__name__)

    def _ignore(self, kind: str) -> None:
        with self.lock:
            self.ignored[kind] = self.ignored.get(kind, 0) + 1

    def _read(self, message: object) -> None:
        parsed = topics.parse(topics.DEFAULT_PREFIX, message.topic)  # type: ignore[attr-defined]
        if parsed is None or parsed[1] != topics.STATUS:
            raise inbound.BadMessage("unexpected_topic")
        if message.retain:  # type: ignore[attr-defined]
            raise inbound.BadMessage("retained")  # devices never retain: not news
        dev_id, payload = parsed[0], bytes(message.payload)  # type: ignore[attr-defined]
        if len(payload) > inbound.MAX_BYTES:
            raise inbound.BadMessage("oversized")
        held, act = self.held_of(dev_id, payload)
        with self.lock:
            before = self.held.get(dev_id)
            serial = max(held.serial, before.serial if before else 0)
            self.held[dev_id] = Held(serial, held.revoked, held.revoked_at)
            told = self.telling.get(dev_id)
            confirmed = self._settle(dev_id)
        if confirmed and told is not None and self.hq is not None:
            self.hq.outbox.confirm(act or told[1], held, int(time.time()))

    def held_of(self, dev_id: str, payload: bytes) -> tuple[Held, Activation | None]:
        """What a device reports holding: its signed status (agents after 0.1.0, verified
        against the activation's device key), or the JSON of 0.1.0."""
        if inbound.is_legacy(payload):
            return inbound.legacy_held(payload), None
        known = self.known.get(dev_id)
        if known is not None:  # a device push sends to: its key is at hand
            kid, act = known
            m = inbound.signed_by_kid(act, kid, payload, "status")
            if m is not None:
                if self.hq is not None:  # an image update brings a new keyring
                    recorded = self.hq.device.keyring_heard(act, m)
                    if recorded is not act:
                        with self.lock:
                            if self.known.get(dev_id) is known:
                                self.known[dev_id] = (kid, recorded)
                        act = recorded
                return inbound.held(m), act
        if self.hq is None:
            raise inbound.BadMessage("unverifiable")
        verified = inbound.signed(self.hq, payload, "status")
        if topics.device_id(verified.activation.fingerprint) != dev_id:
            raise inbound.BadMessage("foreign_topic")
        if verified.activation.deactivated_at is None:
            self.hq.device.register(verified, int(time.time()), STATUS_ACTOR)
        act = self.hq.device.heard_keyring(verified)
        return inbound.held(verified.message), act

    def outstanding(self) -> int:
        with self.lock:
            return len(self.files) + len(self.telling)


def issue(
    hq: HQ,
    sel: Selection,
    chosen: list[Activation],
    ttl_s: int | None,
    now: int,
    actor: Actor,
    whole_license: bool,
) -> Iterable[tuple[str | None, Issued | HQError]]:
    """Fresh files for ``chosen``, each with the activation it is for (None: the whole
    license's refusal): one transaction for a whole license, else one each. A whole
    license's issuance skips the devices that gave their license back, those returned
    since ``chosen`` was read too: they have no result."""
    if whole_license and sel.license_id is not None:
        try:
            for issued in hq.issuing.renew_all_lazily(sel.license_id, ttl_s, now, actor):
                yield issued.activation.id, issued
        except HQError as e:
            yield None, e
        return
    for act in chosen:
        try:
            yield act.id, hq.renew(now, actor, activation_id=act.id, ttl_s=ttl_s)
        except HQError as e:
            yield act.id, e


class _Sent:
    """Settles each publish as the broker acknowledges it (on the link's thread): sent,
    and its confirmation expected, or failed. The summary's counts under one lock, as
    push's own thread counts what could not be issued."""

    def __init__(self, confirmations: Confirmations, summary: Summary) -> None:
        self.confirmations = confirmations
        self.summary = summary
        self.lock = threading.Lock()

    def failed(self, why: str) -> None:
        with self.lock:
            self.summary.failed += 1
            self.summary.failures.append(why)

    def settle(self, dev_id: str, what: int | Delivery) -> "Callable[[bool], None]":
        def done(acknowledged: bool) -> None:
            if not acknowledged:
                self.failed(f"device {dev_id}: not accepted by the broker")
                return
            summary = self.summary
            kind = "file" if isinstance(what, int) else kind_of(what.entry)
            with self.lock:
                if kind == "file":
                    summary.sent += 1
                else:
                    summary.told_sent[kind] += 1
            if isinstance(what, int):
                self.confirmations.expect_file(dev_id, what)
            else:
                self.confirmations.expect_told(dev_id, what.entry, what.activation)

        return done


def _count_gone(
    hq: HQ,
    acts: list[Activation],
    summary: Summary,
    sent: _Sent,
    progress: Callable[[int], None],
    why: str,
) -> None:
    """Devices selected that were sent nothing: ``returned`` if HQ holds their return
    now (taken while push ran), else a failure saying ``why``."""
    for act in acts:
        progress(1)
        current = hq.get_activation(act.id)
        if current is not None and current.return_frees_at is not None:
            summary.returned += 1
        else:
            sent.failed(f"activation {act.id}: {why}")


@contextmanager
def _collector_for_bulk() -> Iterator[Callable[[], None]]:
    """Python's cyclic garbage collector kept off what a bulk push holds for its whole
    run: what exists when it starts and, once the first file is issued (``issued()``),
    every file recorded in the transaction, frozen (``gc.freeze``: never traversed
    again; freed as usual when no longer referenced), and the youngest generation
    collected every 50,000 allocations, not 700 (what a file's sealing and a status's
    reading allocate is freed by reference counting; measured, the collector's time in
    push falls by about four fifths). Both undone at the end."""
    thresholds = gc.get_threshold()
    frozen = [False]

    def issued() -> None:
        if not frozen[0]:
            frozen[0] = True
            gc.freeze()

    gc.freeze()
    gc.set_threshold(50_000, *thresholds[1:])
    try:
        yield issued
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def push(
    hq: HQ,
    link: Link,
    confirmations: Confirmations,
    sel: Selection,
    *,
    prefix: str,
    ttl_s: int | None,
    wait_s: float,
    now: int,
    actor: Actor,
    progress: Callable[[int], None] = lambda n: None,
    chosen: list[Activation] | None = None,
) -> Summary:
    """``chosen``: ``select(hq, sel, now)`` if the caller has it already (the command
    line, which sizes its progress bar by it)."""
    chosen = select(hq, sel, now) if chosen is None else chosen
    summary = Summary(selected=len(chosen))
    telling_ids = {e.activation_id for e in hq.outbox.pending(sel.license_id)}
    to_tell = [a for a in chosen if a.id in telling_ids]
    to_renew = [a for a in chosen if a.id not in telling_ids]
    # a device that gave its license back gets no file (bulk issuance skips it too)
    given_back = [a for a in to_renew if a.return_frees_at is not None]
    to_renew = [a for a in to_renew if a.return_frees_at is None]
    summary.returned = len(given_back)
    if given_back:
        progress(len(given_back))
    narrowed = bool(sel.plan or sel.devices or sel.expiring_within_s is not None)
    whole = not narrowed and not to_tell
    confirmations.know(to_tell)  # those to renew: as each is sent
    sent = _Sent(confirmations, summary)
    answered: set[str] = set()  # the activations renewed or refused one by one
    refused_whole = False
    with _collector_for_bulk() as issued:
        for act_id, result in issue(hq, sel, to_renew, ttl_s, now, actor, whole):
            issued()
            progress(1)
            refused_whole = refused_whole or act_id is None
            if act_id is not None:
                answered.add(act_id)
            if isinstance(result, ActivationReturned):
                summary.returned += 1  # gave its license back while push ran
                continue
            if isinstance(result, HQError):
                sent.failed(result.message)
                continue
            dev_id = confirmations.device_id(result.activation)
            name = topics.topic(prefix, dev_id, topics.MACHINE_FILE)
            done = sent.settle(dev_id, result.claims.serial)
            link.publish(name, result.machine_file, True, done)
    unanswered = [a for a in to_renew if a.id not in answered]
    if unanswered and not refused_whole:  # skipped by the whole license's issuance
        _count_gone(hq, unanswered, summary, sent, progress, "no file")
    deliveries = hq.outbox.deliver([a.id for a in to_tell], now, actor)
    for delivery in deliveries:
        dev_id = confirmations.device_id(delivery.activation)
        for i, (name, data, retain) in enumerate(told(prefix, delivery)):
            link.publish(name, data, retain, sent.settle(dev_id, delivery) if i == 0 else None)
        progress(1)
    delivered = {d.activation.id for d in deliveries}
    untold = [a for a in to_tell if a.id not in delivered]
    if untold:
        _count_gone(hq, untold, summary, sent, progress, "nothing can be told (no file now)")
    # Every publish is settled by then: acknowledged, or failed after the link's wait.
    while not link.flush(60):
        pass

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and confirmations.outstanding():
        time.sleep(0.05)
    with confirmations.lock, sent.lock:
        counts = dict(confirmations.counts)
        summary.ignored = dict(confirmations.ignored)
        summary.confirmed = counts.pop("file")
        summary.told_confirmed = counts
    return summary
