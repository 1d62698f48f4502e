"""The operations on what devices report back (schema version 6): usage reports, license
returns, the plans' counters, meters and return limit, and each meter's periods.

Portable SQL, like storage/tx.py, which mixes these into ``Tx``. Counters travel as JSON
text (an object of name -> integer) so that no engine needs a JSON type.
"""

import json
from collections.abc import Iterator, Sequence
from typing import Any

from ..models import PlanMeter, ReturnRecord, UsageReport

PLAN_COUNTERS = "SELECT counter FROM plan_counters WHERE plan = :p ORDER BY counter"
PLAN_METERS = (
    "SELECT feature, counter, usage_limit, period_s FROM plan_meters "
    "WHERE plan = :p ORDER BY feature"
)
# The live activations of a license whose return frees the seat by now. Each one whose
# return waits has the time it frees on its own row (``RETURNS_WAITING``, schema 10),
# indexed for the live ones only: the query reads the license's waiting returns and
# nothing else, however many returns HQ has recorded before or how many devices the
# license has. (Read from the returns, every activation read every past return of every
# license, freed long since.)
DUE_RETURNS = (
    "SELECT a.id AS activation_id FROM activations a WHERE a.license_id = :l "
    "AND a.deactivated_at IS NULL AND a.return_frees_at IS NOT NULL "
    "AND a.return_frees_at <= :now"
)
# Schema version 10, the same on every engine (portable DDL): when a live activation's
# return frees its seat, on the activation, for the ones whose seat waits.
RETURNS_WAITING = [
    "ALTER TABLE activations ADD COLUMN return_frees_at BIGINT",
    """UPDATE activations SET return_frees_at = (
            SELECT r.frees_at FROM returns r WHERE r.activation_id = activations.id)
        WHERE deactivated_at IS NULL
            AND id IN (SELECT activation_id FROM returns)""",
    """CREATE INDEX activations_returning ON activations (license_id, return_frees_at)
        WHERE return_frees_at IS NOT NULL AND deactivated_at IS NULL""",
]

# Schema version 11, the same on every engine: the latest time any file HQ issued the
# activation stops running, its expiry plus the grace it was issued with (each issue
# raises it, never lowers it: a shorter renewal or a plan's grace cut later leaves the
# earlier files running). Activations issued before it existed: their last file's
# expiry and the plan's grace.
FILES_RUN_UNTIL = [
    "ALTER TABLE activations ADD COLUMN files_run_until BIGINT",
    """UPDATE activations SET files_run_until = last_expires_at + (
            SELECT p.grace_s FROM licenses l JOIN plans p ON p.name = l.plan
            WHERE l.id = activations.license_id)""",
]
# Tx.record_issues's raise of it (the same on every engine).
RAISE_FILES_RUN_UNTIL = (
    "files_run_until = CASE WHEN files_run_until IS NULL OR files_run_until < :runs "
    "THEN :runs ELSE files_run_until END"
)


