"""Who this device is: the fingerprint, derived from a raw hardware id.

Sources (docs/identity.md); the image chooses which and in what order with
``[identity] sources`` in agent.toml (default: dmi, machine-id, device-tree, hook), and
the first usable one wins:

- ``override``: the raw id in the environment variable FIELDPASS_DEVICE_ID, for
  containers; honoured only when the device's own config sets
  ``[identity] allow_override = true`` (the image decides, not the user), and then first.
- ``dmi``: /sys/class/dmi/id/product_uuid (all-zero and all-FF UUIDs are refused).
- ``machine-id``: /etc/machine-id (empty and "uninitialized" are refused, and so is a
  transient one: systemd's per-boot id mounted over it on a read-only root).
- ``device-tree``: /proc/device-tree/serial-number (or /sys/firmware/devicetree/base).
- ``hook``: the identity hook script (``[identity] hook``), contract in
  firmware-hooks/identity/fieldpass-identity-hook.

The fingerprint is HMAC-SHA256(key=raw id, message=application id), 64 lowercase hex,
as systemd derives application-specific machine ids. A second application id gives the
key that authenticates the device state. The raw id never leaves this module: it is not
logged, printed, written or returned. ``Identity.source`` names the source that gave it;
``candidates`` lists what the other sources would give, so that a refused state or file
can be explained as "the identity source changed".
"""

import os

from . import fsio
from .config import IDENTITY_SOURCES, Config
from .wire import sodium

OVERRIDE_ENV = "FIELDPASS_DEVICE_ID"
FINGERPRINT_APP_ID = bytes.fromhex("8b1d6c5e2f7a4e0fa3c2917d5b40e6a1")
STATE_KEY_APP_ID = bytes.fromhex("2c97e0b4d15f4a8e9e6b0a73c4d8f215")
HOOK_TIMEOUT_S = 5
_MAX_ID_BYTES = 4096
_MAX_MOUNTINFO_BYTES = 1024 * 1024
SOURCES = ("override", *IDENTITY_SOURCES)
# A machine-id file on one of these is gone at the next boot.
_VOLATILE_FS = ("tmpfs", "ramfs")


class IdentityError(Exception):
    """No usable device id: the image must provide one (exit 78)."""


class _Refused(Exception):
    """A source holds an id that must not identify the device; the text says why."""


class Identity:
    """The fingerprint, the state key, the source they came from, and why the sources
    before it were refused (``notes``: one line each, never the raw id)."""

    __slots__ = ("fingerprint", "notes", "source", "state_key")

    def __init__(self, raw_id: str, source: str, notes: tuple[str, ...] = ()) -> None:
        raw = raw_id.encode("utf-8")
        self.fingerprint = sodium.hmac_sha256(raw, FINGERPRINT_APP_ID).hex()
        self.state_key = sodium.hmac_sha256(raw, STATE_KEY_APP_ID)
        self.source = source
        self.notes = notes

    def __repr__(self) -> str:
        return f"Identity(source={self.source!r}, fingerprint={self.fingerprint[:12]}...)"


def _read(path: str) -> str:
    """A bounded, non-blocking read: a FIFO or device planted at an id path is no id."""
    try:
        return fsio.read_system_file(path, _MAX_ID_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


def _dmi(cfg: Config) -> str:
    value = _read(cfg.device_path("/sys/class/dmi/id/product_uuid")).strip().lower()
    hexdigits = value.replace("-", "")
    if not hexdigits or set(hexdigits) <= {"0"} or set(hexdigits) <= {"f"}:
        return ""
    return value


def _unescape(field: str) -> str:
    """A mountinfo path field: space, tab, newline and backslash are octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _volatile_mount_at(path: str) -> str:
    """The file system type of the last mount exactly at ``path`` if it is a tmpfs or
    ramfs, else "": systemd's per-boot machine id is a /run file bind-mounted there."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            text = f.read(_MAX_MOUNTINFO_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
    real = os.path.realpath(path)
    fstype = ""
    for line in text.splitlines():
        mount, sep, fs = line.partition(" - ")
        fields = mount.split()
        if sep and len(fields) >= 5 and _unescape(fields[4]) == real:
            fstype = fs.split(" ", 1)[0]
    return fstype if fstype in _VOLATILE_FS else ""


def _machine_id(cfg: Config) -> str:
    path = cfg.device_path("/etc/machine-id")
    value = _read(path).strip().lower()
    if not value or value == "uninitialized" or set(value) <= {"0"}:
        return ""
    if fstype := _volatile_mount_at(path):
        raise _Refused(
            f"machine-id refused: /etc/machine-id is transient ({fstype} mounted over it: "
            "systemd gives a read-only root without a provisioned machine id a new one at "
            "every boot), so it cannot identify this device; take machine-id out of "
            "[identity] sources or keep a machine id on the data partition (docs/identity.md)"
        )
    return value


def _device_tree(cfg: Config) -> str:
    for path in ("/proc/device-tree/serial-number", "/sys/firmware/devicetree/base/serial-number"):
        value = _read(cfg.device_path(path)).strip("\0 \n\t")
        if value:
            return value
    return ""


def _hook(cfg: Config) -> str:
    if not os.access(cfg.identity_hook, os.X_OK):
        return ""
    import subprocess

    env = dict(os.environ, FIELDPASS_ROOT=cfg.root or "/")
    try:
        result = subprocess.run(
            [cfg.identity_hook],
            capture_output=True,
            timeout=HOOK_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if result.returncode != 0:
        return ""
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "id" and value.strip():
            return value.strip()
    return ""


def _override(cfg: Config) -> str:
    if not cfg.allow_identity_override:
        return ""
    return os.environ.get(OVERRIDE_ENV, "").strip()


_READERS = {
    "override": _override,
    "dmi": _dmi,
    "machine-id": _machine_id,
    "device-tree": _device_tree,
    "hook": _hook,
}


def _order(cfg: Config) -> tuple[str, ...]:
    if cfg.allow_identity_override:
        return ("override", *cfg.identity_sources)
    return cfg.identity_sources


def candidates(cfg: Config) -> list[Identity]:
    """Every source that gives an id on this device, listed in [identity] sources or
    not (an update may have taken the activated one out), in the readers' order, to
    explain a refusal ("activated with another source"); never used to choose the
    identity. A refused id (a transient machine-id) is no candidate."""
    found = []
    for source, reader in _READERS.items():
        try:
            raw = reader(cfg)
        except _Refused:
            continue
        if raw:
            found.append(Identity(raw, source))
    return found


def read_identity(cfg: Config) -> Identity:
    """The first usable source in the configured order, or IdentityError (exit 78)."""
    notes: list[str] = []
    for source in _order(cfg):
        try:
            raw = _READERS[source](cfg)
        except _Refused as e:
            notes.append(str(e))
            continue
        if raw:
            return Identity(raw, source, tuple(notes))
    tried = ", ".join(cfg.identity_sources)
    raise IdentityError(
        f"no device id: none of the identity sources ({tried}) gave one"
        + "".join(f"; {note}" for note in notes)
        + " (see docs/identity.md)"
    )
