"""What devices tell HQ (issue 16): signed usage reports, and licenses given back.

- ``accept_report``: a report signed by the activation's device key, numbered: HQ keeps
  every report with a sequence higher than the last it accepted; a replayed, older or
  equal one is refused with a counted reason and changes nothing. Counters are
  cumulative, so a lost report loses nothing; a counter lower than HQ's last value (a
  device restored from an old state) is stored and flagged to the operator (audited
  ``usage_regression``), never refused for ever.
- ``accept_receipt``: a return receipt signed by the device key frees the seat: at
  once for a device whose state is bound to its TPM counter, else once the expiry and
  grace of every file issued to it have passed, the returned one's and any earlier
  one's (a copy of the data directory taken before the return could be put back:
  docs/runbooks/technician.md). A plan may limit returns per
  year; past it HQ refuses unless the operator overrides (audited; a return within the
  limit counts as one, override or not).
- ``usage``: totals per device, license and period for billing (the CLI, the console).
- ``acknowledgement``: HQ's signed status of an activation bound to a nonce the device
  derives from what it sent (the MQTT bridge's ``ack``: the device stops resending);
  ``receipt_acknowledgement``, the same of a receipt, for HTTP's answers to it.

Every change is one transaction with its audit row. Never reads the clock or logs.
"""

from dataclasses import dataclass

from agent.wire import armor
from agent.wire.device_msg import DeviceMessage
from agent.wire.signed_time import ack_nonce, sign_time

from ..errors import ActivationNotFound, Conflict, HQError, InvalidRequest
from ..models import Activation, Actor, PlanMeter, ReturnRecord, UsageReport
from ..storage import Store, Tx
from .audit import event
from .device_requests import DeviceRequests, Verified
from .licenses import license_status

YEAR_S = 365 * 86400


class ReportRefused(HQError):
    """A usage report HQ will not store (replayed, older, foreign, forged)."""

    code = "report_refused"
    http_status = 409


class ReturnLimitReached(HQError):
    """The plan allows no more returns this year for this license."""

    code = "return_limit_reached"
    http_status = 409


class SeatFreedAlready(ActivationNotFound):
    """A receipt of an activation the operator freed by hand (``deactivate``) before it
    came: nothing is left to free. The same 404 ``activation_not_found`` to a device
    (which drops its copy); a laptop's report counts it apart, not as a refusal, as a
    mainboard swap does."""


@dataclass(frozen=True)
class Accepted:
    report: UsageReport
    regression: list[str]  # counters lower than HQ's last value


class ReturnHeld(Conflict):
    """HQ holds a return of this activation already (another receipt of it, or one a
    second replica recorded at the same moment): nothing to do, and nothing a resend
    changes. The same ``conflict`` to a device as any other (the MQTT bridge tells them
    apart: it acknowledges this one only)."""


class ReceiptHeld(ReturnHeld):
    """The very receipt HQ holds already (the same bytes) came again: a resend after a
    lost answer, or the laptop's report carrying one HQ took over a relay. Nothing to
    do; the same ``conflict`` as another receipt of a returned activation to a device."""


@dataclass(frozen=True)
class Returned:
    record: ReturnRecord
    freed: bool  # the seat is free now (else at record.frees_at)


