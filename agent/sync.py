"""Talking to HQ online: activation, renewal, validation, deactivation.

Each function takes the device and an ``online.Hq``, holds the writer lock while it
changes anything, and stores only what passed the same checks as ``fieldpass install``.
Validation records HQ's authoritative answers (revoked, suspended, deactivated) in the
authenticated state, so that the gate gives 32 from then on even offline, until HQ says
otherwise; and HQ's signed time re-anchors the clock's high-water mark.
"""

from .device import Device
from .online import Hq, Refused, Unreachable, new_nonce
from .wire.errors import WireError
from .wire.machine_file import Claims
from .wire.signed_time import verify_time


def _key(device: Device) -> str:
    key = device.stored_license_key()
    if key is None:
        raise Refused("not_activated", "this device is not activated: run fieldpass activate", 0)
    return key


def activate(device: Device, hq: Hq, license_key: str, now: int) -> tuple[Claims, str]:
    fingerprint = device.identity.fingerprint
    data, _ = hq.machine_file(
        "/v1/activate", {"license_key": license_key, "fingerprint": fingerprint}
    )
    with device.writer_lock():
        return device.install(data, license_key, now)


def refresh(device: Device, hq: Hq, now: int, ttl_s: int | None = None) -> tuple[Claims, str]:
    body: dict[str, object] = {
        "license_key": _key(device),
        "fingerprint": device.identity.fingerprint,
    }
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    data, _ = hq.machine_file("/v1/machine-file", body)
    with device.writer_lock():
        return device.install(data, None, now)


def deactivate(device: Device, hq: Hq) -> None:
    hq.post(
        "/v1/deactivate",
        {"license_key": _key(device), "fingerprint": device.identity.fingerprint},
    )
    with device.writer_lock():
        device.remove()


def validate(device: Device, hq: Hq) -> list[str]:
    """Ask HQ about this license; record what it said. Returns notes for the report.

    Raises ``Unreachable`` when HQ cannot be asked (the caller falls back offline).
    """
    key = device.stored_license_key()
    if key is None:
        return []
    nonce = new_nonce()
    fingerprint = device.identity.fingerprint
    try:
        doc = hq.post(
            "/v1/validate", {"license_key": key, "fingerprint": fingerprint, "nonce": nonce}
        )
    except Refused as e:
        # An unsigned refusal (unknown license, bad request) changes nothing stored:
        # anyone between the device and HQ could forge one.
        return [f"HQ refused validation: {e} ({e.code}): offline verdict"]
    token = doc.get("signed_time")
    if not isinstance(token, str):
        raise Unreachable("HQ's answer carries no signed status: answer ignored")
    import base64

    try:
        hq_time, status = verify_time(
            base64.b64decode(token, validate=True), device.keyring(), fingerprint, nonce
        )
    except (WireError, ValueError):
        raise Unreachable("HQ's signed status does not verify: answer ignored") from None
    with device.writer_lock():
        device.record_hq_status(status, hq_time)
    return [] if status == "active" else [f"HQ says this license is {status}"]
