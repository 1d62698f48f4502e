"""The device's persistent trust state, authenticated and stored twice (A/B).

What it holds: a boot counter that grows on every check; the high-water mark of trusted
time (it rises with every accepted clock and machine file, and only an HQ time bound to
a fresh device nonce lowers it); the newest machine file accepted (activation id,
serial, issued-at) for anti-downgrade; a revocation recorded from an authoritative HQ
answer and the signed time of the last lift (older revocations are ignored); the last
verdict (to run on-verdict hooks on a change); with a TPM, the NV counter values the
state is bound to; the identity source that gave the fingerprint; usage counters; the
activations this device gave back (``returned_ids``, the last ``MAX_RETURNED``, oldest
first: their files never install or run again, docs/device.md "Returned activations").

On disk each slot (``state.a``, ``state.b``) is canonical CBOR
``{"v": 2, "body": CBOR(record), "mac": HMAC-SHA256(state_key, CONTEXT || body)}``.
``state_key`` (derived in device.py) rests on secrets that neither the image nor a
hardware id reveals: the device key's seed, and with ``[tpm]`` a secret held in the TPM.
The MAC is checked over the stored body bytes before they are
decoded. Each write goes to the slot the newest state is not in, with a generation one
higher, through ``fsio.atomic_write``; a reader takes the valid slot with the highest
generation. A write that changes what a deleted slot must not bring back (``LASTING``:
the file accepted, a revocation, a return) goes to both slots, one after the other.

Version 1 slots (agents up to 0.1.0: MAC keyed by the hardware id alone) are read only
while no version-2 slot exists, and only to migrate: the first save writes version 2
and removes them, so a v1 slot can never shadow or replace a v2 state.
"""

import errno
import os

from . import fsio
from .wire import cbor, fields, sodium
from .wire.errors import FormatError

FORMAT_VERSION = 2
LEGACY_VERSION = 1
SLOTS = ("state.a", "state.b")
MAC_CONTEXT = b"fieldpass/state/v2\0"
LEGACY_MAC_CONTEXT = b"fieldpass/state/v1\0"
# A slot's size bound, read and written. The fullest state the rules allow (every text
# at its longest, MAX_USAGE_COUNTERS counters of the longest names a plan may declare,
# the fullest record of returned activations) seals to about 7 KiB. Agents before read
# at most 4096 bytes: a state that fits that bound reads the same in both.
MAX_STATE_BYTES = 16384
MAX_USAGE_COUNTERS = 64
# The record of returned activations: at most this many ids and characters in all (16
# ids of HQ's form, ``act_`` and 20 hex digits, take 384), so that it always fits in
# MAX_STATE_BYTES beside the rest; the oldest id is dropped first.
MAX_RETURNED = 16
MAX_RETURNED_CHARS = 1024


