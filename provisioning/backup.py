"""HQ's backup file: a consistent copy of the database taken while servers run, and,
only when asked, HQ's secrets sealed under a passphrase.

The file (gzip of JSON lines, mode 0600, written to a temporary name, fsynced and
renamed)::

    {"format": "fieldpass-hq-backup", "version": 1, "created_at", "schema_version", ...}
    {"table": NAME, "columns": [...]}        then one JSON array per row, in key order,
    {"end": NAME, "rows": N, "sha256": D}    for every table (storage/copy.py's digest)
    {"secrets": {...}}                       only with --with-secrets (below)
    {"complete": true}

The rows come from one read transaction (storage/copy.py ``dump``), so the backup is
the database as of one moment, whichever engine, while ``serve`` goes on writing; a
restore loads them into an empty database of either engine and checks every table's
count and digest against the file.

What it holds of the secrets: the signing keys' public parts (in the database), never
a seed, unless ``--with-secrets``: then the seeds and the MQTT secret are sealed with
XSalsa20-Poly1305 under a key derived from the operator's passphrase by Argon2id, so a
copied backup without the passphrase is not a way to the signing key. License keys are
rows of ``licenses`` and come with the database (docs/hq.md, "Secrets at rest").

Reading is bounded: each line at most ``MAX_LINE_BYTES``, a row a flat array of
scalars, every header checked; any other input is ``BackupError`` (exit 65).
"""

import base64
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from agent import fsio

from . import __version__
from .errors import EXIT_DATAERR, CannotWrite, ConfigError, HQError
from .storage import Store, copy, engine_of

FORMAT = "fieldpass-hq-backup"
VERSION = 1
MAX_LINE_BYTES = 1024 * 1024
MAX_SECRET_FILES = 1000


class BackupError(HQError):
    code = "bad_backup"
    exit_code = EXIT_DATAERR


# -- secrets ------------------------------------------------------------------------
def _kdf(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    import nacl.pwhash

    return bytes(nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=ops, memlimit=mem))


def seal_secrets(files: dict[str, bytes], passphrase: bytes) -> dict[str, Any]:
    """The secret files (name relative to HOME -> content) sealed under ``passphrase``."""
    import nacl.pwhash
    import nacl.secret
    import nacl.utils

    if len(passphrase) < 12:
        raise ConfigError("a backup passphrase has at least 12 characters")
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    ops = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
    mem = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
    box = nacl.secret.SecretBox(_kdf(passphrase, salt, ops, mem))
    plain = json.dumps({k: base64.b64encode(v).decode() for k, v in files.items()}).encode()
    return {
        "kdf": "argon2id",
        "salt": base64.b64encode(salt).decode(),
        "opslimit": ops,
        "memlimit": mem,
        "box": base64.b64encode(bytes(box.encrypt(plain))).decode(),
    }


def open_secrets(sealed: Any, passphrase: bytes) -> dict[str, bytes]:
    import nacl.exceptions
    import nacl.secret

    try:
        if sealed["kdf"] != "argon2id":
            raise BackupError("the backup's secrets use an unknown key derivation")
        ops, mem = int(sealed["opslimit"]), int(sealed["memlimit"])
        if not (1 <= ops <= 16 and 8192 <= mem <= 1 << 31):
            raise BackupError("the backup's key derivation settings are out of range")
        key = _kdf(passphrase, base64.b64decode(sealed["salt"]), ops, mem)
        plain = nacl.secret.SecretBox(key).decrypt(base64.b64decode(sealed["box"]))
    except nacl.exceptions.CryptoError:
        raise BackupError("wrong passphrase, or the backup's secrets were altered") from None
    except (KeyError, TypeError, ValueError, nacl.exceptions.ValueError) as e:
        raise BackupError(f"the backup's secrets are malformed ({type(e).__name__})") from None
    doc = json.loads(plain)
    if not isinstance(doc, dict) or len(doc) > MAX_SECRET_FILES:
        raise BackupError("the backup's secrets are malformed")
    return {str(k): base64.b64decode(v) for k, v in doc.items()}


def secret_files(home: Path) -> dict[str, bytes]:
    """HQ's secrets in ``home``: every signing seed, the MQTT secret and the license-key
    secret."""
    from .keystore import KEYS_DIR
    from .mqtt.credentials import SECRET_NAME
    from .sealed_keys import SECRET_NAME as LICENSE_KEYS_SECRET

    files: dict[str, bytes] = {}
    keys = home / KEYS_DIR
    for path in sorted(keys.glob("*.seed")) if keys.is_dir() else []:
        files[f"{KEYS_DIR}/{path.name}"] = path.read_bytes()
    for name in (SECRET_NAME, LICENSE_KEYS_SECRET):
        if (home / name).exists():
            files[name] = (home / name).read_bytes()
    return files


def install_secrets(home: Path, files: dict[str, bytes]) -> list[str]:
    """Write restored secrets into ``home`` (0600, never over an existing file)."""
    from .keystore import KEYS_DIR
    from .mqtt.credentials import SECRET_NAME
    from .sealed_keys import SECRET_NAME as LICENSE_KEYS_SECRET

    written = []
    for name, data in files.items():
        parts = name.split("/")
        ok = name in (SECRET_NAME, LICENSE_KEYS_SECRET) or (
            len(parts) == 2 and parts[0] == KEYS_DIR and parts[1].endswith(".seed")
        )
        if not ok or any(p in ("", ".", "..") for p in parts):
            raise BackupError(f"the backup names an unexpected secret file {name[:80]!r}")
        path = home / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} exists: restore only into an empty home") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        written.append(name)
    return written


