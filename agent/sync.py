"""Talking to HQ online: activation, renewal, validation, deactivation.

Each function takes the device and an ``online.Hq``, holds the writer lock while it
changes anything, and stores only what passed the same checks as ``fieldpass install``.
Validation records HQ's authoritative answers (revoked, suspended, deactivated) in the
authenticated state, so that the gate gives 32 from then on even offline, until HQ says
otherwise; and HQ's signed time re-anchors the clock's high-water mark.
"""

from collections.abc import Callable
from typing import TypeVar

from .device import Device
from .online import Hq, OnlineError, Refused, Unreachable, new_nonce
from .wire.errors import WireError
from .wire.machine_file import Claims
from .wire.signed_time import verify_time

T = TypeVar("T")


def first_answer(servers: list[Hq], ask: Callable[[Hq], T]) -> T:
    """Ask each server in turn; the first that gives a usable answer wins. If none does,
    the last refusal (HQ's word) is raised in preference to "unreachable"."""
    refused: Refused | None = None
    unreachable: OnlineError | None = None
    for hq in servers:
        try:
            return ask(hq)
        except Refused as e:
            refused = e
        except Unreachable as e:
            unreachable = e
    error = refused or unreachable
    assert error is not None, "no servers to ask"
    raise error


def _key(device: Device) -> str:
    key = device.stored_license_key()
    if key is None:
        raise Refused("not_activated", "this device is not activated: run fieldpass activate", 0)
    return key


def activate(device: Device, servers: list[Hq], license_key: str, now: int) -> tuple[Claims, str]:
    body: dict[str, object] = {
        "license_key": license_key,
        "fingerprint": device.identity.fingerprint,
    }
    data, _ = first_answer(servers, lambda hq: hq.machine_file("/v1/activate", body))
    with device.writer_lock():
        return device.install(data, license_key, now)


def refresh(
    device: Device, servers: list[Hq], now: int, ttl_s: int | None = None
) -> tuple[Claims, str]:
    body: dict[str, object] = {
        "license_key": _key(device),
        "fingerprint": device.identity.fingerprint,
    }
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    data, _ = first_answer(servers, lambda hq: hq.machine_file("/v1/machine-file", body))
    with device.writer_lock():
        return device.install(data, None, now)


def deactivate(device: Device, servers: list[Hq]) -> None:
    body: dict[str, object] = {
        "license_key": _key(device),
        "fingerprint": device.identity.fingerprint,
    }
    first_answer(servers, lambda hq: hq.post("/v1/deactivate", body))
    with device.writer_lock():
        device.remove()


def validate(device: Device, servers: list[Hq]) -> list[str]:
    """Ask HQ about this license; record what it said. Returns notes for the report.

    Raises ``Unreachable`` when HQ cannot be asked (the caller falls back offline).
    """
    key = device.stored_license_key()
    if key is None:
        return []
    nonce = new_nonce()
    fingerprint = device.identity.fingerprint
    body: dict[str, object] = {"license_key": key, "fingerprint": fingerprint, "nonce": nonce}
    try:
        doc = first_answer(servers, lambda hq: hq.post("/v1/validate", body))
    except Refused as e:
        # An unsigned refusal (unknown license, bad request) changes nothing stored:
        # anyone between the device and HQ could forge one.
        return [f"HQ refused validation: {e} ({e.code}): offline verdict"]
    carried = doc.get("revocation")
    if isinstance(carried, str):  # from a technician's laptop: signed by HQ in advance
        try:
            with device.writer_lock():
                result = device.apply_revocation(carried.encode("ascii", "replace"))
        except WireError:
            raise Unreachable("the revocation offered does not verify: ignored") from None
        return [f"HQ's signed revocation for this device was {result}"]
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
