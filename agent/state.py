"""The device's persistent trust state, authenticated and stored twice (A/B).

What it holds: a boot counter that grows on every check; the high-water mark of trusted
time (never below the newest issued-at seen); the newest machine file accepted
(activation id, serial, issued-at) for anti-downgrade; a revocation recorded from an
authoritative HQ answer; the last verdict (to run on-verdict hooks on a change); and,
with a TPM, the NV counter value the state is bound to.

On disk each slot (``state.a``, ``state.b``) is canonical CBOR
``{"v": 1, "body": CBOR(record), "mac": HMAC-SHA256(state_key, CONTEXT || body)}``
where ``state_key`` is derived from the raw hardware id (identity.py): a state edited
by hand, or copied from another device, does not authenticate. The MAC is checked over
the stored body bytes before the body is decoded. Each write goes to the slot the
newest state is not in, with a generation number one higher, through
``fsio.atomic_write``; a reader takes the valid slot with the highest generation.
"""

import os

from . import fsio
from .wire import cbor, sodium
from .wire.errors import FormatError

FORMAT_VERSION = 1
SLOTS = ("state.a", "state.b")
MAC_CONTEXT = b"fieldpass/state/v1\0"
MAX_STATE_BYTES = 4096


class StateError(Exception):
    """The stored state cannot be trusted. ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class State:
    """One authenticated state record. Immutable by convention: use ``replace``."""

    FIELDS = (
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
    )
    __slots__ = FIELDS

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
        last_verdict: str = "",
        tpm: int | None = None,
    ) -> None:
        self.gen = gen
        self.boot = boot
        self.hwm = hwm
        self.activation_id = activation_id
        self.serial = serial
        self.issued_at = issued_at
        self.revoked = revoked
        self.revoked_at = revoked_at
        self.last_verdict = last_verdict
        self.tpm = tpm

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, d: object) -> "State":
        if not isinstance(d, dict) or set(d) != set(cls.FIELDS):
            raise FormatError("state record has missing or unknown fields")
        for name in ("gen", "boot", "hwm", "serial", "issued_at", "revoked_at"):
            if type(d[name]) is not int or d[name] < 0:
                raise FormatError(f"state field {name} is not a non-negative integer")
        for name in ("activation_id", "revoked", "last_verdict"):
            if type(d[name]) is not str:
                raise FormatError(f"state field {name} is not text")
        if d["tpm"] is not None and type(d["tpm"]) is not int:
            raise FormatError("state field tpm is not an integer")
        return cls(**d)

    def replace(self, **changes: object) -> "State":
        values = self.to_dict()
        values.update(changes)
        return State(**values)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"State({self.to_dict()!r})"

    __hash__ = None  # type: ignore[assignment]


def seal(state: State, key: bytes) -> bytes:
    body = cbor.dumps(state.to_dict())
    mac = sodium.hmac_sha256(key, MAC_CONTEXT + body)
    return cbor.dumps({"v": FORMAT_VERSION, "body": body, "mac": mac})


def unseal(data: bytes, key: bytes) -> State:
    """Authenticate then decode one slot; StateError says why it cannot be used."""
    try:
        outer = cbor.loads(data, max_size=MAX_STATE_BYTES, max_depth=1)
    except FormatError as e:
        raise StateError("state_corrupt", f"state file is corrupt ({e})") from None
    if not isinstance(outer, dict) or "v" not in outer:
        raise StateError("state_corrupt", "state file is corrupt (not a state record)")
    version = outer["v"]
    if type(version) is int and version > FORMAT_VERSION:
        raise StateError(
            "state_future",
            f"state was written by a newer Fieldpass (format {version}); "
            "install that agent again or re-activate",
        )
    if version != FORMAT_VERSION or set(outer) != {"v", "body", "mac"}:
        raise StateError("state_corrupt", "state file is corrupt (unknown layout)")
    body, mac = outer["body"], outer["mac"]
    if type(body) is not bytes or type(mac) is not bytes:
        raise StateError("state_corrupt", "state file is corrupt (bad field types)")
    if not sodium.constant_time_equal(sodium.hmac_sha256(key, MAC_CONTEXT + body), mac):
        raise StateError(
            "state_foreign", "state does not authenticate: it was edited or is from another device"
        )
    try:
        return State.from_dict(cbor.loads(body, max_size=MAX_STATE_BYTES, max_depth=1))
    except FormatError as e:
        raise StateError("state_corrupt", f"state record is invalid ({e})") from None


_SEVERITY = {"state_corrupt": 1, "state_foreign": 2, "state_future": 3}


def load(state_dir: str, key: bytes) -> State | None:
    """The newest valid state; None when no slot exists at all (a fresh device).

    One bad slot beside a good one is the normal trace of an interrupted write or a
    failing sector, and the good one is used. Slots that exist but none valid raise the
    most telling StateError: never a silent reset.
    """
    best: State | None = None
    worst: StateError | None = None
    for name in SLOTS:
        try:
            data = fsio.read_bytes(os.path.join(state_dir, name), MAX_STATE_BYTES)
        except fsio.StorageError as e:
            error = StateError("state_corrupt", f"state slot {name} unreadable ({e.strerror})")
            worst = error if worst is None else worst
            continue
        if data is None:
            continue
        try:
            state = unseal(data, key)
        except StateError as e:
            if worst is None or _SEVERITY[e.reason] > _SEVERITY[worst.reason]:
                worst = e
            continue
        if best is None or state.gen > best.gen:
            best = state
    if best is None and worst is not None:
        raise worst
    return best


def save(state_dir: str, key: bytes, state: State) -> State:
    """Write ``state`` with the next generation into the other slot; return it."""
    new = state.replace(gen=state.gen + 1)
    fsio.atomic_write(os.path.join(state_dir, SLOTS[new.gen % 2]), seal(new, key), 0o600)
    return new


def discard(state_dir: str) -> None:
    """Remove both slots (before a state is rebuilt from a newer machine file), so that
    no refused slot with a higher generation can shadow the rebuilt one."""
    for name in SLOTS:
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
    fsio.fsync_dir(state_dir)
