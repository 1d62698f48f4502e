"""``fieldpass-hq bridge``: answers the devices over MQTT, and tells them what HQ decided.

It reads ``<prefix>/dev/+/renew-request`` and ``.../status`` through MQTT 5 shared
subscriptions (``$share/fieldpass-hq-bridge/...``), so that several replicas share the
load: the broker hands each message to one of them. For a renewal request:

- the device must be told something (an outbox entry, services/outbox.py): that is
  delivered first (the request shows the device is connected);
- license revoked or suspended: the signed revocation, retained on ``.../revocation``;
- license active and the device's file due (or older than HQ's latest serial, or the
  device holding a revocation HQ has since lifted): a fresh machine file, retained on
  ``.../machine-file`` (and the revocation topic cleared); at most one new file per
  device per ``min_interval_s``, whichever replica answers (services/renewals.py keeps
  the check in the database), the same file published again within it;
- otherwise nothing.

A status confirms the device's outbox entry. A usage report or a return receipt
(``.../report``, ``.../receipt``) is verified and recorded by the services the HTTP
routes use (services/usage.py): a report newer than the last one accepted is stored, a
receipt frees the seat as ``deactivate --receipt`` does (audited with it); each is
answered on ``.../ack`` (not retained) with HQ's signed status bound to the payload's
``topics.ack_nonce``, and so is a replay of what HQ already holds (a report not newer
than the last accepted, a receipt of an activation returned or freed already: counted,
nothing changes), so that the device stops resending. Forged ones, another device's on
this device's topic, receipts past the plan's return limit and receipts HQ refused for
another reason, which took nothing (``device_key_mismatch``, ``conflict``), are
counted, unanswered: the device keeps them and sends them again at its next check.
Every second (``OUTBOX_POLL_S``), and on
every (re)connection to the broker, the bridge publishes the outbox entries due: what a
suspension, revocation, reinstatement or deactivation means for each device, retained,
again and again until the device's status confirms it.

Nothing a device publishes stops the bridge: every payload is bounded (inbound.py);
each message runs under a guard (any exception is counted by kind, logged once per kind,
and the bridge goes on); a retained message on a device's topic (devices never retain:
it would come back at every start, a poison message) is counted and dropped unread.
``Bridge`` is plain logic (messages in, messages out), tested without a broker;
``serve`` runs it on a paho client. Never logs a payload, a license key or a fingerprint.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable

from agent.daemon import topics

from ..errors import ActivationNotFound, Conflict, DeviceKeyMismatch, HQError
from ..models import Activation, Actor
from ..services import HQ, Contact, license_status
from ..services.audit import event
from ..services.device_requests import Verified
from ..services.outbox import Delivery
from ..services.renewals import AGAIN, GONE, ISSUED, RATE_LIMITED, RenewalRequest
from ..services.usage import ReportRefused, ReturnHeld, ReturnLimitReached
from . import inbound
from .link import Link

log = logging.getLogger("fieldpass.hq.bridge")
ACTOR = Actor("mqtt-bridge", "mqtt")
SHARE_GROUP = "fieldpass-hq-bridge"
REINDEX_S = 5.0
OUTBOX_POLL_S = 1.0
BATCH_MAX = 256  # messages answered in one database transaction
OUTBOX_BATCH = 500  # outbox entries taken in one; a full one is followed by the next at once
STOP_FLUSH_S = 5.0  # at a stop, how long what was published may take to be acknowledged
LEGACY = Contact(channel="mqtt", agent_version="0.1.0", claims_format=1)

Outgoing = tuple[str, bytes, bool]  # topic, payload, retain
Incoming = tuple[str, bytes, bool]  # topic, payload, retained


def subscriptions(prefix: str) -> list[str]:
    """The bridge's shared subscriptions (every replica the same group)."""
    return [f"$share/{SHARE_GROUP}/" + topics.topic(prefix, "+", kind) for kind in topics.TO_HQ]


def told(prefix: str, delivery: Delivery) -> list[Outgoing]:
    """What is published, retained, for an outbox entry: a reinstatement's file (and the
    revocation topic cleared), or a signed revocation."""
    dev_id = topics.device_id(delivery.activation.fingerprint)
    if delivery.entry.is_file:
        return [
            (topics.topic(prefix, dev_id, topics.MACHINE_FILE), delivery.payload, True),
            (topics.topic(prefix, dev_id, topics.REVOCATION), b"", True),
        ]
    return [(topics.topic(prefix, dev_id, topics.REVOCATION), delivery.payload, True)]


