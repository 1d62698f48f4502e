"""Talking to HQ online: activation, renewal, validation, deactivation.

Each function takes the device and the servers to ask (``online.Hq``), holds the writer
lock while it changes anything, and stores only what passed the same checks as
``fieldpass install``. After activation the device never sends its license key again:
every request is a device message signed with the device's own key over the server's
challenge (asks.py). Validation records HQ's authoritative answers (revoked, suspended,
deactivated) in the authenticated state, so that the gate gives 32 from then on even
offline, until HQ says otherwise; HQ's signed time re-anchors the clock mark. Every
answer that can lower the mark or rebuild a lost state is bound to a nonce this process
chose for this request, and a return receipt is removed only on HQ's signed
acknowledgement of that very receipt (``deliver_receipt``), never on a status or a code.
"""

import base64
from collections.abc import Callable
from typing import TypeVar

from . import asks, online
from .config import ConfigError
from .device import Device, InstallRefused
from .identity import IdentityError
from .online import Hq, OnlineError, Refused, Unreachable, new_nonce
from .state import StateError
from .wire.errors import WireError
from .wire.license_key import license_id
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def activate(device: Device, servers: list[Hq], key: str, now: int) -> tuple[Claims, str]:
    """Take a seat with the license key (the one request that carries it) and install the
    file, bound to this request's nonce and the TPM counter. A return receipt still
    waiting to reach HQ goes first: HQ that does not know of the return would hand back
    the returned activation, which this device never installs again; knowing it, HQ
    frees the seat (at once with a TPM) or says when it frees. HQ's refusal to free the
    seat (a plan's return limit) ends the activation: the returned activation is all HQ
    would give back. Refused for another reason (an HQ restored from a backup older than
    the returned activation does not know it), the receipt stays and the activation goes
    on: what HQ answers it, a new activation or the returned one, says the rest."""
    try:
        deliver_receipt(device, servers)
    except Refused as e:
        if e.code in RECEIPT_KEEPS_SEAT:  # said as what it is: the user asked to activate
            raise Refused(
                e.code,
                f"the return receipt waiting on this device (kept; nothing was activated): {e}",
                e.status,
            ) from None
    except Unreachable:
        pass  # the activation, to the same servers, says what is wrong with the link
    nonce = new_nonce()
    with device.writer_lock():
        signed = asks.activate(device, license_id(key), now, nonce=nonce)
    body: dict[str, object] = {"license_key": key, "request": _b64(signed)}
    data, _ = first_answer(servers, lambda hq: hq.machine_file("/v1/activate", body))
    with device.writer_lock():
        return device.install(data, key, now, nonce=nonce)


def renewal(
    device: Device, hq: Hq, now: int, *, due: bool, ttl_s: int | None = None
) -> tuple[bytes, dict[str, object], str]:
    """Ask one server for a fresh machine file: (file, answer, nonce)."""
    nonce = new_nonce()
    challenge = hq.challenge()
    with device.writer_lock():
        signed = asks.renew(device, now, challenge=challenge, due=due, ttl_s=ttl_s, nonce=nonce)
    data, doc = hq.machine_file("/v1/machine-file", {"request": _b64(signed)})
    return data, doc, nonce


def refresh(
    device: Device, servers: list[Hq], now: int, ttl_s: int | None = None
) -> tuple[Claims, str, dict[str, object]]:
    """Renew now (no seat). Also the way back from lost state: the answer is bound to
    this request's nonce (and the TPM counter), which rebuilds the state. Once the file
    is installed, the device's signed status goes to the server that answered (a
    technician's laptop records it as the pickup), then its usage report; a failure
    there is a note in the answer's ``notes``."""
    answered: list[Hq] = []

    def ask(hq: Hq) -> tuple[bytes, dict[str, object], str]:
        found = renewal(device, hq, now, due=True, ttl_s=ttl_s)
        answered.append(hq)
        return found

    data, doc, nonce = first_answer(servers, ask)
    with device.writer_lock():
        claims, result = device.install(data, None, now, nonce=nonce)
    notes = [*send_status(device, answered, now), *send_report(device, servers, now)]
    doc = {**doc, "notes": notes}
    return claims, result, doc


