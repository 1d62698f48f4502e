"""Activations and issuing: consume a seat and issue a machine file, renew one (or all
of a license's in one transaction), give a seat back, validate with HQ's signed time,
and sign a revocation.

Every method takes ``now`` from its caller. An issued file's serial is recorded in the
same transaction as its audit event and the seat it may consume (the license locked,
``Tx.lock_license``); sealing (CBOR, encryption, signature) runs after the commit, so
that the database's writer lock is held only for the writes. Refusals are
``provisioning.errors`` types; messages never hold a license key.
"""

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from agent.wire import license_key as lk
from agent.wire import revocation, signed_time
from agent.wire.device_key import key_id
from agent.wire.keys import SigningKey
from agent.wire.machine_file import Binding, Claims, Entitlement, Meter, seal_machine_file

from ..errors import (
    ActivationNotFound,
    ActivationReturned,
    DeviceKeyInUse,
    DeviceKeyMismatch,
    FingerprintMismatch,
    InvalidRequest,
    LicenseNotFound,
    PlanNotFound,
    SeatLimitReached,
    SignedRequestRequired,
)
from ..models import Activation, Actor, License, Plan, PlanMeter, UsageReport
from ..storage import PlanRows, Store, Tx
from ..units import format_time
from .audit import event
from .keys import Keys, Signer
from .licenses import (
    check_key,
    check_usable,
    find_license,
    license_of_key,
    license_status,
    normalize_key,
)

FINGERPRINT_HINT = "a fingerprint is 64 lowercase hex characters"


def returned(act: Activation, now: int) -> ActivationReturned | None:
    """The refusal of any file for ``act`` when its device gave its license back (a
    return HQ recorded, its seat not freed yet: ``Activation.return_frees_at``); None
    when HQ may issue it one. Without a TPM the seat frees only once every file issued
    to it has expired with its grace, because a copy of the device's data put back
    would run until then: a file issued after the return would outlive that time, on
    a seat another device may take by then (docs/usage.md)."""
    frees_at = act.return_frees_at
    if frees_at is None:
        return None
    if frees_at > now:
        return ActivationReturned(
            f"activation {act.id} was given back (return receipt): HQ issues it no file; "
            f"its seat frees on {format_time(frees_at)}, or now by hand: `fieldpass-hq "
            f"deactivate {act.id} --reason TEXT`, then activate the device anew"
        )
    return ActivationReturned(
        f"activation {act.id} was given back (return receipt): HQ issues it no file; "
        f"its seat is free since {format_time(frees_at)}: activate the device anew"
    )


def free_due(tx: Tx, license_id: str, due: list[str], now: int, actor: Actor) -> None:
    """Free the seats of ``due``, returns of ``license_id`` whose time has come (the
    license locked, read in the same transaction: ``Tx.issue_reads``), each audited
    ``return_freed`` with when it fell due: the receipt's ``return`` line said when it
    would, this one says it did. Once: a seat freed is due no more."""
    for act_id in due:
        tx.deactivate(act_id, now)
        held = tx.get_return(act_id)
        detail = "" if held is None else f"serial={held.serial} frees_at={held.frees_at}"
        tx.append_audit(event(now, actor, "return_freed", license_id, act_id, detail))


def check_not_returned(act: Activation, now: int) -> None:
    """Raise ``returned``'s refusal, if any."""
    refusal = returned(act, now)
    if refusal is not None:
        raise refusal


@dataclass(frozen=True)
class Issued:
    """A machine file just issued, and what it says."""

    activation: Activation
    claims: Claims
    machine_file: bytes
    created: bool  # a new activation (a seat was consumed)


@dataclass(frozen=True)
class _Recorded:
    """A file recorded in the database (serial, expiry, audit) but not sealed yet.

    Sealing (CBOR, encryption, signature) is pure work on these values, so it runs after
    the transaction commits: the database's writer lock is held only for the writes."""

    activation: Activation
    claims: Claims
    license_key: str
    signing: SigningKey
    created: bool

    @property
    def runs_until(self) -> int:
        """When this file stops running: its expiry and grace (what a return without a
        TPM waits for)."""
        return self.claims.expires_at + self.claims.grace_s

    def seal(self) -> Issued:
        machine_file = seal_machine_file(self.claims, self.license_key, self.signing)
        return Issued(self.activation, self.claims, machine_file, self.created)


