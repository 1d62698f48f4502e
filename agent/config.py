"""The device configuration (``/etc/fieldpass/agent.toml``) and the device paths.

Every device path is resolved under ``--root`` when one is given, so an image build or a
test can run the agent on a staged root. Nothing in the config can move the gate's
clock or skip the gate: the clock keys only choose how a wrong clock is treated.

Unknown keys are an error (a typo must not silently fall back to a default).
"""

import os

from . import fsio, tomlsubset

DEFAULT_CONFIG = "/etc/fieldpass/agent.toml"
DEFAULT_KEYRING = "/etc/fieldpass/keyring"
DEFAULT_STATE_DIR = "/data/fieldpass"
DEFAULT_VERDICT_DIR = "/run/fieldpass"
DEFAULT_HOOKS_DIR = "/etc/fieldpass/on-verdict.d"
DEFAULT_IDENTITY_HOOK = "/usr/libexec/fieldpass/identity-hook"
# [identity] sources: the hardware id sources agent/identity.py knows, and the default
# order (first usable one wins; the container override, when allowed, comes first).
IDENTITY_SOURCES = ("dmi", "machine-id", "device-tree", "hook")
CLOCK_POLICIES = ("strict", "floor")
DEFAULT_TOLERANCE_S = 300
MAX_CONFIG_BYTES = 64 * 1024


class ConfigError(Exception):
    """The device configuration is missing something or holds a bad value (exit 78).
    ``reason`` is the stable code in ``--json`` and the verdict files."""

    def __init__(self, message: str, reason: str = "config") -> None:
        super().__init__(message)
        self.reason = reason


# section -> key -> (type, default)
_SCHEMA: dict[str, dict[str, tuple[type, object]]] = {
    "": {
        "state_dir": (str, DEFAULT_STATE_DIR),
        "keyring": (str, DEFAULT_KEYRING),
        "verdict_dir": (str, DEFAULT_VERDICT_DIR),
        "hooks_dir": (str, DEFAULT_HOOKS_DIR),
        "device_name": (str, ""),
    },
    "clock": {
        "policy": (str, "strict"),
        "tolerance_s": (int, DEFAULT_TOLERANCE_S),
    },
    "identity": {
        "allow_override": (bool, False),
        "hook": (str, DEFAULT_IDENTITY_HOOK),
        "sources": (list, list(IDENTITY_SOURCES)),
    },
    "online": {
        "server": (str, ""),
        "servers": (list, []),
        "timeout_s": (int, 5),
        "ca_file": (str, ""),
    },
    "tpm": {
        "enabled": (bool, False),
        "nv_index": (str, "0x01500016"),
        "tcti": (str, ""),
    },
    "mqtt": {
        "brokers": (list, []),
        "username": (str, ""),
        "password_file": (str, ""),
        "ca_file": (str, ""),
        "cert_file": (str, ""),
        "key_file": (str, ""),
        "keepalive_s": (int, 60),
        "session_expiry_s": (int, 30 * 86400),
        "max_payload_bytes": (int, 64 * 1024),
        "topic_prefix": (str, "fieldpass/v1"),
    },
    "daemon": {
        "transport": (str, "auto"),
        "renew_at_percent": (int, 67),
        "check_interval_s": (int, 3600),
        "report_interval_s": (int, 86400),
        "renew_timeout_s": (int, 60),
        "backoff_min_ms": (int, 1000),
        "backoff_max_ms": (int, 300_000),
        "usage_socket": (str, ""),
    },
}
DAEMON_TRANSPORTS = ("auto", "mqtt", "http")
_TYPE_WORDS: dict[type, str] = {
    str: 'text in quotes ("...")',
    int: "a whole number",
    bool: "true or false",
    list: "a list ([...])",
    dict: "a table",
    float: "a decimal number",
}


