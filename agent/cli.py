"""The ``fieldpass`` command line (everything but the boot gate's fast path).

Commands parse options, call the device library, and hand a result to a reporter
(text or ``--json``). Exit codes are decided in ``run`` from typed errors, nowhere
else; data goes to stdout, messages to stderr.
"""

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from . import __version__, clock, exitcodes, fsio, gate, perms, report
from .config import Config, ConfigError, load
from .device import Device, InstallRefused, Outcome, ReceiptWaiting
from .identity import IdentityError
from .verdict import EXIT_CODES
from .wire import license_key

EPILOG_EXIT = "Exit codes: see `fieldpass check --help` and the README."


class CliError(Exception):
    def __init__(self, message: str, code: int, reason: str = "usage") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class Context:
    def __init__(self, root: str, config: str | None, state_dir: str | None) -> None:
        self.root = root
        self.config_path = config
        self.state_dir = state_dir
        self._cfg: Config | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = load(self.root, self.config_path, self.state_dir)
        return self._cfg

    def device(self) -> Device:
        return Device(self.cfg)


pass_ctx = click.make_pass_decorator(Context)


def emit(data: object, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    default="",
    metavar="DIR",
    help="Treat DIR as the device's root: every device path (config, keyring, state, "
    "verdict, /sys, /etc/machine-id) is read below it. For image builds and tests.",
)
@click.option("--config", metavar="FILE", help="Config file [default: /etc/fieldpass/agent.toml].")
@click.option(
    "--state-dir", metavar="DIR", help="Persistent state directory [default: /data/fieldpass]."
)
@click.version_option(__version__, prog_name="fieldpass")
@click.pass_context
def cli(ctx: click.Context, root: str, config: str | None, state_dir: str | None) -> None:
    """Fieldpass device agent: offline license check for this equipment.

    \b
    Examples:
      fieldpass fingerprint --json
      fieldpass install machine.file --license-key-file key.txt
      fieldpass check
      fieldpass status --json
    """
    ctx.obj = Context(root, config, state_dir)