# -- writing ------------------------------------------------------------------------
def _line(f: "gzip.GzipFile | BinaryIO", doc: Any) -> None:
    f.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")


def write(
    path: Path, store: Store, url: str, secrets: dict[str, Any] | None
) -> dict[str, copy.TableSum]:
    """Write the backup of ``store`` (and sealed ``secrets``) to ``path``, crash-safely."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CannotWrite(f"cannot write {path}: {e.strerror}") from e
    sums: dict[str, copy.TableSum] = {}
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as f:
                with store.read() as tx:
                    _line(
                        f,
                        {
                            "format": FORMAT,
                            "version": VERSION,
                            "fieldpass": __version__,
                            "engine": engine_of(url),
                            "schema_version": tx.schema_version(),
                        },
                    )
                    for table, columns, rows in copy.dump(tx):
                        _line(f, {"table": table, "columns": columns})
                        digest = copy.Digest()
                        for row in rows:
                            values = list(row)
                            digest.add(values)
                            _line(f, values)
                        sums[table] = digest.sum()
                        _line(f, {"end": table, **_sum_doc(sums[table])})
                if secrets is not None:
                    _line(f, {"secrets": secrets})
                _line(f, {"complete": True})
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(tmp, path)
        fsio.fsync_dir(str(path.parent))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CannotWrite(f"cannot write {path}: {e.strerror}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sums


def _sum_doc(s: copy.TableSum) -> dict[str, Any]:
    return {"rows": s.rows, "sha256": s.sha256}


# -- reading ------------------------------------------------------------------------
class Reader:
    """The lines of a backup file, each bounded and checked, in the order written."""

    def __init__(self, f: "gzip.GzipFile | BinaryIO") -> None:
        self.f = f
        self.header = self._dict()
        if self.header.get("format") != FORMAT or self.header.get("version") != VERSION:
            raise BackupError("not a fieldpass-hq backup (or a newer format)")
        if type(self.header.get("schema_version")) is not int:
            raise BackupError("the backup's header has no schema version")
        self.expected: dict[str, copy.TableSum] = {}
        self.secrets: Any = None

    def _next(self) -> Any:
        try:
            line = self.f.readline(MAX_LINE_BYTES + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise BackupError(f"the backup is damaged ({type(e).__name__})") from None
        if not line:
            raise BackupError("the backup ends early (incomplete file)")
        if len(line) > MAX_LINE_BYTES:
            raise BackupError(f"a line of the backup is longer than {MAX_LINE_BYTES} bytes")
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            raise BackupError("a line of the backup is not valid JSON") from None

    def _dict(self) -> dict[str, Any]:
        doc = self._next()
        if not isinstance(doc, dict):
            raise BackupError("the backup's structure is broken")
        return doc

    def tables(self) -> Iterator[tuple[str, list[str], Iterator[list[Any]]]]:
        known = [t for t, _ in copy.TABLES]
        for want in known:
            head = self._dict()
            if head.get("table") != want:
                raise BackupError(f"the backup lacks table {want} where expected")
            columns = head.get("columns")
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise BackupError(f"the backup's columns of {want} are malformed")
            yield want, columns, self._rows(want, len(columns))
        tail = self._dict()
        if "secrets" in tail:
            self.secrets = tail["secrets"]
            tail = self._dict()
        if tail != {"complete": True}:
            raise BackupError("the backup ends without its completion mark")

    def _rows(self, table: str, width: int) -> Iterator[list[Any]]:
        while True:
            doc = self._next()
            if isinstance(doc, dict):
                if doc.get("end") != table:
                    raise BackupError(f"table {table} of the backup ends badly")
                rows, digest = doc.get("rows"), doc.get("sha256")
                if type(rows) is not int or not isinstance(digest, str):
                    raise BackupError(f"table {table} of the backup has no digest")
                self.expected[table] = copy.TableSum(rows, digest)
                return
            if not isinstance(doc, list) or len(doc) != width:
                raise BackupError(f"a row of table {table} is malformed")
            for v in doc:
                if v is not None and type(v) not in (int, str):
                    raise BackupError(f"a row of table {table} holds a {type(v).__name__}")
            yield doc


def restore(path: Path, store: Store) -> tuple[dict[str, copy.TableSum], Any]:
    """Load the backup at ``path`` into the empty ``store`` (same schema version) in one
    transaction, checked against the file's counts and digests; returns them and the
    sealed secrets (None when the backup has none)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise BackupError(f"cannot read {path}: {e.strerror}") from None
    with raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        reader = Reader(f)
        version = reader.header["schema_version"]
        if version != store.schema_version():
            raise ConfigError(
                f"the backup is of schema version {version}, the database of "
                f"{store.schema_version()}: restore with the fieldpass-hq that made it"
            )
        if not copy.is_empty(store):
            raise ConfigError("the database is not empty: restore only into a new one")
        with store.write() as tx:
            loaded = copy.load(tx, reader.tables())
            for table, want in reader.expected.items():
                if loaded.get(table) != want:
                    raise BackupError(f"table {table} of the backup does not match its digest")
            copy.compare(copy.sums_in(tx), reader.expected)  # as stored, before commit
    return reader.expected, reader.secrets