def holding(device: Device, now: int) -> dict[str, object]:
    """What the device holds now (its verdict, its revocation), for its signed status."""
    outcome = device.evaluate(now, record=False)
    st = outcome.state
    return {
        "verdict": outcome.verdict.name,
        "reason": outcome.verdict.reason,
        "revoked_reason": st.revoked if st else "",
        "revoked_at": st.revoked_at if st else 0,
        "lifted_at": st.lifted_at if st else 0,
        "hwm": st.hwm if st else 0,
    }


def send_status(
    device: Device, servers: list[Hq], now: int, doc: dict[str, object] | None = None
) -> list[str]:
    """Post the device's signed status (``asks.status`` of ``doc``, by default what it
    holds now, over each server's challenge) to the first of ``servers`` that takes it
    (``POST /v1/status``): HQ records the contact, a technician's laptop the install it
    confirms. Best effort: returns notes, never raises."""

    def ask(hq: Hq) -> dict[str, object]:
        challenge = hq.challenge()
        with device.writer_lock():
            signed = asks.status(device, {**held, "challenge": challenge}, now)
        return hq.post("/v1/status", {"request": _b64(signed)})

    if not servers:
        return []
    try:
        held = doc if doc is not None else holding(device, now)
        first_answer(servers, ask)
    except OnlineError as e:
        return [f"the device's status was not delivered: {e}"]
    except (ConfigError, IdentityError, StateError, WireError, OSError, ValueError) as e:
        return [f"the device's status could not be signed: {e}"]
    return []


def deactivate(device: Device, servers: list[Hq], now: int) -> None:
    def ask(hq: Hq) -> dict[str, object]:
        challenge = hq.challenge()
        with device.writer_lock():
            signed = asks.deactivate(device, now, challenge=challenge)
        return hq.post("/v1/deactivate", {"request": _b64(signed)})

    first_answer(servers, ask)
    with device.writer_lock():
        device.remove()


def validate(device: Device, servers: list[Hq], now: int) -> list[str]:
    """Ask HQ about this activation; record what it said. Returns notes for the report.

    Raises ``Unreachable`` when HQ cannot be asked (the caller falls back offline).
    """
    standing = asks.Standing(device)
    if not standing.activation_id or standing.claims is None:
        return []
    if standing.lost:
        return ["the device state is lost: only `fieldpass refresh` can restore it"]
    nonce = new_nonce()
    answered: list[Hq] = []

    def ask(hq: Hq) -> dict[str, object]:
        challenge = hq.challenge()
        with device.writer_lock():
            signed = asks.validate(device, now, challenge=challenge, nonce=nonce)
        doc = hq.post("/v1/validate", {"request": _b64(signed)})
        answered.append(hq)
        return doc

    try:
        doc = first_answer(servers, ask)
    except Refused as e:
        # An unsigned refusal (unknown activation, bad request) changes nothing stored:
        # anyone between the device and HQ could forge one.
        return [f"HQ refused validation: {e} ({e.code}): offline verdict"]
    carried = doc.get("revocation")
    if isinstance(carried, str):  # from a technician's laptop: signed by HQ in advance
        try:
            with device.writer_lock():
                result = device.apply_revocation(carried.encode("ascii", "replace"))
        except (WireError, InstallRefused, StateError):
            raise Unreachable("the revocation offered does not verify: ignored") from None
        # the laptop that carried it records the device's signed word that it holds it
        return [
            f"HQ's signed revocation for this device was {result}",
            *send_status(device, answered, now),
        ]
    token = doc.get("signed_time")
    if not isinstance(token, str) or len(token) > 2048:
        raise Unreachable("HQ's answer carries no signed status: answer ignored")
    try:
        signed_status = verify_time(
            base64.b64decode(token, validate=True),
            device.keyring(),
            device.identity.fingerprint,
            nonce,
            license_id=standing.claims.license_id,
            activation_id=standing.activation_id,
        )
    except (WireError, ValueError):
        raise Unreachable("HQ's signed status does not verify: answer ignored") from None
    try:
        with device.writer_lock():
            device.record_hq_status(signed_status)
    except InstallRefused as e:
        return [f"HQ's answer not recorded: {e}"]
    status = signed_status.status
    return [] if status == "active" else [f"HQ says this license is {status}"]