@cli.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def check(c: Context, args: tuple[str, ...]) -> None:
    """The boot gate: decide, write the verdict files, exit with the verdict.

    \b
    Exit: 0 valid, 10 grace (limited mode), 20 expired, 30 not activated,
    31 invalid, 32 revoked, 40 clock rollback; 2 usage, 70 internal error,
    71 no access to the device's data (run as root), 75 locked, 78 configuration.

    \b
    Examples:
      fieldpass check
      fieldpass check --json
    """
    sys.exit(gate.main(c.root, c.config_path, c.state_dir, list(args)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"fingerprint", "source"}.')
@pass_ctx
def fingerprint(c: Context, as_json: bool) -> None:
    """Print this device's fingerprint (the source used goes to stderr).

    The fingerprint is an application-specific hash of the raw hardware id; the raw
    id itself is never shown.

    \b
    Examples:
      fieldpass fingerprint
      fieldpass fingerprint --json
      fieldpass --root /mnt/image fingerprint
    """
    identity = c.device().identity
    if as_json:
        emit({"fingerprint": identity.fingerprint, "source": identity.source}, True, "")
    else:
        click.echo(identity.fingerprint)
        click.echo(f"fieldpass: fingerprint source: {identity.source}", err=True)


def _read_input(path: str) -> bytes:
    limit = 256 * 1024
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            raise CliError(f"{path}: {e.strerror}", exitcodes.EX_NOINPUT, "no_input") from None
    if len(data) > limit:
        raise CliError(f"{path}: larger than any machine file", EXIT_CODES["invalid"], "too_large")
    return data


def _read_key(key: str | None, key_file: str | None) -> str | None:
    if key and key_file:
        raise CliError("give --license-key or --license-key-file, not both", exitcodes.EX_USAGE)
    if key_file:
        try:
            with open(key_file, encoding="ascii", errors="replace") as f:
                key = f.read(256)
        except OSError as e:
            raise CliError(f"{key_file}: {e.strerror}", exitcodes.EX_NOINPUT, "no_input") from None
    if key is None:
        return None
    try:
        return license_key.normalize(key)
    except ValueError as e:
        raise CliError(str(e), exitcodes.EX_USAGE, "bad_license_key") from None


def _evaluate(c: Context, device: Device, now: int) -> Outcome:
    """The gate's decision without counting a boot; a user who may not read the data
    directory gets exit 71 and the sentence saying why, never a verdict on the file."""
    try:
        return device.evaluate(now, record=False)
    except fsio.NoAccess:
        raise CliError(
            report.no_access_message(c.cfg), exitcodes.EX_NOACCESS, "no_access"
        ) from None


def _refresh_verdict(c: Context, device: Device) -> dict[str, object]:
    now = _now()
    outcome = _evaluate(c, device, now)
    doc = report.document(outcome, now)
    doc["notes"] = [*perms.warnings(c.cfg), *outcome.notes, *doc["notes"]]  # type: ignore[misc]
    doc["notes"] += report.write_files(c.cfg, doc)  # type: ignore[operator]
    return doc


@cli.command()
@click.argument("file", metavar="FILE|-")
@click.option("--license-key-file", metavar="FILE", help="File holding the license key.")
@click.option(
    "--license-key",
    metavar="KEY",
    help="The license key (visible in the process list: prefer --license-key-file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def install(
    c: Context, file: str, license_key_file: str | None, license_key: str | None, as_json: bool
) -> None:
    """Verify a machine file (binary or armored text) and store it on this device.

    An armored revocation signed by HQ for this device is taken too, and recorded.

    The license key is needed the first time (it is stored beside the file, mode
    0600). An invalid file, another device's file or an older serial than the stored
    one is refused with the verdict's exit code (31), and the stored file stays.

    \b
    Examples:
      fieldpass install machine.file --license-key-file key.txt
      fieldpass install - < renewal.txt
    """
    data = _read_input(file)
    key = _read_key(license_key, license_key_file)
    device = c.device()
    if b"-----BEGIN FIELDPASS REVOCATION-----" in data:
        from .wire.errors import WireError

        try:
            with device.writer_lock():
                result = device.apply_revocation(data)
        except WireError as e:
            raise CliError(f"revocation refused: {e}", EXIT_CODES["invalid"], e.reason) from None
        doc = _refresh_verdict(c, device)
        emit(doc, as_json, f"Revocation from HQ {result}.\n{doc['message']}")
        return
    with device.writer_lock():
        claims, result = device.install(data, key, _now())
        doc = _refresh_verdict(c, device)
    what = (
        f"Installed machine file serial {claims.serial} (activation {claims.activation_id})"
        if result == "installed"
        else f"Machine file serial {claims.serial} is already installed: nothing changed"
    )
    doc["install"] = result
    emit(doc, as_json, f"{what}.\n{doc['message']}\nNext: run `fieldpass check` (the boot gate).")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_ctx
def status(c: Context, as_json: bool) -> None:
    """Show what the gate decides now and why, without counting a boot.

    \b
    Examples:
      fieldpass status
      fieldpass status --json
    """
    device = c.device()
    now = _now()
    outcome = _evaluate(c, device, now)
    doc = report.document(outcome, now)
    doc["notes"] = [*perms.warnings(c.cfg), *outcome.notes, *doc["notes"]]  # type: ignore[misc]
    doc["fingerprint"] = outcome.identity.fingerprint
    doc["clock_policy"] = c.cfg.clock_policy
    doc["clock_tolerance_s"] = c.cfg.tolerance_s
    st = outcome.state
    doc["high_water_mark"] = report.iso(st.hwm) if st else None
    if as_json:
        emit(doc, True, "")
        return
    lines = [f"Verdict:       {doc['verdict']} (exit {doc['exit_code']})", f"  {doc['message']}"]
    if doc["warning"]:
        lines.append(f"  {doc['warning']}")
    if doc["license_id"]:
        lines += [
            f"License:       {doc['license_id']} (product {doc['product']}, plan {doc['plan']})",
            f"Activation:    {doc['activation_id']}, serial {doc['serial']}",
            f"Valid until:   {doc['expires_at']} ({doc['days_left']} days left)",
            f"Grace ends:    {doc['grace_ends_at']}",
            f"Entitlements:  {', '.join(doc['entitlements']) or '-'}",  # type: ignore[arg-type]
        ]
    lines += [
        f"Fingerprint:   {doc['fingerprint']} (source: {doc['fingerprint_source']})",
        f"Boot counter:  {doc['boot_counter'] if doc['boot_counter'] is not None else '-'}",
        f"Clock:         policy {c.cfg.clock_policy}, tolerance {c.cfg.tolerance_s} s, "
        f"trusted mark {doc['high_water_mark'] or '-'}",
    ]
    lines += [f"Warning:       {note}" for note in doc["notes"]]  # type: ignore[attr-defined]
    click.echo("\n".join(lines))
    sys.exit(int(str(doc["exit_code"])))


F = TypeVar("F", bound=Callable[..., Any])


def server_options(f: F) -> F:
    """--server and --timeout, shared by every command that talks to HQ."""
    f = click.option(
        "--timeout",
        "timeout_s",
        type=click.IntRange(1, 120),
        help="Seconds to wait for HQ [default: [online] timeout_s, 5].",
    )(f)
    return click.option(
        "--server",
        metavar="URL",
        help="HQ's URL [default: [online] server, then servers, in agent.toml].",
    )(f)


def _report_install(
    c: Context,
    device: Device,
    claims: object,
    result: str,
    as_json: bool,
    extra: dict[str, object] | None = None,
    extra_line: str = "",
) -> None:
    doc = _refresh_verdict(c, device)
    doc["install"] = result
    doc.update(extra or {})
    serial = doc.get("serial")
    what = (
        f"Installed machine file serial {serial} (activation {doc.get('activation_id')})"
        if result == "installed"
        else f"Machine file serial {serial} is already installed: nothing changed"
    )
    emit(doc, as_json, f"{what}.\n{extra_line}{doc['message']}")


@cli.command()
@click.argument("license_key", metavar="LICENSE_KEY")
@server_options
@click.option(
    "--allow-http",
    is_flag=True,
    help="Send the license key over plain http:// to a host other than this machine "
    "(it crosses the network in clear text: only on a network you trust).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def activate(
    c: Context,
    license_key: str,
    server: str | None,
    timeout_s: int | None,
    allow_http: bool,
    as_json: bool,
) -> None:
    """Activate this device online (takes one seat) and install its machine file.

    The license key is sent this once, to HQ, and should go over TLS (https://):
    plain http:// is refused unless HQ runs on this machine or --allow-http is given,
    and warned about either way. Afterwards the device signs its requests with its own
    key and never sends the license key again.

    \b
    Examples:
      fieldpass activate FP-ABCDE-FGHJK-LMNPQ-RSTUV-WXYZ2 --server https://hq.example.com
      fieldpass activate "$(cat key.txt)"
    """
    from . import online, sync

    key = _read_key(license_key, None)
    assert key is not None
    device = c.device()
    servers = online.hqs(c.cfg, server, timeout_s)
    for hq in servers:
        if not hq.server.startswith("http://"):
            continue
        if not (online.is_loopback(hq.server) or allow_http):
            raise CliError(
                f"refusing to send the license key over plain http:// to {hq.server}: "
                "use https:// (or --allow-http on a network you trust)",
                exitcodes.EX_USAGE,
            )
        click.echo(
            f"fieldpass: warning: activating over plain http:// ({hq.server}): the license "
            "key crosses the network in clear text; use https:// for HQ",
            err=True,
        )
    claims, result = sync.activate(device, servers, key, _now())
    _report_install(c, device, claims, result, as_json)


@cli.command()
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def refresh(c: Context, server: str | None, timeout_s: int | None, as_json: bool) -> None:
    """Renew the machine file from HQ now (no seat is taken).

    \b
    Examples:
      fieldpass refresh
      fieldpass refresh --server https://hq.example.com --timeout 10
    """
    from . import online, sync

    device = c.device()
    claims, result, _ = sync.refresh(device, online.hqs(c.cfg, server, timeout_s), _now())
    _report_install(c, device, claims, result, as_json)


@cli.command("prepare-offline")
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    help="Days of offline validity to ask for [default: the longest the plan allows].",
)
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def prepare_offline(
    c: Context, days: int | None, server: str | None, timeout_s: int | None, as_json: bool
) -> None:
    """Before going offline: ask HQ for the longest machine file the plan allows.

    \b
    Examples:
      fieldpass prepare-offline
      fieldpass prepare-offline --days 30
    """
    from . import online, sync

    device = c.device()
    ttl_s = days * 86400 if days else None
    claims, result, _ = sync.refresh(device, online.hqs(c.cfg, server, timeout_s), _now(), ttl_s)
    granted_days = max(0, claims.expires_at - claims.issued_at) // 86400
    capped = days is not None and granted_days < days
    extra: dict[str, object] = {"granted_days": granted_days, "asked_days": days, "capped": capped}
    line = f"HQ granted {granted_days} days of offline validity.\n"
    if capped:
        line = (
            f"HQ granted {granted_days} days of offline validity, not the {days} asked: "
            "the most this license's plan allows.\n"
        )
    _report_install(c, device, claims, result, as_json, extra, line)