@dataclass(frozen=True)
class _Issuer:
    """What every file of one license shares (its plan, HQ's signing keys, the plan's
    usage counters), looked up once per transaction: bulk issuance reads them once, not
    once per device; ``extras`` gives what differs per device (its meters' periods, the
    usage HQ last accepted from it), inside the same transaction. The key that signs a
    device's file is the one ``signer`` chooses for the keyring it reported."""

    lic: License
    plan: Plan
    signer: Signer
    counters: tuple[str, ...] = ()
    extras: "Callable[[Activation, int], tuple[tuple[Meter, ...], int, dict[str, int]]] | None" = (
        None
    )

    def issue(
        self,
        tx: Tx,
        act: Activation,
        ttl_s: int | None,
        now: int,
        new: bool,
        binding: Binding | None = None,
    ) -> _Recorded:
        """Choose the next serial and expiry and record them; the sealing comes later."""
        rec = self.prepare(act, ttl_s, now, new, binding)
        if new:
            tx.insert_activation(rec.activation, rec.runs_until)
            for m in rec.claims.meters:  # the first period's base, fixed now
                tx.insert_meter_period(act.id, m.feature, m.period_start, m.period_end, m.base)
        else:
            tx.record_issues(
                [(act.id, rec.claims.serial, now, rec.claims.expires_at, rec.runs_until)]
            )
        return rec

    def prepare(
        self,
        act: Activation,
        ttl_s: int | None,
        now: int,
        new: bool,
        binding: Binding | None = None,
    ) -> _Recorded:
        """The next file of ``act``: its claims and the activation as it will be stored.
        The claims' version is the newest the activation's agent reads (version 1 for
        agents up to 0.1.0, which know no device key and no binding). None for an
        activation given back (``check_not_returned``)."""
        check_not_returned(act, now)
        ttl = self.plan.offline_ttl_s if ttl_s is None else min(ttl_s, self.plan.offline_ttl_s)
        expires_at = now + ttl
        if self.lic.expires_at is not None:
            expires_at = min(expires_at, self.lic.expires_at)
        warn_s = self.plan.warn_s if self.plan.warn_s is not None else (expires_at - now) // 3
        serial = 1 if new else act.serial + 1
        signing = self.signer.key_for(act.keyring)
        meters: tuple[Meter, ...] = ()
        if act.claims_format >= 2 and self.extras is not None:
            meters, seq, usage = self.extras(act, now)
            if binding is not None:  # a recovery answer resumes from what HQ accepted
                binding = Binding(binding.counter, binding.nonce, seq, usage)
        claims = Claims(
            license_id=self.lic.id,
            product=self.plan.product,
            plan=self.plan.name,
            activation_id=act.id,
            fingerprint=act.fingerprint,
            issued_at=now,
            not_before=now,
            expires_at=expires_at,
            grace_s=self.plan.grace_s,
            warn_s=warn_s,
            serial=serial,
            kid=signing.kid,
            license_expires_at=self.lic.expires_at,
            entitlements=tuple(Entitlement(e.feature, e.expires_at) for e in self.lic.entitlements),
            version=2 if act.claims_format >= 2 else 1,
            device_key=act.device_key if act.claims_format >= 2 else None,
            binding=binding if act.claims_format >= 2 else None,
            counters=self.counters if act.claims_format >= 2 else (),
            meters=meters,
        )
        act = replace(act, serial=serial, last_issued_at=now, last_expires_at=expires_at)
        return _Recorded(act, claims, self.lic.license_key, signing, new)