class Bridge:
    def __init__(
        self,
        hq: HQ,
        prefix: str = topics.DEFAULT_PREFIX,
        min_interval_s: int = 60,
        clock: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        self.hq = hq
        self.prefix = prefix
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.index: dict[str, str] = {}  # device id -> activation id (live ones first)
        self.indexed_at = -REINDEX_S
        self.counts: dict[str, int] = {}  # what was ignored, by kind
        self.told: dict[str, int] = {}  # outbox entries published, by action
        self.heard: dict[str, int] = {}  # reports and receipts recorded, by kind
        self.more_due = False

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if self.counts[what] == 1:
            log.warning("ignored a message (%s); more of the kind are only counted", what)

    def _fault(self, e: Exception) -> None:
        kind = "error_" + type(e).__name__
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] == 1:
            log.warning(
                "a device message raised %s (%s); the bridge goes on, more are only counted",
                type(e).__name__,
                str(e)[:200],
            )

    def undelivered(self, n: int) -> None:
        """``n`` publishes the broker did not accept (a PUBACK with an MQTT 5 failure
        reason code, its ACL denying it; or none in time): counted, and logged once.
        The device asks again (a renewal), or the outbox makes it due again."""
        first = "publish_failed" not in self.counts
        self.counts["publish_failed"] = self.counts.get("publish_failed", 0) + n
        if first:
            log.warning(
                "the broker did not accept a publish (refused, or no PUBACK in time); "
                "more are only counted"
            )

    def _topic(self, act: Activation, kind: str) -> str:
        return topics.topic(self.prefix, topics.device_id(act.fingerprint), kind)

    def _activation(self, dev_id: str) -> Activation | None:
        """The activation of an agent of 0.1.0 (which signs nothing) by its device id."""
        act_id = self.index.get(dev_id)
        if act_id is None and time.monotonic() - self.indexed_at > REINDEX_S:
            acts = self.hq.list_activations()
            acts.sort(key=lambda a: a.deactivated_at is None)  # live ones win
            self.index = {topics.device_id(a.fingerprint): a.id for a in acts}
            self.indexed_at = time.monotonic()
            act_id = self.index.get(dev_id)
        return None if act_id is None else self.hq.get_activation(act_id)

    # -- messages in ------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, retained: bool = False) -> list[Outgoing]:
        return self.handle_batch([(topic, payload, retained)])

    def handle_batch(self, batch: list[Incoming]) -> list[Outgoing]:
        """The answers to a batch of messages; the renewals among them are issued in
        one database transaction."""
        out: list[Outgoing] = []
        renewals: list[RenewalRequest] = []
        for topic, payload, retained in batch:
            try:
                out += self._read(topic, payload, retained, renewals)
            except inbound.BadMessage as e:
                self._count(e.kind)
            except Exception as e:  # one message never stops the bridge
                self._fault(e)
        if renewals:
            try:
                out += self._renew(renewals)
            except Exception as e:
                self._fault(e)
        return out

    def _read(
        self, topic: str, payload: bytes, retained: bool, renewals: list[RenewalRequest]
    ) -> list[Outgoing]:
        parsed = topics.parse(self.prefix, topic)
        if parsed is None or parsed[1] not in topics.TO_HQ:
            raise inbound.BadMessage("unexpected_topic")
        if retained:
            raise inbound.BadMessage("retained")  # devices never retain: a poison message
        if len(payload) > inbound.MAX_BYTES:
            raise inbound.BadMessage("oversized")
        dev_id, kind = parsed
        if kind == topics.STATUS:
            return self._status(dev_id, payload)
        if kind == topics.REPORT:
            return self._report(dev_id, payload)
        if kind == topics.RECEIPT:
            return self._receipt(dev_id, payload)
        return self._request(dev_id, payload, renewals)

    def _legacy_activation(self, dev_id: str, what: str) -> Activation:
        act = self._activation(dev_id)
        if act is None:
            raise inbound.BadMessage("unknown_device")
        if act.device_key is not None:
            raise inbound.BadMessage(f"signed_{what}_required")  # this device signs
        return act

    def _verified(self, dev_id: str, payload: bytes, msg_type: str) -> Verified:
        """The message verified, from the device whose topic it came on; the key a
        renewal or status registers recorded (a report or receipt registers it in its
        own transaction: services/usage.py)."""
        verified = inbound.signed(self.hq, payload, msg_type)
        act = verified.activation
        if topics.device_id(act.fingerprint) != dev_id:
            raise inbound.BadMessage("foreign_topic")  # signed by one, sent on another's
        if act.deactivated_at is None and msg_type not in ("report", "receipt"):
            self.hq.device.register(verified, self.clock(), ACTOR)
        return verified

    def _request(
        self, dev_id: str, payload: bytes, renewals: list[RenewalRequest]
    ) -> list[Outgoing]:
        if inbound.is_legacy(payload):
            serial, due, revoked = inbound.legacy_renew(payload)
            act = self._legacy_activation(dev_id, "request")
            lic = self.hq.licenses.license(act.license_id)
            request = RenewalRequest(act.id, serial, LEGACY)
        else:
            verified = self._verified(dev_id, payload, "renew")
            act, lic, m = verified.activation, verified.license, verified.message
            serial, due, revoked = int(str(m["serial"])), bool(m["due"]), bool(m["revoked"])
            ttl, challenge = m["ttl_s"], m["challenge"]
            request = RenewalRequest(
                act.id,
                serial,
                verified.contact("mqtt"),
                ttl if isinstance(ttl, int) else None,
                challenge if isinstance(challenge, str) else None,
            )
        told = self._told_on_request(act, revoked)
        if told is not None:
            return told
        if act.deactivated_at is not None:
            raise inbound.BadMessage("deactivated_device")
        if license_status(lic, self.clock()) in ("revoked", "suspended"):
            return [] if revoked else self._revocation(act)
        if due or revoked or serial < act.serial:
            renewals.append(request)
        return []

    def _told_on_request(self, act: Activation, holds_revocation: bool) -> list[Outgoing] | None:
        """What the outbox says for a device that asked: an entry still to confirm is
        made due now (the poll publishes it: the device is connected); a confirmed
        revocation or deactivation is published again if the device says it holds
        none (it lost its state). None: the outbox has no say."""
        entry = self.hq.outbox.get(act.id)
        if entry is None:
            return None
        if entry.confirmed_at is None:
            self.hq.outbox.heard_from(act.id, self.clock())
            return []
        if entry.is_file or entry.payload is None:
            return None
        if holds_revocation:
            return []
        # A confirmed deactivation is no longer retained (see _status): sent live.
        retain = entry.action != "deactivate"
        return [(self._topic(act, topics.REVOCATION), entry.payload, retain)]

    def _revocation(self, act: Activation) -> list[Outgoing]:
        now = self.clock()
        token = self.hq.signed_revocation(act.id, now)
        if token is None:
            return []
        self.hq.record_audit(event(now, ACTOR, "mqtt_revocation", act.license_id, act.id))
        return [(self._topic(act, topics.REVOCATION), token, True)]

    def _status(self, dev_id: str, payload: bytes) -> list[Outgoing]:
        if inbound.is_legacy(payload):
            held = inbound.legacy_held(payload)
            act = self._legacy_activation(dev_id, "status")
        else:
            verified = self._verified(dev_id, payload, "status")
            act, held = verified.activation, inbound.held(verified.message)
            self.hq.device.heard_keyring(verified)  # an image update brings a new keyring
        confirmed = self.hq.outbox.confirm(act, held, self.clock())
        if confirmed is not None and confirmed.action == "deactivate":
            # Recorded on the device: the retained deactivation goes, so that the same
            # device activated again does not read the old one at every connection.
            return [(self._topic(act, topics.REVOCATION), b"", True)]
        return []

    def _report(self, dev_id: str, payload: bytes) -> list[Outgoing]:
        verified = self._verified(dev_id, payload, "report")
        try:
            self.hq.usage.accept_verified_report(verified, self.clock(), "mqtt", ACTOR)
            self._heard("reports")
        except ReportRefused:
            self._count("report_refused")  # a replay or an older one: HQ holds a newer
        return self._ack(verified.activation, payload)

    def _receipt(self, dev_id: str, payload: bytes) -> list[Outgoing]:
        verified = self._verified(dev_id, payload, "receipt")
        try:
            returned = self.hq.usage.accept_verified_receipt(
                verified, payload, self.clock(), "mqtt", ACTOR
            )
            self._heard("receipts_freed" if returned.freed else "receipts_recorded")
        except ReturnHeld:
            self._count("receipt_returned_already")  # HQ holds it or another: acknowledged
        except ActivationNotFound:
            self._count("receipt_not_live")  # the seat is free already
        except ReturnLimitReached:
            self._count("return_limit_reached")  # kept on the device for the operator
            return []
        except (Conflict, DeviceKeyMismatch) as e:
            # HQ took nothing (a key registered by another device meanwhile, a write the
            # database refused): unacknowledged, the device keeps its receipt
            self._count(e.code)
            return []
        return self._ack(verified.activation, payload)

    def _ack(self, act: Activation, payload: bytes) -> list[Outgoing]:
        nonce = topics.ack_nonce(payload)
        token = self.hq.usage.acknowledgement(act.id, nonce, self.clock())
        return [(self._topic(act, topics.ACK), token, False)]

    def _heard(self, what: str) -> None:
        self.heard[what] = self.heard.get(what, 0) + 1

    def _renew(self, renewals: list[RenewalRequest]) -> list[Outgoing]:
        answers = self.hq.renewals.answer(renewals, self.clock(), ACTOR, self.min_interval_s)
        out: list[Outgoing] = []
        for answer in answers:
            if answer.kind in (ISSUED, AGAIN) and answer.activation and answer.machine_file:
                act = answer.activation
                out.append((self._topic(act, topics.MACHINE_FILE), answer.machine_file, True))
                out.append((self._topic(act, topics.REVOCATION), b"", True))
            elif answer.kind == RATE_LIMITED:
                self._count("rate_limited")
            elif answer.kind == GONE:
                self._count("unknown_device")
            elif answer.error is not None:
                self._count(answer.error.code)
        return out

    # -- the outbox ---------------------------------------------------------------------
    def deliver_due(self) -> list[Outgoing]:
        """The outbox entries due now, a batch of them, to publish (retained);
        ``more_due`` says whether a full batch was taken (more may be waiting)."""
        out: list[Outgoing] = []
        self.more_due = False
        deliveries = self.hq.outbox.take_due(self.clock(), ACTOR, OUTBOX_BATCH)
        self.more_due = len(deliveries) == OUTBOX_BATCH
        for delivery in deliveries:
            out += self.outgoing(delivery)
        return out

    def outgoing(self, delivery: Delivery) -> list[Outgoing]:
        action = delivery.entry.action
        self.told[action] = self.told.get(action, 0) + 1
        return told(self.prefix, delivery)

    def connected(self) -> None:
        """(Re)connected to the broker: whatever was sent and not confirmed is due now
        (an outage may have lost what the broker kept)."""
        self.hq.outbox.rearm(self.clock())


