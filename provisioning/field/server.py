"""The technician's laptop, on site: answers the devices' usual HTTP paths from a field
bundle (through ``listener.py``, which bounds every peer), and (``offer_over_mqtt``) offers
the same bundle on a broker.

- ``POST /v1/challenge``: the laptop's own single-use challenges.
- ``POST /v1/machine-file``: a renewal, for a request signed by the device's own key
  (checked against the device key the bundle carries, or the key a registering request
  carries), or, from an agent of 0.1.0, whose fingerprint and license key match a
  renewal in the bundle. A device whose license HQ revoked or suspended gets HQ's refusal.
- ``POST /v1/validate``: a revocation HQ signed (the laptop cannot sign HQ's time).
- ``POST /v1/status``: the device's signed status after an install: what confirms a
  pickup. ``/v1/activate`` and ``/v1/deactivate`` are refused: a laptop never grants a
  seat.
- ``POST /v1/report`` and ``POST /v1/receipt``: the device's signed usage report and
  return receipt (what ``sync.send_report`` posts to HQ), verified as the status is and
  carried in the report: the latest report of each activation and signing key (a
  replayed or older one is refused, 409 ``report_refused``), and its receipt, which HQ
  turns into a freed seat at ``field import``. The laptop frees nothing itself.

What the laptop records, for the report (field/report.py): a file or revocation
*served* to a device that identified itself, and a pickup *confirmed* by the device's
signed status (its serial, or its revoked verdict), kept with the status so that HQ
verifies it at import. An agent of 0.1.0 cannot sign: what it takes stays "served,
unconfirmed". A revocation handed to a request the laptop cannot attribute is listed
apart, never recorded as anyone's pickup. A usage report or receipt is recorded only if it
verifies against the device key the bundle carries for its activation (or the key it
registers); HQ verifies each again at import. Holds no secret and signs nothing; never
logs a request (the license key is in the body of agents of 0.1.0). Thread-safe: the
listener's thread and the MQTT client's thread both call in.
"""

import base64
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.jsonin import JsonError, loads_object
from agent.wire import armor, device_msg, sodium
from agent.wire import license_key as lk
from agent.wire.device_key import key_id
from agent.wire.device_msg import unverified_fingerprint
from agent.wire.errors import WireError
from agent.wire.signed import signed_kid

from .fields import printable
from .listener import MAX_BODY_BYTES, Document, error

CHALLENGE_TTL_S = 300
MAX_CHALLENGES = 10_000
MAX_CHALLENGES_PER_ADDRESS = 64
MAX_REQUEST_DEPTH = 2  # every request body is a flat object
LEGACY_AGENT = "0.1.0"  # the agent whose requests carry the license key
MAX_UNVERIFIED_KEYS = 4  # keys that may speak for an activation the bundle names none for

Answer = tuple[int, Document]
OnRecord = Callable[[dict[str, Any], bool], None]


