"""A mainboard swap at HQ (issue 16, docs/runbooks/mainboard-swap.md): the old board's
return receipt(s) taken, then the new board activated on the same license, in one call
(``fieldpass-hq activate KEY --request FILE --receipt FILE``, and ``POST /v1/activate``
with ``receipts``, what a technician's laptop relays).

- First the checks, which change nothing: the license of the key is usable, and each
  receipt verifies against its device key and names an activation of that license (one
  of another license: ``ReceiptOtherLicense``). The caller has verified the request.
- Then each receipt is taken as ``Usage.accept_receipt`` takes it (its refusals, its
  audit, the TPM rule, the plan's return limit and the operator's override), except that
  the very receipt HQ holds already (the same bytes) is not taken twice and is no error:
  running the swap again after a lost answer is safe, even while HQ (this replica or
  another) is still answering the first run; and the receipt of a board whose
  seat the operator freed already (``deactivate ID --reason``) has nothing left to free
  and is no error either: its seat is free, the new board takes it.
- Then the activation, as ``Issuing.activate``: the same board again gets its seat again.
  A full license while a receipt's seat is not free yet (a board without a TPM binding)
  is ``SeatLimitReached`` saying when that seat frees and how the operator frees it now.

A refused activation leaves what a separate ``deactivate --receipt`` would have
recorded (the receipt taken: a fact), nothing else. Never reads the clock or logs.
"""

from dataclasses import dataclass

from agent.wire import armor

from ..errors import HQError, InvalidRequest, SeatLimitReached
from ..models import Actor, ReturnRecord
from ..units import format_time
from .device_requests import Verified
from .issuing import Contact, Issued
from .licenses import usable_license
from .usage import ReceiptHeld, SeatFreedAlready, Usage

MAX_RECEIPTS = 8  # receipts with one activation: a swap gives back a board or a few


class ReceiptOtherLicense(HQError):
    """A receipt names an activation of another license than the key being activated."""

    code = "receipt_other_license"
    http_status = 409


@dataclass(frozen=True)
class Taken:
    activation_id: str
    frees_at: int  # when its seat frees (or freed)
    freed: bool  # its seat is free (else at frees_at, or when an operator frees it)
    again: bool  # HQ held this very receipt already (a run before this one took it)

    @classmethod
    def of(cls, record: ReturnRecord, *, freed: bool, again: bool) -> "Taken":
        return cls(record.activation_id, record.frees_at, freed, again)

    def doc(self) -> dict[str, object]:
        """What the CLI's --json and the HTTP answer say of it (stable keys)."""
        return {
            "activation_id": self.activation_id,
            "freed": self.freed,
            "frees_at": self.frees_at,
            "taken_before": self.again,
        }


@dataclass(frozen=True)
class Swapped:
    issued: Issued
    receipts: tuple[Taken, ...]


def swap(
    usage: Usage,
    license_key: str,
    fingerprint: str,
    contact: Contact | None,
    receipts: list[bytes],
    now: int,
    via: str,
    actor: Actor,
    *,
    override: str | None = None,
) -> Swapped:
    """Take ``receipts`` (each the device's signed bytes), then activate ``fingerprint``
    (the new board, as its verified request describes it in ``contact``)."""
    if len(receipts) > MAX_RECEIPTS:
        raise InvalidRequest(f"at most {MAX_RECEIPTS} receipts with one activation")
    with usage.store.read() as tx:
        lic = usable_license(tx, license_key, now)
    checked: list[tuple[Verified, bytes]] = []
    for data in dict.fromkeys(receipts):  # the same receipt twice counts once
        verified = usage.device.verify(data, "receipt", live=False)
        if verified.activation.license_id != lic.id:
            raise ReceiptOtherLicense(
                f"the receipt of activation {verified.activation.id} is of another license "
                f"than the key's ({lic.id}): nothing was taken or activated"
            )
        checked.append((verified, data))
    taken = tuple(_take(usage, v, data, now, via, actor, override) for v, data in checked)
    try:
        issued = usage.device.issuing.activate(license_key, fingerprint, now, actor, contact)
    except SeatLimitReached:
        waiting = [t for t in taken if not t.freed]
        if not waiting:
            raise
        raise SeatLimitReached(_waiting(lic.id, waiting)) from None
    return Swapped(issued, taken)


def _take(
    usage: Usage,
    verified: Verified,
    data: bytes,
    now: int,
    via: str,
    actor: Actor,
    override: str | None,
) -> Taken:
    taken = _taken_before(usage, verified, data, now)
    if taken is not None:
        return taken
    try:
        returned = usage.accept_verified_receipt(verified, data, now, via, actor, override=override)
    except (ReceiptHeld, SeatFreedAlready):
        # another run of the same swap (a relay sent again while HQ answered the first,
        # on this replica or another) or the operator got there between the read and
        # the write: answered as a run after it is
        taken = _taken_before(usage, verified, data, now)
        if taken is None:  # pragma: no cover - the refusal says one of them is there
            raise
        return taken
    return Taken.of(returned.record, freed=returned.freed, again=False)


def _taken_before(usage: Usage, verified: Verified, data: bytes, now: int) -> Taken | None:
    """The receipt as HQ holds it already (``again``), the seat the operator freed by
    hand before it came, or None: the receipt is still to take."""
    with usage.store.read() as tx:
        held = tx.get_return(verified.activation.id)
        act = tx.get_activation(verified.activation.id)
    gone = act is None or act.deactivated_at is not None
    if held is not None and held.receipt == armor.armor(data, armor.RECEIPT):
        return Taken.of(held, freed=gone or held.frees_at <= now, again=True)
    if held is None and act is not None and act.deactivated_at is not None:
        return Taken(act.id, act.deactivated_at, freed=True, again=False)  # freed by hand
    return None


def _waiting(license_id: str, records: list[Taken]) -> str:
    """Short enough for a device's or laptop's one line (their clients keep 300 chars)."""
    first = records[0]
    more = f" (and {len(records) - 1} more)" if len(records) > 1 else ""
    return (
        f"license {license_id} has all its seats in use; the receipt of {first.activation_id}"
        f"{more} is taken, but without a TPM binding its seat frees on "
        f"{format_time(first.frees_at)}; the operator may free it now: `fieldpass-hq "
        f"deactivate {first.activation_id} --reason TEXT`, then run this again"
    )
