"""HQ's license-key secret (``HOME/license-keys.secret``: 32 random bytes, base64, mode
0600), which seals the license keys the database holds (storage/sealing.py), and how a
home and a database agree on it.

The database records the name (``kid``) of the secret its keys are sealed with
(``sealing``, schema 12). Opening HQ (``use``):

- the database names the home's secret: it is used;
- the database names another secret, or the home has none: nothing is created, and
  every use of a license key is a one-line configuration error (exit 78, HTTP 503)
  saying to copy ``license-keys.secret`` from the home that sealed them (every host of
  a multi-host HQ holds the same one, as it holds the same signing seeds);
- the database names no secret and holds no license yet (a new database): the home's
  secret is used, created if the home has none, and recorded. The first HQ to record
  one wins; a home that created its own in the meantime removes it and stops as above;
- the database names no secret and holds licenses in clear (upgraded from before
  schema 12): their keys stay in clear, read and written so, until ``seal``
  (``fieldpass-hq db seal-keys``) records the secret and seals them in one
  transaction: an HQ of the release before, still running beside this one in a
  rolling upgrade, reads keys in clear only, so the operator seals once every HQ
  process runs this release. A process of this release started before that opens the
  sealed keys it meets with its home's secret if it is the one they name
  (storage/sealing.py, ``ClearLicenseKeys``);
- the database names no secret but holds sealed keys (its record lost by hand): the
  secret those keys name is the one, never a new one.

``serve``, ``bridge`` and ``push`` refuse to start (exit 78) in a home that cannot open
the keys (``HQ.require_license_keys``), so that no balancer or shared subscription sends
devices to it.
"""

from pathlib import Path

from . import secret_file
from .errors import ConfigError
from .storage import Store
from .storage.sealing import ClearLicenseKeys, LicenseKeys, SealedLicenseKeys, kid_in, kid_of

SECRET_NAME = "license-keys.secret"  # noqa: S105 - a file name
RECORD = "license_keys"


def _unusable(home: Path, recorded: str, secret: bytes | None) -> LicenseKeys:
    path = home / SECRET_NAME
    held = f"{path} holds secret {kid_of(secret)}" if secret is not None else f"{path} is missing"
    return LicenseKeys(
        f"the license keys in the database are sealed with the license-key secret "
        f"{recorded} and {held}: copy {SECRET_NAME} from the HQ home that sealed them "
        "(or restore a backup made --with-secrets)"
    )


def _recorded(store: Store) -> tuple[str | None, str | None, bool]:
    """The secret the database records, the one it names (recorded, else the one its
    sealed rows name: a record lost by hand), and whether a key is in clear."""
    with store.read() as tx:
        in_db = tx.sealing_kid(RECORD)
        clear = bool(tx.keys_in_clear(limit=1))
        sealed = tx.a_sealed_key() if in_db is None else None
    return in_db, in_db or (kid_in(sealed) if sealed is not None else None), clear


def _settle(home: Path, store: Store, *, seal_now: bool) -> tuple[LicenseKeys, bool, int]:
    """The keys for this home, whether its secret was made now, and how many keys were
    sealed now. ``seal_now`` (``db seal-keys``): a database upgraded from before schema
    12 gets its secret recorded and every key sealed, in one transaction; without it
    such a database keeps its keys in clear (the module's doc)."""
    path = home / SECRET_NAME
    secret = secret_file.read(path)
    in_db, recorded, clear = _recorded(store)
    if recorded is not None and (secret is None or recorded != kid_of(secret)):
        return _unusable(home, recorded, secret), False, 0
    if recorded is None and clear and not seal_now:
        return ClearLicenseKeys(lambda: secret_file.read(path)), False, 0
    created = secret is None
    if secret is None:
        secret = secret_file.create(path)
    keys = SealedLicenseKeys(secret)
    if in_db is not None and not clear:
        return keys, False, 0  # the usual start: nothing to write
    store.license_keys = keys
    with store.write() as tx:
        tx.record_sealing_kid(RECORD, keys.kid or "")
        won = tx.sealing_kid(RECORD)
        in_clear = tx.keys_in_clear() if won == keys.kid else []
        for license_id, key in in_clear:
            tx.seal_license_key(license_id, key)
    if won != keys.kid:
        if created:
            path.unlink(missing_ok=True)  # another home's secret won the race: not ours
        return _unusable(home, won or "?", None if created else secret), False, 0
    return keys, created, len(in_clear)


def use(home: Path, store: Store) -> LicenseKeys:
    """What seals and opens the license keys of ``store`` for this home (the module's
    doc); the caller sets it as ``store.license_keys``."""
    return _settle(home, store, seal_now=False)[0]


def seal(home: Path, store: Store) -> tuple[int, str, bool]:
    """Seal every key still in clear (``fieldpass-hq db seal-keys``): the number sealed,
    the secret's name, and whether the secret was made now. Refused (ConfigError) when
    the database names another secret than the home's."""
    keys, created, sealed = _settle(home, store, seal_now=True)
    if not isinstance(keys, SealedLicenseKeys):
        raise ConfigError(keys.why)
    return sealed, keys.kid or "", created


def status(home: Path, store: Store) -> dict[str, object]:
    """Where the license keys of ``store`` stand for this home (``db status``):
    ``state`` is ``sealed``, ``in_clear`` (run ``db seal-keys``), ``secret_missing`` or
    ``secret_mismatch`` (copy the secret from the home that sealed them), or ``none``
    (no license yet); ``secret`` the name of the secret the database names."""
    secret = secret_file.read(home / SECRET_NAME)
    _, recorded, clear = _recorded(store)
    if recorded is None:
        state = "in_clear" if clear else "none"
    elif secret is None:
        state = "secret_missing"
    elif recorded != kid_of(secret):
        state = "secret_mismatch"
    else:
        state = "in_clear" if clear else "sealed"
    return {"state": state, "secret": recorded}
