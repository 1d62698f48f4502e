"""``fieldpass-hq``: the HQ command line. Parses options, calls ``service.HQ``, hands the
result to ``output``. Exit codes are decided in ``main`` only, from the error's type
(see ``errors`` and docs/hq.md). The clock is read here (``now``) and nowhere below.
"""

import getpass
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.wire import armor
from agent.wire.errors import WireError
from agent.wire.request import Request

from .. import output
from ..errors import (
    EXIT_NOINPUT,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    FingerprintMismatch,
    HQError,
    InvalidRequest,
)
from ..keystore import default_home
from ..models import Actor, EntitlementRow, Plan
from ..services import HQ
from ..units import format_time, parse_date, parse_duration

PROG = "fieldpass-hq"


class State:
    def __init__(self, home: Path) -> None:
        self.home = home
        self._hq: HQ | None = None

    @property
    def hq(self) -> HQ:
        if self._hq is None:
            self._hq = HQ(self.home)
        return self._hq


def _now() -> int:
    return int(time.time())


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return Actor(f"cli:{user}", "local")


def _state(ctx: click.Context) -> State:
    obj = ctx.find_object(State)
    assert obj is not None
    return obj


_FC = TypeVar("_FC", bound=Callable[..., Any])


def json_option(f: _FC) -> _FC:
    """``--json``: print a JSON document."""
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")(f)