class StateError(Exception):
    """The stored state cannot be trusted. ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_UINTS = ("gen", "boot", "serial", "report_seq")
_TIMES = ("hwm", "issued_at", "revoked_at", "lifted_at", "returned_at", "usage_at", "usage_stop")
_TEXTS = ("activation_id", "revoked", "last_verdict", "id_source")
_OPTIONAL_UINTS = ("tpm", "unrecorded_mark")
# Written only when not empty: a state without it (every state of an agent before it,
# and one with no return) reads as an empty record, and such a state is byte for byte
# what the agent before wrote, so an image rolled back to it still reads it.
_ADDED = ("returned_ids",)
LEGACY_FIELDS = frozenset(
    {
        "gen",
        "boot",
        "hwm",
        "activation_id",
        "serial",
        "issued_at",
        "revoked",
        "revoked_at",
        "last_verdict",
        "tpm",
    }
)


class State:
    """One authenticated state record. Immutable by convention: use ``replace``.

    ``legacy`` (not stored) marks a record read from a version-1 slot.
    """

    FIELDS = (*_UINTS, *_TIMES, *_TEXTS, *_OPTIONAL_UINTS, "usage", *_ADDED)
    REQUIRED = frozenset(FIELDS) - frozenset(_ADDED)
    __slots__ = (*FIELDS, "legacy")

    def __init__(
        self,
        *,
        gen: int = 0,
        boot: int = 0,
        hwm: int = 0,
        activation_id: str = "",
        serial: int = 0,
        issued_at: int = 0,
        revoked: str = "",
        revoked_at: int = 0,
        lifted_at: int = 0,
        last_verdict: str = "",
        tpm: int | None = None,
        unrecorded_mark: int | None = None,
        id_source: str = "",
        returned_at: int = 0,
        usage: dict[str, int] | None = None,
        usage_at: int = 0,
        usage_stop: int = 0,
        report_seq: int = 0,
        returned_ids: tuple[str, ...] | list[str] = (),
        legacy: bool = False,
    ) -> None:
        self.gen = gen
        self.boot = boot
        self.hwm = hwm
        self.activation_id = activation_id
        self.serial = serial
        self.issued_at = issued_at
        self.revoked = revoked
        self.revoked_at = revoked_at
        self.lifted_at = lifted_at
        self.last_verdict = last_verdict
        self.tpm = tpm
        self.unrecorded_mark = unrecorded_mark
        self.id_source = id_source
        self.returned_at = returned_at
        self.usage = dict(usage or {})
        self.usage_at = usage_at
        self.usage_stop = usage_stop
        self.report_seq = report_seq
        self.returned_ids = tuple(returned_ids)
        self.legacy = legacy

    def to_dict(self) -> dict[str, object]:
        doc = {name: getattr(self, name) for name in self.FIELDS}
        doc["usage"] = dict(self.usage)
        if self.returned_ids:
            doc["returned_ids"] = list(self.returned_ids)
        else:
            del doc["returned_ids"]
        return doc

    @classmethod
    def from_dict(cls, d: object) -> "State":
        if not isinstance(d, dict) or not cls.REQUIRED <= set(d) <= set(cls.FIELDS):
            raise FormatError("state record has missing or unknown fields")
        _check_common(d, _UINTS, _TIMES, _TEXTS)
        usage = d["usage"]
        if not isinstance(usage, dict) or len(usage) > MAX_USAGE_COUNTERS:
            raise FormatError("state field usage is not a map of counters")
        for key, value in usage.items():
            fields.name(key, "a usage counter")
            fields.uint(value, "a usage counter")
        if "returned_ids" in d:
            check_returned(d["returned_ids"])
        return cls(**d)

    @classmethod
    def from_legacy_dict(cls, d: object) -> "State":
        """A version-1 record (agents up to 0.1.0), for migration."""
        if not isinstance(d, dict) or set(d) != LEGACY_FIELDS:
            raise FormatError("state record has missing or unknown fields")
        _check_common(d, ("gen", "boot", "serial"), ("hwm", "issued_at", "revoked_at"), _TEXTS[:3])
        return cls(**d, legacy=True)

    def replace(self, **changes: object) -> "State":
        values = self.to_dict()
        values["legacy"] = self.legacy
        values.update(changes)
        return State(**values)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"State({self.to_dict()!r})"

    __hash__ = None  # type: ignore[assignment]


def _check_common(
    d: dict[str, object], uints: tuple[str, ...], times: tuple[str, ...], texts: tuple[str, ...]
) -> None:
    for name in uints:
        fields.uint(d[name], f"state field {name}")
    for name in times:
        fields.time_s(d[name], f"state field {name}")
    for name in texts:
        fields.text(d[name], f"state field {name}", empty=True)
    for name in _OPTIONAL_UINTS:
        if name in d and d[name] is not None:
            fields.uint(d[name], f"state field {name}")


def check_returned(ids: object) -> tuple[str, ...]:
    """A stored record of returned activations: not empty (an empty one is not written),
    distinct ids, within MAX_RETURNED and MAX_RETURNED_CHARS."""
    what = "state field returned_ids"
    if type(ids) is not list or not 0 < len(ids) <= MAX_RETURNED:
        raise FormatError(f"{what} is not a list of at most {MAX_RETURNED} activation ids")
    for value in ids:
        fields.text(value, what)
    if len(set(ids)) != len(ids) or sum(len(v) for v in ids) > MAX_RETURNED_CHARS:
        raise FormatError(f"{what} repeats an id or is longer than {MAX_RETURNED_CHARS}")
    return tuple(ids)


def remember_return(ids: tuple[str, ...], activation_id: str) -> tuple[str, ...]:
    """The record with ``activation_id`` given back: it moves to the newest end, and the
    oldest ids drop out beyond MAX_RETURNED ids or MAX_RETURNED_CHARS characters (one
    id, at most fields.MAX_TEXT, always fits). Nothing else ever removes an id."""
    kept = [v for v in ids if v != activation_id] + [activation_id]
    while len(kept) > MAX_RETURNED or sum(len(v) for v in kept) > MAX_RETURNED_CHARS:
        kept.pop(0)
    return tuple(kept)


def seal(state: State, key: bytes) -> bytes:
    body = cbor.dumps(state.to_dict())
    mac = sodium.hmac_sha256(key, MAC_CONTEXT + body)
    return cbor.dumps({"v": FORMAT_VERSION, "body": body, "mac": mac})


def seal_legacy(state: State, key: bytes) -> bytes:
    """A version-1 slot as agents up to 0.1.0 wrote it (tests of the migration)."""
    record = {name: getattr(state, name) for name in sorted(LEGACY_FIELDS)}
    body = cbor.dumps(record)
    mac = sodium.hmac_sha256(key, LEGACY_MAC_CONTEXT + body)
    return cbor.dumps({"v": LEGACY_VERSION, "body": body, "mac": mac})


class Slot:
    """What one slot file holds, before authentication."""

    __slots__ = ("body", "mac", "version")

    def __init__(self, version: int, body: bytes, mac: bytes) -> None:
        self.version = version
        self.body = body
        self.mac = mac


def parse_slot(data: bytes) -> Slot:
    try:
        outer = cbor.loads(data, max_size=MAX_STATE_BYTES, max_depth=1)
    except FormatError:
        raise StateError("state_corrupt", "the device state is damaged") from None
    if not isinstance(outer, dict) or "v" not in outer:
        raise StateError("state_corrupt", "the device state is damaged (not a state record)")
    version = outer["v"]
    if type(version) is int and version > FORMAT_VERSION:
        raise StateError(
            "state_future",
            f"the device state was written by a newer Fieldpass (format {version}); "
            "install that agent again",
        )
    known = fields.is_version(version, FORMAT_VERSION) or fields.is_version(version, LEGACY_VERSION)
    if not known or set(outer) != {"v", "body", "mac"}:
        raise StateError("state_corrupt", "the device state is damaged (unknown layout)")
    body, mac = outer["body"], outer["mac"]
    if type(body) is not bytes or type(mac) is not bytes:
        raise StateError("state_corrupt", "the device state is damaged (bad field types)")
    return Slot(int(str(version)), body, mac)


def unseal(data: bytes, key: bytes | None, legacy_key: bytes | None = None) -> State:
    """Authenticate then decode one slot; StateError says why it cannot be used.

    ``key`` None means the device cannot derive its state key (the device key or the
    TPM secret is gone): a version-2 slot then cannot be trusted.
    """
    slot = parse_slot(data)
    if slot.version == LEGACY_VERSION:
        if legacy_key is None:
            raise StateError(
                "state_foreign",
                "the device state is in the format of agents up to 0.1.0 on a device a later "
                "agent already ran on: it was planted",
            )
        key, context = legacy_key, LEGACY_MAC_CONTEXT
    else:
        context = MAC_CONTEXT
    if key is None:
        raise StateError(
            "state_key_missing",
            "the device state cannot be authenticated: the secret it is sealed with is gone",
        )
    if not sodium.constant_time_equal(sodium.hmac_sha256(key, context + slot.body), slot.mac):
        raise StateError(
            "state_foreign", "the device state does not authenticate: it was edited or copied"
        )
    try:
        record = cbor.loads(slot.body, max_size=MAX_STATE_BYTES, max_depth=2)
        if slot.version == LEGACY_VERSION:
            return State.from_legacy_dict(record)
        return State.from_dict(record)
    except FormatError:
        raise StateError("state_corrupt", "the device state record is invalid") from None


_SEVERITY = {
    "state_unreadable": 1,
    "state_corrupt": 1,
    "state_key_missing": 2,
    "state_foreign": 3,
    "state_future": 4,
}


class Slots:
    """What the state directory holds: the newest valid state (or the most telling
    error), and whether any slot file exists at all."""

    __slots__ = ("error", "present", "state")

    def __init__(self, state: State | None, error: StateError | None, present: bool) -> None:
        self.state = state
        self.error = error
        self.present = present


def read(state_dir: str, key: bytes | None, legacy_key: bytes | None) -> Slots:
    """Read both slots. One bad slot beside a good one is the normal trace of an
    interrupted write or a failing sector, and the good one is used. Version-1 slots
    count only while no version-2 slot exists (migration)."""
    found: list[tuple[str, bytes]] = []
    worst: StateError | None = None
    for name in SLOTS:
        try:
            data = fsio.read_bytes(os.path.join(state_dir, name), MAX_STATE_BYTES)
        except fsio.StorageError as e:
            worst = _worse(worst, StateError("state_unreadable", f"state slot {name}: {e}"))
            continue
        if data is not None:
            found.append((name, data))
    if not found and worst is None:
        return Slots(None, None, False)
    versions = {}
    for name, data in found:
        try:
            versions[name] = parse_slot(data).version
        except StateError:
            versions[name] = FORMAT_VERSION
    any_v2 = any(v == FORMAT_VERSION for v in versions.values())
    best: State | None = None
    for name, data in found:
        if any_v2 and versions[name] == LEGACY_VERSION:
            continue  # a v1 slot left beside a v2 one is never read
        try:
            state = unseal(data, key, legacy_key)
        except StateError as e:
            worst = _worse(worst, e)
            continue
        if best is None or state.gen > best.gen:
            best = state
    return Slots(best, None if best is not None else worst, True)


def _worse(a: StateError | None, b: StateError) -> StateError:
    if a is None or _SEVERITY.get(b.reason, 0) > _SEVERITY.get(a.reason, 0):
        return b
    return a


def load(state_dir: str, key: bytes | None, legacy_key: bytes | None = None) -> State | None:
    """The newest valid state; None when no slot exists at all; StateError when slots
    exist but none is valid (never a silent reset)."""
    slots = read(state_dir, key, legacy_key)
    if slots.error is not None:
        raise slots.error
    return slots.state


# What a deleted slot must not bring back: the file this device accepted (anti-
# downgrade), a revocation or its lift, the record of returned activations. A save that
# changes one of them writes both slots (``save``'s ``both``).
LASTING = (
    "activation_id",
    "serial",
    "issued_at",
    "revoked",
    "revoked_at",
    "lifted_at",
    "returned_at",
    "returned_ids",
)


def lasting_change(old: State | None, new: State) -> bool:
    """True when ``new`` differs from ``old`` (None: no state yet) in what a deleted slot
    must not bring back (``LASTING``)."""
    return old is None or any(getattr(old, f) != getattr(new, f) for f in LASTING)


def save(state_dir: str, key: bytes, state: State, *, both: bool = False) -> State:
    """Write ``state`` with the next generation into the other slot; return it. With
    ``both`` (and for a state migrated from version 1) it is written to the other slot,
    then again to the first, so that deleting either slot brings back no older state
    (a power cut between the two leaves the new state in the slot written first). A
    second write of ``both`` that fails (the disk filled up in between) leaves the state
    saved as a save without ``both`` saves it, and is no error."""
    new = state.replace(gen=state.gen + 1, legacy=False)
    _write(state_dir, new, key)
    if both or state.legacy:
        second = new.replace(gen=new.gen + 1)
        try:
            _write(state_dir, second, key)
        except OSError:
            if state.legacy:
                raise
            return new
        new = second
    return new


def _write(state_dir: str, state: State, key: bytes) -> None:
    """One slot, never one that ``load`` would refuse as too large: such a state is an
    error of the write (as a full disk is), and the slots keep what they held."""
    sealed = seal(state, key)
    if len(sealed) > MAX_STATE_BYTES:
        raise OSError(
            errno.EFBIG, f"the state would take {len(sealed)} bytes, over its {MAX_STATE_BYTES}"
        )
    fsio.atomic_write(os.path.join(state_dir, SLOTS[state.gen % 2]), sealed, 0o600)


def discard(state_dir: str) -> None:
    """Remove both slots (before a state is rebuilt from an answer bound to this device),
    so that no refused slot with a higher generation can shadow the rebuilt one."""
    for name in SLOTS:
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
    fsio.fsync_dir(state_dir)
