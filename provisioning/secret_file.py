"""HQ's own secrets kept as files in its home (the MQTT secret, mqtt/credentials.py; the
license-key secret, sealed_keys.py): 32 random bytes, base64, mode 0600, made once and
never rewritten."""

import base64
import binascii
import os
import secrets
from pathlib import Path

from .errors import ConfigError


def read(path: Path) -> bytes | None:
    """The secret at ``path``; None if there is no file; ConfigError if it is unreadable
    or not a 32-byte secret."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    try:
        secret = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path} is corrupt (not base64)") from None
    if len(secret) != 32:
        raise ConfigError(f"{path} does not hold a 32-byte secret")
    return secret


def create(path: Path) -> bytes:
    """The secret at ``path``: a new one, or the one another process linked there first
    (written whole to a temp file, then linked: never read half written)."""
    secret = os.urandom(32)
    tmp = path.with_name(f"{path.name}.tmp.{secrets.token_hex(8)}")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, base64.b64encode(secret) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except FileExistsError:
        theirs = read(path)
        if theirs is None:
            raise ConfigError(f"{path} came and went while HQ made it: run again") from None
        return theirs
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from e
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return secret
