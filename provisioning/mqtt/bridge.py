"""``fieldpass-hq bridge``: answers the devices' renewal requests over MQTT.

For a request on ``<prefix>/dev/<id>/renew-request`` from a device with a live
activation:

- license revoked or suspended: a signed revocation, retained on ``.../revocation``;
- license active and the device's file due (or older than HQ's latest serial, or the
  device holding a revocation HQ has since lifted): a fresh machine file, retained on
  ``.../machine-file`` (and the revocation topic cleared); at most one per
  ``min_interval_s`` per device, so that a looping device cannot make HQ sign without end;
- otherwise nothing.

Every answer is in the audit log (``renew`` by ``mqtt-bridge``, ``mqtt_revocation``,
``mqtt_refused``). Unknown devices and malformed requests are counted and logged once
per kind. ``Bridge.handle`` is plain logic (topic and payload in, messages out) so that
it is tested without a broker; ``serve`` runs it on a paho client.
"""

import logging
import threading
import time
from collections.abc import Callable

from agent.daemon import messages, topics

from ..errors import HQError, InvalidRequest
from ..models import Activation, Actor
from ..services import HQ, Contact, Issued
from ..services.audit import event

log = logging.getLogger("fieldpass.hq.bridge")
ACTOR = Actor("mqtt-bridge", "mqtt")
REINDEX_S = 5.0
LEGACY = Contact(channel="mqtt", agent_version="0.1.0", claims_format=1)

Outgoing = tuple[str, bytes, bool]  # topic, payload, retain


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
        self.index: dict[str, str] = {}  # device id -> activation id
        self.indexed_at = 0.0
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if self.counts[what] == 1:
            log.warning("ignored a message (%s); more of the kind are only counted", what)

    def _activation(self, dev_id: str) -> Activation | None:
        act_id = self.index.get(dev_id)
        if act_id is None and time.monotonic() - self.indexed_at > REINDEX_S:
            self.index = {
                topics.device_id(a.fingerprint): a.id
                for a in self.hq.list_activations()
                if a.deactivated_at is None
            }
            self.indexed_at = time.monotonic()
            act_id = self.index.get(dev_id)
        if act_id is None:
            return None
        act = self.hq.get_activation(act_id)
        return act if act.deactivated_at is None else None

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        parsed = topics.parse(self.prefix, topic)
        if parsed is None:
            self._count("unexpected_topic")
            return []
        dev_id, kind = parsed
        if kind == topics.STATUS:
            return []
        if kind != topics.RENEW_REQUEST:
            self._count("unexpected_topic")
            return []
        if payload[:1] == b"{":  # the JSON request of agents up to 0.1.0
            return self._legacy(dev_id, payload)
        try:
            verified = self.hq.device.verify(payload, "renew")
        except InvalidRequest:
            self._count("malformed_request")
            return []
        except HQError as e:
            self._count(e.code)
            return []
        act = verified.activation
        if topics.device_id(act.fingerprint) != dev_id:
            self._count("foreign_topic")  # signed by one device, sent on another's topic
            return []
        m = verified.message
        try:
            self.hq.device.register(verified, self.clock(), ACTOR)
        except HQError as e:
            self._count(e.code)
            return []
        wants = bool(m["due"]) or bool(m["revoked"])
        renew: Callable[[int], Issued] = lambda now: self.hq.device.renew_verified(  # noqa: E731
            verified, now, ACTOR, "mqtt", challenge_required=False
        )
        return self._answer(dev_id, act, int(str(m["serial"])), bool(wants), renew)

    def _legacy(self, dev_id: str, payload: bytes) -> list[Outgoing]:
        try:
            serial, _, due, revoked = messages.parse_renew_request(payload)
        except messages.MessageError:
            self._count("malformed_request")
            return []
        act = self._activation(dev_id)
        if act is None:
            self._count("unknown_device")
            return []
        if act.device_key is not None:
            self._count("signed_request_required")  # this device signs its requests
            return []
        renew: Callable[[int], Issued] = lambda now: self.hq.renew(  # noqa: E731
            now, ACTOR, activation_id=act.id, contact=LEGACY
        )
        return self._answer(dev_id, act, serial, due or revoked, renew)

    def _answer(
        self, dev_id: str, act: Activation, serial: int, due: bool, renew: Callable[[int], Issued]
    ) -> list[Outgoing]:
        now = self.clock()
        file_topic = topics.topic(self.prefix, dev_id, topics.MACHINE_FILE)
        rev_topic = topics.topic(self.prefix, dev_id, topics.REVOCATION)
        revocation = self.hq.signed_revocation(act.id, now)
        if revocation is not None:
            self.hq.record_audit(event(now, ACTOR, "mqtt_revocation", act.license_id, act.id))
            return [(rev_topic, revocation, True)]
        if not due and serial >= act.serial:
            return []
        # At most one file per device per min_interval_s, whatever the request says (its
        # serial is the device's word, not HQ's): a looping device cannot make HQ sign.
        if now - act.last_issued_at < self.min_interval_s:
            self._count("rate_limited")
            return []
        try:
            issued = renew(now)
        except HQError as e:
            self.hq.record_audit(event(now, ACTOR, "mqtt_refused", act.license_id, act.id, e.code))
            return []
        return [(file_topic, issued.machine_file, True), (rev_topic, b"", True)]


def serve(bridge: Bridge, connect: Callable[..., object], stop: threading.Event) -> None:
    """Run the bridge until ``stop`` is set. ``connect(on_message, subscriptions)``
    returns a connected paho client (connection.connect with HQ's credentials)."""
    import queue

    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()

    def on_message(client: object, userdata: object, message: object) -> None:
        inbox.put((message.topic, bytes(message.payload)))  # type: ignore[attr-defined]

    subscriptions = [
        topics.topic(bridge.prefix, "+", topics.RENEW_REQUEST),
        topics.topic(bridge.prefix, "+", topics.STATUS),
    ]
    client = connect(on_message, subscriptions)
    try:
        while not stop.is_set():
            try:
                topic, payload = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if len(payload) > messages.MAX_DEVICE_MESSAGE_BYTES:
                bridge._count("oversized")
                continue
            for name, data, retain in bridge.handle(topic, payload):
                client.publish(name, data, qos=1, retain=retain)  # type: ignore[attr-defined]
    finally:
        client.disconnect()  # type: ignore[attr-defined]
        client.loop_stop()  # type: ignore[attr-defined]
