"""What the device sends HQ (JSON, small, nothing secret) and how HQ reads it back.

renew-request: ``{"v": 1, "serial": N, "expires_at": T, "due": bool, "revoked": bool}``
— the current machine file's serial and expiry (0 when there is none), whether it is in
its renewal window, and whether the device holds a revocation (so that HQ, once the
license is reinstated, answers with a fresh file that lifts it). ``revoked`` may be
absent (false). status: ``{"v": 1, "verdict", "days_left", "serial", "expires_at",
"agent_version", "bad_messages", "at"}``. No license key, fingerprint or raw id.
"""

import json

from .. import jsonin

FORMAT_VERSION = 1
MAX_DEVICE_MESSAGE_BYTES = 1024


class MessageError(ValueError):
    pass


def renew_request(serial: int, expires_at: int, due: bool, revoked: bool = False) -> bytes:
    doc = {"v": FORMAT_VERSION, "serial": serial, "expires_at": expires_at, "due": due}
    if revoked:
        doc["revoked"] = True
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def status(doc: dict[str, object]) -> bytes:
    return json.dumps({"v": FORMAT_VERSION, **doc}, separators=(",", ":")).encode("ascii")


def _load(data: bytes) -> dict[str, object]:
    if len(data) > MAX_DEVICE_MESSAGE_BYTES:
        raise MessageError("message too large")
    try:
        doc = jsonin.loads_object(data, max_bytes=MAX_DEVICE_MESSAGE_BYTES, max_depth=2)
    except jsonin.JsonError as e:
        raise MessageError(str(e)) from None
    version = doc.get("v")
    if type(version) is not int or version != FORMAT_VERSION:
        raise MessageError("not a version-1 object")
    return doc


def parse_renew_request(data: bytes) -> tuple[int, int, bool, bool]:
    """(serial, expires_at, due, revoked) or MessageError."""
    doc = _load(data)
    serial, expires_at, due = doc.get("serial"), doc.get("expires_at"), doc.get("due")
    revoked = doc.get("revoked", False)
    if type(serial) is not int or type(expires_at) is not int or type(due) is not bool:
        raise MessageError("renew request fields have the wrong types")
    if type(revoked) is not bool:
        raise MessageError("renew request fields have the wrong types")
    if serial < 0 or expires_at < 0:
        raise MessageError("renew request fields are negative")
    return serial, expires_at, due, revoked


def parse_status(data: bytes) -> dict[str, object]:
    doc = _load(data)
    if not isinstance(doc.get("verdict"), str) or type(doc.get("serial")) not in (int, type(None)):
        raise MessageError("status fields have the wrong types")
    return doc
