"""Plain records that the store returns and the service works on. No I/O here."""

from dataclasses import dataclass, field

LICENSE_ACTIVE = "active"
LICENSE_SUSPENDED = "suspended"
LICENSE_REVOKED = "revoked"


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    public_key: bytes
    created_at: int
    active: bool
    retired_at: int | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    product: str
    offline_ttl_s: int
    grace_s: int
    seats: int
    warn_s: int | None
    created_at: int


@dataclass(frozen=True)
class EntitlementRow:
    feature: str
    expires_at: int | None


@dataclass(frozen=True)
class License:
    """A license. ``license_key`` is a secret: never log or print it (``repr`` hides it).
    ``seats``: the license's own seat limit, None for its plan's (``seat_limit``)."""

    id: str
    license_key: str = field(repr=False)
    plan: str
    status: str
    expires_at: int | None
    created_at: int
    updated_at: int
    entitlements: tuple[EntitlementRow, ...] = ()
    seats_used: int = 0
    seats: int | None = None

    def seat_limit(self, plan: Plan) -> int:
        """How many devices may be active at once: the license's own limit, else its
        plan's."""
        return plan.seats if self.seats is None else self.seats


@dataclass(frozen=True)
class Activation:
    """A seat held by one device. ``device_key`` is the device's own Ed25519 public key
    (None until the device registered one); ``claims_format`` the newest machine-file
    claims version its agent reads (1 for agents up to 0.1.0); ``keyring`` the ids of
    the signing keys the device last said its keyring holds (empty: it never said);
    ``return_frees_at`` when the seat of a device that gave its license back frees
    (None: no return recorded; HQ issues a returned activation no file)."""

    id: str
    license_id: str
    fingerprint: str
    serial: int
    created_at: int
    last_issued_at: int
    last_expires_at: int
    deactivated_at: int | None
    device_key: bytes | None = None
    agent_version: str = ""
    claims_format: int = 1
    last_seen_at: int | None = None
    last_channel: str | None = None
    keyring: tuple[str, ...] = ()
    return_frees_at: int | None = None


@dataclass(frozen=True)
class OutboxEntry:
    """What one device must be told after HQ changed its standing (the outbox,
    docs/mqtt.md): ``action`` is suspend, revoke, reinstate or deactivate, recorded at
    ``created_at`` in the transaction of the change. ``payload`` is what is published
    (a signed revocation with ``reason``, or a machine file with ``serial``), made when
    it is first delivered; ``next_at`` when it is published again if no status of the
    device has confirmed it (``confirmed_at``)."""

    activation_id: str
    license_id: str
    action: str
    created_at: int
    next_at: int
    attempts: int
    sent_at: int | None
    reason: str | None
    serial: int | None
    payload: bytes | None = field(repr=False)
    confirmed_at: int | None

    @property
    def is_file(self) -> bool:
        """A machine file (a reinstatement) rather than a signed revocation."""
        return self.action == "reinstate"


@dataclass(frozen=True)
class BridgeAnswer:
    """The last new file the MQTT bridges issued a device, and when."""

    activation_id: str
    answered_at: int
    serial: int
    machine_file: bytes = field(repr=False)


@dataclass(frozen=True)
class AuditEvent:
    at: int
    actor: str
    source: str
    action: str
    license_id: str | None = None
    activation_id: str | None = None
    detail: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Actor:
    """Who asks, and from where: recorded in the audit log."""

    who: str
    source: str


@dataclass(frozen=True)
class TokenInfo:
    """An admin token as HQ keeps it: its name and times, never the token (only its
    hash is stored, and not returned)."""

    name: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None

    def status(self, now: int) -> str:
        """active | expired | revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


@dataclass(frozen=True)
class PlanMeter:
    """A plan's metered entitlement: ``feature`` allows ``limit`` of ``counter`` per
    period of ``period_s`` seconds (periods counted from the activation)."""

    feature: str
    counter: str
    limit: int
    period_s: int


@dataclass(frozen=True)
class UsageReport:
    """One usage report a device signed, as HQ accepted it."""

    activation_id: str
    seq: int
    counters: dict[str, int]
    device_at: int
    received_at: int
    via: str


@dataclass(frozen=True)
class ReturnRecord:
    """A license given back (`fieldpass return`): the receipt (armored), and when the
    seat is freed (at once for a TPM-bound device, else after the expiry and grace of
    every file issued to the activation). ``override``: the operator's note when a
    plan's return limit was passed."""

    activation_id: str
    serial: int
    returned_at: int
    received_at: int
    via: str
    receipt: str
    frees_at: int
    override: str | None
