"""Plans and licenses: create them, find a license by id or by key, its status at a
given time, suspend, reinstate, revoke (final).

The lookups (``find_license``, ``usable_license``...) run inside the caller's
transaction, so that issuing (services/issuing.py) checks a license and consumes its
seat in one. A license key is compared in constant time and never appears in an error
message or an audit event.
"""

import secrets
from dataclasses import replace

from agent.wire import license_key as lk

from ..errors import (
    Conflict,
    InvalidRequest,
    LicenseExpired,
    LicenseNotFound,
    LicenseRevoked,
    LicenseSuspended,
    PlanNotFound,
)
from ..models import (
    LICENSE_ACTIVE,
    LICENSE_REVOKED,
    LICENSE_SUSPENDED,
    Activation,
    Actor,
    EntitlementRow,
    License,
    Plan,
)
from ..storage import Store, Tx
from .audit import event
from .names import check_name

MAX_ENTITLEMENTS = 64
MAX_SEATS = 1_000_000
STATUS_OF_ACTION = {
    "suspend": LICENSE_SUSPENDED,
    "reinstate": LICENSE_ACTIVE,
    "revoke": LICENSE_REVOKED,
}


def license_status(lic: License, now: int) -> str:
    """active | suspended | revoked | expired."""
    if lic.status != LICENSE_ACTIVE:
        return lic.status
    if lic.expires_at is not None and now >= lic.expires_at:
        return "expired"
    return LICENSE_ACTIVE


def check_seats(seats: int) -> None:
    if not 1 <= seats <= MAX_SEATS:
        raise InvalidRequest(f"seats must be between 1 and {MAX_SEATS}")


def check_plan(plan: Plan) -> None:
    """Refuse a plan whose values HQ cannot issue files under (at creation and at
    every change, services/terms.py)."""
    check_seats(plan.seats)
    if plan.grace_s < 0 or plan.offline_ttl_s <= 0 or (plan.warn_s or 0) < 0:
        raise InvalidRequest("durations must be positive")


def check_usable(lic: License, now: int) -> None:
    """Refuse a license that may not get a new file at ``now``."""
    status = license_status(lic, now)
    if status == LICENSE_REVOKED:
        raise LicenseRevoked(f"license {lic.id} is revoked")
    if status == LICENSE_SUSPENDED:
        raise LicenseSuspended(f"license {lic.id} is suspended")
    if status == "expired":
        raise LicenseExpired(f"license {lic.id} has expired")


def normalize_key(license_key: str) -> str:
    try:
        return lk.normalize(license_key)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e


def license_by_key(tx: Tx, key: str) -> License | None:
    """The license of a normalized key, or None (constant-time key comparison)."""
    lic = tx.get_license(lk.license_id(key))
    if lic is None or not secrets.compare_digest(lic.license_key, key):
        return None
    return lic


def check_key(lic: License | None, key: str) -> License:
    """``lic``, read by the id in normalized ``key``, if ``key`` is its key (compared
    in constant time)."""
    if lic is None or not secrets.compare_digest(lic.license_key, key):
        raise LicenseNotFound("no license with this key")
    return lic


def license_of_key(tx: Tx, license_key: str) -> License:
    """The license of a key as a device or a person typed it, whatever its status."""
    key = normalize_key(license_key)
    return check_key(tx.get_license(lk.license_id(key)), key)


def usable_license(tx: Tx, license_key: str, now: int) -> License:
    lic = license_of_key(tx, license_key)
    check_usable(lic, now)
    return lic


def find_license(tx: Tx, id_or_key: str) -> License:
    try:
        key = lk.normalize(id_or_key)
    except ValueError:
        lic = tx.get_license(id_or_key.strip())
    else:
        lic = license_by_key(tx, key)
    if lic is None:
        raise LicenseNotFound("no such license")
    return lic


class Licenses:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- plans -----------------------------------------------------------------------
    def create_plan(self, plan: Plan, actor: Actor) -> Plan:
        check_name("a plan name", plan.name)
        check_name("a product name", plan.product)
        check_plan(plan)
        with self.store.write() as tx:
            if tx.get_plan(plan.name) is not None:
                raise Conflict(f"plan {plan.name!r} already exists")
            tx.insert_plan(plan)
            tx.append_audit(
                event(plan.created_at, actor, "plan_create", detail=f"plan={plan.name}")
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
            tx.append_audit(event(now, actor, "license_create", lic.id, detail=f"plan={plan_name}"))
        return lic

    def list_licenses(self) -> list[License]:
        with self.store.read() as tx:
            return tx.list_licenses()

    def license(self, license_id: str) -> License:
        """One license by id, without its activations (the MQTT bridge, per request)."""
        with self.store.read() as tx:
            lic = tx.get_license(license_id)
        if lic is None:
            raise LicenseNotFound(f"no license {license_id}")
        return lic

    def get_license(self, id_or_key: str) -> tuple[License, list[Activation]]:
        with self.store.read() as tx:
            lic = find_license(tx, id_or_key)
            return lic, tx.list_activations(lic.id)

    def set_status(self, id_or_key: str, action: str, now: int, actor: Actor) -> License:
        """``action`` is suspend, reinstate or revoke. The same transaction records, in
        the outbox, that every live device of the license must be told (a signed
        revocation, or a fresh file that lifts one: services/outbox.py)."""
        with self.store.write() as tx:
            lic = find_license(tx, id_or_key)
            tx.lock_license(lic.id)
            if lic.status == LICENSE_REVOKED:
                raise LicenseRevoked(f"license {lic.id} is revoked; a revocation is final")
            new = STATUS_OF_ACTION[action]
            tx.set_license_status(lic.id, new, now)
            told = tx.outbox_license(lic.id, action, now)
            tx.append_audit(event(now, actor, action, lic.id, detail=f"devices_told={told}"))
            return replace(lic, status=new, updated_at=now)
