"""The read-only queries of the fleet views (the console, the read API, ``activations
list``): activations and licenses filtered, sorted and paged in the database, the
figures of the fleet overview, sites with their devices, the audit log filtered.

``FleetViews`` is part of ``Tx`` (storage/tx.py mixes it in), so these run inside the
caller's read transaction, in the same portable SQL. Filters and sort orders are chosen
from fixed fragments here, never spelled by a caller: a query's text is made of this
module's constants and named parameters only. Times are parameters (``now``,
``expiring_before``): nothing here reads a clock. Never writes, never logs.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..models import Activation, AuditEvent, EntitlementRow, License
from .sealing import LicenseKeys

# Whitelists: the name a caller sorts by -> the column. Unknown names are the caller's
# error (``InvalidRequest`` in services/fleet.py), never text put into SQL.
ACTIVATION_SORTS = {
    "expires": "a.last_expires_at",
    "created": "a.created_at",
    "seen": "a.last_seen_at",
    "license": "a.license_id",
    "site": "s.site",
    "serial": "a.serial",
    "channel": "a.last_channel",
    "device": "a.fingerprint",
}
# The earliest expiry of a license's live devices' files (an expression, not an alias,
# where it is sorted by: PostgreSQL sorts by an output name only when it stands alone).
_FIRST_EXPIRY = (
    "(SELECT MIN(a.last_expires_at) FROM activations a "
    "WHERE a.license_id = l.id AND a.deactivated_at IS NULL)"
)
LICENSE_SORTS = {
    "created": "l.created_at",
    "id": "l.id",
    "plan": "l.plan",
    "status": "l.status",
    "seats": "l.seats_used",
    "expires": "l.expires_at",
    "first_expiry": _FIRST_EXPIRY,
}
# A license's status as license_status() says it (``expired``: active, past its expiry).
_STATUS_FILTERS = {
    "active": "l.status = 'active' AND (l.expires_at IS NULL OR l.expires_at > :now)",
    "expired": "l.status = 'active' AND l.expires_at <= :now",
    "suspended": "l.status = 'suspended'",
    "revoked": "l.status = 'revoked'",
}
LICENSE_STATUSES = tuple(_STATUS_FILTERS)
_IDS_PER_QUERY = 500  # entitlements are read for this many licenses at a time


@dataclass(frozen=True)
class ActivationQuery:
    """Which activations, in which order, which page. ``expiring_before``: files that
    expire at or before this time (Unix seconds)."""

    license_id: str | None = None
    site: str | None = None
    plan: str | None = None
    expiring_before: int | None = None
    live: bool = True
    sort: str = "expires"
    descending: bool = False
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class FleetRow:
    """An activation with what the views show beside it: its license's plan and stored
    status, the plan's windows (for the verdict), its site."""

    activation: Activation
    plan: str
    license_status: str  # as stored: active | suspended | revoked
    license_expires_at: int | None
    grace_s: int
    warn_s: int | None
    site: str | None


@dataclass(frozen=True)
class LicenseQuery:
    """``status``: one of LICENSE_STATUSES (``expired``: active but past its expiry at
    ``now``); ``site``: licenses with a live device there; ``expiring_before``: licenses
    with a live device whose file expires at or before this time."""

    plan: str | None = None
    status: str | None = None
    site: str | None = None
    expiring_before: int | None = None
    license_id: str | None = None
    sort: str = "created"
    descending: bool = False
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class LicenseSummary:
    """A license with its seat limit (its own or its plan's) and the earliest expiry of
    its live devices' files (None without live devices)."""

    license: License
    seat_limit: int
    first_file_expires_at: int | None


@dataclass(frozen=True, slots=True)
class FileState:
    """What the overview needs of one live activation's newest file."""

    issued_at: int
    expires_at: int
    seen_at: int | None
    license_status: str
    license_expires_at: int | None
    grace_s: int
    warn_s: int | None


@dataclass(frozen=True)
class SiteSummary:
    site: str
    devices: int
    first_file_expires_at: int | None


@dataclass(frozen=True)
class AuditQuery:
    """``actor``: an actor as recorded (``cli:alice``) or the name after its prefix
    (``alice``); ``since``/``until``: Unix seconds, both inclusive."""

    actor: str | None = None
    action: str | None = None
    license_id: str | None = None
    since: int | None = None
    until: int | None = None
    limit: int = 100
    offset: int = 0


