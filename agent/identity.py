"""Who this device is: the fingerprint, derived from a raw hardware id.

Sources, first usable one wins (docs/identity.md):

1. ``override``: the raw id in the environment variable FIELDPASS_DEVICE_ID, for
   containers; honoured only when the device's own config sets
   ``[identity] allow_override = true`` (the image decides, not the user).
2. ``dmi``: /sys/class/dmi/id/product_uuid (all-zero and all-FF UUIDs are refused).
3. ``machine-id``: /etc/machine-id (empty and "uninitialized" are refused).
4. ``device-tree``: /proc/device-tree/serial-number (or /sys/firmware/devicetree/base).
5. ``hook``: the identity hook script (``[identity] hook``), contract in
   firmware-hooks/identity/fieldpass-identity-hook.

The fingerprint is HMAC-SHA256(key=raw id, message=application id), 64 lowercase hex,
as systemd derives application-specific machine ids. A second application id gives the
key that authenticates the device state. The raw id never leaves this module: it is not
logged, printed, written or returned.
"""

import os

from . import fsio
from .config import Config
from .wire import sodium

OVERRIDE_ENV = "FIELDPASS_DEVICE_ID"
FINGERPRINT_APP_ID = bytes.fromhex("8b1d6c5e2f7a4e0fa3c2917d5b40e6a1")
STATE_KEY_APP_ID = bytes.fromhex("2c97e0b4d15f4a8e9e6b0a73c4d8f215")
HOOK_TIMEOUT_S = 5
_MAX_ID_BYTES = 4096
SOURCES = ("override", "dmi", "machine-id", "device-tree", "hook")


class IdentityError(Exception):
    """No usable device id: the image must provide one (exit 78)."""


class Identity:
    __slots__ = ("fingerprint", "source", "state_key")

    def __init__(self, raw_id: str, source: str) -> None:
        raw = raw_id.encode("utf-8")
        self.fingerprint = sodium.hmac_sha256(raw, FINGERPRINT_APP_ID).hex()
        self.state_key = sodium.hmac_sha256(raw, STATE_KEY_APP_ID)
        self.source = source

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


def _machine_id(cfg: Config) -> str:
    value = _read(cfg.device_path("/etc/machine-id")).strip().lower()
    if not value or value == "uninitialized" or set(value) <= {"0"}:
        return ""
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


_READERS = (
    ("override", _override),
    ("dmi", _dmi),
    ("machine-id", _machine_id),
    ("device-tree", _device_tree),
    ("hook", _hook),
)


def candidates(cfg: Config) -> list[Identity]:
    """Every source that gives an id on this device, in order (to explain a refusal:
    "activated with another source"); never used to choose the identity."""
    found = []
    for source, reader in _READERS:
        raw = reader(cfg)
        if raw:
            found.append(Identity(raw, source))
    return found


def read_identity(cfg: Config) -> Identity:
    for source, reader in _READERS:
        raw = reader(cfg)
        if raw:
            return Identity(raw, source)
    raise IdentityError(
        "no device id: no DMI product_uuid, /etc/machine-id, device-tree serial-number "
        "or identity hook gave one (see docs/identity.md)"
    )