# HQ's refusals of a receipt that say its seat is taken care of: HQ holds a return of the
# activation already (this very receipt, carried by hand or by a laptop, or a resend after
# a lost answer: 409 "conflict"), or the operator freed the seat by hand (404
# "activation_not_found", which only the HQ that knows the activation answers). Like its
# 200, each counts only with HQ's signed acknowledgement of this very receipt ("ack").
RECEIPT_SETTLED = frozenset({"conflict", "activation_not_found"})
# HQ holds the returned activation and will not free its seat: activating stops there.
RECEIPT_KEEPS_SEAT = frozenset({"return_limit_reached"})
MAX_ACK_CHARS = 2048  # base64 of a signed status (wire/signed_time.py: at most 1 KiB)


def send_report(device: Device, servers: list[Hq], now: int) -> list[str]:
    """Send a signed usage report (best effort: a failure is a note, the counters being
    cumulative the next report carries it all). Sends a pending return receipt too.
    Each goes to the first of ``servers`` that takes it, else to the first of the other
    configured servers that does: a returned device has nothing to validate, so the
    daemon cannot tell which server answers (HQ, or a technician's laptop after it)."""
    notes: list[str] = []
    try:
        with device.writer_lock():
            report = device.report(now)
    except (InstallRefused, StateError, OSError) as e:
        return [f"no usage report: {e}"]
    servers = [*servers, *_others(device, servers)]
    try:
        first_answer(servers, lambda hq: hq.post("/v1/report", {"request": _b64(report)}))
    except OnlineError as e:
        notes.append(f"usage report not delivered: {e}")
    try:
        deliver_receipt(device, servers)
    except OnlineError as e:
        notes.append(f"return receipt not delivered: {e}")
    return notes


def deliver_receipt(device: Device, servers: list[Hq]) -> None:
    """Send the pending return receipt, if any, to the first of ``servers`` that takes
    it; removed only once HQ's signed acknowledgement of this very receipt verifies
    (HQ holds it, or has nothing left to free with it: 200, 409 ``conflict``, 404
    ``activation_not_found``). An answer without one (a technician's laptop carrying
    it, an HQ older than this agent, a server that lies) keeps it and asks the next
    server. Raises HQ's other refusals (Refused) and OnlineError: the receipt stays, to
    go at the next contact."""
    receipt = device.pending_receipt()
    if receipt is None:
        return

    def ask(hq: Hq) -> None:
        try:
            doc = hq.post("/v1/receipt", {"request": _b64(receipt)})
        except Refused as e:
            if e.code not in RECEIPT_SETTLED:
                raise
            doc = e.answer
        _acknowledged(device, receipt, doc, hq)

    first_answer(servers, ask)
    device.receipt_delivered()  # HQ said, signed, that it holds it or has nothing to free


def _acknowledged(device: Device, receipt: bytes, doc: dict[str, object], hq: Hq) -> None:
    """Nothing if ``doc`` carries HQ's acknowledgement of ``receipt`` (its signed status
    bound to ``ack_nonce(receipt)``, verified as the MQTT daemon verifies it, for this
    device and the activation the receipt names); otherwise Unreachable, saying why."""
    token = doc.get("ack")
    if not isinstance(token, str):
        why = "carried, not acknowledged" if doc.get("carried") is True else "no acknowledgement"
        raise Unreachable(
            f"{hq.server} answered the return receipt without HQ's signed acknowledgement "
            f"({why}; a technician's laptop or an HQ older than this agent answers so): "
            "the receipt is kept"
        )
    try:
        if len(token) > MAX_ACK_CHARS:
            raise ValueError("an acknowledgement too long")
        device.verify_receipt_ack(receipt, base64.b64decode(token, validate=True))
    except (WireError, ValueError, ConfigError, IdentityError):
        raise Unreachable(
            f"{hq.server} answered the return receipt with an acknowledgement that does not "
            "verify (not HQ's, or of another receipt): the receipt is kept"
        ) from None


def _others(device: Device, servers: list[Hq]) -> list[Hq]:
    """The configured servers not in ``servers`` (none if the config names none)."""
    asked = {hq.server for hq in servers}
    try:
        configured = online.hqs(device.cfg)
    except OnlineError:
        return []
    return [hq for hq in configured if hq.server not in asked]
