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
from typing import TypedDict, Unpack

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


class Options(TypedDict, total=False):
    """What ``connect`` and ``open_link`` take besides the URL and credentials."""

    ca_file: str | None  # the CA for mqtts://
    on_message: MessageHandler | None
    subscriptions: list[str]  # subscribed at every connection
    session_expiry_s: int  # 0: a clean session
    timeout_s: float  # for the broker's CONNACK (10 s)
    on_connected: Callable[[], None] | None  # at every connection


def _started(
    url: str,
    client_id: str,
    username: str,
    password: str,
    options: Options,
    start: Callable[[mqtt.Client], Callable[[], None]],
) -> mqtt.Client:
    """The client, connected, its loop started by ``start`` (which returns how to stop
    it), once the broker has accepted it (CONNACK)."""
    host, port, tls = parse_url(url)
    client, ready, failure = _client(
        client_id,
        username,
        password,
        options.get("ca_file"),
        options.get("on_message"),
        options.get("subscriptions", []),
        options.get("on_connected"),
        tls,
    )
    session_expiry_s = options.get("session_expiry_s", 0)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    try:
        client.connect(host, port, 60, clean_start=session_expiry_s == 0, properties=props)
    except (OSError, ValueError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
        raise BrokerUnavailable(f"cannot reach the broker at {host}:{port}: {reason}") from e
    stop = start(client)
    if not ready.wait(options.get("timeout_s", 10)) or failure:
        stop()
        reason = failure[0] if failure else "no answer"
        raise BrokerUnavailable(f"the broker at {host}:{port} refused HQ: {reason}")
    return client


def connect(
    url: str, client_id: str, username: str, password: str, **options: Unpack[Options]
) -> mqtt.Client:
    """A client on paho's own loop thread (``loop_start``), for a few messages; a
    publisher of many takes ``open_link``."""

    def start(client: mqtt.Client) -> Callable[[], None]:
        client.loop_start()
        return client.loop_stop  # type: ignore[return-value]

    return _started(url, client_id, username, password, options, start)


def open_link(
    url: str,
    client_id: str,
    username: str,
    password: str,
    *,
    window: int = PUBLISH_WINDOW,
    ack_wait_s: float = PUBACK_WAIT_S,
    **options: Unpack[Options],
) -> Link:
    """``connect``'s client on a ``Link`` (link.py): its loop on a thread of its own,
    at most ``window`` publishes awaiting their PUBACK, one failed after ``ack_wait_s``
    without it. ``push`` and the bridge."""
    links: list[Link] = []

    def start(client: mqtt.Client) -> Callable[[], None]:
        links.append(Link(client, window, ack_wait_s))
        links[0].start()
        return links[0].close

    _started(url, client_id, username, password, options, start)
    return links[0]
