"""``fieldpass-hq provision``: the factory line writes a device's license before its
first boot.

For each device: activate (one seat; the same fingerprint again takes none), then write
into the device's root (its data partition mounted, or an image being built)

- ``<data-dir>/incoming/machine.file`` and ``incoming/license.key`` (mode 0600): the
  gate installs them at first boot with the same checks as ``fieldpass install``;
- ``/etc/fieldpass/keyring``: HQ's public keys;
- ``/etc/fieldpass/agent.toml`` with the device's name (only if none exists).

A CSV run (columns ``name,fingerprint,root``; a relative root is taken from the CSV's
folder) is resumable: finished devices are listed in ``CSV.progress`` and skipped on the
next run, so a line stopped halfway picks up where it stopped. Every device's outcome is
in the closing summary, and the exit code is non-zero if any failed. The license key is
written into the device's ``incoming/license.key`` (0600) and never printed.
"""

import csv
import os
import sys
from pathlib import Path
from typing import Any

import click

from agent.wire import license_key as lk
from agent.wire.request import Request

from .. import documents
from ..errors import CannotRead, CannotWrite, HQError, InvalidRequest
from ..services import HQ
from ..services.device_requests import answer_request
from . import common, output

DEFAULT_DATA_DIR = "/data/fieldpass"


def _under(root: Path, device_path: str) -> Path:
    return root / device_path.lstrip("/")


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CannotWrite(f"cannot write {path}: {e.strerror or e}") from None
    output.write_file(path, data, mode)


def _private_dirs(root: Path, data_dir: str) -> Path:
    """The device's state directory and its incoming/ spool, mode 0700 (they hold the
    license key; sysvinit images have no tmpfiles.d to fix the mode at boot)."""
    state_dir = _under(root, data_dir)
    incoming = state_dir / "incoming"
    try:
        for path in (state_dir, incoming):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)
    except OSError as e:
        raise CannotWrite(f"cannot create {incoming}: {e.strerror or e}") from None
    return incoming


def provision_one(
    hq: HQ,
    key: str,
    fingerprint: str,
    root: Path,
    name: str,
    data_dir: str,
    now: int,
    request: Request | None = None,
) -> dict[str, Any]:
    """Activate one device and write what its first boot installs. With ``request``
    (the device's `fieldpass request`, e.g. at the line's station) the file names the
    device key and the TPM counter it carries: a TPM-bound device takes nothing else."""
    if not lk.is_fingerprint(fingerprint):
        raise InvalidRequest(f"{name or root}: a fingerprint is 64 lowercase hex characters")
    if not root.is_dir():
        raise InvalidRequest(f"{root}: no such device root (mount the data partition or image)")
    if request is not None:
        issued = answer_request(hq.device, request, now, common.actor(), key)
    else:
        issued = hq.activate(key, fingerprint, now, common.actor())
    incoming = _private_dirs(root, data_dir)
    _write(incoming / "machine.file", issued.machine_file, 0o600)
    _write(incoming / "license.key", key.encode("ascii") + b"\n", 0o600)
    _write(_under(root, "/etc/fieldpass/keyring"), hq.keyring().dumps().encode(), 0o644)
    config = _under(root, "/etc/fieldpass/agent.toml")
    if not config.exists():
        safe_name = "".join(c for c in name if c.isprintable() and c not in '"\\')
        text = f'# written by fieldpass-hq provision\ndevice_name = "{safe_name}"\n'
        if data_dir != DEFAULT_DATA_DIR:
            text += f'state_dir = "{data_dir}"\n'
        _write(config, text.encode(), 0o644)
    doc = documents.issued_doc(issued, str(incoming / "machine.file"))
    doc.update(name=name, root=str(root), seat="new" if issued.created else "existing")
    return doc


def _emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        output.emit_json(doc)
    else:
        output.emit_text(text)


