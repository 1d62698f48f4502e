"""``fieldpass-hq usage``: what devices reported (per device, license and period, as a
table, ``--json`` or ``--csv`` for billing), reports carried by hand, and a plan's usage
terms (counters, metered entitlements, a limit on returns).

Parses options and prints; the rules are services/usage.py's.
"""

import sys
from pathlib import Path

import click

from agent.wire import armor

from ..errors import InvalidRequest
from ..models import PlanMeter
from ..services.usage import set_terms
from ..services.usage_view import billing_csv
from ..units import format_time, parse_date, parse_duration
from . import common, output

MAX_FILE_BYTES = 4 * 1024 * 1024


def read_armored(path: Path, label: str) -> list[bytes]:
    """Every ``label`` block in the file at ``path`` (a report or receipt carried by hand,
    several pasted one after the other are fine)."""
    try:
        with path.open("rb") as f:
            text = f.read(MAX_FILE_BYTES + 1).decode("utf-8", "replace")
    except OSError as e:
        raise click.FileError(str(path), e.strerror) from None
    if len(text) > MAX_FILE_BYTES:
        raise InvalidRequest(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    begin = f"-----BEGIN {label}-----"
    blocks = []
    for part in text.split(begin)[1:]:
        try:
            blocks.append(armor.unarmor(begin + part, label))
        except Exception as e:
            raise InvalidRequest(f"{path}: a damaged {label.lower()} ({e})") from None
    if not blocks:
        raise InvalidRequest(f"{path}: no {label} in it")
    return blocks


@click.group()
def usage() -> None:
    """Usage reported by devices, and plans' usage terms.

    Examples:

    \b
      fieldpass-hq usage show --license lic_0123456789abcdef0123 --since 2026-01-01
      fieldpass-hq usage show --csv > usage.csv
      fieldpass-hq usage import robot-17.report
      fieldpass-hq usage terms robot-std --counter units --meter welding:operating_s:7200000:365d
    """


@usage.command("show")
@click.option("--license", "license_id", help="Only this license's devices.")
@click.option("--device", "activation_id", help="Only this activation.")
@click.option("--since", help="Reports received from this date (YYYY-MM-DD).")
@click.option("--until", help="Reports received before this date (YYYY-MM-DD).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per device and counter.")
@common.json_option
@click.pass_context
def usage_show(
    ctx: click.Context,
    license_id: str | None,
    activation_id: str | None,
    since: str | None,
    until: str | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Usage per device over a period: the last counters reported and their growth.

    Examples:

    \b
      fieldpass-hq usage show
      fieldpass-hq usage show --license lic_0123456789abcdef0123 --since 2026-01-01 --json
      fieldpass-hq usage show --since 2026-01-01 --until 2026-02-01 --csv
    """
    try:
        start = parse_date(since) if since else None
        end = parse_date(until) if until else None
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    rows = common.state(ctx).hq.usage.usage(license_id, activation_id, start, end)
    if as_json:
        output.emit_json(rows)
        return
    if as_csv:
        sys.stdout.write(billing_csv(rows))
        return
    table = [
        [
            str(r["activation_id"]),
            str(r["license_id"]),
            " ".join(f"{k}={v}" for k, v in sorted(r["counters"].items())),  # type: ignore[attr-defined]
            format_time(int(str(r["last_at"]))),
        ]
        for r in rows
    ]
    output.emit_text(output.table(table, ["ACTIVATION", "LICENSE", "COUNTERS", "LAST REPORT"]))


@usage.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@common.json_option
@click.pass_context
def usage_import(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Import usage reports carried from an air-gapped device (`fieldpass report`).

    Each is verified against its activation's device key; a replayed or older report is
    refused with its reason and changes nothing.

    Examples:

    \b
      fieldpass-hq usage import robot-17.report
    """
    hq = common.state(ctx).hq
    results = []
    for data in read_armored(file, armor.REPORT):
        try:
            accepted = hq.usage.accept_report(data, common.now(), "air-gapped", common.actor())
        except InvalidRequest:
            raise
        except Exception as e:  # HQError: each report's own outcome
            from ..errors import HQError

            if not isinstance(e, HQError):
                raise
            results.append({"accepted": False, "code": e.code, "message": e.message})
            continue
        r = accepted.report
        results.append(
            {"accepted": True, "activation_id": r.activation_id, "seq": r.seq,
             "counters": r.counters, "regression": accepted.regression}
        )  # fmt: skip
    if as_json:
        output.emit_json(results)
    else:
        for res in results:
            if res["accepted"]:
                output.emit_text(f"report {res['seq']} of {res['activation_id']} accepted")
            else:
                output.emit_text(f"refused: {res['message']} ({res['code']})")
    if not all(r["accepted"] for r in results):
        ctx.exit(1)


def _meter(text: str) -> PlanMeter:
    parts = text.split(":")
    if len(parts) != 4:
        raise click.BadParameter(
            f"{text!r}: FEATURE:COUNTER:LIMIT:PERIOD (e.g. welding:operating_s:7200000:365d)"
        )
    try:
        return PlanMeter(parts[0], parts[1], int(parts[2]), parse_duration(parts[3]))
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: {e}") from None


@usage.command("terms")
@click.argument("plan")
@click.option("--counter", "counters", multiple=True, help="A counter the devices keep (repeat).")
@click.option(
    "--meter",
    "meters",
    multiple=True,
    metavar="FEATURE:COUNTER:LIMIT:PERIOD",
    help="A metered entitlement (repeat), e.g. welding:operating_s:7200000:365d.",
)
@click.option(
    "--returns-per-year", type=click.IntRange(0, 1000), help="A limit on license returns."
)
@common.json_option
@click.pass_context
def usage_terms(
    ctx: click.Context,
    plan: str,
    counters: tuple[str, ...],
    meters: tuple[str, ...],
    returns_per_year: int | None,
    as_json: bool,
) -> None:
    """Set PLAN's usage terms (replacing the previous ones; audited). Files issued from
    now on carry them; a meter's period and starting value are HQ's, never reset by a
    renewal the device asks for.

    Examples:

    \b
      fieldpass-hq usage terms robot-std --counter units --counter welds
      fieldpass-hq usage terms robot-std --meter welding:operating_s:7200000:365d
      fieldpass-hq usage terms robot-std --returns-per-year 3
    """
    parsed = [_meter(m) for m in meters]
    set_terms(
        common.state(ctx).hq.store,
        plan,
        list(counters),
        parsed,
        returns_per_year,
        common.now(),
        common.actor(),
    )
    doc = {
        "plan": plan,
        "counters": list(counters),
        "meters": [m.__dict__ for m in parsed],
        "returns_per_year": returns_per_year,
    }
    if as_json:
        output.emit_json(doc)
    else:
        output.emit_text(f"plan {plan}: usage terms set")
