"""The licensing rules at HQ: plans, licenses, seats, activations, issuing machine files.

Every method takes ``now`` (Unix seconds) from its caller: only the CLI and the server
read the clock. Every change happens in one store transaction together with its audit
record; an issued machine file's serial is incremented in the same transaction that
signs it. Refusals are ``provisioning.errors`` types; messages never hold a license key.
"""

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from agent.wire import license_key as lk
from agent.wire import revocation, signed_time
from agent.wire.keys import Keyring, SigningKey
from agent.wire.machine_file import Claims, Entitlement, seal_machine_file

from ..errors import (
    ActivationNotFound,
    ConfigError,
    Conflict,
    FingerprintMismatch,
    InvalidRequest,
    LicenseExpired,
    LicenseNotFound,
    LicenseRevoked,
    LicenseSuspended,
    PlanNotFound,
    SeatLimitReached,
    Unauthorized,
)
from ..keystore import KeyStore, prepare_home
from ..models import (
    LICENSE_ACTIVE,
    LICENSE_REVOKED,
    LICENSE_SUSPENDED,
    Activation,
    Actor,
    AuditEvent,
    EntitlementRow,
    KeyInfo,
    License,
    Plan,
)
from ..storage import Tx, default_url, open_store

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ENTITLEMENTS = 64
TOKEN_PREFIX = "fphq_"  # noqa: S105 - a prefix, not a secret


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

    def seal(self) -> Issued:
        machine_file = seal_machine_file(self.claims, self.license_key, self.signing)
        return Issued(self.activation, self.claims, machine_file, self.created)


@dataclass(frozen=True)
class _Issuer:
    """What every file of one license shares (its plan, HQ's signing key), looked up
    once per transaction: bulk issuance reads them once, not once per device."""

    lic: License
    plan: Plan
    signing: SigningKey

    def issue(self, tx: Tx, act: Activation, ttl_s: int | None, now: int, new: bool) -> _Recorded:
        """Choose the next serial and expiry and record them; the sealing comes later."""
        rec = self.prepare(act, ttl_s, now, new)
        if new:
            tx.insert_activation(rec.activation)
        else:
            tx.record_issues([(act.id, rec.claims.serial, now, rec.claims.expires_at)])
        return rec

    def prepare(self, act: Activation, ttl_s: int | None, now: int, new: bool) -> _Recorded:
        """The next file of ``act``: its claims and the activation as it will be stored."""
        ttl = self.plan.offline_ttl_s if ttl_s is None else min(ttl_s, self.plan.offline_ttl_s)
        expires_at = now + ttl
        if self.lic.expires_at is not None:
            expires_at = min(expires_at, self.lic.expires_at)
        warn_s = self.plan.warn_s if self.plan.warn_s is not None else (expires_at - now) // 3
        serial = 1 if new else act.serial + 1
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
            kid=self.signing.kid,
            license_expires_at=self.lic.expires_at,
            entitlements=tuple(Entitlement(e.feature, e.expires_at) for e in self.lic.entitlements),
        )
        act = replace(act, serial=serial, last_issued_at=now, last_expires_at=expires_at)
        return _Recorded(act, claims, self.lic.license_key, self.signing, new)


