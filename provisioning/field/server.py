"""The technician's laptop, on site: an HTTP server that answers the devices' usual
renewal path from a field bundle, and (``offer_over_mqtt``) the same bundle on a broker.

``POST /v1/machine-file`` answers a device's request signed by its own key (checked
against the device key the bundle carries, over a challenge of the laptop's
``POST /v1/challenge``), or, from an agent of 0.1.0, whose fingerprint and license key
match a renewal in the bundle; ``POST /v1/validate`` hands over a revocation HQ signed (the
laptop cannot sign HQ's time); ``/v1/activate`` and ``/v1/deactivate`` are refused, so
that a laptop never grants a seat. Each pickup is recorded (``FieldServer.pickups``) for
the report (field/report.py).

Holds no secret and signs nothing: everything it serves was signed at HQ and is
encrypted to its device. Bodies are capped at ``MAX_BODY_BYTES`` before parsing; never
logs a request (the license key is in the body).
"""

import base64
import http.server
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.wire import armor, device_msg, sodium
from agent.wire import license_key as lk
from agent.wire.device_key import key_id
from agent.wire.device_msg import unverified_fingerprint
from agent.wire.errors import WireError
from agent.wire.signed import signed_kid

MAX_BODY_BYTES = 16 * 1024
CHALLENGE_TTL_S = 300
MAX_CHALLENGES = 10_000


class FieldServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        bundle: dict[str, Any],
        on_pickup: Callable[[dict[str, Any], str], None] | None = None,
    ) -> None:
        self.by_fingerprint = {d["fingerprint"]: d for d in bundle["devices"]}
        self.by_device_key = {
            key_id(base64.b64decode(d["device_key"])): d
            for d in bundle["devices"]
            if isinstance(d.get("device_key"), str)
        }
        self.revocations = {r["fingerprint"]: r for r in bundle.get("revocations", [])}
        self.challenges: dict[str, float] = {}  # the laptop's own single-use challenges
        self.pickups: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.on_pickup = on_pickup
        super().__init__(address, _Handler)

    def new_challenge(self) -> str:
        value = base64.urlsafe_b64encode(os.urandom(18)).decode("ascii")
        now = time.monotonic()
        with self.lock:
            for old, at in list(self.challenges.items()):
                if now - at > CHALLENGE_TTL_S:
                    del self.challenges[old]
            if len(self.challenges) < MAX_CHALLENGES:
                self.challenges[value] = now
        return value

    def spend_challenge(self, value: object) -> bool:
        with self.lock:
            at = self.challenges.pop(value, None) if isinstance(value, str) else None
        return at is not None and time.monotonic() - at <= CHALLENGE_TTL_S

    def entry_for(
        self, data: bytes, msg_type: str, *, challenge: bool = True
    ) -> tuple[dict[str, Any], device_msg.DeviceMessage] | None:
        """The bundle entry a device's signed message is about, the message verified:
        against the device key the bundle carries, or (a device registering its key)
        against the key the message carries. None if it verifies against neither."""
        try:
            kid = signed_kid(data, device_msg.MAX_MESSAGE_BYTES)
            entry = self.by_device_key.get(kid)
            if entry is not None:
                key = base64.b64decode(entry["device_key"])
                msg = device_msg.open_message(data, lambda k: key if k == kid else None, msg_type)
            else:
                msg = device_msg.open_self_signed(data, msg_type)
                entry = self.by_fingerprint.get(msg.fingerprint)
        except (WireError, ValueError):
            return None
        if entry is None or entry["fingerprint"] != msg.fingerprint:
            return None
        if challenge and not self.spend_challenge(msg.fields.get("challenge")):
            return None
        return entry, msg

    def offered(self) -> set[str]:
        """The activation ids the bundle has something for (a file or a revocation)."""
        offered = {e["activation_id"] for e in self.by_fingerprint.values()}
        return offered | {e["activation_id"] for e in self.revocations.values()}

    def picked(self, entry: dict[str, Any], via: str) -> None:
        record = {
            "activation_id": entry["activation_id"],
            "license_id": entry["license_id"],
            "fingerprint": entry["fingerprint"],
            "serial": entry.get("serial", 0),
            "at": int(time.time()),
            "via": via,
        }
        with self.lock:
            self.pickups.append(record)
        if self.on_pickup is not None:
            self.on_pickup(entry, via)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FieldServer
    server_version = "fieldpass-field"

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines could carry nothing secret, but keep the console for pickups

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True, "field": True})
        else:
            self._error(404, "not_found", "no such endpoint")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._error(413, "invalid_request", "request body too large")
            return
        try:
            body = json.loads(self.rfile.read(length))
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            self._error(400, "invalid_request", "the body is not a JSON object")
            return
        if self.path == "/v1/challenge":
            self._send(200, {"challenge": self.server.new_challenge(), "expires_in": 300})
        elif self.path == "/v1/machine-file":
            self._machine_file(body)
        elif self.path in ("/v1/activate", "/v1/deactivate"):
            self._error(
                403,
                "not_available_in_the_field",
                "a technician's laptop cannot activate or deactivate: ask HQ",
            )
        elif self.path == "/v1/validate":
            self._validate(body)
        else:
            self._error(404, "not_found", "no such endpoint")

    def _signed(self, body: dict[str, Any], msg_type: str) -> dict[str, Any] | None:
        """The bundle entry of a signed device request, or None (answered already)."""
        try:
            data = base64.b64decode(str(body.get("request", "")), validate=True)
        except ValueError:
            data = b""
        found = self.server.entry_for(data, msg_type)
        if found is None:
            self._error(
                401,
                "device_unauthenticated",
                "the request is not signed by a device this bundle has a renewal for, or its "
                "challenge is unknown or used",
            )
            return None
        return found[0]

    def _validate(self, body: dict[str, Any]) -> None:
        """The laptop cannot sign HQ's time; it can hand over a revocation HQ signed."""
        fingerprint = str(body.get("fingerprint", ""))
        if "request" in body:
            data = b""
            try:
                data = base64.b64decode(str(body["request"]), validate=True)
                kid = signed_kid(data, device_msg.MAX_MESSAGE_BYTES)
            except (ValueError, WireError):
                kid = ""
            known = self.server.by_device_key.get(kid)
            # A revocation is HQ-signed and public (the device verifies it): for a device
            # whose key the bundle does not know, its claimed fingerprint is enough to
            # look one up.
            fingerprint = known["fingerprint"] if known else unverified_fingerprint(data)
        entry = self.server.revocations.get(fingerprint)
        if entry is None:
            self._error(
                503, "hq_unreachable", "a technician's laptop cannot validate: offline verdict"
            )
            return
        self._send(200, {"revocation": entry["revocation"], "status": entry["reason"]})
        self.server.picked(entry, "http")

    def _machine_file(self, body: dict[str, Any]) -> None:
        if "request" in body:  # signed by the device's key (agents after 0.1.0)
            signed = self._signed(body, "renew")
            if signed is not None:
                self._serve(signed)
            return
        entry = self.server.by_fingerprint.get(str(body.get("fingerprint", "")))
        if entry is None:
            self._error(404, "activation_not_found", "no renewal for this device in the bundle")
            return
        try:
            lic_id = lk.license_id(lk.normalize(str(body.get("license_key", ""))))
        except ValueError:
            lic_id = ""
        if not sodium.constant_time_equal(lic_id.encode(), entry["license_id"].encode()):
            self._error(403, "license_not_found", "the license key does not match this device")
            return
        self._serve(entry)

    def _serve(self, entry: dict[str, Any]) -> None:
        self._send(
            200, {k: entry[k] for k in ("activation_id", "serial", "expires_at", "machine_file")}
        )
        self.server.picked(entry, "http")


