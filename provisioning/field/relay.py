"""The laptop relays a mainboard swap to HQ (``fieldpass-hq field relay``,
docs/runbooks/mainboard-swap.md): the new board's activation request and the old
board's return receipt(s), sent to HQ's ``POST /v1/activate`` (``{license_key, request,
receipts}``) over TLS; HQ's answer is the new board's machine file.

The laptop activates and frees nothing and holds no signing key: HQ takes the receipts
and activates (services/swap.py), and the laptop only carries signed bytes, the
device's unchanged (unarmored, base64 in the body) and HQ's answer as HQ sent it. The
license key travels in the body only, to HQ, over TLS (plain http:// only to this
machine, as the agent's ``fieldpass activate``); it is never printed or stored here.

The HTTP client is the agent's (``agent.online.Hq``: TLS verified against the system
store or ``ca_file``, a timeout, bounded answers). Failures are typed by who must act:
``Unreachable`` (the link: run the same command again, safe), ``Untrusted`` (HQ's
certificate: ``--ca-file``), ``Refused`` (HQ's word, its code passed through). Nothing
here reads options or prints.
"""

import base64
import binascii
import ssl
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import online
from agent.wire import armor, license_key
from agent.wire.errors import FormatError
from agent.wire.request import MAX_REQUEST_BYTES

from ..errors import (
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    CannotRead,
    HQError,
    InvalidRequest,
    MalformedInput,
)
from ..services.swap import MAX_RECEIPTS
from .fields import read_document
from .report import MAX_REPORT_BYTES, MAX_REPORT_DEPTH

DEFAULT_TIMEOUT_S = 15
MAX_REQUEST_FILE_BYTES = 64 * 1024


class Unreachable(HQError):
    """HQ could not be asked, or did not get to answer (the link, a timeout, a 5xx)."""

    code = "hq_unreachable"
    exit_code = EXIT_UNAVAILABLE


class Untrusted(HQError):
    """HQ's TLS certificate does not verify against the trusted CAs."""

    code = "hq_untrusted"
    exit_code = EXIT_CONFIG


class Refused(HQError):
    """HQ answered and said no: its stable code and one line, passed through."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"HQ refused: {code}: {message}")
        self.code = code
        self.http_status = status
        # a damaged or edited file (422) is the input's fault; a missing license, HQ's
        self.exit_code = {422: EXIT_DATAERR, 404: EXIT_NOT_FOUND}.get(status, EXIT_REFUSED)


@dataclass(frozen=True)
class Relayed:
    machine_file: bytes  # HQ's signed, device-encrypted answer, as HQ sent it
    activation_id: str
    serial: int
    created: bool  # a new seat (else the board's seat again)
    receipts: list[dict[str, Any]]  # per receipt: activation_id, freed, frees_at, taken_before


def _hq(url: str, ca_file: str | None, timeout_s: float) -> online.Hq:
    """The agent's client for ``url``, which must be https:// (plain http:// only to this
    machine: the license key crosses the link)."""
    server = url.rstrip("/")
    if not server.startswith("https://") and not (
        server.startswith("http://") and online.is_loopback(server)
    ):
        raise InvalidRequest(
            f"refusing to send the license key to {server}: HQ is reached over "
            "https:// (plain http:// only to this machine)"
        )
    try:
        return online.Hq(server, timeout_s, ca_file)
    except (OSError, ssl.SSLError) as e:
        raise MalformedInput(f"--ca-file {ca_file}: not a PEM CA certificate ({e})") from e


def read_license_key(path: Path) -> str:
    """The license key in the file at ``path`` (as the new board's ``fieldpass install
    --license-key-file`` reads it); an error never quotes the file."""
    try:
        with path.open("r", encoding="ascii", errors="replace") as f:
            text = f.read(256)
    except OSError as e:
        raise CannotRead(f"cannot read the license key file {path}: {e.strerror or e}") from None
    try:
        return license_key.normalize(text)
    except ValueError:
        raise InvalidRequest(f"{path} does not hold a license key (FP-XXXXX-...)") from None


def read_request(path: Path) -> bytes:
    """The device's request bytes (armored ``FIELDPASS REQUEST`` or binary), unchanged:
    not verified here (HQ does), only bounded and unarmored."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REQUEST_FILE_BYTES + 1)
    except OSError as e:
        raise CannotRead(f"cannot read the request {path}: {e.strerror or e}") from None
    if armor.is_armored(data):
        try:
            data = armor.unarmor(data, armor.REQUEST)
        except FormatError as e:
            raise MalformedInput(f"{path}: not a Fieldpass request ({e})") from None
    if not data or len(data) > MAX_REQUEST_BYTES:
        raise MalformedInput(f"{path}: not a Fieldpass request (empty or over 2 KiB)")
    return data


