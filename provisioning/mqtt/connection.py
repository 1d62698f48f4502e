"""One paho-mqtt client for HQ (callback API v2, MQTT 5), connected and looping: on
paho's own thread (``connect``: the laptop's few messages), or on a ``Link`` (``open_link``,
link.py: ``push`` and the bridge, which publish many, through a bounded window).

The broker URL is ``mqtt://host[:port]`` or ``mqtts://host[:port]``; the user name and
password come from the caller (by default the process's own HQ user and its derived
password, credentials.py), never from the URL, so that no secret shows in a process
list. The client id is the user name: a broker set up by ``broker-config`` binds them
(``use_username_as_clientid``), so no two HQ processes share one. A lost connection is
reconnected (by paho's loop, or the link's); every connection subscribes again and calls
``on_connected``; a lost one is logged.
"""

import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import HQError, InvalidRequest
from .link import Link

MessageHandler = Callable[[mqtt.Client, object, mqtt.MQTTMessage], None]
log = logging.getLogger("fieldpass.hq.mqtt")

# paho numbers QoS 1 publishes with 16-bit packet ids and, with more than 65,535 of
# them awaiting their PUBACK, reuses an id still in flight without a check: the message
# it replaces is never acknowledged (and mosquitto drops one of the two). A client that
# publishes many (push, the bridge: a Link, link.py; the benchmark's floor) waits for
# room before it has more than this many outstanding.
PUBLISH_WINDOW = 1000
PUBACK_WAIT_S = 30.0  # a publish not acknowledged this long after the last PUBACK failed


class BrokerUnavailable(HQError):
    code = "broker_unavailable"
    http_status = 503
    exit_code = 69  # sysexits EX_UNAVAILABLE


def parse_url(url: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise InvalidRequest(f"--broker must be mqtt://HOST[:PORT] or mqtts://, not {url!r}")
    if parts.username or parts.password:
        raise InvalidRequest("put no credentials in the broker URL: use --password-file")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def _client(
    client_id: str,
    username: str,
    password: str,
    ca_file: str | None,
    on_message: MessageHandler | None,
    subscriptions: list[str],
    on_connected: Callable[[], None] | None,
    tls: bool,
) -> tuple[mqtt.Client, threading.Event, list[str]]:
    """The client, not connected yet, with its callbacks; the event set on the first
    CONNACK and the refusal it carried, if any."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    if tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
    ready = threading.Event()
    failure: list[str] = []

    def on_connect(
        c: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if getattr(reason, "is_failure", True):
            failure.append(str(reason))
            ready.set()
            return
        if subscriptions:
            c.subscribe([(name, 1) for name in subscriptions])
        if ready.is_set():
            log.info("connected to the broker again as %s", client_id)
        if on_connected is not None:
            on_connected()
        ready.set()

    def on_disconnect(
        c: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if ready.is_set() and not failure and getattr(reason, "is_failure", False):
            log.warning("lost the broker connection (%s); reconnecting", reason)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if on_message is not None:
        client.on_message = on_message
    return client, ready, failure


def _open(client: mqtt.Client, host: str, port: int, session_expiry_s: int) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    try:
        client.connect(host, port, 60, clean_start=session_expiry_s == 0, properties=props)
    except (OSError, ValueError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
        raise BrokerUnavailable(f"cannot reach the broker at {host}:{port}: {reason}") from e


def _refused(host: str, port: int, failure: list[str]) -> BrokerUnavailable:
    reason = failure[0] if failure else "no answer"
    return BrokerUnavailable(f"the broker at {host}:{port} refused HQ: {reason}")


def connect(
    url: str,
    client_id: str,
    username: str,
    password: str,
    *,
    ca_file: str | None = None,
    on_message: MessageHandler | None = None,
    subscriptions: list[str] = (),  # type: ignore[assignment]
    session_expiry_s: int = 0,
    timeout_s: float = 10,
    on_connected: Callable[[], None] | None = None,
) -> mqtt.Client:
    """A client on paho's own loop thread (``loop_start``), for a few messages; a
    publisher of many takes ``open_link``."""
    host, port, tls = parse_url(url)
    client, ready, failure = _client(
        client_id, username, password, ca_file, on_message, subscriptions, on_connected, tls
    )
    _open(client, host, port, session_expiry_s)
    client.loop_start()
    if not ready.wait(timeout_s) or failure:
        client.loop_stop()
        raise _refused(host, port, failure)
    return client


def open_link(
    url: str,
    client_id: str,
    username: str,
    password: str,
    *,
    ca_file: str | None = None,
    on_message: MessageHandler | None = None,
    subscriptions: list[str] = (),  # type: ignore[assignment]
    session_expiry_s: int = 0,
    timeout_s: float = 10,
    on_connected: Callable[[], None] | None = None,
    window: int = PUBLISH_WINDOW,
    ack_wait_s: float = PUBACK_WAIT_S,
) -> Link:
    """``connect``'s client on a ``Link`` (link.py): its loop on a thread of its own,
    at most ``window`` publishes awaiting their PUBACK. ``push`` and the bridge."""
    host, port, tls = parse_url(url)
    client, ready, failure = _client(
        client_id, username, password, ca_file, on_message, subscriptions, on_connected, tls
    )
    _open(client, host, port, session_expiry_s)
    link = Link(client, window, ack_wait_s)
    link.start()
    if not ready.wait(timeout_s) or failure:
        link.close()
        raise _refused(host, port, failure)
    return link