@dataclass(frozen=True)
class Validation:
    license_id: str
    status: str  # active | suspended | revoked | expired
    license_expires_at: int | None
    activation: Activation | None
    time: int
    signed_time: bytes


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise InvalidRequest(f"{what} must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def license_status(lic: License, now: int) -> str:
    if lic.status != LICENSE_ACTIVE:
        return lic.status
    if lic.expires_at is not None and now >= lic.expires_at:
        return "expired"
    return LICENSE_ACTIVE


class HQ:
    def __init__(self, home: Path, *, database: str | None = None) -> None:
        """``database``: a URL for ``storage.open_store``; default: the SQLite file in
        ``home``."""
        self.home = home
        prepare_home(home)
        self.store = open_store(database or default_url(home))
        self.keystore = KeyStore(home)
        self._signing: SigningKey | None = None

    # -- keys ------------------------------------------------------------------------
    def generate_key(self, now: int, actor: Actor) -> KeyInfo:
        key = SigningKey.generate()
        self.keystore.save(key)
        with self.store.write() as tx:
            tx.insert_key(key.kid, key.public_key, now)
            tx.activate_key(key.kid)
            tx.append_audit(
                AuditEvent(
                    now, actor.who, actor.source, "key_generate", None, None, f"kid={key.kid}"
                )
            )
        return KeyInfo(key.kid, key.public_key, now, True)

    def list_keys(self) -> list[KeyInfo]:
        with self.store.read() as tx:
            return tx.list_keys()

    def keyring(self) -> Keyring:
        keys = self.list_keys()
        if not keys:
            raise ConfigError("no signing key yet: run 'fieldpass-hq keys generate'")
        return Keyring.of(*(k.public_key for k in keys))

    def _signing_key(self, tx: Tx) -> SigningKey:
        kid = tx.active_kid()
        if kid is None:
            raise ConfigError("no signing key yet: run 'fieldpass-hq keys generate'")
        if self._signing is None or self._signing.kid != kid:
            self._signing = self.keystore.load(kid)
        return self._signing

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
            signing = self._signing_key(tx)
        return revocation.sign_revocation(
            signing, revocation.Revocation(activation_id, now, status)
        )

    # -- plans -----------------------------------------------------------------------
    def create_plan(self, plan: Plan, actor: Actor) -> Plan:
        check_name("a plan name", plan.name)
        check_name("a product name", plan.product)
        if plan.seats <= 0 or plan.seats > 1_000_000:
            raise InvalidRequest("seats must be between 1 and 1000000")
        if plan.grace_s < 0 or plan.offline_ttl_s <= 0 or (plan.warn_s or 0) < 0:
            raise InvalidRequest("durations must be positive")
        with self.store.write() as tx:
            if tx.get_plan(plan.name) is not None:
                raise Conflict(f"plan {plan.name!r} already exists")
            tx.insert_plan(plan)
            tx.append_audit(
                AuditEvent(
                    plan.created_at,
                    actor.who,
                    actor.source,
                    "plan_create",
                    None,
                    None,
                    f"plan={plan.name}",
                )
            )
        return plan

    def list_plans(self) -> list[Plan]:
        with self.store.read() as tx:
            return tx.list_plans()

    # -- licenses --------------------------------------------------------------------
    def create_license(
        self,
        plan_name: str,
        entitlements: list[EntitlementRow],
        expires_at: int | None,
        now: int,
        actor: Actor,
    ) -> License:
        if len(entitlements) > MAX_ENTITLEMENTS:
            raise InvalidRequest(f"at most {MAX_ENTITLEMENTS} entitlements")
        features = [check_name("a feature name", e.feature) for e in entitlements]
        if len(set(features)) != len(features):
            raise InvalidRequest("an entitlement is named twice")
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("the license would expire before it is created")
        key = lk.generate()
        lic = License(
            id=lk.license_id(key),
            license_key=key,
            plan=plan_name,
            status=LICENSE_ACTIVE,
            expires_at=expires_at,
            created_at=now,
            updated_at=now,
            entitlements=tuple(entitlements),
        )
        with self.store.write() as tx:
            if tx.get_plan(plan_name) is None:
                raise PlanNotFound(f"no plan named {plan_name!r}")
            tx.insert_license(lic)
            tx.append_audit(
                AuditEvent(
                    now,
                    actor.who,
                    actor.source,
                    "license_create",
                    lic.id,
                    None,
                    f"plan={plan_name}",
                )
            )
        return lic

    def list_licenses(self) -> list[License]:
        with self.store.read() as tx:
            return tx.list_licenses()

    def get_license(self, id_or_key: str) -> tuple[License, list[Activation]]:
        with self.store.read() as tx:
            lic = self._find_license(tx, id_or_key)
            return lic, tx.list_activations(lic.id)

    def _find_license(self, tx: Tx, id_or_key: str) -> License:
        try:
            key = lk.normalize(id_or_key)
        except ValueError:
            lic = tx.get_license(id_or_key.strip())
        else:
            lic = self._license_by_key(tx, key)
        if lic is None:
            raise LicenseNotFound("no such license")
        return lic

    @staticmethod
    def _license_by_key(tx: Tx, key: str) -> License | None:
        lic = tx.get_license(lk.license_id(key))
        if lic is None or not secrets.compare_digest(lic.license_key, key):
            return None
        return lic

    def _usable_license(self, tx: Tx, license_key: str, now: int) -> License:
        try:
            key = lk.normalize(license_key)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        lic = self._license_by_key(tx, key)
        if lic is None:
            raise LicenseNotFound("no license with this key")
        self._check_usable(lic, now)
        return lic

    @staticmethod
    def _check_usable(lic: License, now: int) -> None:
        status = license_status(lic, now)
        if status == LICENSE_REVOKED:
            raise LicenseRevoked(f"license {lic.id} is revoked")
        if status == LICENSE_SUSPENDED:
            raise LicenseSuspended(f"license {lic.id} is suspended")
        if status == "expired":
            raise LicenseExpired(f"license {lic.id} has expired")

    def set_status(self, id_or_key: str, action: str, now: int, actor: Actor) -> License:
        """``action`` is suspend, reinstate or revoke."""
        with self.store.write() as tx:
            lic = self._find_license(tx, id_or_key)
            tx.lock_license(lic.id)
            if lic.status == LICENSE_REVOKED:
                raise LicenseRevoked(f"license {lic.id} is revoked; a revocation is final")
            new = {
                "suspend": LICENSE_SUSPENDED,
                "reinstate": LICENSE_ACTIVE,
                "revoke": LICENSE_REVOKED,
            }[action]
            tx.set_license_status(lic.id, new, now)
            tx.append_audit(AuditEvent(now, actor.who, actor.source, action, lic.id))
            return replace(lic, status=new, updated_at=now)

    # -- activations and machine files -----------------------------------------------
    def _issuer(self, tx: Tx, lic: License) -> "_Issuer":
        plan = tx.get_plan(lic.plan)
        if plan is None:  # pragma: no cover - a foreign key makes this impossible
            raise PlanNotFound(f"license {lic.id} names a missing plan")
        return _Issuer(lic, plan, self._signing_key(tx))

    def _issue(
        self, tx: Tx, lic: License, act: Activation, ttl_s: int | None, now: int, new: bool
    ) -> _Recorded:
        return self._issuer(tx, lic).issue(tx, act, ttl_s, now, new)

    def activate(self, license_key: str, fingerprint: str, now: int, actor: Actor) -> Issued:
        """Consume a seat (or reuse this device's) and issue a machine file."""
        if not lk.is_fingerprint(fingerprint):
            raise InvalidRequest("a fingerprint is 64 lowercase hex characters")
        with self.store.write() as tx:
            lic = self._usable_license(tx, license_key, now)
            tx.lock_license(lic.id)
            existing = tx.find_live_activation(lic.id, fingerprint)
            if existing is None:
                plan = tx.get_plan(lic.plan)
                seats = plan.seats if plan else 0
                if tx.count_seats(lic.id) >= seats:
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
                )
                issued = self._issue(tx, lic, act, None, now, new=True)
            else:
                issued = self._issue(tx, lic, existing, None, now, new=False)
            tx.append_audit(
                AuditEvent(
                    now,
                    actor.who,
                    actor.source,
                    "activate" if issued.created else "reactivate",
                    lic.id,
                    issued.activation.id,
                    f"serial={issued.claims.serial}",
                )
            )
        return issued.seal()

    def _live_activation(
        self,
        tx: Tx,
        activation_id: str | None,
        license_key: str | None,
        fingerprint: str | None,
        now: int,
    ) -> tuple[License, Activation]:
        if license_key is not None:
            lic = self._usable_license(tx, license_key, now)
            if fingerprint is None or not lk.is_fingerprint(fingerprint):
                raise InvalidRequest("a fingerprint is 64 lowercase hex characters")
            if activation_id is not None:
                act = tx.get_activation(activation_id)
                if act is None or act.license_id != lic.id or act.deactivated_at is not None:
                    raise ActivationNotFound("no live activation with this id for this license")
                if act.fingerprint != fingerprint:
                    raise FingerprintMismatch("the activation belongs to another device")
            else:
                found = tx.find_live_activation(lic.id, fingerprint)
                if found is None:
                    raise ActivationNotFound("this device has no live activation of this license")
                act = found
            return lic, act
        if activation_id is None:
            raise InvalidRequest("name an activation")
        found = tx.get_activation(activation_id)
        if found is None or found.deactivated_at is not None:
            raise ActivationNotFound(f"no live activation {activation_id}")
        lic_found = tx.get_license(found.license_id)
        if lic_found is None:  # pragma: no cover - foreign key
            raise LicenseNotFound("the activation's license is missing")
        return lic_found, found

    def renew(
        self,
        now: int,
        actor: Actor,
        *,
        activation_id: str | None = None,
        license_key: str | None = None,
        fingerprint: str | None = None,
        ttl_s: int | None = None,
    ) -> Issued:
        """A fresh machine file for a live activation, without a seat."""
        if ttl_s is not None and ttl_s <= 0:
            raise InvalidRequest("a TTL is positive")
        with self.store.write() as tx:
            lic, act = self._live_activation(tx, activation_id, license_key, fingerprint, now)
            self._check_usable(lic, now)
            tx.lock_license(lic.id)
            issued = self._issue(tx, lic, act, ttl_s, now, new=False)
            tx.append_audit(
                AuditEvent(
                    now,
                    actor.who,
                    actor.source,
                    "renew",
                    lic.id,
                    act.id,
                    f"serial={issued.claims.serial}",
                )
            )
        return issued.seal()

    def renew_all(self, license_id: str, ttl_s: int | None, now: int, actor: Actor) -> list[Issued]:
        """Bulk issuance: a fresh file for every live activation of a license, in one
        transaction (field bundles, fleet refresh)."""
        with self.store.write() as tx:
            lic = self._find_license(tx, license_id)
            self._check_usable(lic, now)
            tx.lock_license(lic.id)
            issuer = self._issuer(tx, lic)
            issued = [
                issuer.prepare(act, ttl_s, now, new=False)
                for act in tx.list_activations(lic.id)
                if act.deactivated_at is None
            ]
            tx.record_issues(
                [(i.activation.id, i.claims.serial, now, i.claims.expires_at) for i in issued]
            )
            tx.append_audit(
                AuditEvent(
                    now, actor.who, actor.source, "renew_all", lic.id, None, f"files={len(issued)}"
                )
            )
        return [i.seal() for i in issued]

    def deactivate(
        self,
        now: int,
        actor: Actor,
        *,
        activation_id: str | None = None,
        license_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Activation:
        with self.store.write() as tx:
            if license_key is not None:
                # A device may give its seat back even when its license is suspended.
                try:
                    key = lk.normalize(license_key)
                except ValueError as e:
                    raise InvalidRequest(str(e)) from e
                lic = self._license_by_key(tx, key)
                if lic is None:
                    raise LicenseNotFound("no license with this key")
                if fingerprint is None or not lk.is_fingerprint(fingerprint):
                    raise InvalidRequest("a fingerprint is 64 lowercase hex characters")
                act = tx.find_live_activation(lic.id, fingerprint)
                if act is None:
                    raise ActivationNotFound("this device has no live activation of this license")
                if activation_id is not None and act.id != activation_id:
                    raise FingerprintMismatch("the activation belongs to another device")
            else:
                _, act = self._live_activation(tx, activation_id, None, None, now)
            tx.lock_license(act.license_id)
            tx.deactivate(act.id, now)
            tx.append_audit(
                AuditEvent(now, actor.who, actor.source, "deactivate", act.license_id, act.id)
            )
            return replace(act, deactivated_at=now)

    def get_activation(self, activation_id: str) -> Activation:
        with self.store.read() as tx:
            act = tx.get_activation(activation_id)
        if act is None:
            raise ActivationNotFound(f"no activation {activation_id}")
        return act

    def assign_site(
        self,
        site: str,
        activation_ids: list[str],
        fingerprints: set[str],
        now: int,
        actor: Actor,
    ) -> list[Activation]:
        """Put live activations (by id, or by device fingerprint) at ``site``."""
        check_name("a site name", site)
        with self.store.write() as tx:
            chosen: dict[str, Activation] = {}
            for act_id in activation_ids:
                act = tx.get_activation(act_id)
                if act is None or act.deactivated_at is not None:
                    raise ActivationNotFound(f"no live activation {act_id}")
                chosen[act.id] = act
            if fingerprints:
                found = {
                    a.fingerprint: a
                    for a in tx.list_activations()
                    if a.deactivated_at is None and a.fingerprint in fingerprints
                }
                missing = sorted(fingerprints - set(found))
                if missing:
                    raise ActivationNotFound(
                        f"{len(missing)} fingerprint(s) have no live activation, "
                        f"the first {missing[0][:12]}..."
                    )
                chosen.update({a.id: a for a in found.values()})
            for act in chosen.values():
                tx.assign_site(act.id, site, now)
                tx.append_audit(
                    AuditEvent(
                        now, actor.who, actor.source, "site_assign", act.license_id, act.id, site
                    )
                )
            return list(chosen.values())

    def site_activations(self, site: str) -> set[str]:
        with self.store.read() as tx:
            return tx.site_activations(site)

    def list_sites(self) -> list[tuple[str, int]]:
        with self.store.read() as tx:
            return tx.list_sites()

    def list_activations(self, license_id: str | None = None) -> list[Activation]:
        with self.store.read() as tx:
            return tx.list_activations(license_id)

    def validate(
        self, license_key: str, fingerprint: str, nonce: str | None, now: int
    ) -> Validation:
        """The license's status for this device, with an HQ-signed current time."""
        if not lk.is_fingerprint(fingerprint):
            raise InvalidRequest("a fingerprint is 64 lowercase hex characters")
        try:
            key = lk.normalize(license_key)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        with self.store.read() as tx:
            lic = self._license_by_key(tx, key)
            if lic is None:
                raise LicenseNotFound("no license with this key")
            act = tx.find_live_activation(lic.id, fingerprint)
            signing = self._signing_key(tx)
        status = license_status(lic, now)
        signed_status = "deactivated" if status == "active" and act is None else status
        token = signed_time.sign_time(signing, now, fingerprint, nonce, signed_status)
        return Validation(lic.id, status, lic.expires_at, act, now, token)

    # -- audit and tokens ------------------------------------------------------------
    def audit(self, limit: int, license_id: str | None = None) -> list[AuditEvent]:
        with self.store.read() as tx:
            return tx.list_audit(limit, license_id)

    def create_token(self, name: str, now: int, actor: Actor) -> str:
        check_name("a token name", name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.write() as tx:
            if tx.token_name(_token_hash(token)) is not None:  # pragma: no cover
                raise Conflict("token collision")
            if any(n == name for n, _ in tx.list_tokens()):
                raise Conflict(f"a token named {name!r} already exists")
            tx.insert_token(name, _token_hash(token), now)
            tx.append_audit(
                AuditEvent(now, actor.who, actor.source, "token_create", None, None, f"name={name}")
            )
        return token

    def check_token(self, token: str) -> str:
        """The name of the admin token ``token``, or ``Unauthorized``."""
        with self.store.read() as tx:
            name = tx.token_name(_token_hash(token))
        if name is None:
            raise Unauthorized("invalid or missing bearer token")
        return name
