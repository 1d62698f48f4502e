"""HQ's signing keys: generate (the new key signs from then on, or is only published
with ``standby``), activate a published key, retire (a retired key signs nothing new),
list, the keyring devices carry, and the private key to sign with for a device, chosen
inside a transaction by one rule (``choose_kid``): a device that says which keys its
keyring holds gets files from one of them, so that a new key can sign for the devices
whose images carry it while the others keep getting files they can install.

Private seeds stay in the key store (keystore.py); the database holds public parts,
which key is active and which are retired. A retired key is never chosen to sign; its
seed stays on disk (HQ never deletes key material). Never returns, prints or logs a
seed.
"""

from collections.abc import Sequence

from agent.wire.keys import Keyring, SigningKey

from ..errors import ConfigError, Conflict, NotFound
from ..keystore import KeyStore
from ..models import Actor, KeyInfo
from ..storage import Store, Tx
from .audit import event

NO_KEY = "no signing key yet: run 'fieldpass-hq keys generate'"


def choose_kid(keys: Sequence[KeyInfo], reported: Sequence[str]) -> str | None:
    """The key HQ signs with for a device whose keyring holds ``reported`` (empty: the
    device never said): the active key if the device reported it or nothing; else the
    newest key it reported that is not retired; else the active key. None without an
    active key. The one place this is decided."""
    active = next((k.kid for k in keys if k.active and k.retired_at is None), None)
    if active is None or not reported or active in reported:
        return active
    trusted = [k for k in keys if k.kid in reported and k.retired_at is None]
    if not trusted:
        return active
    return max(trusted, key=lambda k: (k.created_at, k.kid)).kid


class Signer:
    """HQ's keys as of one transaction: the private key to sign with for each device."""

    def __init__(self, keys: "Keys", infos: Sequence[KeyInfo]) -> None:
        self._keys = keys
        self._infos = tuple(infos)

    def key_for(self, reported: Sequence[str] = ()) -> SigningKey:
        """The key for a device whose keyring holds ``reported`` (``choose_kid``)."""
        kid = choose_kid(self._infos, reported)
        if kid is None:
            raise ConfigError(NO_KEY)
        return self._keys.load(kid)


class Keys:
    def __init__(self, store: Store, keystore: KeyStore) -> None:
        self.store = store
        self.keystore = keystore
        self._loaded: dict[str, SigningKey] = {}

    def generate_key(self, now: int, actor: Actor, *, standby: bool = False) -> KeyInfo:
        """A new key. It signs from now on; with ``standby``, it is only published (in
        the keyring, for the next images) until ``activate_key`` makes it the signing
        key: devices trust a key only once their image carries it."""
        with self.store.read() as tx:
            if standby and tx.active_kid() is None:
                raise Conflict("HQ has no signing key yet: the first key signs at once")
        key = SigningKey.generate()
        self.keystore.save(key)
        with self.store.write() as tx:
            tx.insert_key(key.kid, key.public_key, now)
            if not standby:
                tx.activate_key(key.kid)
            detail = f"kid={key.kid}" + (" standby" if standby else "")
            tx.append_audit(event(now, actor, "key_generate", detail=detail))
        return KeyInfo(key.kid, key.public_key, now, not standby)

    def activate_key(self, kid: str, now: int, actor: Actor) -> KeyInfo:
        """Make published key ``kid`` the one HQ signs with from now on (the second
        phase of a rotation: once the images that devices run carry it)."""
        with self.store.write() as tx:
            info = next((k for k in tx.list_keys() if k.kid == kid), None)
            if info is None:
                raise NotFound(f"no signing key {kid!r}")
            if info.retired_at is not None:
                raise Conflict(f"key {kid} is retired: a retired key signs nothing new")
            if info.active:
                raise Conflict(f"key {kid} is the signing key already")
            tx.activate_key(kid)
            tx.append_audit(event(now, actor, "key_activate", detail=f"kid={kid}"))
        return KeyInfo(info.kid, info.public_key, info.created_at, True)

    def retire_key(self, kid: str, now: int, actor: Actor, *, force: bool = False) -> KeyInfo:
        """Retire ``kid``: it signs nothing from now on. The active key cannot be retired
        (generate its successor first), so that HQ never stands without a signing key.
        Nor, unless ``force`` (a leaked key), a key that live devices report as the only
        one they trust of those not retired: they could install no renewal again."""
        with self.store.write() as tx:
            keys = tx.list_keys()
            info = next((k for k in keys if k.kid == kid), None)
            if info is None:
                raise NotFound(f"no signing key {kid!r}")
            if info.retired_at is not None:
                raise Conflict(f"key {kid} is retired already")
            if info.active:
                raise Conflict(
                    f"key {kid} is the active signing key: run 'fieldpass-hq keys generate' "
                    "first (the new key takes over), then retire this one"
                )
            others = {k.kid for k in keys if k.kid != kid and k.retired_at is None}
            stranded = tx.trusting_only(kid, others)
            if stranded and not force:
                raise Conflict(
                    f"{stranded} live device(s) trust no other key than {kid}: retired, it "
                    "leaves them no renewal they can install (keys list, REPORTED). Roll "
                    "out an image or keyring with the new key first, or retire with --force "
                    "(a leaked key)"
                )
            tx.retire_key(kid, now)
            detail = f"kid={kid}" + (f" forced stranded={stranded}" if stranded else "")
            tx.append_audit(event(now, actor, "key_retire", detail=detail))
        return KeyInfo(info.kid, info.public_key, info.created_at, False, now)

    def list_keys(self) -> list[KeyInfo]:
        with self.store.read() as tx:
            return tx.list_keys()

    def keyring(self, *, with_retired: bool = True) -> Keyring:
        """The public keys devices trust: all of them, or only those not retired."""
        keys = [k for k in self.list_keys() if with_retired or k.retired_at is None]
        if not keys:
            raise ConfigError(NO_KEY)
        return Keyring.of(*(k.public_key for k in keys))

    def keyring_counts(self) -> dict[str, int]:
        """How many live activations reported each key in their keyring."""
        with self.store.read() as tx:
            return tx.keyring_counts()

    def signer(self, tx: Tx) -> Signer:
        """The keys as of ``tx``, to choose per device (bulk issuance reads them once)."""
        return Signer(self, tx.list_keys())

    def signing_key(self, tx: Tx, reported: Sequence[str] = ()) -> SigningKey:
        """The key to sign with, as of ``tx``, for a device whose keyring holds
        ``reported`` (an activation's ``keyring``; empty: the active key)."""
        return self.signer(tx).key_for(reported)

    def load(self, kid: str) -> SigningKey:
        """The private key ``kid`` from the key store (each loaded once)."""
        key = self._loaded.get(kid)
        if key is None:
            key = self._loaded[kid] = self.keystore.load(kid)
        return key
