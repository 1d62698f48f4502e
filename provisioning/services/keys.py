"""HQ's signing keys: generate (the new key signs from then on), list, the keyring
devices carry, and the active private key for whoever signs inside a transaction.

Private seeds stay in the key store (keystore.py); the database holds public parts and
which key is active. Never returns, prints or logs a seed.
"""

from agent.wire.keys import Keyring, SigningKey

from ..errors import ConfigError
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

    def generate_key(self, now: int, actor: Actor) -> KeyInfo:
        key = SigningKey.generate()
        self.keystore.save(key)
        with self.store.write() as tx:
            tx.insert_key(key.kid, key.public_key, now)
            tx.activate_key(key.kid)
            tx.append_audit(event(now, actor, "key_generate", detail=f"kid={key.kid}"))
        return KeyInfo(key.kid, key.public_key, now, True)

    def list_keys(self) -> list[KeyInfo]:
        with self.store.read() as tx:
            return tx.list_keys()

    def keyring(self) -> Keyring:
        keys = self.list_keys()
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