@cli.command()
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def deactivate(c: Context, server: str | None, timeout_s: int | None, as_json: bool) -> None:
    """Free this device's seat at HQ and remove the local machine file and key.

    \b
    Examples:
      fieldpass deactivate
    """
    from . import online, sync

    sync.deactivate(c.device(), online.hqs(c.cfg, server, timeout_s), _now())
    emit(
        {"deactivated": True},
        as_json,
        "Deactivated: HQ freed the seat and the local machine file was removed.",
    )


@cli.command()
@click.option("-o", "--output", metavar="FILE", help="Write the request to FILE [default: stdout].")
@pass_ctx
def request(c: Context, output: str | None) -> None:
    """Write an activation or renewal request for the air-gapped flow.

    The armored text holds the fingerprint, the current activation and serial (if
    any), the device name and the agent version: nothing secret. Carry it to HQ, where
    `fieldpass-hq activate --request FILE` (first time) or `fieldpass-hq machine-file
    --request FILE` (renewal) answers it; then `fieldpass install` the answer here.

    \b
    Examples:
      fieldpass request
      fieldpass request -o /media/usb/robot-17.request
    """
    from . import asks

    device = c.device()
    with device.writer_lock():
        text, standing = asks.request(device, _now())
    if standing.lost:
        kind = "recovery"
        hq_command = "machine-file --request FILE -o answer.txt"
    elif standing.activation_id:
        kind = "renewal"
        hq_command = "machine-file --request FILE -o answer.txt"
    else:
        kind = "activation"
        hq_command = "activate LICENSE_KEY --request FILE -o answer.txt"
    install_hint = "fieldpass install answer.txt"
    if not standing.activation_id:
        install_hint += " --license-key-file KEYFILE"
    if output:
        import os

        fsio.atomic_write(os.path.abspath(output), text.encode("ascii"))
        where = output
    else:
        click.echo(text, nl=False)
        where = "the text above"
    click.echo(
        f"fieldpass: {kind} request written to {where}. Next: at HQ run "
        f"`fieldpass-hq {hq_command}`, then here `{install_hint}`.",
        err=True,
    )