CONNECTED = ("", b"", False)  # the marker the connection callback queues
UNDELIVERED = ("", b"", True)  # the marker a publish the broker did not accept queues


def serve(bridge: Bridge, connect: Callable[..., Link], stop: threading.Event) -> None:
    """Run the bridge until ``stop`` is set. ``connect(on_message, subscriptions,
    on_connected)`` returns a connected link (connection.open_link with this replica's
    credentials), whose window bounds what awaits its PUBACK: a broker slower than the
    bridge holds the bridge back (link.py). The link's thread only queues; this thread
    does the work."""
    inbox: queue.SimpleQueue[Incoming] = queue.SimpleQueue()

    def on_message(client: object, userdata: object, message: object) -> None:
        m = message
        inbox.put((m.topic, bytes(m.payload), bool(m.retain)))  # type: ignore[attr-defined]

    def settled(accepted: bool) -> None:  # on the link's thread: counted on this one
        if not accepted:
            inbox.put(UNDELIVERED)

    client = connect(on_message, subscriptions(bridge.prefix), lambda: inbox.put(CONNECTED))
    polled = 0.0
    try:
        while not stop.is_set():
            batch = _drain(inbox, 0 if bridge.more_due else OUTBOX_POLL_S)
            out: list[Outgoing] = []
            if CONNECTED in batch:
                batch = [m for m in batch if m != CONNECTED]
                _guarded(bridge, bridge.connected)
            if UNDELIVERED in batch:
                kept = [m for m in batch if m != UNDELIVERED]
                bridge.undelivered(len(batch) - len(kept))
                batch = kept
            if batch:
                out += bridge.handle_batch(batch)
            if bridge.more_due or time.monotonic() - polled >= OUTBOX_POLL_S:
                polled = time.monotonic()
                out += _guarded(bridge, bridge.deliver_due) or []
            for name, data, retain in out:
                client.publish(name, data, retain, settled)
    finally:
        client.close(STOP_FLUSH_S)


def _drain(inbox: "queue.SimpleQueue[Incoming]", wait_s: float) -> list[Incoming]:
    try:
        batch = [inbox.get(timeout=wait_s)]
    except queue.Empty:
        return []
    while len(batch) < BATCH_MAX:
        try:
            batch.append(inbox.get_nowait())
        except queue.Empty:
            break
    return batch


def _guarded(bridge: Bridge, work: Callable[[], object]) -> list[Outgoing] | None:
    """Run ``work``; a failure (the database busy or away) is counted and retried at
    the next poll, never the end of the bridge."""
    try:
        return work()  # type: ignore[return-value]
    except HQError as e:
        bridge._count(e.code)
    except Exception as e:
        bridge._fault(e)
    return None