class UsageOps:
    """Mixed into ``Tx``, which supplies the query helpers."""

    def _one(self, sql: str, **params: Any) -> Any:  # pragma: no cover - Tx's
        raise NotImplementedError

    def _all(self, sql: str, **params: Any) -> list[Any]:  # pragma: no cover - Tx's
        raise NotImplementedError

    def _run(self, sql: str, **params: Any) -> int:  # pragma: no cover - Tx's
        raise NotImplementedError

    def _send(self, sql: str, **params: Any) -> None:  # pragma: no cover - Tx's
        raise NotImplementedError

    # -- plans: counters, meters, return limit ------------------------------------------
    def set_plan_counters(self, plan: str, counters: list[str]) -> None:
        self._run("DELETE FROM plan_counters WHERE plan = :p", p=plan)
        for name in counters:
            self._run("INSERT INTO plan_counters (plan, counter) VALUES (:p, :c)", p=plan, c=name)

    def plan_counters(self, plan: str) -> list[str]:
        return [str(r[0]) for r in self._all(PLAN_COUNTERS, p=plan)]

    def set_plan_meters(self, plan: str, meters: list[PlanMeter]) -> None:
        self._run("DELETE FROM plan_meters WHERE plan = :p", p=plan)
        for m in meters:
            self._run(
                "INSERT INTO plan_meters (plan, feature, counter, usage_limit, period_s) "
                "VALUES (:p, :f, :c, :l, :s)",
                p=plan,
                f=m.feature,
                c=m.counter,
                l=m.limit,
                s=m.period_s,
            )

    def plan_meters(self, plan: str) -> list[PlanMeter]:
        return [PlanMeter(*r) for r in self._all(PLAN_METERS, p=plan)]

    def set_plan_returns(self, plan: str, per_year: int | None) -> None:
        self._run("UPDATE plans SET returns_per_year = :n WHERE name = :p", n=per_year, p=plan)

    def plan_returns(self, plan: str) -> int | None:
        row = self._one("SELECT returns_per_year FROM plans WHERE name = :p", p=plan)
        return None if row is None or row[0] is None else int(row[0])

    # -- usage reports ----------------------------------------------------------------
    def report_seq(self, activation_id: str) -> int:
        row = self._one("SELECT report_seq FROM activations WHERE id = :id", id=activation_id)
        return 0 if row is None else int(row[0])

    def record_report(self, report: UsageReport) -> None:
        """Store a report and raise the activation's highest sequence to it (the caller
        checked it is higher)."""
        self._run(
            "INSERT INTO usage_reports (activation_id, seq, counters, device_at, received_at, "
            "via) VALUES (:a, :s, :c, :d, :r, :v)",
            a=report.activation_id,
            s=report.seq,
            c=json.dumps(report.counters, sort_keys=True),
            d=report.device_at,
            r=report.received_at,
            v=report.via,
        )
        self._run(
            "UPDATE activations SET report_seq = :s WHERE id = :a AND report_seq < :s",
            s=report.seq,
            a=report.activation_id,
        )

    def latest_report(self, activation_id: str) -> UsageReport | None:
        row = self._one(
            "SELECT activation_id, seq, counters, device_at, received_at, via "
            "FROM usage_reports WHERE activation_id = :a ORDER BY seq DESC LIMIT 1",
            a=activation_id,
        )
        return None if row is None else _report(row)

    def reports(
        self, activation_ids: list[str] | None, since: int | None, until: int | None
    ) -> list[UsageReport]:
        """Every stored report (of these activations), received in [since, until)."""
        rows = self._all(
            "SELECT activation_id, seq, counters, device_at, received_at, via "
            "FROM usage_reports WHERE received_at >= :since AND received_at < :until "
            "ORDER BY activation_id, seq",
            since=since if since is not None else 0,
            until=until if until is not None else 1 << 62,
        )
        wanted = None if activation_ids is None else set(activation_ids)
        return [_report(r) for r in rows if wanted is None or r[0] in wanted]

    def set_tpm_bound(self, activation_id: str) -> None:
        self._send("UPDATE activations SET tpm_bound = 1 WHERE id = :a", a=activation_id)

    def tpm_bound(self, activation_id: str) -> bool:
        row = self._one("SELECT tpm_bound FROM activations WHERE id = :a", a=activation_id)
        return row is not None and bool(row[0])

    def files_run_until(self, activation_id: str) -> int | None:
        """When every file HQ issued the activation has stopped running (expiry and
        grace); None if unknown."""
        row = self._one("SELECT files_run_until FROM activations WHERE id = :a", a=activation_id)
        return None if row is None or row[0] is None else int(row[0])

    # -- meters' periods ------------------------------------------------------------------
    def meter_period(
        self, activation_id: str, feature: str, period_start: int
    ) -> tuple[int, int] | None:
        row = self._one(
            "SELECT period_end, base FROM meter_periods WHERE activation_id = :a "
            "AND feature = :f AND period_start = :s",
            a=activation_id,
            f=feature,
            s=period_start,
        )
        return None if row is None else (int(row[0]), int(row[1]))

    def insert_meter_period(
        self, activation_id: str, feature: str, start: int, end: int, base: int
    ) -> None:
        self._send(
            "INSERT INTO meter_periods (activation_id, feature, period_start, period_end, base) "
            "VALUES (:a, :f, :s, :e, :b)",
            a=activation_id,
            f=feature,
            s=start,
            e=end,
            b=base,
        )

    # -- returns ------------------------------------------------------------------------
    def insert_return(self, rec: ReturnRecord) -> None:
        """The return, and when it frees the seat on its activation (``DUE_RETURNS``)."""
        self._run(
            "UPDATE activations SET return_frees_at = :f WHERE id = :a",
            a=rec.activation_id,
            f=rec.frees_at,
        )
        self._run(
            "INSERT INTO returns (activation_id, serial, returned_at, received_at, via, "
            "receipt, frees_at, override) VALUES (:a, :s, :r, :n, :v, :c, :f, :o)",
            a=rec.activation_id,
            s=rec.serial,
            r=rec.returned_at,
            n=rec.received_at,
            v=rec.via,
            c=rec.receipt,
            f=rec.frees_at,
            o=rec.override,
        )

    def get_return(self, activation_id: str) -> ReturnRecord | None:
        row = self._one(f"{_RETURN} WHERE activation_id = :a", a=activation_id)
        return None if row is None else ReturnRecord(*row)

    def returns_since(self, license_id: str, since: int) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM returns r JOIN activations a ON a.id = r.activation_id "
            "WHERE a.license_id = :l AND r.received_at >= :s AND r.override IS NULL",
            l=license_id,
            s=since,
        )
        return int(row[0])

    def due_returns(self, license_id: str, now: int) -> list[str]:
        """Activations of this license whose return frees the seat by now, still live."""
        return [str(r[0]) for r in self._all(DUE_RETURNS, l=license_id, now=now)]

    # -- read views (the console, GET /v1/usage...) --------------------------------------
    def latest_reports(self, activation_ids: Sequence[str]) -> dict[str, UsageReport]:
        """The newest report of each of these activations (those that sent one)."""
        found: dict[str, UsageReport] = {}
        for names, marks in _chunks(activation_ids):
            rows = self._all(
                "SELECT r.activation_id, r.seq, r.counters, r.device_at, r.received_at, r.via "  # noqa: S608 - placeholders only
                "FROM usage_reports r JOIN activations a ON a.id = r.activation_id "
                f"AND r.seq = a.report_seq WHERE a.id IN ({marks})",
                **names,
            )
            found.update((str(r[0]), _report(r)) for r in rows)
        return found

    def latest_meter_periods(
        self, activation_ids: Sequence[str]
    ) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(activation, feature) -> the start, end and base of the newest period HQ
        signed for it."""
        found: dict[tuple[str, str], tuple[int, int, int]] = {}
        for names, marks in _chunks(activation_ids):
            rows = self._all(
                "SELECT activation_id, feature, period_start, period_end, base "  # noqa: S608 - placeholders only
                f"FROM meter_periods WHERE activation_id IN ({marks}) ORDER BY period_start",
                **names,
            )
            for act, feature, start, end, base in rows:
                found[(str(act), str(feature))] = (int(start), int(end), int(base))
        return found

    def license_returns(self, license_id: str) -> list[tuple[ReturnRecord, int | None]]:
        """The returns of a license's activations, newest first, each with when its
        activation was deactivated (None: its seat is still taken)."""
        rows = self._all(
            "SELECT r.activation_id, r.serial, r.returned_at, r.received_at, r.via, r.receipt, "
            "r.frees_at, r.override, a.deactivated_at FROM returns r "
            "JOIN activations a ON a.id = r.activation_id WHERE a.license_id = :l "
            "ORDER BY r.received_at DESC, r.activation_id",
            l=license_id,
        )
        return [(ReturnRecord(*r[:8]), r[8]) for r in rows]

    def usage_regressions(
        self,
        license_id: str | None,
        activation_id: str | None,
        since: int | None,
        until: int | None,
        limit: int,
        offset: int,
    ) -> tuple[list[tuple[int, str | None, str | None, str | None]], int]:
        """The ``usage_regression`` events (newest first) of a license or an activation
        in [since, until): (at, license, activation, detail), and how many in all."""
        where = ["action = 'usage_regression'", "at >= :since", "at < :until"]
        params: dict[str, Any] = {
            "since": since if since is not None else 0,
            "until": until if until is not None else 1 << 62,
        }
        if license_id is not None:
            where.append("license_id = :l")
            params["l"] = license_id
        if activation_id is not None:
            where.append("activation_id = :a")
            params["a"] = activation_id
        cond = " WHERE " + " AND ".join(where)
        total = int(self._one(f"SELECT COUNT(*) FROM audit{cond}", **params)[0])  # noqa: S608 - constants only
        rows = self._all(
            f"SELECT at, license_id, activation_id, detail FROM audit{cond} "  # noqa: S608 - constants only
            "ORDER BY id DESC LIMIT :limit OFFSET :offset",
            limit=limit,
            offset=offset,
            **params,
        )
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows], total


_IDS_PER_QUERY = 500


def _chunks(ids: Sequence[str]) -> Iterator[tuple[dict[str, str], str]]:
    """``ids`` a few hundred at a time, as named parameters and their placeholders."""
    for start in range(0, len(ids), _IDS_PER_QUERY):
        names = {f"id{i}": v for i, v in enumerate(ids[start : start + _IDS_PER_QUERY])}
        yield names, ", ".join(f":{k}" for k in names)


_RETURN = (
    "SELECT activation_id, serial, returned_at, received_at, via, receipt, frees_at, "
    "override FROM returns"
)


def _report(row: Any) -> UsageReport:
    counters = json.loads(row[2])
    return UsageReport(row[0], int(row[1]), dict(counters), int(row[3]), int(row[4]), row[5])