@cli.group()
def usage() -> None:
    """What the equipment did: counters that only grow, reported to HQ signed.

    Fieldpass counts `boots` and `operating_s` (seconds of operation while the license
    is valid or in grace) itself; the application counts what its plan declares.

    \b
    Examples:
      fieldpass usage add units 12
      fieldpass usage show --json
    """


@usage.command("add")
@click.argument("name")
@click.argument("count", type=click.IntRange(1, 1 << 32), default=1)
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@pass_ctx
def usage_add(c: Context, name: str, count: int, as_json: bool) -> None:
    """Add COUNT (default 1) to the counter NAME, one the plan declares.

    Crash-safe (written with the state); about 40 ms a call: an application counting
    many events a second adds them up and calls this now and then, or uses the daemon's
    socket (docs/usage.md).

    \b
    Examples:
      fieldpass usage add units
      fieldpass usage add units 250
    """
    from . import usage as counting

    device = c.device()
    try:
        with device.writer_lock():
            st = device.add_usage(name, count)
    except counting.UsageError as e:
        raise CliError(str(e), exitcodes.EX_USAGE) from None
    values = counting.counters(st)
    emit(values, as_json, f"{name}: {values.get(name, 0)}")


@usage.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@pass_ctx
def usage_show(c: Context, as_json: bool) -> None:
    """Show every counter (reads only).

    \b
    Examples:
      fieldpass usage show
      fieldpass usage show --json
    """
    from . import usage as counting

    st = c.device().load_state()
    values = counting.counters(st) if st is not None else {}
    emit(values, as_json, "\n".join(f"{k}: {v}" for k, v in sorted(values.items())) or "-")