class FieldServer:
    """The laptop's state over one (checked) bundle: what it offers, its challenges,
    what it served and what the devices confirmed."""

    def __init__(self, bundle: dict[str, Any], on_record: OnRecord | None = None) -> None:
        self.bundle = bundle
        self.by_fingerprint = {d["fingerprint"]: d for d in bundle["devices"]}
        self.revocations = {r["fingerprint"]: r for r in bundle["revocations"]}
        self.entries = {**self.by_fingerprint, **self.revocations}
        self.by_device_key = {
            key_id(base64.b64decode(e["device_key"])): e
            for e in self.entries.values()
            if e.get("device_key")
        }
        self.challenges: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.outstanding: dict[str, int] = {}
        self.served: dict[str, dict[str, Any]] = {}
        self.confirmed: dict[str, dict[str, Any]] = {}
        self.unidentified: set[str] = set()  # revocations handed to unattributed requests
        # per (activation id, signing key id): the latest report, the receipt. One key
        # per activation when the bundle names it; else at most MAX_UNVERIFIED_KEYS that
        # register themselves (HQ checks their proofs at import), so that a stranger's
        # self-signed message never displaces the device's own
        self.usage_reports: dict[tuple[str, str], dict[str, Any]] = {}
        self.receipts: dict[tuple[str, str], dict[str, Any]] = {}
        self.ignored = 0  # device messages on MQTT that could not be read or verified
        self.lock = threading.Lock()
        self.on_record = on_record

    # -- challenges --------------------------------------------------------------------
    def new_challenge(self, address: str) -> str | None:
        """A fresh challenge; None when this address holds too many unused ones (or the
        laptop does)."""
        now = time.monotonic()
        with self.lock:
            while self.challenges:
                value, (at, _) = next(iter(self.challenges.items()))
                if now - at <= CHALLENGE_TTL_S:
                    break
                self._forget(value)
            held = self.outstanding.get(address, 0)
            if held >= MAX_CHALLENGES_PER_ADDRESS or len(self.challenges) >= MAX_CHALLENGES:
                return None
            value = base64.urlsafe_b64encode(os.urandom(18)).decode("ascii")
            self.challenges[value] = (now, address)
            self.outstanding[address] = held + 1
        return value

    def _forget(self, value: str) -> tuple[float, str] | None:
        found = self.challenges.pop(value, None)
        if found is not None:
            left = self.outstanding[found[1]] - 1
            if left:
                self.outstanding[found[1]] = left
            else:
                del self.outstanding[found[1]]
        return found

    def spend_challenge(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        with self.lock:
            found = self._forget(value)
        return found is not None and time.monotonic() - found[0] <= CHALLENGE_TTL_S

    # -- who is asking -------------------------------------------------------------------
    def entry_for(
        self, data: bytes, msg_type: str, *, challenge: bool = True
    ) -> tuple[dict[str, Any], device_msg.DeviceMessage] | None:
        """The bundle entry a device's signed message is about, the message verified:
        against the device key the bundle carries, or (a device registering its key, for
        an entry that carries none) against the key the message carries. None if it
        verifies against neither, or (``challenge``) its challenge is not one of the
        laptop's, unused. A key a message carries never stands in for the bundle's: only
        HQ can check its proof, and a stranger could sign with any key."""
        try:
            kid = signed_kid(data, device_msg.MAX_MESSAGE_BYTES)
            entry = self.by_device_key.get(kid)
            if entry is not None:
                key = base64.b64decode(entry["device_key"])
                msg = device_msg.open_message(data, lambda k: key if k == kid else None, msg_type)
            else:
                msg = device_msg.open_self_signed(data, msg_type)
                entry = self.entries.get(msg.fingerprint)
                if entry is not None and entry.get("device_key"):
                    return None
        except (WireError, ValueError):
            return None
        if entry is None or entry["fingerprint"] != msg.fingerprint:
            return None
        if msg.activation_id not in ("", entry["activation_id"]):
            return None
        if challenge and not self.spend_challenge(msg.fields.get("challenge")):
            return None
        return entry, msg

    # -- what the report records ---------------------------------------------------------
    def offered(self) -> set[str]:
        """The activation ids the bundle has something for (a file or a revocation)."""
        return {e["activation_id"] for e in self.entries.values()}

    def record_served(self, entry: dict[str, Any], via: str, agent_version: str) -> None:
        """A file or revocation handed to the device it is for (it identified itself)."""
        record = {
            **_ids(entry),
            "what": "machine_file" if "machine_file" in entry else "revocation",
            "serial": entry.get("serial"),
            "at": int(time.time()),
            "via": via,
            "agent_version": printable(agent_version, 100),
        }
        with self.lock:
            if entry["activation_id"] in self.served:
                return
            self.served[entry["activation_id"]] = record
        if self.on_record is not None:
            self.on_record(record, False)

    def record_status(
        self, entry: dict[str, Any], msg: device_msg.DeviceMessage, payload: bytes, via: str
    ) -> bool:
        """Keep the device's verified status if it confirms what the bundle had for it:
        the file's serial (or a newer one) installed, or the revocation recorded."""
        if "machine_file" in entry:
            serial = msg.fields.get("serial")
            confirms = type(serial) is int and serial >= entry["serial"]
        else:
            confirms = bool(msg.fields.get("revoked")) or msg.fields.get("verdict") == "revoked"
        if not confirms:
            return False
        record = {
            **_ids(entry),
            "what": "machine_file" if "machine_file" in entry else "revocation",
            "serial": msg.fields.get("serial"),
            "at": int(time.time()),
            "via": via,
            "status": base64.b64encode(payload).decode("ascii"),
        }
        with self.lock:
            if entry["activation_id"] in self.confirmed:
                return True
            self.confirmed[entry["activation_id"]] = record
        if self.on_record is not None:
            self.on_record(record, True)
        return True

    def record_report(
        self, entry: dict[str, Any], msg: device_msg.DeviceMessage, payload: bytes, via: str
    ) -> Answer:
        """Keep a verified usage report if it is newer than the one the laptop holds for
        its activation (the counters being cumulative, the latest says everything)."""
        seq = msg.fields.get("seq")
        assert type(seq) is int  # device_msg checked it
        record = {
            **_ids(entry),
            "what": "usage_report",
            "seq": seq,
            "at": int(time.time()),
            "via": via,
            "report": base64.b64encode(payload).decode("ascii"),
        }
        with self.lock:
            slot = (entry["activation_id"], msg.kid)
            kept = self.usage_reports.get(slot)
            if kept is None and _too_many(self.usage_reports, slot):
                return _too_many_keys()
            if kept is not None and seq <= kept["seq"]:
                return error(
                    409,
                    "report_refused",
                    f"report {seq} is not newer than the one the laptop holds for this "
                    f"activation ({kept['seq']}): a replay or an older report",
                )
            self.usage_reports[slot] = record
        if self.on_record is not None:
            self.on_record(record, True)
        return 200, {"accepted": True, "seq": seq, "carried": True}

    def record_receipt(
        self, entry: dict[str, Any], msg: device_msg.DeviceMessage, payload: bytes, via: str
    ) -> Answer:
        """Keep a verified return receipt for HQ (the same one again is fine: the device
        may not have heard the first answer); another receipt of the same activation is
        refused."""
        record = {
            **_ids(entry),
            "what": "receipt",
            "serial": msg.fields.get("serial"),
            "at": int(time.time()),
            "via": via,
            "receipt": base64.b64encode(payload).decode("ascii"),
        }
        with self.lock:
            slot = (entry["activation_id"], msg.kid)
            kept = self.receipts.get(slot)
            if kept is None and _too_many(self.receipts, slot):
                return _too_many_keys()
            if kept is not None:
                if kept["receipt"] == record["receipt"]:
                    return 200, {"activation_id": entry["activation_id"], "carried": True}
                return error(
                    409, "receipt_refused", "the laptop holds another receipt of this activation"
                )
            self.receipts[slot] = record
        if self.on_record is not None:
            self.on_record(record, True)
        return 200, {"activation_id": entry["activation_id"], "carried": True}

    def carried(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(usage reports, return receipts) for the report, in the order they came."""
        with self.lock:
            reports = sorted(self.usage_reports.values(), key=lambda r: r["at"])
            return reports, sorted(self.receipts.values(), key=lambda r: r["at"])

    def count_ignored(self) -> None:
        with self.lock:
            self.ignored += 1

    def records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """(confirmed pickups, served but unconfirmed, the activation ids whose revocation
        went only to requests that could not be attributed), for the report."""
        with self.lock:
            confirmed = sorted(self.confirmed.values(), key=lambda r: r["at"])
            unconfirmed = [r for a, r in self.served.items() if a not in self.confirmed]
            unidentified = self.unidentified - set(self.confirmed) - set(self.served)
            return confirmed, sorted(unconfirmed, key=lambda r: r["at"]), sorted(unidentified)

    # -- the routes ----------------------------------------------------------------------
    def answer(self, method: str, path: str, body: bytes, address: str) -> Answer:
        """The listener's handler: one complete request, its answer."""
        if path == "/healthz":
            return (200, {"ok": True, "field": True}) if method == "GET" else _no_method()
        routes: dict[str, Callable[[dict[str, object], str], Answer]] = {
            "/v1/challenge": self._challenge,
            "/v1/machine-file": self._machine_file,
            "/v1/validate": self._validate,
            "/v1/status": self._status,
            "/v1/report": self._report,
            "/v1/receipt": self._receipt,
            "/v1/activate": _not_in_the_field,
            "/v1/deactivate": _not_in_the_field,
        }
        route = routes.get(path)
        if route is None:
            return error(404, "not_found", "no such endpoint")
        if method != "POST":
            return _no_method()
        try:
            doc = loads_object(body, max_bytes=MAX_BODY_BYTES, max_depth=MAX_REQUEST_DEPTH)
        except JsonError as e:
            return error(400, "invalid_request", f"the body is not a JSON object ({e})")
        return route(doc, address)

    def _challenge(self, body: dict[str, object], address: str) -> Answer:
        value = self.new_challenge(address)
        if value is None:
            return error(429, "busy", "too many unused challenges: use them or wait 5 minutes")
        return 200, {"challenge": value, "expires_in": CHALLENGE_TTL_S}

    def _machine_file(self, body: dict[str, object], address: str) -> Answer:
        entry: dict[str, Any] | None
        if "request" in body:  # signed by the device's key (agents after 0.1.0)
            found = self.entry_for(_request_bytes(body), "renew")
            if found is None:
                return _unauthenticated()
            entry, agent = found[0], str(found[1]["agent_version"])
        else:
            entry = self.entries.get(str(body.get("fingerprint", "")))
            if entry is None:
                return error(
                    404, "activation_not_found", "no renewal for this device in the bundle"
                )
            if not _license_matches(body, entry):
                return error(403, "license_not_found", "the license key does not match this device")
            if entry.get("device_key"):
                return error(
                    403,
                    "signed_request_required",
                    "this device has a device key: its requests must be signed by it, "
                    "without the license key",
                )
            agent = LEGACY_AGENT
        if "machine_file" not in entry:
            reason = entry["reason"]
            return error(403, f"license_{reason}", f"HQ {reason} this device's license")
        self.record_served(entry, "http", agent)
        return 200, {k: entry[k] for k in ("activation_id", "serial", "expires_at", "machine_file")}

    def _validate(self, body: dict[str, object], address: str) -> Answer:
        """The laptop cannot sign HQ's time; it can hand over a revocation HQ signed."""
        entry: dict[str, Any] | None = None
        agent = ""
        if "request" in body:
            data = _request_bytes(body)
            found = self.entry_for(data, "validate")
            if found is not None:
                entry, agent = found[0], str(found[1]["agent_version"])
            else:
                # A revocation is HQ-signed and public (the device verifies it): for a
                # request the laptop cannot check, the fingerprint it claims is enough to
                # look one up, and nobody is recorded.
                entry = self.revocations.get(unverified_fingerprint(data))
        else:
            entry = self.revocations.get(str(body.get("fingerprint", "")))
            if entry is not None and _license_matches(body, entry):
                agent = LEGACY_AGENT
        if entry is None or "revocation" not in entry:
            return error(
                503, "hq_unreachable", "a technician's laptop cannot validate: offline verdict"
            )
        if agent:
            self.record_served(entry, "http", agent)
        else:
            with self.lock:
                self.unidentified.add(entry["activation_id"])
        return 200, {"revocation": entry["revocation"], "status": entry["reason"]}

    def _status(self, body: dict[str, object], address: str) -> Answer:
        data = _request_bytes(body)
        found = self.entry_for(data, "status")
        if found is None:
            return _unauthenticated()
        entry, msg = found
        confirmed = self.record_status(entry, msg, data, "http")
        return 200, {"recorded": True, "confirmed": confirmed}

    def _report(self, body: dict[str, object], address: str) -> Answer:
        data = _request_bytes(body)
        found = self.entry_for(data, "report", challenge=False)
        if found is None:
            return _unauthenticated()
        return self.record_report(found[0], found[1], data, "http")

    def _receipt(self, body: dict[str, object], address: str) -> Answer:
        data = _request_bytes(body)
        found = self.entry_for(data, "receipt", challenge=False)
        if found is None:
            return _unauthenticated()
        return self.record_receipt(found[0], found[1], data, "http")


def _too_many(kept: dict[tuple[str, str], Any], slot: tuple[str, str]) -> bool:
    return sum(1 for act, _ in kept if act == slot[0]) >= MAX_UNVERIFIED_KEYS


def _too_many_keys() -> Answer:
    return error(
        429,
        "busy",
        "the laptop holds messages of this activation signed by too many keys: HQ decides",
    )


def _ids(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("activation_id", "license_id", "fingerprint")}


def _request_bytes(body: dict[str, object]) -> bytes:
    value = body.get("request")
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def _license_matches(body: dict[str, object], entry: dict[str, Any]) -> bool:
    try:
        lic_id = lk.license_id(lk.normalize(str(body.get("license_key", ""))))
    except ValueError:
        lic_id = ""
    return sodium.constant_time_equal(lic_id.encode(), entry["license_id"].encode())


def _unauthenticated() -> Answer:
    return error(
        401,
        "device_unauthenticated",
        "the request is not signed by a device this bundle has something for, or its "
        "challenge is unknown or used",
    )


def _not_in_the_field(body: dict[str, object], address: str) -> Answer:
    return error(
        403,
        "not_available_in_the_field",
        "a technician's laptop cannot activate or deactivate: ask HQ",
    )


def _no_method() -> Answer:
    return error(405, "method_not_allowed", "this endpoint takes another method")


MAX_LEGACY_STATUS_BYTES = 1024


def offer_over_mqtt(server: FieldServer, url: str, username: str, password: str) -> Any:
    """Publish every renewal and revocation of the bundle, retained, on each device's
    topics, and keep each device's signed status that confirms it (the new serial, or
    the revoked verdict). The JSON status of an agent of 0.1.0 (unsigned) makes a pickup
    "served, unconfirmed". The device's daemon verifies everything it receives; nothing
    a device publishes stops the laptop (bounded parsing, a guard per message)."""
    from agent.daemon import topics

    from ..mqtt.connection import connect

    prefix = topics.DEFAULT_PREFIX
    by_device = {topics.device_id(fp): e for fp, e in server.entries.items()}

    def on_status(dev: str, payload: bytes) -> None:
        entry = by_device.get(dev)
        if entry is None or entry["activation_id"] in server.confirmed:
            return
        if payload[:1] == b"{":  # an agent of 0.1.0
            try:
                doc = loads_object(payload, max_bytes=MAX_LEGACY_STATUS_BYTES, max_depth=2)
            except JsonError:
                server.count_ignored()
                return
            serial = doc.get("serial")
            if "machine_file" in entry:
                holds = type(serial) is int and serial >= entry["serial"]
            else:
                holds = doc.get("verdict") == "revoked"
            if holds:
                server.record_served(entry, "mqtt", LEGACY_AGENT)
            return
        found = server.entry_for(payload, "status", challenge=False)
        if found is None or found[0] is not entry:  # unreadable, or another device's
            server.count_ignored()
            return
        server.record_status(entry, found[1], payload, "mqtt")

    def on_message(client: object, userdata: object, message: Any) -> None:
        try:
            parsed = topics.parse(prefix, message.topic)
            if parsed is not None and parsed[1] == topics.STATUS:
                on_status(parsed[0], bytes(message.payload))
        except Exception:  # a guard per message: one device never stops the laptop
            server.count_ignored()

    client = connect(
        url,
        username,  # the client id is the user name (broker-config binds them)
        username,
        password,
        on_message=on_message,
        subscriptions=[f"{prefix}/dev/+/{topics.STATUS}"],
    )
    for dev, entry in by_device.items():
        if "machine_file" in entry:
            data = armor.unarmor(entry["machine_file"], armor.MACHINE_FILE)
            client.publish(topics.topic(prefix, dev, topics.MACHINE_FILE), data, qos=1, retain=True)
        else:
            data = armor.unarmor(entry["revocation"], armor.REVOCATION)
            client.publish(topics.topic(prefix, dev, topics.REVOCATION), data, qos=1, retain=True)
    return client
