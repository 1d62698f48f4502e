"""The MQTT transport: paho-mqtt with the version 2 callback API, MQTT 5.

One connection at a time, to the brokers of ``[mqtt] brokers`` tried in turn (the fleet
broker, then a technician's laptop). A persistent session (clean start off, a session
expiry) lets what HQ published while the device was away arrive when it returns; the
subscriptions are renewed on every connect, which also redelivers the retained file.
Reconnecting is the state machine's job (its BACKOFF state), not paho's: a failed or
lost connection stops paho's loop and posts DISCONNECTED.

Payloads are bounded twice: the CONNECT packet's Maximum Packet Size asks the broker
not to send more, and ``on_message`` drops anything larger before it is queued.
Callbacks run on paho's thread and only post events; they never raise.
"""

import logging
import ssl
import urllib.parse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .. import fsio
from ..config import Config, ConfigError
from ..device import Device
from . import topics
from .transport import ACK, BAD, CONNECTED, DISCONNECTED, FILE, REVOCATION, EventQueue

log = logging.getLogger("fieldpass.daemon")
PACKET_OVERHEAD = 512  # topic, properties and headers on top of the payload
CONNECT_TIMEOUT_S = 10


def parse_broker(url: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "mqtts"
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"not an MQTT broker URL: {url!r}")
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class MqttTransport:
    name = "mqtt"
    carries_usage = True

    def __init__(self, cfg: Config, device: Device, events: EventQueue) -> None:
        if not cfg.mqtt_brokers:
            raise ConfigError("no MQTT broker: set [mqtt] brokers in agent.toml")
        self.cfg = cfg
        self.brokers = [parse_broker(url) for url in cfg.mqtt_brokers]
        self.events = events
        self.device = device
        self.nonce: str | None = None  # the nonce of the last renewal request sent
        self.device_id = topics.device_id(device.identity.fingerprint)
        prefix = cfg.mqtt_topic_prefix
        self.inbound = {topics.topic(prefix, self.device_id, kind): kind for kind in topics.FROM_HQ}
        self.request_topic = topics.topic(prefix, self.device_id, topics.RENEW_REQUEST)
        self.status_topic = topics.topic(prefix, self.device_id, topics.STATUS)
        self.usage_topics = {
            kind: topics.topic(prefix, self.device_id, kind)
            for kind in (topics.REPORT, topics.RECEIPT)
        }
        self.max_payload = cfg.mqtt_max_payload_bytes
        self.password = self._password()
        self.index = -1  # the broker of the current attempt
        self.generation = 0
        self.client: mqtt.Client | None = None  # generations change on this thread only

    def _password(self) -> str | None:
        if not self.cfg.mqtt_password_file:
            return None
        try:
            data = fsio.read_bytes(self.cfg.mqtt_password_file, 1024)
        except fsio.StorageError as e:
            raise ConfigError(f"{self.cfg.mqtt_password_file}: {e.strerror}") from None
        if data is None:
            raise ConfigError(f"{self.cfg.mqtt_password_file}: no such file")
        return data.decode("utf-8", "replace").strip()

    def describe(self) -> str:
        host, port, tls = self.brokers[max(self.index, 0)]
        return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"

    def connect(self) -> int:
        self.disconnect()
        self.index = (self.index + 1) % len(self.brokers)
        host, port, tls = self.brokers[self.index]
        self.generation += 1
        gen = self.generation
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="fp-" + self.device_id,
            protocol=mqtt.MQTTv5,
            userdata=gen,
        )
        client.enable_logger(logging.getLogger("fieldpass.daemon.paho"))
        client.max_inflight_messages_set(4)
        if self.cfg.mqtt_username or self.password is not None:
            # A fleet broker set up by `fieldpass-hq broker-config` knows each device by
            # its device id: that is the default user name.
            client.username_pw_set(self.cfg.mqtt_username or self.device_id, self.password)
        if tls:
            client.tls_set(
                ca_certs=self.cfg.mqtt_ca_file or None,
                certfile=self.cfg.mqtt_cert_file or None,
                keyfile=self.cfg.mqtt_key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.mqtt_session_expiry_s
        props.MaximumPacketSize = self.max_payload + PACKET_OVERHEAD
        try:
            client.connect_async(
                host, port, self.cfg.mqtt_keepalive_s, clean_start=False, properties=props
            )
            client.loop_start()
        except (OSError, ValueError) as e:
            log.info("cannot start a connection to %s: %s", self.describe(), e)
            self.events.put((DISCONNECTED, gen, None))
            return gen
        self.client = client
        return gen

    def disconnect(self) -> None:
        client, self.client = self.client, None
        self.generation += 1  # whatever the old client still posts is stale
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # noqa: S110 - best effort on a connection we drop
            pass
        client.loop_stop()

    def ask(self, due: bool) -> None:
        """Publish a signed renewal request (no server challenge over MQTT: the broker's
        per-device credentials and ACL say who publishes; the nonce binds the answer)."""
        from .. import asks, clock
        from ..online import new_nonce

        nonce = new_nonce()
        with self.device.writer_lock():
            payload = asks.renew(self.device, clock.now(), challenge=None, due=due, nonce=nonce)
        self.nonce = nonce
        self._publish(self.request_topic, payload)

    def publish_status(self, payload: bytes) -> None:
        self._publish(self.status_topic, payload)

    def publish_usage(self, kind: str, payload: bytes) -> None:
        """A signed usage report or return receipt (QoS 1, not retained: HQ's ``ack``
        says it holds it; until then the machine sends it again)."""
        self._publish(self.usage_topics[kind], payload)

    def _publish(self, name: str, payload: bytes) -> None:
        client = self.client
        if client is not None:
            client.publish(name, payload, qos=1)

    # -- paho's thread: post events, never raise -----------------------------------

    def _post(self, kind: str, gen: int, payload: object = None) -> None:
        self.events.put((kind, gen, payload))

    def _on_connect(
        self, client: mqtt.Client, gen: int, flags: object, reason: object, props: object
    ) -> None:
        if getattr(reason, "is_failure", True):
            log.info("broker %s refused the connection: %s", self.describe(), reason)
            self._post(DISCONNECTED, gen)
            return
        options = SubscribeOptions(qos=1)
        # CONNECTED waits for the SUBACK: until the broker holds the subscriptions, a
        # revocation published to this device would be dropped, not delivered.
        client.subscribe([(name, options) for name in self.inbound])

    def _on_subscribe(
        self, client: mqtt.Client, gen: int, mid: int, reasons: list[ReasonCode], props: Properties
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:  # the broker's ACL: the link still carries requests and statuses
            log.info(
                "broker %s refused %d subscription(s): %s",
                self.describe(),
                len(refused),
                refused[0],
            )
        self._post(CONNECTED, gen)

    def _on_connect_fail(self, client: mqtt.Client, gen: int) -> None:
        self._post(DISCONNECTED, gen)

    def _on_disconnect(
        self, client: mqtt.Client, gen: int, flags: object, reason: object, props: object
    ) -> None:
        self._post(DISCONNECTED, gen)

    def _on_message(self, client: mqtt.Client, gen: int, message: mqtt.MQTTMessage) -> None:
        kind = self.inbound.get(message.topic)
        payload = message.payload
        if kind is None:
            self._post(BAD, gen, "unexpected_topic")
        elif len(payload) > self.max_payload:
            self._post(BAD, gen, "oversized")
        elif payload:  # an empty retained message only clears the topic
            if kind == topics.MACHINE_FILE:
                self._post(FILE, gen, (bytes(payload), self.nonce))
            elif kind == topics.ACK:
                self._post(ACK, gen, bytes(payload))
            else:
                self._post(REVOCATION, gen, bytes(payload))