def report_receipts(path: Path, license_id: str) -> list[bytes]:
    """The return receipts a laptop's field report carries for ``license_id`` (as the
    bundle named each device's license), the device's bytes."""
    doc = read_document(path, "field report", MAX_REPORT_BYTES, MAX_REPORT_DEPTH)
    entries = doc.get("receipts", [])
    if not isinstance(entries, list):
        raise MalformedInput(f"{path}: not a field report (receipts is not a list)")
    found: list[bytes] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("receipt"), str):
            raise MalformedInput(f"{path}: a receipt entry is damaged")
        if entry.get("license_id") != license_id:
            continue
        try:
            found.append(base64.b64decode(entry["receipt"], validate=True))
        except (binascii.Error, ValueError):
            raise MalformedInput(f"{path}: a receipt entry is not base64") from None
    if not found:
        raise InvalidRequest(f"{path} carries no return receipt of license {license_id}")
    return found


def relay(
    url: str,
    ca_file: str | None,
    timeout_s: float,
    key: str,
    request: bytes,
    receipts: list[bytes],
) -> Relayed:
    """Send the request (and receipts) to HQ; HQ's answer, or a typed error."""
    if len(receipts) > MAX_RECEIPTS:
        raise InvalidRequest(f"at most {MAX_RECEIPTS} receipts with one activation")
    hq = _hq(url, ca_file, timeout_s)
    body: dict[str, object] = {
        "license_key": key,
        "request": base64.b64encode(request).decode("ascii"),
    }
    if receipts:
        body["receipts"] = [base64.b64encode(r).decode("ascii") for r in receipts]
    try:
        machine_file, doc = hq.machine_file("/v1/activate", body)
    except online.Refused as e:
        raise Refused(e.code, str(e), e.status) from None
    except online.Unreachable as e:
        if _untrusted(e):
            raise Untrusted(
                f"HQ at {hq.server} is not trusted: its certificate does not verify "
                f"({_why(e)}); give its CA with --ca-file PEM. Nothing was sent."
            ) from None
        raise Unreachable(
            f"{e}; run the same command again when the link is back (it is safe: a "
            "receipt HQ took and a seat it gave are not taken twice)"
        ) from None
    return Relayed(
        machine_file,
        _text(doc, "activation_id"),
        _int(doc, "serial"),
        doc.get("created") is True,
        _receipts(doc),
    )


def _untrusted(e: Exception) -> bool:
    """The failure under the agent's Unreachable was HQ's certificate (the client
    raises its error ``from None``: the cause is kept as its context)."""
    cause = e.__context__
    reason = getattr(cause, "reason", cause) if isinstance(cause, urllib.error.URLError) else cause
    return isinstance(reason, ssl.SSLCertVerificationError)


def _why(e: Exception) -> str:
    cause = e.__context__
    reason = getattr(cause, "reason", cause)
    text = getattr(reason, "verify_message", None) or str(reason)
    return " ".join(str(text).split())[:200]


def _text(doc: dict[str, object], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
        raise Unreachable(f"HQ's answer has no usable {name}")
    return value


def _int(doc: dict[str, object], name: str) -> int:
    value = doc.get(name)
    if type(value) is not int or value < 0:
        raise Unreachable(f"HQ's answer has no usable {name}")
    return value


def _receipts(doc: dict[str, object]) -> list[dict[str, Any]]:
    value = doc.get("receipts", [])
    if not isinstance(value, list) or len(value) > MAX_RECEIPTS:
        raise Unreachable("HQ's answer has no usable receipts")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise Unreachable("HQ's answer has no usable receipts")
        out.append(
            {
                "activation_id": _text(item, "activation_id"),
                "freed": item.get("freed") is True,
                "frees_at": _int(item, "frees_at"),
                "taken_before": item.get("taken_before") is True,
            }
        )
    return out
