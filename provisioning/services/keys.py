"""HQ's signing keys: generate (the new key signs from then on, or is only published
with ``standby``), activate a published key, retire (a retired key signs nothing new),
list, the keyring devices carry, and the active private key for
whoever signs inside a transaction.

Private seeds stay in the key store (keystore.py); the database holds public parts,
which key is active and which are retired. A retired key is never chosen to sign; its
seed stays on disk (HQ never deletes key material). Never returns, prints or logs a
seed.
"""

from agent.wire.keys import Keyring, SigningKey

from ..errors import ConfigError, Conflict, NotFound
from ..keystore import KeyStore
from ..models import Actor, KeyInfo
from ..storage import Store, Tx
from .audit import event

NO_KEY = "no signing key yet: run 'fieldpass-hq keys generate'"


class Keys:
    def __init__(self, store: Store, keystore: KeyStore) -> None:
        self.store = store
        self.keystore = keystore
        self._signing: SigningKey | None = None

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

    def retire_key(self, kid: str, now: int, actor: Actor) -> KeyInfo:
        """Retire ``kid``: it signs nothing from now on. The active key cannot be retired
        (generate its successor first), so that HQ never stands without a signing key."""
        with self.store.write() as tx:
            info = next((k for k in tx.list_keys() if k.kid == kid), None)
            if info is None:
                raise NotFound(f"no signing key {kid!r}")
            if info.retired_at is not None:
                raise Conflict(f"key {kid} is retired already")
            if info.active:
                raise Conflict(
                    f"key {kid} is the active signing key: run 'fieldpass-hq keys generate' "
                    "first (the new key takes over), then retire this one"
                )
            tx.retire_key(kid, now)
            tx.append_audit(event(now, actor, "key_retire", detail=f"kid={kid}"))
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

    def signing_key(self, tx: Tx) -> SigningKey:
        """The active key as of ``tx`` (loaded once, again only after a new one)."""
        kid = tx.active_kid()
        if kid is None:
            raise ConfigError(NO_KEY)
        if self._signing is None or self._signing.kid != kid:
            self._signing = self.keystore.load(kid)
        return self._signing