def _rows(csv_path: Path) -> list[tuple[str, str, Path]]:
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"name", "fingerprint", "root"} - set(reader.fieldnames or ())
            if missing:
                raise InvalidRequest(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
            rows = []
            for row in reader:
                # a short line leaves its last fields None: refused, as an empty one
                name, fp, where = ((row[k] or "").strip() for k in ("name", "fingerprint", "root"))
                if not (name and fp and where):
                    raise InvalidRequest(
                        f"{csv_path}: line {reader.line_num}: a name, a fingerprint and a root"
                    )
                root = Path(where)
                if not root.is_absolute():
                    root = csv_path.parent / root
                rows.append((name, fp.lower(), root))
            return rows
    except OSError as e:
        raise CannotRead(f"cannot read {csv_path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise InvalidRequest(f"{csv_path}: not a CSV of name,fingerprint,root ({e})") from None


@click.command()
@click.argument("license_key", metavar="LICENSE_KEY")
@click.option("--fingerprint", help="The device's fingerprint (`fieldpass fingerprint`).")
@click.option(
    "--root", "root", type=click.Path(path_type=Path), help="The device's root directory."
)
@click.option("--name", default="", help="The device's name (written into agent.toml).")
@click.option(
    "--request",
    "request_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The device's `fieldpass request` (its key and TPM counter): instead of "
    "--fingerprint. Needed for devices with [tpm] enabled.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Many devices: a CSV with columns name,fingerprint,root.",
)
@click.option(
    "--data-dir",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="The persistent state directory, as the device sees it.",
)
@common.json_option
@click.pass_context
def provision(
    ctx: click.Context,
    license_key: str,
    fingerprint: str | None,
    root: Path | None,
    name: str,
    request_file: Path | None,
    csv_path: Path | None,
    data_dir: str,
    as_json: bool,
) -> None:
    """Write the machine file, keyring and config into devices before first boot.

    One device (--fingerprint and --root), or a CSV of devices with a progress bar.
    Idempotent per device (no second seat), resumable (CSV.progress), with a summary.
    The device's gate installs the file at first boot.

    \b
    Examples:
      fieldpass-hq provision FP-XXXXX-... --fingerprint 3f2a... --root /mnt/robot-17
      fieldpass-hq provision FP-XXXXX-... --csv line-42.csv
      fieldpass-hq provision FP-XXXXX-... --request robot-17.request --root /mnt/robot-17
    """
    try:
        key = lk.normalize(license_key)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    hq = common.state(ctx).hq
    if csv_path is None:
        request = None
        if request_file is not None:
            if fingerprint:
                raise InvalidRequest("give --fingerprint or --request, not both")
            request = common.read_request(request_file)
            fingerprint = request.fingerprint
        if not fingerprint or root is None:
            raise InvalidRequest("give --fingerprint (or --request) and --root, or --csv")
        doc = provision_one(hq, key, fingerprint, root, name, data_dir, common.now(), request)
        _emit(
            doc,
            as_json,
            f"provisioned {name or root}: activation {doc['activation_id']} "
            f"({doc['seat']} seat), serial {doc['serial']}.\n"
            f"Next: boot the device; its gate installs the file and `fieldpass check` exits 0.",
        )
        return
    rows = _rows(csv_path)
    journal = csv_path.with_name(csv_path.name + ".progress")
    done = set(journal.read_text().split("\n")) if journal.exists() else set()
    results: list[dict[str, Any]] = []
    progress: Any = click.progressbar(rows, label="provisioning", file=sys.stderr)
    with progress as bar:
        for row_name, fp, row_root in bar:
            if row_name in done:
                results.append({"name": row_name, "status": "skipped (already provisioned)"})
                continue
            try:
                doc = provision_one(hq, key, fp, row_root, row_name, data_dir, common.now())
            except HQError as e:
                results.append({"name": row_name, "status": "failed", "error": e.message})
                continue
            with journal.open("a") as f:
                f.write(row_name + "\n")
                f.flush()
                os.fsync(f.fileno())
            results.append({"name": row_name, "status": "provisioned", **doc})
    counts = {
        k: sum(1 for r in results if str(r["status"]).startswith(k))
        for k in ("provisioned", "skipped", "failed")
    }
    summary = {"devices": results, **counts}
    lines = [
        f"{r['name']}: {r['status']}" + (f" ({r['error']})" if "error" in r else "")
        for r in results
    ]
    lines.append(
        f"{counts['provisioned']} provisioned, {counts['skipped']} skipped, "
        f"{counts['failed']} failed (progress kept in {journal})"
    )
    _emit(summary, as_json, "\n".join(lines))
    if counts["failed"]:
        raise HQError(f"{counts['failed']} of {len(rows)} devices failed: fix them and run again")
