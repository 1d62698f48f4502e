"""What a plan or a license grants, changed after creation: ``plans update`` (seats,
offline TTL, grace, warning window) and a license's own seat limit over its plan's
(``licenses seats``: "add seats" for one customer).

The rules on a plan's values are the same as at creation (``licenses.check_plan``). A change
applies to what HQ does from then on: files already issued keep the TTL, grace and
warning they were signed with, until their next renewal. A seat limit is never set
below the seats in use (deactivate devices first). Every change is audited, with the
old and new values; never a license key.
"""

from dataclasses import dataclass, replace

from ..errors import Conflict, InvalidRequest, PlanNotFound
from ..models import Actor, License, Plan
from ..storage import Store
from ..storage.views import LicenseQuery
from ..units import format_duration
from .audit import event
from .licenses import check_plan, check_seats, find_license


@dataclass(frozen=True)
class PlanChange:
    """What to change (None: keep). ``warn_default``: back to a third of each file's
    TTL (a plan without its own warning window)."""

    seats: int | None = None
    offline_ttl_s: int | None = None
    grace_s: int | None = None
    warn_s: int | None = None
    warn_default: bool = False


def _warn(w: int | None) -> str:
    return "ttl/3" if w is None else format_duration(w)


def _changes(old: Plan, new: Plan) -> str:
    parts = []
    if old.seats != new.seats:
        parts.append(f"seats={old.seats}->{new.seats}")
    if old.offline_ttl_s != new.offline_ttl_s:
        parts.append(
            f"offline_ttl={format_duration(old.offline_ttl_s)}->"
            f"{format_duration(new.offline_ttl_s)}"
        )
    if old.grace_s != new.grace_s:
        parts.append(f"grace={format_duration(old.grace_s)}->{format_duration(new.grace_s)}")
    if old.warn_s != new.warn_s:
        parts.append(f"warn={_warn(old.warn_s)}->{_warn(new.warn_s)}")
    return " ".join(parts)


class Terms:
    def __init__(self, store: Store) -> None:
        self.store = store

    def update_plan(self, name: str, change: PlanChange, now: int, actor: Actor) -> Plan:
        if change.warn_default and change.warn_s is not None:
            raise InvalidRequest("give a warning window or its default, not both")
        with self.store.write() as tx:
            old = tx.get_plan(name)
            if old is None:
                raise PlanNotFound(f"no plan named {name!r}")
            new = replace(
                old,
                seats=old.seats if change.seats is None else change.seats,
                offline_ttl_s=old.offline_ttl_s
                if change.offline_ttl_s is None
                else change.offline_ttl_s,
                grace_s=old.grace_s if change.grace_s is None else change.grace_s,
                warn_s=None
                if change.warn_default
                else (old.warn_s if change.warn_s is None else change.warn_s),
            )
            check_plan(new)
            if new.seats < old.seats:
                found, _ = tx.license_summaries(LicenseQuery(plan=name), now)
                self._check_plan_seats([f.license for f in found], new.seats)
            detail = _changes(old, new)
            if not detail:
                return old  # nothing changes: nothing to audit
            tx.update_plan(new)
            tx.append_audit(event(now, actor, "plan_update", detail=f"plan={name} {detail}"))
        return new

    @staticmethod
    def _check_plan_seats(licenses: list[License], seats: int) -> None:
        over = [lic for lic in licenses if lic.seats is None and lic.seats_used > seats]
        if over:
            raise Conflict(
                f"{len(over)} license(s) of this plan use more than {seats} seats, the first "
                f"{over[0].id} ({over[0].seats_used}): deactivate devices first, or give "
                "those licenses their own seat limit (licenses seats)"
            )

    def set_license_seats(
        self, id_or_key: str, seats: int | None, now: int, actor: Actor
    ) -> tuple[License, Plan]:
        """Give a license its own seat limit (None: its plan's again)."""
        if seats is not None:
            check_seats(seats)
        with self.store.write() as tx:
            lic = find_license(tx, id_or_key)
            tx.lock_license(lic.id)
            plan = tx.get_plan(lic.plan)
            if plan is None:  # pragma: no cover - a foreign key makes this impossible
                raise PlanNotFound(f"license {lic.id} names a missing plan")
            new = replace(lic, seats=seats, updated_at=now)
            limit = new.seat_limit(plan)
            if limit < lic.seats_used:
                raise Conflict(
                    f"license {lic.id} has {lic.seats_used} seats in use, more than {limit}: "
                    "deactivate devices first"
                )
            tx.set_license_seats(lic.id, seats, now)
            own = "plan" if seats is None else str(seats)
            detail = f"seats={own} limit={limit} (plan {plan.name}: {plan.seats})"
            tx.append_audit(event(now, actor, "license_seats", lic.id, detail=detail))
        return new, plan