def _period(tx: Tx, act: Activation, m: PlanMeter, now: int, usage: dict[str, int]) -> Meter:
    """The meter's current period for ``act`` (periods counted from its activation), its
    base fixed the first time HQ issues a file in it: the counter's value as HQ last knew
    it. A renewal the device asks for never moves it."""
    start = act.created_at + (max(0, now - act.created_at) // m.period_s) * m.period_s
    if act.serial == 0:  # a new activation: stored with its first file (Issuer.issue)
        return Meter(m.feature, m.counter, m.limit, start, start + m.period_s, 0)
    stored = tx.meter_period(act.id, m.feature, start)
    if stored is None:
        base = usage.get(m.counter, 0)
        tx.insert_meter_period(act.id, m.feature, start, start + m.period_s, base)
        end = start + m.period_s
    else:
        end, base = stored
    return Meter(m.feature, m.counter, m.limit, start, end, base)


@dataclass(frozen=True)
class Contact:
    """What a request says of the device: how it came (``cli``, ``http``, ``mqtt``,
    ``laptop``, ``air-gapped``), its agent and the claims version it reads, its own key,
    and what the answer must be bound to (its TPM counter, its nonce); the ids of the
    keys its keyring holds (None: the request did not say)."""

    channel: str = "cli"
    agent_version: str = ""
    claims_format: int = 1
    device_key: bytes | None = None
    binding: Binding | None = None
    keyring: tuple[str, ...] | None = None
    unsigned: bool = False  # a request in the form of agents up to 0.1.0 (refuse_unsigned)

    def refuse_unsigned(self, live: Activation | None) -> None:
        """A request in the form of agents up to 0.1.0 (the license key in the body, not
        signed) is answered for a device without a device key only: one with a key must
        sign its requests."""
        if self.unsigned and live is not None and live.device_key is not None:
            raise SignedRequestRequired(
                "this device has a device key: its requests must be signed by it, without "
                "the license key"
            )


@dataclass(frozen=True)
class Validation:
    license_id: str
    status: str  # active | suspended | revoked | expired
    license_expires_at: int | None
    activation: Activation | None
    time: int
    signed_time: bytes


class Issuing:
    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    def issuer(
        self,
        tx: Tx,
        lic: License,
        rows: PlanRows | None = None,
        reports: dict[str, UsageReport] | None = None,
    ) -> _Issuer:
        """What every file of ``lic`` shares, read once in ``tx`` (for the bridge's and
        the outbox's batches, too); ``rows``: its plan's rows if read already;
        ``reports``: the newest usage report of each activation to be issued, read
        already for all of them (bulk issuance), else read per activation."""
        plan, plan_meters, counters, keys = rows or tx.plan_rows(lic.plan)
        if plan is None:  # pragma: no cover - a foreign key makes this impossible
            raise PlanNotFound(f"license {lic.id} names a missing plan")

        def extras(act: Activation, now: int) -> tuple[tuple[Meter, ...], int, dict[str, int]]:
            report = tx.latest_report(act.id) if reports is None else reports.get(act.id)
            usage = dict(report.counters) if report else {}
            meters = tuple(_period(tx, act, m, now, usage) for m in plan_meters)
            return meters, (report.seq if report else 0), usage

        return _Issuer(lic, plan, Signer(self.keys, keys), counters, extras)

    def activate(
        self,
        license_key: str,
        fingerprint: str,
        now: int,
        actor: Actor,
        contact: "Contact | None" = None,
    ) -> Issued:
        """Consume a seat (or reuse this device's) and issue a machine file.

        ``contact`` is what the device's request said of itself (its key, its agent, the
        claims it reads, what the answer must be bound to); None for an operator's
        activation by fingerprint (a version-1 file, no device key yet). A live
        activation's device key is never replaced here (DeviceKeyMismatch).

        The seats in use are the locked license row's count (``License.seats_used``,
        kept by the database itself), less the seats whose return falls due now."""
        if not lk.is_fingerprint(fingerprint):
            raise InvalidRequest(FINGERPRINT_HINT)
        contact = contact or Contact()
        try:
            return self._activate(license_key, fingerprint, now, actor, contact)
        except DeviceKeyInUse:
            held = self._holder(contact)
            if held is None or not self._freed_if_due(held, now, actor):
                raise self._key_in_use(held, now, actor) from None
        return self._activate(license_key, fingerprint, now, actor, contact)

    def _holder(self, contact: "Contact") -> Activation | None:
        """The live activation that holds the request's device key (read after the
        database refused the activation for it: nothing of the request was stored)."""
        if contact.device_key is None:
            return None
        with self.store.read() as tx:
            return tx.find_by_device_key(key_id(contact.device_key))

    def _freed_if_due(self, held: Activation, now: int, actor: Actor) -> bool:
        """Free ``held``'s seat if its device gave it back and the seat's time has come
        (seats of returns free when their license next counts them: the device moving
        to another license must not wait for that); True if it is free now."""
        if held.return_frees_at is None or held.return_frees_at > now:
            return False
        with self.store.write() as tx:
            tx.lock_license(held.license_id)
            free_due(tx, held.license_id, tx.due_returns(held.license_id, now), now, actor)
        return True

    @staticmethod
    def _key_in_use(held: Activation | None, now: int, actor: Actor) -> DeviceKeyInUse:
        """The refusal, naming the activation that holds the key to HQ's operator only:
        a request a laptop relays names no license, and whoever holds a copy of it and
        any license key must not learn which customer's license the device is on."""
        if held is None:  # freed in between: the device may simply try again
            return DeviceKeyInUse("this device's key held another live activation: try again")
        refusal = returned(held, now)
        if not actor.who.startswith("cli:"):
            if refusal is not None:
                return DeviceKeyInUse(
                    "the activation this device gave back holds its key until its seat "
                    "frees (without a TPM: once every file issued to it has expired, with "
                    "its grace); HQ's operator can free it now"
                )
            return DeviceKeyInUse(
                "this device's key holds a live activation already (of another license, "
                "or of another fingerprint): give it back first (`fieldpass return`), or "
                "ask HQ's operator to free it"
            )
        if refusal is not None:  # given back, its seat waits: say when it frees
            return DeviceKeyInUse(f"this device's key is still held: {refusal}")
        return DeviceKeyInUse(
            f"this device's key holds live activation {held.id} of license "
            f"{held.license_id}: give it back first (`fieldpass return` on the device), "
            f"or free its seat at HQ (`fieldpass-hq deactivate {held.id}`)"
        )

    def _activate(
        self, license_key: str, fingerprint: str, now: int, actor: Actor, contact: "Contact"
    ) -> Issued:
        with self.store.write() as tx:
            # read with its row locked (PostgreSQL) or under the writer lock (SQLite):
            # no other activation of it can change its seats before this one ends
            key = normalize_key(license_key)
            found, existing, due, rows = tx.issue_reads(lk.license_id(key), fingerprint, now)
            lic = check_key(found, key)
            tx.lock_license(lic.id)
            contact.refuse_unsigned(existing)
            check_usable(lic, now)
            free_due(tx, lic.id, due, now, actor)  # returned seats whose time came
            if existing is not None and existing.id in due:
                existing = None
            issuer = self.issuer(tx, lic, rows)
            if existing is None:
                seats = lic.seat_limit(issuer.plan)
                if lic.seats_used - len(due) >= seats:
                    raise SeatLimitReached(
                        f"license {lic.id} has all {seats} seats in use: deactivate a device first"
                    )
                act = Activation(
                    id="act_" + secrets.token_hex(10),
                    license_id=lic.id,
                    fingerprint=fingerprint,
                    serial=0,
                    created_at=now,
                    last_issued_at=now,
                    last_expires_at=now,
                    deactivated_at=None,
                    device_key=contact.device_key,
                    agent_version=contact.agent_version,
                    claims_format=contact.claims_format,
                    last_seen_at=now,
                    last_channel=contact.channel,
                    keyring=contact.keyring or (),
                )
                issued = issuer.issue(tx, act, None, now, new=True, binding=contact.binding)
                if contact.binding is not None and contact.binding.counter is not None:
                    tx.set_tpm_bound(act.id)
            else:
                # the device gave this activation back and its seat waits: refused until
                # the seat frees (then it is due above, and a new activation takes one)
                check_not_returned(existing, now)
                act = self.take_contact(tx, existing, contact, now)
                issued = issuer.issue(tx, act, None, now, new=False, binding=contact.binding)
            action = "activate" if issued.created else "reactivate"
            serial = f"serial={issued.claims.serial}"
            tx.append_audit(event(now, actor, action, lic.id, issued.activation.id, serial))
        return issued.seal()

    @staticmethod
    def take_contact(tx: Tx, act: Activation, contact: "Contact", now: int) -> Activation:
        """Record what a request said of the device on its live activation."""
        if contact.binding is not None and contact.binding.counter is not None:
            tx.set_tpm_bound(act.id)  # its state is bound to a TPM counter
        act = Issuing.take_keyring(tx, act, contact.keyring)
        if contact.device_key is not None and act.device_key != contact.device_key:
            if act.device_key is not None:
                raise DeviceKeyMismatch(
                    f"activation {act.id} belongs to another device key: an operator must "
                    f"reset it first (fieldpass-hq activations reset-key {act.id})"
                )
            tx.set_device_key(act.id, contact.device_key)
            act = replace(act, device_key=contact.device_key)
        if contact.channel != "cli":
            tx.record_contact(
                act.id, now, contact.channel, contact.agent_version, contact.claims_format
            )
            act = replace(
                act,
                agent_version=contact.agent_version,
                claims_format=contact.claims_format,
                last_seen_at=now,
                last_channel=contact.channel,
            )
        elif contact.claims_format != act.claims_format and contact.agent_version:
            tx.record_contact(
                act.id, now, "air-gapped", contact.agent_version, contact.claims_format
            )
            act = replace(act, claims_format=contact.claims_format)
        return act

    @staticmethod
    def take_keyring(tx: Tx, act: Activation, keyring: tuple[str, ...] | None) -> Activation:
        """Record the keyring a verified request of ``act``'s device named (None: it
        named none, and HQ keeps what it knew)."""
        if keyring is None or keyring == act.keyring:
            return act
        tx.set_keyring(act.id, keyring)
        return replace(act, keyring=keyring)

    def _live_activation(
        self,
        tx: Tx,
        activation_id: str | None,
        license_key: str | None,
        fingerprint: str | None,
        now: int,
        contact: "Contact | None" = None,
    ) -> tuple[License, Activation, PlanRows | None]:
        """The license and live activation a renewal names, and its plan's rows when
        they were read with them."""
        if license_key is not None:
            key = normalize_key(license_key)
            valid = fingerprint is not None and lk.is_fingerprint(fingerprint)
            named, live, _, rows = tx.issue_reads(
                lk.license_id(key), fingerprint if fingerprint and valid else "", now
            )
            lic = check_key(named, key)
            if contact is not None:
                contact.refuse_unsigned(live)
            check_usable(lic, now)
            if fingerprint is None or not lk.is_fingerprint(fingerprint):
                raise InvalidRequest(FINGERPRINT_HINT)
            if activation_id is not None:
                act = tx.get_activation(activation_id)
                if act is None or act.license_id != lic.id or act.deactivated_at is not None:
                    raise ActivationNotFound("no live activation with this id for this license")
                if act.fingerprint != fingerprint:
                    raise FingerprintMismatch("the activation belongs to another device")
            elif live is None:
                raise ActivationNotFound("this device has no live activation of this license")
            else:
                act = live
            return lic, act, rows
        if activation_id is None:
            raise InvalidRequest("name an activation")
        found = tx.get_activation(activation_id)
        if found is None or found.deactivated_at is not None:
            raise ActivationNotFound(f"no live activation {activation_id}")
        lic_found = tx.get_license(found.license_id)
        if lic_found is None:  # pragma: no cover - foreign key
            raise LicenseNotFound("the activation's license is missing")
        return lic_found, found, None

    def renew(
        self,
        now: int,
        actor: Actor,
        *,
        activation_id: str | None = None,
        license_key: str | None = None,
        fingerprint: str | None = None,
        ttl_s: int | None = None,
        contact: "Contact | None" = None,
    ) -> Issued:
        """A fresh machine file for a live activation, without a seat. ``contact``: what
        the device's request said (None: what HQ last recorded for the activation)."""
        if ttl_s is not None and ttl_s <= 0:
            raise InvalidRequest("a TTL is positive")
        with self.store.write() as tx:
            lic, act, rows = self._live_activation(
                tx, activation_id, license_key, fingerprint, now, contact
            )
            check_usable(lic, now)
            check_not_returned(act, now)
            tx.lock_license(lic.id)
            binding = None
            if contact is not None:
                act = self.take_contact(tx, act, contact, now)
                binding = contact.binding
            issued = self.issuer(tx, lic, rows).issue(
                tx, act, ttl_s, now, new=False, binding=binding
            )
            serial = f"serial={issued.claims.serial}"
            tx.append_audit(event(now, actor, "renew", lic.id, act.id, serial))
        return issued.seal()

    def renew_all(self, license_id: str, ttl_s: int | None, now: int, actor: Actor) -> list[Issued]:
        """Bulk issuance: a fresh file for every live activation of a license, in one
        transaction (field bundles, fleet refresh). An activation whose device gave its
        license back gets none (``returned``): it is skipped, and the audit event counts
        it (``skipped_returned=N``)."""
        return list(self.renew_all_lazily(license_id, ttl_s, now, actor))

    def renew_all_lazily(
        self, license_id: str, ttl_s: int | None, now: int, actor: Actor
    ) -> Iterator[Issued]:
        """``renew_all`` whose files are sealed as they are taken (``push`` publishes
        each at once): everything is recorded, in one transaction, before this returns."""
        with self.store.write() as tx:
            lic = find_license(tx, license_id)
            check_usable(lic, now)
            tx.lock_license(lic.id)
            live = [act for act in tx.list_activations(lic.id) if act.deactivated_at is None]
            kept = [act for act in live if returned(act, now) is None]
            skipped, live = len(live) - len(kept), kept
            # One read of the newest reports for the whole license, not one per device.
            reports = tx.latest_reports([act.id for act in live])
            issuer = self.issuer(tx, lic, reports=reports)
            issued = [issuer.prepare(act, ttl_s, now, new=False) for act in live]
            tx.record_issues(
                [
                    (i.activation.id, i.claims.serial, now, i.claims.expires_at, i.runs_until)
                    for i in issued
                ]
            )
            detail = f"files={len(issued)}" + (f" skipped_returned={skipped}" if skipped else "")
            tx.append_audit(event(now, actor, "renew_all", lic.id, detail=detail))
        return (i.seal() for i in issued)

    def deactivate(
        self,
        now: int,
        actor: Actor,
        *,
        activation_id: str | None = None,
        license_key: str | None = None,
        fingerprint: str | None = None,
        reason: str | None = None,
        tell_device: bool = True,
    ) -> Activation:
        """Free a seat. The operator's deactivation (by activation id) is also recorded
        in the outbox, in the same transaction, for the device to be told by a signed
        revocation (reason ``deactivated``); a device's own request (with its license
        key, or signed: ``tell_device=False``) already has its answer."""
        if reason is not None and (not reason.isprintable() or len(reason) > 200):
            raise InvalidRequest("a reason is one printable line of at most 200 characters")
        with self.store.write() as tx:
            if license_key is not None:
                tell_device = False
                # A device may give its seat back even when its license is suspended.
                lic = license_of_key(tx, license_key)
                if fingerprint is None or not lk.is_fingerprint(fingerprint):
                    raise InvalidRequest(FINGERPRINT_HINT)
                act = tx.find_live_activation(lic.id, fingerprint)
                if act is None:
                    raise ActivationNotFound("this device has no live activation of this license")
                if activation_id is not None and act.id != activation_id:
                    raise FingerprintMismatch("the activation belongs to another device")
            else:
                _, act, _ = self._live_activation(tx, activation_id, None, None, now)
            tx.lock_license(act.license_id)
            tx.deactivate(act.id, now)
            if tell_device:
                tx.outbox_activation(act.id, act.license_id, "deactivate", now)
            tx.append_audit(event(now, actor, "deactivate", act.license_id, act.id, reason))
            return replace(act, deactivated_at=now)

    def get_activation(self, activation_id: str) -> Activation:
        with self.store.read() as tx:
            act = tx.get_activation(activation_id)
        if act is None:
            raise ActivationNotFound(f"no activation {activation_id}")
        return act

    def list_activations(self, license_id: str | None = None) -> list[Activation]:
        with self.store.read() as tx:
            return tx.list_activations(license_id)

    def validate(
        self, license_key: str, fingerprint: str, nonce: str | None, now: int
    ) -> Validation:
        """The license's status for this device, with an HQ-signed current time."""
        if not lk.is_fingerprint(fingerprint):
            raise InvalidRequest(FINGERPRINT_HINT)
        with self.store.read() as tx:
            lic = license_of_key(tx, license_key)
            act = tx.find_live_activation(lic.id, fingerprint)
            signing = self.keys.signing_key(tx, act.keyring if act is not None else ())
        status = license_status(lic, now)
        signed_status = "deactivated" if status == "active" and act is None else status
        token = signed_time.sign_time_v1(signing, now, fingerprint, nonce, signed_status)
        return Validation(lic.id, status, lic.expires_at, act, now, token)

    def signed_revocation(self, activation_id: str, now: int) -> bytes | None:
        """HQ's signed revocation for a live activation whose license is revoked or
        suspended (agent/wire/revocation.py); None while the license is active."""
        with self.store.read() as tx:
            act = tx.get_activation(activation_id)
            if act is None:
                raise ActivationNotFound(f"no activation {activation_id}")
            lic = tx.get_license(act.license_id)
            assert lic is not None
            status = license_status(lic, now)
            if status not in revocation.REASONS:
                return None
            signing = self.keys.signing_key(tx, act.keyring)
        # Never dated at or before the last file HQ issued it: the device would take it
        # for one HQ has lifted since.
        issued_at = max(now, act.last_issued_at + 1)
        return revocation.sign_revocation(
            signing, revocation.Revocation(activation_id, issued_at, status)
        )