class Usage:
    def __init__(self, store: Store, device: DeviceRequests) -> None:
        self.store = store
        self.device = device

    # -- reports ----------------------------------------------------------------------
    def accept_report(self, data: bytes, now: int, via: str, actor: Actor) -> Accepted:
        return self.accept_verified_report(
            self.device.verify(data, "report", live=False), now, via, actor
        )

    def accept_verified_report(
        self, verified: Verified, now: int, via: str, actor: Actor
    ) -> Accepted:
        """A report ``DeviceRequests.verify`` verified (the bridge checks its topic
        between the two)."""
        m, act = verified.message, verified.activation
        seq = int(str(m["seq"]))
        counters = dict(m["counters"])  # type: ignore[call-overload]
        with self.store.write() as tx:
            self.device.register_in(tx, verified, now, actor)  # with the report, or not
            last = tx.report_seq(act.id)
            if seq <= last:
                raise ReportRefused(
                    f"report {seq} of activation {act.id} is not newer than the last one "
                    f"accepted ({last}): a replay or an older report"
                )
            previous = tx.latest_report(act.id)
            report = UsageReport(act.id, seq, counters, int(str(m["at"])), now, via)
            tx.record_report(report)
            regression = sorted(
                k
                for k, v in (previous.counters if previous else {}).items()
                if counters.get(k, 0) < v
            )
            if regression:
                tx.append_audit(
                    event(
                        now,
                        actor,
                        "usage_regression",
                        act.license_id,
                        act.id,
                        f"seq={seq} lower={','.join(regression)[:200]}",
                    )
                )
        return Accepted(report, regression)

    def last_accepted(self, tx: Tx, act: Activation) -> tuple[int, dict[str, int]]:
        """The sequence and counters a recovery answer carries (claims' binding)."""
        report = tx.latest_report(act.id)
        return (report.seq, dict(report.counters)) if report else (0, {})

    def usage(
        self,
        license_id: str | None = None,
        activation_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> list[dict[str, object]]:
        """Per activation: the counters at the start and end of [since, until) as the
        reports received in it say, and the growth between (what billing wants)."""
        with self.store.read() as tx:
            acts = [
                a
                for a in tx.list_activations(license_id)
                if activation_id is None or a.id == activation_id
            ]
            rows = []
            for act in acts:
                reports = tx.reports([act.id], since, until)
                if not reports:
                    continue
                first, last = reports[0], reports[-1]
                names = sorted(set(first.counters) | set(last.counters))
                rows.append(
                    {
                        "activation_id": act.id,
                        "license_id": act.license_id,
                        "fingerprint": act.fingerprint,
                        "reports": len(reports),
                        "first_seq": first.seq,
                        "last_seq": last.seq,
                        "first_at": first.received_at,
                        "last_at": last.received_at,
                        "counters": dict(last.counters),
                        "growth": {
                            n: last.counters.get(n, 0) - first.counters.get(n, 0) for n in names
                        },
                    }
                )
        return rows

    # -- returns ------------------------------------------------------------------------
    def accept_receipt(
        self, data: bytes, now: int, via: str, actor: Actor, *, override: str | None = None
    ) -> Returned:
        verified = self.device.verify(data, "receipt", live=False)
        return self.accept_verified_receipt(verified, data, now, via, actor, override=override)

    def accept_verified_receipt(
        self,
        verified: Verified,
        data: bytes,
        now: int,
        via: str,
        actor: Actor,
        *,
        override: str | None = None,
    ) -> Returned:
        """A receipt ``DeviceRequests.verify`` verified from ``data`` (kept, armored,
        with the return: the audit's evidence). A return another replica recorded
        between this one's read and its write (the database refuses the second) is
        ``ReturnHeld`` (``ReceiptHeld`` if the same bytes), as if it had come first."""
        try:
            return self._take_receipt(verified, data, now, via, actor, override)
        except ReturnHeld:
            raise
        except Conflict:
            with self.store.read() as tx:
                refusal = _held(tx.get_return(verified.activation.id), verified, data)
            if refusal is None:
                raise
            raise refusal from None

    def _take_receipt(
        self,
        verified: Verified,
        data: bytes,
        now: int,
        via: str,
        actor: Actor,
        override: str | None,
    ) -> Returned:
        m, act = verified.message, verified.activation
        with self.store.write() as tx:
            current = tx.get_activation(act.id)
            assert current is not None
            refusal = _held(tx.get_return(act.id), verified, data)
            if refusal is not None:
                raise refusal
            if current.deactivated_at is not None:
                # also a receipt whose key HQ never recorded (the proof verified it)
                raise SeatFreedAlready(f"activation {act.id} is not live: nothing to free")
            # the key a receipt registers is recorded with its return or not at all
            self.device.register_in(tx, verified, now, actor)
            lic = tx.get_license(act.license_id)
            assert lic is not None
            plan = tx.get_plan(lic.plan)
            assert plan is not None
            limit = tx.plan_returns(plan.name)
            over = limit is not None and tx.returns_since(lic.id, now - YEAR_S) >= limit
            if over and override is None:
                raise ReturnLimitReached(
                    f"license {lic.id} has had its {limit} return(s) this year: the plan's "
                    "return limit is reached; an operator may override (--override REASON)"
                )
            override = override if over else None  # within the limit: nothing overridden
            bound = tx.tpm_bound(act.id)
            # without a TPM: once every file issued to it has stopped running, the last
            # and any before it (a copy of the data may hold one: a year's file, then
            # a day's), each with the grace it was issued with
            runs_until = max(
                current.last_expires_at + plan.grace_s, tx.files_run_until(act.id) or 0
            )
            frees_at = now if bound else max(now, runs_until)
            record = ReturnRecord(
                act.id,
                int(str(m["serial"])),
                int(str(m["returned_at"])),
                now,
                via,
                armor.armor(data, armor.RECEIPT),
                frees_at,
                override,
            )
            tx.insert_return(record)
            tx.outbox_drop_file(act.id)  # a reinstatement's file, the device would refuse it
            freed = frees_at <= now
            if freed:
                tx.lock_license(lic.id)
                tx.deactivate(act.id, now)
            detail = f"serial={record.serial} frees_at={frees_at}" + (
                f" override={override[:100]}" if override else ""
            )
            tx.append_audit(event(now, actor, "return", lic.id, act.id, detail))
        return Returned(record, freed)

    def acknowledgement(self, activation_id: str, nonce: str, now: int) -> bytes:
        """HQ's signed status of the activation (as ``validate`` answers: "deactivated"
        once the seat is free), bound to ``nonce``: what the device verifies before it
        stops sending the report or receipt the nonce is derived from."""
        with self.store.read() as tx:
            act = tx.get_activation(activation_id)
            if act is None:
                raise ActivationNotFound(f"no activation {activation_id}")
            lic = tx.get_license(act.license_id)
            assert lic is not None
            signing = self.device.keys.signing_key(tx, act.keyring)
        status = license_status(lic, now)
        signed = "deactivated" if act.deactivated_at is not None and status == "active" else status
        return sign_time(
            signing,
            now,
            act.fingerprint,
            nonce,
            signed,
            license_id=lic.id,
            activation_id=act.id,
        )

    def receipt_acknowledgement(self, verified: Verified, data: bytes, now: int) -> bytes:
        """HQ's acknowledgement of the receipt ``data`` (``acknowledgement`` bound to its
        ``ack_nonce``; ``verified`` as ``accept_verified_receipt`` took it): for an answer
        that tells the device HQ holds it or has nothing left to free with it."""
        return self.acknowledgement(verified.activation.id, ack_nonce(data), now)


def _held(held: ReturnRecord | None, verified: Verified, data: bytes) -> ReturnHeld | None:
    """The refusal of a receipt of an activation whose return HQ holds (``held``):
    ``ReceiptHeld`` for these very bytes, ``ReturnHeld`` for another receipt of it."""
    if held is None:
        return None
    act_id = verified.activation.id
    if held.receipt == armor.armor(data, armor.RECEIPT):
        return ReceiptHeld(f"activation {act_id} was returned already (this receipt)")
    return ReturnHeld(f"activation {act_id} was returned already")


def message_counters(m: DeviceMessage) -> dict[str, int]:
    value = m.fields.get("counters")
    if not isinstance(value, dict):
        raise InvalidRequest("a usage report carries counters")
    return {str(k): int(v) for k, v in value.items()}


def set_terms(
    store: Store,
    plan: str,
    counters: list[str],
    meters: list[PlanMeter],
    returns_per_year: int | None,
    now: int,
    actor: Actor,
) -> None:
    """A plan's usage terms: the counters its devices keep, its metered entitlements
    (each on a counter the plan declares or a built-in one), and a limit on returns per
    license and year (None: unlimited). Audited; files issued from now on carry them."""
    from agent.usage import BUILTIN

    from .names import check_name

    for name in counters:
        check_name("a counter name", name)
        if name in BUILTIN:
            raise InvalidRequest(f"{name} is counted by Fieldpass itself: do not declare it")
    if len(set(counters)) != len(counters) or len(counters) > 64:
        raise InvalidRequest("counters: at most 64, each once")
    for m in meters:
        check_name("a feature name", m.feature)
        if m.counter not in counters and m.counter not in BUILTIN:
            raise InvalidRequest(f"meter {m.feature}: {m.counter} is not a counter of the plan")
        if m.limit < 1 or m.period_s < 3600:
            raise InvalidRequest(f"meter {m.feature}: a limit >= 1 per a period of an hour or more")
    if returns_per_year is not None and returns_per_year < 0:
        raise InvalidRequest("returns per year: 0 or more")
    with store.write() as tx:
        if tx.get_plan(plan) is None:
            from ..errors import PlanNotFound

            raise PlanNotFound(f"no plan {plan!r}")
        tx.set_plan_counters(plan, counters)
        tx.set_plan_meters(plan, meters)
        tx.set_plan_returns(plan, returns_per_year)
        detail = (
            f"plan={plan} counters={','.join(counters) or '-'} "
            f"meters={','.join(m.feature for m in meters) or '-'} returns={returns_per_year}"
        )
        tx.append_audit(event(now, actor, "plan_usage_terms", detail=detail[:300]))