@cli.command("report")
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE [default: stdout].")
@click.option("--json", "as_json", is_flag=True, help='Print {"report", "counters"} as JSON.')
@pass_ctx
def usage_report(c: Context, output: str | None, as_json: bool) -> None:
    """Write a usage report signed by this device (armored) for the air-gapped site.

    It carries the cumulative counters and a sequence number: HQ keeps the highest, so
    a report lost or carried twice loses or doubles nothing. At HQ: `fieldpass-hq usage
    import FILE`.

    \b
    Examples:
      fieldpass report -o /media/usb/robot-17.report
    """
    from . import usage as counting
    from .wire import armor

    device = c.device()
    with device.writer_lock():
        data = device.report(_now())
    text = armor.armor(data, armor.REPORT)
    st = device.load_state()
    if as_json:
        values = counting.counters(st) if st is not None else {}
        emit({"report": text, "counters": values, "file": output}, True, "")
        if output:
            _write_or_echo(output, text)
        return
    _write_or_echo(output, text)
    click.echo(
        "fieldpass: usage report written. Next: at HQ run `fieldpass-hq usage import FILE`.",
        err=True,
    )


@cli.command("return")
@click.option("-o", "--output", metavar="FILE", help="Write the receipt to FILE [default: stdout].")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help='Print {"receipt", ...} as JSON.')
@pass_ctx
def give_back(c: Context, output: str | None, yes: bool, as_json: bool) -> None:
    """Give the license back offline: destroy the machine file and the license key, and
    write a receipt signed by this device (armored) that frees the seat at HQ.

    From then on the gate exits 30 and no kept file of this activation installs again.
    Refused for a revoked device or one in lost state. The receipt is also kept in the
    state directory until HQ has seen it (the daemon sends it when it next reaches HQ).

    \b
    Examples:
      fieldpass return -o /media/usb/robot-17.receipt
      fieldpass return --yes
    """
    from .wire import armor

    device = c.device()
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                "giving the license back is final: confirm on a terminal or pass --yes",
                exitcodes.EX_USAGE,
            )
        click.confirm(
            "Give this device's license back? The equipment stops running (exit 30)", abort=True
        )
    with device.writer_lock():
        receipt = device.give_back(_now())
    text = armor.armor(receipt, armor.RECEIPT)
    if as_json:
        if output:
            _write_or_echo(output, text)
        emit({"receipt": text, "returned": True, "file": output}, True, "")
        return
    _write_or_echo(output, text)
    click.echo(
        "fieldpass: license given back. Next: carry the receipt to HQ "
        "(`fieldpass-hq deactivate --receipt FILE`) to free the seat.",
        err=True,
    )


def _write_or_echo(output: str | None, text: str) -> None:
    if output:
        import os

        fsio.atomic_write(os.path.abspath(output), text.encode("ascii"))
    else:
        click.echo(text, nl=False)


@cli.group()
def tpm() -> None:
    """The TPM 2.0 anchor of the device state ([tpm] enabled; docs/tpm.md).

    \b
    Examples:
      fieldpass tpm provision --json
      fieldpass tpm status
    """


def _tpm_report(reading: object, as_json: bool, what: str) -> None:
    from .tpm import Reading

    assert isinstance(reading, Reading)
    doc = {
        "counter": reading.counter,
        "unrecorded_counter": reading.unrecorded,
        "secret": reading.secret is not None,
        "provisioned": reading.provisioned,
        "held_state": reading.held_state,
    }
    emit(
        doc,
        as_json,
        f"{what}: state counter {reading.counter}, unrecorded-boot counter "
        f"{reading.unrecorded}, secret {'present' if reading.secret else 'absent'}"
        + (" (the device has held a state)" if reading.held_state else ""),
    )