def _duration(allow_zero: bool = False) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return parse_duration(value, allow_zero=allow_zero)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from e

    return convert


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_date(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FIELDPASS_HQ_HOME",
    help="HQ data directory (database and signing keys). "
    "Default: $FIELDPASS_HQ_HOME, else $XDG_DATA_HOME/fieldpass-hq, "
    "else ~/.local/share/fieldpass-hq.",
)
@click.version_option(package_name="fieldpass", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """Fieldpass HQ: signing keys, plans, licenses, seats; issues machine files.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq plans create robot-std --offline-ttl 365d --grace 30d --seats 10
      fieldpass-hq licenses create --plan robot-std --entitlement welding
      fieldpass-hq activate FP-XXXXX-... --fingerprint 3f2a... -o device.lic
      fieldpass-hq serve --port 8750
    """
    ctx.obj = State(home if home is not None else default_home())


# -- keys ----------------------------------------------------------------------------------
@cli.group()
def keys() -> None:
    """Ed25519 signing keys. Private keys stay in HOME/keys (mode 0600), never printed.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq keys list --json
      fieldpass-hq keys export -o keyring
    """


@keys.command("generate")
@json_option
@click.pass_context
def keys_generate(ctx: click.Context, as_json: bool) -> None:
    """Create a new signing key; it signs every machine file from now on.

    Prints the new key id. Devices must trust it: re-export the keyring.

    Examples:

    \b
      fieldpass-hq keys generate
      fieldpass-hq keys generate --json
    """
    info = _state(ctx).hq.generate_key(_now(), _actor())
    if as_json:
        output.emit_json(output.key_doc(info))
    else:
        output.emit_text(info.kid)


@keys.command("list")
@json_option
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List signing keys (public parts); the active one is marked.

    Examples:

    \b
      fieldpass-hq keys list
      fieldpass-hq keys list --json
    """
    infos = _state(ctx).hq.list_keys()
    if as_json:
        output.emit_json([output.key_doc(k) for k in infos])
        return
    rows = [[k.kid, "yes" if k.active else "", format_time(k.created_at)] for k in infos]
    output.emit_text(output.table(rows, ["KID", "ACTIVE", "CREATED"]))


@keys.command("export")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the keyring to FILE instead of stdout.",
)
@json_option
@click.pass_context
def keys_export(ctx: click.Context, out: Path | None, as_json: bool) -> None:
    """Write the public keyring that device images carry (all keys, old and new).

    Examples:

    \b
      fieldpass-hq keys export > keyring
      fieldpass-hq keys export -o meta-fieldpass/files/keyring
      fieldpass-hq keys export --json
    """
    keyring = _state(ctx).hq.keyring()
    text = keyring.dumps()
    if out is not None:
        output.write_file(out, text.encode("utf-8"))
    if as_json:
        doc: dict[str, Any] = {"kids": sorted(keyring.keys), "file": str(out) if out else None}
        if out is None:
            doc["keyring"] = text
        output.emit_json(doc)
    elif out is None:
        sys.stdout.write(text)
    else:
        output.emit_text(f"keyring with {len(keyring.keys)} key(s) written to {out}")


# -- plans ---------------------------------------------------------------------------------
@cli.group()
def plans() -> None:
    """Plans: product, offline TTL, grace period, warning window, seats.

    Examples:

    \b
      fieldpass-hq plans create robot-std --offline-ttl 365d --grace 30d --seats 10
      fieldpass-hq plans list
    """


@plans.command("create")
@click.argument("name")
@click.option(
    "--offline-ttl",
    callback=_duration(),
    metavar="DURATION",
    required=True,
    help="How long a machine file is valid offline (e.g. 365d).",
)
@click.option(
    "--grace",
    callback=_duration(allow_zero=True),
    metavar="DURATION",
    default="0s",
    show_default=True,
    help="Limited mode after expiry (e.g. 30d).",
)
@click.option(
    "--seats",
    type=click.IntRange(1, 1_000_000),
    required=True,
    help="Devices that may be active at once.",
)
@click.option(
    "--warn",
    callback=_duration(allow_zero=True),
    metavar="DURATION",
    default=None,
    help="Warning window before expiry. Default: a third of the file's TTL.",
)
@click.option("--product", default="default", show_default=True, help="Product name.")
@json_option
@click.pass_context
def plans_create(
    ctx: click.Context,
    name: str,
    offline_ttl: int,
    grace: int,
    seats: int,
    warn: int | None,
    product: str,
    as_json: bool,
) -> None:
    """Create plan NAME.

    Durations: a number and a unit, s m h d or w (3600s, 90m, 12h, 30d, 2w).

    Examples:

    \b
      fieldpass-hq plans create robot-std --offline-ttl 365d --grace 30d --seats 10
      fieldpass-hq plans create trial --offline-ttl 30d --grace 3d --seats 1 --warn 7d
      fieldpass-hq plans create cnc --offline-ttl 90d --seats 5 --product cnc-mill --json
    """
    plan = Plan(name, product, offline_ttl, grace, seats, warn, _now())
    _state(ctx).hq.create_plan(plan, _actor())
    if as_json:
        output.emit_json(output.plan_doc(plan))
    else:
        output.emit_text(f"plan {name} created")


@plans.command("list")
@json_option
@click.pass_context
def plans_list(ctx: click.Context, as_json: bool) -> None:
    """List plans.

    Examples:

    \b
      fieldpass-hq plans list
      fieldpass-hq plans list --json
    """
    all_plans = _state(ctx).hq.list_plans()
    if as_json:
        output.emit_json([output.plan_doc(p) for p in all_plans])
        return
    header = ["NAME", "PRODUCT", "OFFLINE-TTL", "GRACE", "WARN", "SEATS"]
    output.emit_text(output.table([output.plan_row(p) for p in all_plans], header))


# -- licenses ------------------------------------------------------------------------------
@cli.group()
def licenses() -> None:
    """Licenses: create, list, show, suspend, reinstate, revoke.

    Examples:

    \b
      fieldpass-hq licenses create --plan robot-std --entitlement welding:2027-06-30
      fieldpass-hq licenses list
      fieldpass-hq licenses show lic_0123456789abcdef0123
      fieldpass-hq licenses suspend lic_0123456789abcdef0123
    """


def _entitlement(text: str) -> EntitlementRow:
    feature, sep, date = text.partition(":")
    try:
        return EntitlementRow(feature.strip(), parse_date(date) if sep else None)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--entitlement") from e


@licenses.command("create")
@click.option("--plan", "plan_name", required=True, help="The plan this license follows.")
@click.option(
    "--entitlement",
    "entitlements",
    multiple=True,
    metavar="FEATURE[:DATE]",
    help="A feature flag, with an optional expiry date (repeatable).",
)
@click.option(
    "--expires",
    callback=_date,
    metavar="DATE",
    default=None,
    help="License expiry: YYYY-MM-DD (00:00 UTC that day) or an ISO 8601 time.",
)
@json_option
@click.pass_context
def licenses_create(
    ctx: click.Context,
    plan_name: str,
    entitlements: tuple[str, ...],
    expires: int | None,
    as_json: bool,
) -> None:
    """Create a license and print its key, the one time it is printed.

    The key is a secret: give it to the customer; HQ only ever shows the license id.

    Examples:

    \b
      fieldpass-hq licenses create --plan robot-std
      fieldpass-hq licenses create --plan robot-std --entitlement welding \\
          --entitlement vision:2027-06-30 --expires 2028-01-01
      fieldpass-hq licenses create --plan trial --json
    """
    rows = [_entitlement(e) for e in entitlements]
    lic = _state(ctx).hq.create_license(plan_name, rows, expires, _now(), _actor())
    if as_json:
        output.emit_json(output.license_doc(lic, lic.created_at, with_key=True))
    else:
        output.emit_text(lic.license_key)


@licenses.command("list")
@json_option
@click.pass_context
def licenses_list(ctx: click.Context, as_json: bool) -> None:
    """List licenses by id (never their keys), with status and seats in use.

    Examples:

    \b
      fieldpass-hq licenses list
      fieldpass-hq licenses list --json
    """
    now = _now()
    all_licenses = _state(ctx).hq.list_licenses()
    if as_json:
        output.emit_json([output.license_doc(lic, now) for lic in all_licenses])
        return
    rows = [
        [
            lic.id,
            lic.plan,
            output.license_doc(lic, now)["status"],
            str(lic.seats_used),
            format_time(lic.expires_at),
        ]
        for lic in all_licenses
    ]
    output.emit_text(output.table(rows, ["ID", "PLAN", "STATUS", "SEATS-USED", "EXPIRES"]))


@licenses.command("show")
@click.argument("id_or_key")
@json_option
@click.pass_context
def licenses_show(ctx: click.Context, id_or_key: str, as_json: bool) -> None:
    """Show one license (by id or key) and its activations.

    Examples:

    \b
      fieldpass-hq licenses show lic_0123456789abcdef0123
      fieldpass-hq licenses show FP-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX --json
    """
    now = _now()
    lic, acts = _state(ctx).hq.get_license(id_or_key)
    doc = output.license_doc(lic, now)
    doc["activations"] = [output.activation_doc(a) for a in acts]
    if as_json:
        output.emit_json(doc)
        return
    lines = [
        f"license   {lic.id}",
        f"plan      {lic.plan}",
        f"status    {doc['status']}",
        f"expires   {format_time(lic.expires_at)}",
        f"seats     {lic.seats_used} in use",
    ]
    for e in lic.entitlements:
        lines.append(f"feature   {e.feature} (until {format_time(e.expires_at)})")
    for a in acts:
        state = "live" if a.deactivated_at is None else "deactivated"
        lines.append(
            f"activation {a.id} {state} fingerprint {a.fingerprint[:16]}... serial {a.serial} "
            f"valid until {format_time(a.last_expires_at)}"
        )
    output.emit_text("\n".join(lines))


def _status_command(action: str, summary: str) -> None:
    @licenses.command(
        action,
        help=f"""{summary}

    Examples:

    \b
      fieldpass-hq licenses {action} lic_0123456789abcdef0123
      fieldpass-hq licenses {action} lic_0123456789abcdef0123 --json
    """,
    )
    @click.argument("license_id")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, license_id: str, as_json: bool) -> None:
        lic = _state(ctx).hq.set_status(license_id, action, _now(), _actor())
        if as_json:
            output.emit_json({"id": lic.id, "status": lic.status, "updated_at": lic.updated_at})
        else:
            output.emit_text(f"license {lic.id} is now {lic.status}")


_status_command("suspend", "Suspend a license: no activation or renewal until reinstated.")
_status_command("reinstate", "Lift a suspension.")
_status_command("revoke", "Revoke a license for good; devices learn it when they go online.")


# -- activations ---------------------------------------------------------------------------
machine_file_options = [
    click.option(
        "-o",
        "--output",
        "out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the machine file to FILE (binary CBOR unless --armor).",
    ),
    click.option(
        "--armor",
        "armored",
        is_flag=True,
        help="Write FILE as armored text. Without -o, armored text goes to stdout.",
    ),
    json_option,
]


F = TypeVar("F", bound=Callable[..., Any])


def _with_options(options: list[Any]) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _deliver(issued: Any, out: Path | None, armored: bool, as_json: bool) -> None:
    text = armor.armor(issued.machine_file, armor.MACHINE_FILE)
    if out is not None:
        output.write_file(out, text.encode("ascii") if armored else issued.machine_file)
    if as_json:
        output.emit_json(output.issued_doc(issued, str(out) if out else None))
    elif out is None:
        sys.stdout.write(text)
    else:
        output.emit_text(output.issued_text(issued, str(out)))


request_option = click.option(
    "--request",
    "request_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A request written on the device by `fieldpass request` (air-gapped flow).",
)


def _read_request(path: Path) -> Request:
    try:
        data = path.read_bytes()[: 64 * 1024]
    except OSError as e:
        raise click.FileError(str(path), e.strerror) from None
    try:
        return Request.parse(data)
    except WireError as e:
        raise InvalidRequest(f"{path}: not a Fieldpass request ({e})") from None


def _next_step(out: Path | None) -> None:
    where = str(out) if out else "the text above"
    click.echo(
        f"Next: carry {where} to the device and run `fieldpass install FILE` there; "
        "`fieldpass check` then exits 0.",
        err=True,
    )


@cli.command()
@click.argument("license_key")
@click.option("--fingerprint", help="The device fingerprint (64 hex).")
@request_option
@_with_options(machine_file_options)
@click.pass_context
def activate(
    ctx: click.Context,
    license_key: str,
    fingerprint: str | None,
    request_file: Path | None,
    out: Path | None,
    armored: bool,
    as_json: bool,
) -> None:
    """Activate LICENSE_KEY on a device: consume a seat, issue its machine file.

    The same fingerprint again consumes nothing and gets a fresh file (next serial).
    Past the seat limit the activation is refused (exit 1). The device prints its
    fingerprint with `fieldpass fingerprint`.

    Examples:

    \b
      fieldpass-hq activate FP-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX --fingerprint 3f2a... -o m.lic
      fieldpass-hq activate FP-XXXXX-... --fingerprint 3f2a... > machine-file.txt
      fieldpass-hq activate FP-XXXXX-... --fingerprint 3f2a... -o m.lic --json
      fieldpass-hq activate FP-XXXXX-... --request robot-17.request --armor -o answer.txt
    """
    if request_file is not None:
        if fingerprint:
            raise InvalidRequest("give --fingerprint or --request, not both")
        fingerprint = _read_request(request_file).fingerprint
    if not fingerprint or len(fingerprint) != 64:
        raise click.BadParameter(
            "a fingerprint is 64 lowercase hex characters (or give --request)",
            param_hint="--fingerprint",
        )
    issued = _state(ctx).hq.activate(license_key, fingerprint, _now(), _actor())
    _deliver(issued, out, armored, as_json)
    if not as_json:
        _next_step(out)


@cli.command("machine-file")
@click.argument("activation_id", required=False)
@click.option(
    "--ttl",
    callback=_duration(),
    metavar="DURATION",
    default=None,
    help="Validity of the new file, capped by the plan's offline TTL.",
)
@request_option
@_with_options(machine_file_options)
@click.pass_context
def machine_file(
    ctx: click.Context,
    activation_id: str | None,
    ttl: int | None,
    request_file: Path | None,
    out: Path | None,
    armored: bool,
    as_json: bool,
) -> None:
    """Renew: a fresh machine file for ACTIVATION_ID, without consuming a seat.

    Examples:

    \b
      fieldpass-hq machine-file act_0123456789abcdef0123 -o renewal.lic
      fieldpass-hq machine-file act_0123456789abcdef0123 --ttl 30d --armor -o renewal.txt
      fieldpass-hq machine-file act_0123456789abcdef0123 --json
      fieldpass-hq machine-file --request robot-17.request --armor -o renewal.txt
    """
    hq = _state(ctx).hq
    if request_file is not None:
        if activation_id:
            raise InvalidRequest("give ACTIVATION_ID or --request, not both")
        req = _read_request(request_file)
        if not req.activation_id:
            raise InvalidRequest(
                f"{request_file} is an activation request: answer it with "
                "`fieldpass-hq activate LICENSE_KEY --request FILE`"
            )
        if hq.get_activation(req.activation_id).fingerprint != req.fingerprint:
            raise FingerprintMismatch("the request's activation belongs to another device")
        activation_id = req.activation_id
    if not activation_id:
        raise InvalidRequest("name an ACTIVATION_ID or give --request")
    issued = hq.renew(_now(), _actor(), activation_id=activation_id, ttl_s=ttl)
    _deliver(issued, out, armored, as_json)
    if not as_json:
        _next_step(out)


@cli.command()
@click.argument("activation_id")
@json_option
@click.pass_context
def deactivate(ctx: click.Context, activation_id: str, as_json: bool) -> None:
    """Deactivate ACTIVATION_ID and free its seat.

    Examples:

    \b
      fieldpass-hq deactivate act_0123456789abcdef0123
      fieldpass-hq deactivate act_0123456789abcdef0123 --json
    """
    act = _state(ctx).hq.deactivate(_now(), _actor(), activation_id=activation_id)
    if as_json:
        output.emit_json(output.activation_doc(act))
    else:
        output.emit_text(f"activation {act.id} deactivated: seat freed")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--license", "license_id", default=None, help="Only this license's events.")
@json_option
@click.pass_context
def audit(ctx: click.Context, limit: int, license_id: str | None, as_json: bool) -> None:
    """Show the newest LIMIT entries of the append-only audit log, oldest first.

    Examples:

    \b
      fieldpass-hq audit
      fieldpass-hq audit --limit 20 --json
      fieldpass-hq audit --license lic_0123456789abcdef0123
    """
    events = _state(ctx).hq.audit(limit, license_id)
    if as_json:
        output.emit_json([output.audit_doc(e) for e in events])
        return
    rows = [
        [
            format_time(e.at),
            e.actor,
            e.source,
            e.action,
            e.license_id or "-",
            e.activation_id or "-",
            e.detail or "",
        ]
        for e in events
    ]
    header = ["AT", "WHO", "FROM", "ACTION", "LICENSE", "ACTIVATION", "DETAIL"]
    output.emit_text(output.table(rows, header))


@cli.group()
def tokens() -> None:
    """Bearer tokens for the admin HTTP API.

    Examples:

    \b
      fieldpass-hq tokens create ops-console
    """


@tokens.command("create")
@click.argument("name")
@json_option
@click.pass_context
def tokens_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create admin token NAME and print it, once: HQ keeps only its hash.

    Examples:

    \b
      fieldpass-hq tokens create ops-console
      fieldpass-hq tokens create ci --json
    """
    token = _state(ctx).hq.create_token(name, _now(), _actor())
    if as_json:
        output.emit_json({"name": name, "token": token})
    else:
        output.emit_text(token)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8750, show_default=True)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM certificate: serve HTTPS.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the database.",
)
@click.option(
    "--forwarded-allow-ips",
    metavar="ADDRS",
    default=None,
    help="Behind a reverse proxy: its address(es), trusted for X-Forwarded-For.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="A line per request (method, path, status, client; never a body). Off when the "
    "proxy in front logs requests: about 20% more requests per second.",
)
@json_option
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int,
    forwarded_allow_ips: str | None,
    access_log: bool,
    as_json: bool,
) -> None:
    """Run the HTTP API (device and admin endpoints) over this HOME's database.

    Examples:

    \b
      fieldpass-hq serve
      fieldpass-hq serve --host 127.0.0.1 --port 8750 --workers 2
      fieldpass-hq serve --host 0.0.0.0 --port 8443 --tls-cert hq.pem --tls-key hq.key
      fieldpass-hq serve --forwarded-allow-ips 127.0.0.1 --no-access-log
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        from .. import server  # type: ignore[attr-defined, unused-ignore]
    except ImportError as e:
        raise InvalidRequest(
            f"the server needs the 'hq' extra: pip install 'fieldpass[hq]' ({e})"
        ) from e
    state = _state(ctx)
    state.hq.store.close()  # check the home is usable before forking workers
    server.run(
        state.home,
        host,
        port,
        tls_cert,
        tls_key,
        workers,
        as_json,
        access_log=access_log,
        forwarded_allow_ips=forwarded_allow_ips,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the one place that turns outcomes into exit codes."""
    try:
        cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        _error("aborted")
        return 130
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _error(f"{e.format_message()}{hint}")
        return EXIT_USAGE
    except click.FileError as e:
        _error(e.format_message())
        return EXIT_NOINPUT
    except HQError as e:
        _error(e.message)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except Exception as e:
        _error(f"internal error ({type(e).__name__}): please report it")
        return EXIT_SOFTWARE
    return 0


def _error(message: str) -> None:
    one_line = " ".join(message.split())
    sys.stderr.write(f"{PROG}: error: {one_line}\n")


# Commands kept in modules of their own register themselves on `cli` when imported:
# fieldpass-hq provision, fieldpass-hq field export|serve|import.
from . import field, provision  # noqa: E402, F401

# fieldpass-hq bridge|push|broker-config (the MQTT channel): cli/mqtt.py.
from .mqtt import register as _register_mqtt  # noqa: E402

_register_mqtt(cli)