class Config:
    """Resolved settings. Paths are absolute host paths (already under ``root``)."""

    def __init__(self, values: dict[str, dict[str, object]], root: str, path: str) -> None:
        self.root = root
        self.path = path
        top, clock, identity = values[""], values["clock"], values["identity"]
        self.state_dir = self.device_path(str(top["state_dir"]))
        self.keyring = self.device_path(str(top["keyring"]))
        self.verdict_dir = self.device_path(str(top["verdict_dir"]))
        self.hooks_dir = self.device_path(str(top["hooks_dir"]))
        self.device_name = str(top["device_name"])
        self.clock_policy = str(clock["policy"])
        self.tolerance_s = int(str(clock["tolerance_s"]))
        self.allow_identity_override = bool(identity["allow_override"])
        self.identity_hook = self.device_path(str(identity["hook"]))
        sources = identity["sources"]
        assert isinstance(sources, list)
        if (
            not sources
            or not all(isinstance(name, str) and name in IDENTITY_SOURCES for name in sources)
            or len(set(sources)) != len(sources)
        ):
            raise ConfigError(
                f"{path}: [identity] sources must name each of "
                f"{', '.join(IDENTITY_SOURCES)} at most once, and at least one"
            )
        self.identity_sources = tuple(str(name) for name in sources)
        online = values["online"]
        self.server = str(online["server"])
        extra = online["servers"]
        assert isinstance(extra, list)
        if not all(isinstance(url, str) and url for url in extra):
            raise ConfigError(f"{path}: [online] servers must be a list of URLs")
        # HQ first, then the others (a technician's laptop on the local link), in order.
        self.servers = [u for u in dict.fromkeys([self.server, *extra]) if u]
        self.online_timeout_s = int(str(online["timeout_s"]))
        ca_file = str(online["ca_file"])
        self.ca_file = self.device_path(ca_file) if ca_file else ""
        tpm = values["tpm"]
        self.tpm_enabled = bool(tpm["enabled"])
        self.tpm_nv_index = str(tpm["nv_index"])
        self.tpm_tcti = str(tpm["tcti"])
        mqtt, daemon = values["mqtt"], values["daemon"]
        brokers = mqtt["brokers"]
        assert isinstance(brokers, list)
        if not all(
            isinstance(url, str) and url.startswith(("mqtt://", "mqtts://")) for url in brokers
        ):
            raise ConfigError(f"{path}: [mqtt] brokers must be mqtt:// or mqtts:// URLs")
        # The fleet broker first, then the others (a technician's laptop), in order.
        self.mqtt_brokers = [str(u) for u in dict.fromkeys(brokers)]
        self.mqtt_username = str(mqtt["username"])
        self.mqtt_password_file = (
            self.device_path(str(mqtt["password_file"])) if mqtt["password_file"] else ""
        )
        self.mqtt_ca_file = self.device_path(str(mqtt["ca_file"])) if mqtt["ca_file"] else ""
        self.mqtt_cert_file = self.device_path(str(mqtt["cert_file"])) if mqtt["cert_file"] else ""
        self.mqtt_key_file = self.device_path(str(mqtt["key_file"])) if mqtt["key_file"] else ""
        self.mqtt_keepalive_s = int(str(mqtt["keepalive_s"]))
        self.mqtt_session_expiry_s = int(str(mqtt["session_expiry_s"]))
        self.mqtt_max_payload_bytes = int(str(mqtt["max_payload_bytes"]))
        self.mqtt_topic_prefix = str(mqtt["topic_prefix"]).strip("/")
        if not 5 <= self.mqtt_keepalive_s <= 3600:
            raise ConfigError(f"{path}: [mqtt] keepalive_s must be between 5 and 3600")
        if not 0 <= self.mqtt_session_expiry_s <= 0xFFFFFFFF:
            raise ConfigError(f"{path}: [mqtt] session_expiry_s must fit in 32 bits")
        if not 1024 <= self.mqtt_max_payload_bytes <= 1024 * 1024:
            raise ConfigError(f"{path}: [mqtt] max_payload_bytes must be 1 KiB to 1 MiB")
        if not self.mqtt_topic_prefix or any(c in self.mqtt_topic_prefix for c in "+#\0"):
            raise ConfigError(f"{path}: [mqtt] topic_prefix must be a plain topic")
        self.daemon_transport = str(daemon["transport"])
        self.renew_at_percent = int(str(daemon["renew_at_percent"]))
        self.check_interval_s = int(str(daemon["check_interval_s"]))
        self.report_interval_s = int(str(daemon["report_interval_s"]))
        self.renew_timeout_s = int(str(daemon["renew_timeout_s"]))
        self.backoff_min_ms = int(str(daemon["backoff_min_ms"]))
        self.backoff_max_ms = int(str(daemon["backoff_max_ms"]))
        socket_path = str(daemon["usage_socket"])
        self.usage_socket = (
            self.device_path(socket_path)
            if socket_path
            else os.path.join(self.verdict_dir, "usage.sock")
        )
        if self.daemon_transport not in DAEMON_TRANSPORTS:
            raise ConfigError(
                f"{path}: [daemon] transport must be one of {', '.join(DAEMON_TRANSPORTS)}"
            )
        if not 1 <= self.renew_at_percent <= 99:
            raise ConfigError(f"{path}: [daemon] renew_at_percent must be between 1 and 99")
        for name in ("check_interval_s", "renew_timeout_s", "report_interval_s"):
            if not 1 <= getattr(self, name) <= 7 * 86400:
                raise ConfigError(f"{path}: [daemon] {name} must be between 1 and 604800")
        if not 10 <= self.backoff_min_ms <= self.backoff_max_ms <= 86_400_000:
            raise ConfigError(
                f"{path}: [daemon] backoff_min_ms must be >= 10 and <= backoff_max_ms"
            )
        if self.clock_policy not in CLOCK_POLICIES:
            raise ConfigError(f"{path}: [clock] policy must be one of {', '.join(CLOCK_POLICIES)}")
        if not 0 <= self.tolerance_s <= 86400:
            raise ConfigError(f"{path}: [clock] tolerance_s must be between 0 and 86400")
        if not 1 <= self.online_timeout_s <= 120:
            raise ConfigError(f"{path}: [online] timeout_s must be between 1 and 120")

    def device_path(self, path: str) -> str:
        """A device path as seen from this host: under ``root`` when there is one."""
        if not self.root:
            return path
        return os.path.join(self.root, path.lstrip("/"))

    @property
    def machine_file(self) -> str:
        return os.path.join(self.state_dir, "machine.file")

    @property
    def license_key_file(self) -> str:
        return os.path.join(self.state_dir, "license.key")