@tpm.command("provision")
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@pass_ctx
def tpm_provision(c: Context, as_json: bool) -> None:
    """Define the TPM indices if missing (the factory step; `request` and `activate` do
    it too). Prints the state counter: HQ's first file for this device must name it.

    \b
    Examples:
      fieldpass tpm provision
      fieldpass tpm provision --json
    """
    device = c.device()
    if not c.cfg.tpm_enabled:
        raise CliError("[tpm] is not enabled in agent.toml", exitcodes.EX_CONFIG)
    with device.writer_lock():
        reading = device.provision_tpm()
    _tpm_report(reading, as_json, "TPM provisioned")


@tpm.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@pass_ctx
def tpm_status(c: Context, as_json: bool) -> None:
    """Show the TPM indices the state is bound to (reads only).

    \b
    Examples:
      fieldpass tpm status --json
    """
    from .tpm import TpmError

    device = c.device()
    anchor = device.anchor()
    if anchor is None:
        raise CliError("[tpm] is not enabled in agent.toml", exitcodes.EX_CONFIG)
    try:
        reading = anchor.read()
    except TpmError as e:
        raise CliError(f"TPM unreadable: {e}", exitcodes.EX_IOERR) from None
    _tpm_report(reading, as_json, "TPM")


@cli.command("run")
@click.option(
    "--once",
    is_flag=True,
    help="Do one pass (connect, renew if due, report) and exit: for cron and tests.",
)
@pass_ctx
def run_daemon(c: Context, once: bool) -> None:
    """The long-running agent: renews over MQTT or HTTP when connectivity appears.

    Under systemd it is Type=notify with watchdog pings; without systemd a plain
    foreground process. SIGTERM stops it cleanly. See docs/daemon.md.

    \b
    Examples:
      fieldpass run
      fieldpass --root /mnt/image run --once
    """
    from .daemon.main import main as daemon_main

    sys.exit(daemon_main(c.cfg, once=once))


def _now() -> int:
    return clock.now()


def _die(message: str, code: int, reason: str, as_json: bool) -> NoReturn:
    """One line on stderr; with ``--json`` also ``{"error", "reason", "exit_code"}`` on
    stdout, ``reason`` being the stable code a program acts on."""
    if as_json:
        click.echo(json.dumps({"error": message, "reason": reason, "exit_code": code}))
    click.echo(f"fieldpass: error: {message}", err=True)
    sys.exit(code)


def _classify(e: Exception) -> tuple[str, int, str] | None:
    """(message, exit code, reason) for a typed error; None for a bug."""
    from . import online

    if isinstance(e, CliError):
        return str(e), e.code, e.reason
    if isinstance(e, InstallRefused):
        return str(e), EXIT_CODES[e.verdict_name], e.reason
    if isinstance(e, ConfigError):
        return str(e), exitcodes.EX_CONFIG, e.reason
    if isinstance(e, IdentityError):
        return str(e), exitcodes.EX_CONFIG, "no_identity"
    if isinstance(e, online.Refused):
        return f"HQ refused: {e} ({e.code})", exitcodes.EX_NOPERM, e.code
    if isinstance(e, online.Unreachable):
        return str(e), exitcodes.EX_UNAVAILABLE, "unreachable"
    if isinstance(e, online.OnlineError):
        return str(e), exitcodes.EX_USAGE, "usage"
    if isinstance(e, (fsio.LockTimeout, ReceiptWaiting)):
        return str(e), exitcodes.EX_TEMPFAIL, e.reason
    if isinstance(e, fsio.NoAccess):
        return str(e), exitcodes.EX_NOACCESS, e.reason
    if isinstance(e, fsio.StorageError):
        return str(e), exitcodes.EX_CANTCREAT, e.reason
    if isinstance(e, OSError):
        return fsio.describe(e), exitcodes.EX_CANTCREAT, "cannot_write"
    return None


def run(args: list[str]) -> None:
    """Run the CLI and map every typed error to its exit code (the one place)."""
    as_json = "--json" in args
    try:
        cli.main(args, prog_name="fieldpass", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        e.show()
        sys.exit(exitcodes.USAGE)
    except click.Abort:
        _die("aborted", 130, "aborted", as_json)
    except Exception as e:
        known = _classify(e)
        if known is None:  # a bug: one line, never a traceback
            known = (
                f"internal error ({type(e).__name__}): please report it",
                exitcodes.EX_SOFTWARE,
                "internal",
            )
        _die(*known, as_json)
    sys.exit(0)
