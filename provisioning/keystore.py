"""HQ's home directory and the private signing seeds kept in it.

Layout: ``HOME/keys/KID.seed`` (one Ed25519 seed per key, base64, mode 0600, in a 0700
directory) beside the database (``HOME/hq.sqlite3`` by default: storage/sqlite.py). Seeds
are read here and handed to ``agent.wire.keys.SigningKey``; nothing here prints or logs
them.
"""

import base64
import binascii
import os
from pathlib import Path

from agent.wire.keys import SigningKey

from .errors import ConfigError, StorageError

KEYS_DIR = "keys"


def default_home() -> Path:
    """``$FIELDPASS_HQ_HOME``, else ``$XDG_DATA_HOME/fieldpass-hq``, else
    ``~/.local/share/fieldpass-hq``."""
    env = os.environ.get("FIELDPASS_HQ_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "fieldpass-hq"


def prepare_home(home: Path) -> None:
    """Create ``home`` and its key directory (0700) if needed."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = home / KEYS_DIR
        keys.mkdir(mode=0o700, exist_ok=True)
        os.chmod(keys, 0o700)
    except OSError as e:
        raise ConfigError(f"cannot use HQ home {home}: {e.strerror}") from e


class KeyStore:
    def __init__(self, home: Path) -> None:
        self.directory = home / KEYS_DIR

    def _path(self, kid: str) -> Path:
        if not kid.startswith("fpk_") or not kid[4:].isalnum():
            raise ConfigError(f"invalid key id {kid!r}")
        return self.directory / f"{kid}.seed"

    def save(self, key: SigningKey) -> None:
        path = self._path(key.kid)
        data = base64.b64encode(key.seed) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StorageError(f"cannot write the private key of {key.kid}: {e.strerror}") from e

    def load(self, kid: str) -> SigningKey:
        path = self._path(kid)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"the private key of {kid} is missing: {e.strerror}") from e
        try:
            key = SigningKey(base64.b64decode(raw.strip(), validate=True))
        except (binascii.Error, ValueError) as e:
            raise ConfigError(f"the private key file of {kid} is corrupt") from e
        if key.kid != kid:
            raise ConfigError(f"the private key file of {kid} holds another key")
        return key
