"""What HQ reads from devices over MQTT (the bridge, ``push``): every payload bounded in
size and depth before any parser sees it, and one error type for whatever is wrong.

- Signed device messages (agents after 0.1.0, agent/wire/device_msg.py): at most
  ``MAX_SIGNED_BYTES``, verified by ``hq.device.verify`` against the key HQ holds for
  the activation (the CBOR decoder bounds the depth: 1 outside, 2 inside).
- The JSON of agents of 0.1.0 (agent/daemon/messages.py): at most
  ``messages.MAX_DEVICE_MESSAGE_BYTES``, nested at most ``LEGACY_MAX_DEPTH`` deep,
  measured by a scan of the bytes before ``json`` reads them (``json`` recurses once per
  level: a thousand ``[`` end in RecursionError).

Until agent/jsonin.py (another branch: the device's bounded JSON reader) lands,
``nesting`` here is HQ's own bound; afterwards ``messages`` bounds itself and this scan is
a second, harmless check. Never logs; an error's kind never holds payload bytes.
"""

from agent.daemon import messages
from agent.wire import device_msg
from agent.wire.device_msg import DeviceMessage
from agent.wire.errors import WireError
from agent.wire.signed import signed_kid

from ..errors import DeviceUnauthenticated, FingerprintMismatch, HQError, InvalidRequest
from ..models import Activation
from ..services import HQ
from ..services.device_requests import Verified, open_for
from ..services.outbox import Held

MAX_SIGNED_BYTES = device_msg.MAX_MESSAGE_BYTES
MAX_BYTES = max(MAX_SIGNED_BYTES, messages.MAX_DEVICE_MESSAGE_BYTES)
LEGACY_MAX_DEPTH = 2


class BadMessage(Exception):
    """A device message HQ cannot use; ``kind`` says why (a counter's name)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def is_legacy(payload: bytes) -> bool:
    """The JSON of agents up to 0.1.0 (a signed message is a CBOR map, never ``{``)."""
    return payload[:1] == b"{"


def nesting(data: bytes, stop_above: int) -> int:
    """How deep arrays and objects nest in ``data`` (strings skipped); the scan stops
    as soon as the depth passes ``stop_above``."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
            if depth > stop_above:
                break
        elif byte in (0x5D, 0x7D) and depth:
            depth -= 1
    return deepest


def _legacy(payload: bytes) -> None:
    if len(payload) > messages.MAX_DEVICE_MESSAGE_BYTES:
        raise BadMessage("oversized")
    if nesting(payload, LEGACY_MAX_DEPTH) > LEGACY_MAX_DEPTH:
        raise BadMessage("too_deep")


def legacy_renew(payload: bytes) -> tuple[int, bool, bool]:
    """(serial, due, holds a revocation) of an 0.1.0 renewal request."""
    _legacy(payload)
    try:
        serial, _, due, revoked = messages.parse_renew_request(payload)
    except (ValueError, RecursionError):  # MessageError is a ValueError
        raise BadMessage("malformed_request") from None
    return serial, due, revoked


def legacy_held(payload: bytes) -> Held:
    """What an 0.1.0 status says the device holds."""
    _legacy(payload)
    try:
        doc = messages.parse_status(payload)
    except (ValueError, RecursionError):
        raise BadMessage("malformed_status") from None
    serial = doc.get("serial")
    revoked = doc.get("revoked") is True or doc.get("verdict") == "revoked"
    return Held(serial if type(serial) is int else 0, "revoked" if revoked else "", None)


def signed(hq: HQ, payload: bytes, msg_type: str) -> Verified:
    """A device message verified against its activation's key (live or not, so that a
    deactivated device can still be heard and told)."""
    if len(payload) > MAX_SIGNED_BYTES:
        raise BadMessage("oversized")
    try:
        return hq.device.verify(payload, msg_type, live=False)
    except InvalidRequest:
        raise BadMessage(f"malformed_{'request' if msg_type == 'renew' else msg_type}") from None
    except HQError as e:
        raise BadMessage(e.code) from None


def held(m: DeviceMessage) -> Held:
    """What a verified signed status says the device holds."""
    return Held(int(str(m["serial"])), str(m["revoked"]), int(str(m["revoked_at"])))


def signer(payload: bytes) -> str:
    """The key id a signed device message names (read before anything is verified)."""
    try:
        return signed_kid(payload, MAX_SIGNED_BYTES)
    except WireError:
        raise BadMessage("malformed_status") from None


def signed_by(act: Activation, payload: bytes, msg_type: str) -> DeviceMessage:
    """A device message verified against an activation the caller holds already."""
    try:
        return open_for(act, payload, msg_type)
    except HQError as e:
        raise BadMessage(e.code) from None


def signed_by_kid(act: Activation, kid: str, payload: bytes, msg_type: str) -> DeviceMessage | None:
    """A device message verified against ``act``'s device key, whose key id ``kid`` the
    caller computed once (``push``, per device it sends to, not per message); None if
    the message names another key (the caller looks that one up). The checks are
    ``signed_by``'s: signature, the activation's fingerprint and id."""
    key = act.device_key
    named: list[str] = []

    def lookup(k: str) -> bytes | None:
        named.append(k)
        return key if k == kid else None

    if len(payload) > MAX_SIGNED_BYTES:
        raise BadMessage("oversized")
    try:
        m = device_msg.open_message(payload, lookup, msg_type)
    except WireError:
        if not named:
            raise BadMessage(f"malformed_{msg_type}") from None  # not a signed message
        if named[0] != kid:
            return None
        raise BadMessage(DeviceUnauthenticated.code) from None
    if m.fingerprint != act.fingerprint or m.activation_id not in ("", act.id):
        raise BadMessage(FingerprintMismatch.code)
    return m