def _validate(doc: dict[str, object], path: str) -> dict[str, dict[str, object]]:
    values: dict[str, dict[str, object]] = {
        section: {key: default for key, (_, default) in keys.items()}
        for section, keys in _SCHEMA.items()
    }
    for name, value in doc.items():
        if isinstance(value, dict):
            section, items = name, value
        else:
            section, items = "", {name: value}
        if section not in _SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, item in items.items():
            if key not in _SCHEMA[section]:
                where = f"[{section}] " if section else ""
                raise ConfigError(f"{path}: unknown key {where}{key!r}")
            expected = _SCHEMA[section][key][0]
            if type(item) is not expected:
                where = f"[{section}] " if section else ""
                raise ConfigError(
                    f"{path}: {where}{key} must be {_TYPE_WORDS[expected]}, "
                    f"not {_TYPE_WORDS.get(type(item), 'a ' + type(item).__name__)}"
                )
            values[section][key] = item
    return values


def load(root: str = "", config_path: str | None = None, state_dir: str | None = None) -> Config:
    """Load the config; a missing default config file means all defaults."""
    if root and not os.path.isdir(root):
        raise ConfigError(f"{root}: no such directory: --root must name a device's root", "no_root")
    explicit = config_path is not None
    path = config_path or DEFAULT_CONFIG
    host_path = os.path.join(root, path.lstrip("/")) if root else path
    try:
        raw = fsio.read_bytes(host_path, MAX_CONFIG_BYTES)
    except fsio.TooLarge:
        raise ConfigError(
            f"{host_path}: config file is larger than {MAX_CONFIG_BYTES} bytes"
        ) from None
    except fsio.StorageError as e:
        raise ConfigError(f"{host_path}: cannot read the config: {e.strerror}") from None
    if raw is None:
        if explicit:
            raise ConfigError(f"{host_path}: no such config file")
        raw = b""
    try:
        doc = tomlsubset.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{host_path}: not UTF-8 text") from None
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{host_path}: not valid TOML: {e}") from None
    values = _validate(doc, host_path)
    if state_dir is not None:
        values[""]["state_dir"] = state_dir
    return Config(values, root, host_path)