def offer_over_mqtt(server: FieldServer, url: str, username: str, password: str) -> Any:
    """Publish every renewal and revocation of the bundle, retained, on each device's
    topics, and count a pickup when the device's status reports the new serial (or the
    revoked verdict). The device's daemon verifies everything it receives."""
    from agent.daemon import messages, topics

    from ..mqtt.connection import connect

    prefix = topics.DEFAULT_PREFIX
    by_device = {topics.device_id(fp): e for fp, e in server.by_fingerprint.items()}
    revoked = {topics.device_id(fp): e for fp, e in server.revocations.items()}
    seen: set[str] = set()

    def on_message(client: object, userdata: object, message: Any) -> None:
        parsed = topics.parse(prefix, message.topic)
        if parsed is None or parsed[1] != topics.STATUS or parsed[0] in seen:
            return
        payload = bytes(message.payload)
        status: dict[str, object]
        if payload[:1] == b"{":  # an agent of 0.1.0
            try:
                status = messages.parse_status(payload)
            except (messages.MessageError, RecursionError):
                return
        else:  # signed by the device's key
            found = server.entry_for(payload, "status", challenge=False)
            if found is None:
                return
            status = dict(found[1].fields)
        dev = parsed[0]
        entry = by_device.get(dev)
        serial = status.get("serial")
        if entry is not None and type(serial) is int and serial >= entry["serial"]:
            seen.add(dev)
            server.picked(entry, "mqtt")
        elif dev in revoked and status.get("verdict") == "revoked":
            seen.add(dev)
            server.picked(revoked[dev], "mqtt")

    client = connect(
        url,
        username,  # the client id is the user name (broker-config binds them)
        username,
        password,
        on_message=on_message,
        subscriptions=[f"{prefix}/dev/+/{topics.STATUS}"],
    )
    for dev, entry in by_device.items():
        data = armor.unarmor(entry["machine_file"], armor.MACHINE_FILE)
        client.publish(topics.topic(prefix, dev, topics.MACHINE_FILE), data, qos=1, retain=True)
    for dev, entry in revoked.items():
        data = armor.unarmor(entry["revocation"], armor.REVOCATION)
        client.publish(topics.topic(prefix, dev, topics.REVOCATION), data, qos=1, retain=True)
    return client