def _columns(select: str, alias: str) -> str:
    """The column list of ``SELECT a, b FROM t`` (tx.py's record queries), prefixed with
    ``alias``: one list of a record's columns, in its dataclass's order."""
    names = select[len("SELECT ") : select.index(" FROM ")].split(",")
    return ", ".join(f"{alias}.{n.strip()}" for n in names)


def _order(column: str, descending: bool, tie: str) -> str:
    """NULLs last either way on every engine (SQLite and PostgreSQL differ by default)."""
    way = "DESC" if descending else "ASC"
    return f"CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, {column} {way}, {tie} {way}"


def _page(limit: int | None, offset: int, params: dict[str, Any]) -> str:
    if limit is None:
        return ""
    params["limit"], params["offset"] = limit, offset
    return " LIMIT :limit OFFSET :offset"


def _like_suffix(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%:" + escaped


class FleetViews:
    """The queries; ``Tx`` supplies ``_one`` and ``_all`` (and the transaction)."""

    license_keys: LicenseKeys  # Tx's

    def _one(self, sql: str, **params: Any) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, **params: Any) -> list[Any]:
        raise NotImplementedError

    # -- activations -----------------------------------------------------------------
    _FROM_ACTIVATIONS = (
        " FROM activations a JOIN licenses l ON l.id = a.license_id "
        "JOIN plans p ON p.name = l.plan LEFT JOIN sites s ON s.activation_id = a.id"
    )

    def _activation_filter(self, q: ActivationQuery, params: dict[str, Any]) -> str:
        where = []
        if q.live:
            where.append("a.deactivated_at IS NULL")
        if q.license_id is not None:
            where.append("a.license_id = :license_id")
            params["license_id"] = q.license_id
        if q.site is not None:
            where.append("s.site = :site")
            params["site"] = q.site
        if q.plan is not None:
            where.append("l.plan = :plan")
            params["plan"] = q.plan
        if q.expiring_before is not None:
            where.append("a.last_expires_at <= :before")
            params["before"] = q.expiring_before
        return (" WHERE " + " AND ".join(where)) if where else ""

    def query_activations(self, q: ActivationQuery) -> tuple[list[FleetRow], int]:
        """One page of the activations ``q`` chooses, and how many it chooses in all."""
        from .tx import _ACTIVATION, _activation

        params: dict[str, Any] = {}
        where = self._activation_filter(q, params)
        total = int(self._one(f"SELECT COUNT(*){self._FROM_ACTIVATIONS}{where}", **params)[0])
        order = _order(ACTIVATION_SORTS[q.sort], q.descending, "a.id")
        page = _page(q.limit, q.offset, params)
        rows = self._all(
            f"SELECT {_columns(_ACTIVATION, 'a')}, l.plan, l.status, l.expires_at, "
            f"p.grace_s, p.warn_s, s.site{self._FROM_ACTIVATIONS}{where} ORDER BY {order}{page}",
            **params,
        )
        n = len(_columns(_ACTIVATION, "a").split(","))
        found = [FleetRow(_activation(r[:n]), *r[n:]) for r in rows]
        return found, total

    def file_states(self) -> list[FileState]:
        """Every live activation's newest file, for the overview's figures."""
        rows = self._all(
            "SELECT a.last_issued_at, a.last_expires_at, a.last_seen_at, l.status, "
            "l.expires_at, p.grace_s, p.warn_s FROM activations a "
            "JOIN licenses l ON l.id = a.license_id JOIN plans p ON p.name = l.plan "
            "WHERE a.deactivated_at IS NULL"
        )
        return [FileState(*r) for r in rows]

    # -- licenses --------------------------------------------------------------------
    def _license_filter(self, q: LicenseQuery, now: int, params: dict[str, Any]) -> str:
        where = []
        if q.license_id is not None:
            where.append("l.id = :license_id")
            params["license_id"] = q.license_id
        if q.plan is not None:
            where.append("l.plan = :plan")
            params["plan"] = q.plan
        if q.status is not None:
            params["now"] = now
            where.append(_STATUS_FILTERS[q.status])
        if q.site is not None:
            where.append(
                "EXISTS (SELECT 1 FROM sites s JOIN activations a ON a.id = s.activation_id "
                "WHERE a.license_id = l.id AND a.deactivated_at IS NULL AND s.site = :site)"
            )
            params["site"] = q.site
        if q.expiring_before is not None:
            where.append(
                "EXISTS (SELECT 1 FROM activations a WHERE a.license_id = l.id "
                "AND a.deactivated_at IS NULL AND a.last_expires_at <= :before)"
            )
            params["before"] = q.expiring_before
        return (" WHERE " + " AND ".join(where)) if where else ""

    def license_summaries(self, q: LicenseQuery, now: int) -> tuple[list[LicenseSummary], int]:
        """One page of the licenses ``q`` chooses (``now``: for the status filter), and
        how many it chooses in all."""
        from .tx import _LICENSE

        params: dict[str, Any] = {}
        where = self._license_filter(q, now, params)
        joined = " FROM licenses l JOIN plans p ON p.name = l.plan"
        total = int(self._one(f"SELECT COUNT(*){joined}{where}", **params)[0])
        order = _order(LICENSE_SORTS[q.sort], q.descending, "l.id")
        page = _page(q.limit, q.offset, params)
        cols = _columns(_LICENSE, "l")
        rows = self._all(
            f"SELECT {cols}, COALESCE(l.seats, p.seats), {_FIRST_EXPIRY}"
            f"{joined}{where} ORDER BY {order}{page}",
            **params,
        )
        n = len(cols.split(","))
        ents = self._entitlements([r[0] for r in rows])
        found = []
        for r in rows:
            lic = License(
                id=r[0],
                license_key=self.license_keys.open(r[0], r[1]),
                plan=r[2],
                status=r[3],
                expires_at=r[4],
                created_at=r[5],
                updated_at=r[6],
                entitlements=ents.get(r[0], ()),
                seats_used=r[7],
                seats=r[8],
            )
            found.append(LicenseSummary(lic, int(r[n]), r[n + 1]))
        return found, total

    def _entitlements(self, ids: Sequence[str]) -> dict[str, tuple[EntitlementRow, ...]]:
        found: dict[str, list[EntitlementRow]] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            names = {f"id{i}": v for i, v in enumerate(chunk)}
            marks = ", ".join(f":{k}" for k in names)
            rows = self._all(
                "SELECT license_id, feature, expires_at FROM entitlements "  # noqa: S608 - placeholders only
                f"WHERE license_id IN ({marks}) ORDER BY license_id, feature",
                **names,
            )
            for lid, feature, expires_at in rows:
                found.setdefault(lid, []).append(EntitlementRow(feature, expires_at))
        return {k: tuple(v) for k, v in found.items()}

    # -- sites -----------------------------------------------------------------------
    def site_summaries(self) -> list[SiteSummary]:
        rows = self._all(
            "SELECT s.site, COUNT(*), MIN(a.last_expires_at) FROM sites s "
            "JOIN activations a ON a.id = s.activation_id WHERE a.deactivated_at IS NULL "
            "GROUP BY s.site ORDER BY s.site"
        )
        return [SiteSummary(r[0], int(r[1]), r[2]) for r in rows]

    # -- audit -----------------------------------------------------------------------
    def query_audit(self, q: AuditQuery) -> tuple[list[AuditEvent], int]:
        """One page of the events ``q`` chooses, newest first, and how many in all."""
        from .tx import _AUDIT

        where = []
        params: dict[str, Any] = {}
        if q.actor is not None:
            where.append("(actor = :actor OR actor LIKE :suffix ESCAPE '\\')")
            params["actor"], params["suffix"] = q.actor, _like_suffix(q.actor)
        if q.action is not None:
            where.append("action = :action")
            params["action"] = q.action
        if q.license_id is not None:
            where.append("license_id = :license_id")
            params["license_id"] = q.license_id
        if q.since is not None:
            where.append("at >= :since")
            params["since"] = q.since
        if q.until is not None:
            where.append("at <= :until")
            params["until"] = q.until
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = int(self._one(f"SELECT COUNT(*) FROM audit{cond}", **params)[0])  # noqa: S608 - constants only
        page = _page(q.limit, q.offset, params)
        rows = self._all(f"{_AUDIT}{cond} ORDER BY id DESC{page}", **params)
        return [AuditEvent(*r) for r in rows], total
