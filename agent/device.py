"""The device's licensing store: the one place that combines the pure core with files.

``Device.evaluate`` is the boot gate's decision; ``Device.install`` takes a new machine
file. Both hold the state directory's lock while they write, so the gate, the daemon
and ``install`` never interleave. Write order on install (crash-safe at every point):
the state exists before the first machine file, the machine file is replaced
atomically, then the state absorbs it; a crash between the last two is repaired by the
next check, which absorbs a newer file the same way.

What the device remembers only moves forward (docs/device.md, "Lost state"): a state
that is missing or refused is never rebuilt from a machine file alone, only from an
answer HQ bound to this device's TPM counter value or to a nonce it just sent. With
``[tpm]`` the counter proves a loss that the data partition cannot hide.
"""

import errno
import os

from . import fsio, state, verdict
from .config import Config, ConfigError
from .identity import Identity, read_identity
from .state import Slots, State, StateError
from .verdict import INVALID, NOT_ACTIVATED, Verdict
from .wire import armor, license_key, sodium
from .wire.errors import FormatError, WireError
from .wire.keys import Keyring
from .wire.machine_file import MAX_MACHINE_FILE_BYTES, Claims, open_machine_file

if False:  # typing only: agent.tpm is imported when [tpm] is enabled, not on every boot
    from .tpm import Anchor, Reading
    from .wire.device_key import DeviceKey
    from .wire.signed_time import SignedStatus

MAX_LICENSE_KEY_BYTES = 256
MAX_DEVICE_KEY_BYTES = 128
MAX_PENDING_BYTES = 512
INCOMING = "incoming"  # the factory's spool: fieldpass-hq provision writes here
DEVICE_KEY_NAME = "device.key"
PENDING_NAME = "request.pending"
RECEIPT_NAME = "return.receipt"
STATE_KEY_CONTEXT = b"fieldpass/state-key/v2\0"
LOST = "state_lost"
RECOVER_HINT = (
    "connect it to HQ (`fieldpass refresh`), or carry `fieldpass request -o FILE` to HQ "
    "and install the answer"
)


class InstallRefused(Exception):
    """A machine file was refused; the stored one is untouched."""

    def __init__(self, verdict_name: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.verdict_name = verdict_name
        self.reason = reason


class ReceiptWaiting(Exception):
    """``fieldpass return`` while an earlier activation's receipt waits for HQ: it is
    never replaced (its seat would stay taken at HQ); nothing was changed."""

    reason = "receipt_waiting"


class Outcome:
    """A verdict plus what the device knows around it (for files, status and hooks)."""

    __slots__ = ("identity", "notes", "previous_verdict", "state", "unrecorded_boots", "verdict")

    def __init__(
        self,
        verdict: Verdict,
        identity: Identity,
        state: State | None,
        previous_verdict: str = "",
        notes: list[str] | None = None,
    ) -> None:
        self.verdict = verdict
        self.identity = identity
        self.state = state
        self.previous_verdict = previous_verdict
        self.notes = notes or []
        self.unrecorded_boots = 0


class Loaded:
    """The state as the device can trust it now: ``state`` when usable, else ``error``
    (``state_lost`` and friends); ``slots`` as read; the TPM ``reading`` if any."""

    __slots__ = ("error", "reading", "slots", "state")

    def __init__(
        self,
        state: State | None,
        error: StateError | None,
        slots: Slots,
        reading: "Reading | None",
    ) -> None:
        self.state = state
        self.error = error
        self.slots = slots
        self.reading = reading


class Device:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._identity: Identity | None = None
        self._anchor: Anchor | None = None
        self._device_key: DeviceKey | None = None

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = read_identity(self.cfg)
        return self._identity

    def _path(self, name: str) -> str:
        return os.path.join(self.cfg.state_dir, name)

    def keyring(self) -> Keyring:
        try:
            data = fsio.read_bytes(self.cfg.keyring, 64 * 1024)
        except fsio.StorageError as e:
            raise ConfigError(f"{self.cfg.keyring}: {e.strerror}") from None
        if data is None:
            raise ConfigError(f"{self.cfg.keyring}: no keyring: the image must install one")
        try:
            return Keyring.loads(data)
        except FormatError as e:
            raise ConfigError(f"{self.cfg.keyring}: {e}") from None

    def stored_license_key(self) -> str | None:
        try:
            data = fsio.read_bytes(self.cfg.license_key_file, MAX_LICENSE_KEY_BYTES)
        except fsio.StorageError:
            return None
        if data is None:
            return None
        try:
            return license_key.normalize(data.decode("ascii", "replace"))
        except ValueError:
            return None

    def stored_machine_file(self) -> bytes | None:
        return fsio.read_bytes(self.cfg.machine_file, MAX_MACHINE_FILE_BYTES)

    # -- the device key ---------------------------------------------------------

    def _device_seed(self) -> bytes | None:
        """The device key's seed, or None when there is none (or it is damaged)."""
        try:
            data = fsio.read_bytes(self._path(DEVICE_KEY_NAME), MAX_DEVICE_KEY_BYTES)
        except fsio.StorageError:
            return None
        if data is None:
            return None
        from .wire.device_key import DeviceKey

        try:
            self._device_key = DeviceKey.loads(data)
        except FormatError:
            return None
        return self._device_key.seed

    def device_key(self) -> "DeviceKey | None":
        if self._device_key is None:
            self._device_seed()
        return self._device_key

    def ensure_device_key(self) -> "DeviceKey":
        """The device key, created (0600, crash-safe) if there is none yet. Call with the
        writer lock held. A damaged key file is never replaced silently."""
        key = self.device_key()
        if key is not None:
            return key
        if os.path.lexists(self._path(DEVICE_KEY_NAME)):
            raise StateError(
                "device_key_damaged",
                f"{self._path(DEVICE_KEY_NAME)} is damaged: the device can no longer prove "
                "who it is; HQ must reset its key (docs/runbooks/technician.md)",
            )
        from .wire.device_key import DeviceKey

        key = DeviceKey.generate()
        fsio.atomic_write(self._path(DEVICE_KEY_NAME), key.dumps(), 0o600)
        self._device_key = key
        return key

    # -- the TPM anchor -----------------------------------------------------------

    def anchor(self) -> "Anchor | None":
        """The TPM NV indices the state is bound to, when ``[tpm] enabled``."""
        if not self.cfg.tpm_enabled:
            return None
        if self._anchor is None:
            from .tpm import Anchor, TpmError, parse_nv_index

            try:
                index = parse_nv_index(self.cfg.tpm_nv_index)
            except (TpmError, ValueError) as e:
                raise ConfigError(f"{self.cfg.path}: [tpm] nv_index: {e}") from None
            self._anchor = Anchor(index, self.cfg.tpm_tcti)
        return self._anchor

    def _reading(self) -> "Reading | None":
        anchor = self.anchor()
        if anchor is None:
            return None
        from .tpm import TpmError

        try:
            return anchor.read()
        except TpmError as e:
            raise StateError("tpm_unavailable", f"TPM unreadable ({e})") from None

    def provision_tpm(self) -> "Reading | None":
        """Define the TPM indices if missing (explicit steps only: ``fieldpass tpm
        provision``, ``request``, ``activate``). Returns the reading after."""
        anchor = self.anchor()
        if anchor is None:
            return None
        from .tpm import TpmError

        try:
            return anchor.provision()
        except TpmError as e:
            raise fsio.StorageError(errno.EIO, f"TPM: {e}") from None

    # -- the state ----------------------------------------------------------------

    def _state_key(self, reading: "Reading | None") -> bytes | None:
        seed = self._device_seed()
        if seed is None:
            return None
        secret = b""
        if reading is not None:
            if reading.secret is None:
                return None
            secret = reading.secret
        return sodium.hmac_sha256(self.identity.state_key, STATE_KEY_CONTEXT + seed + secret)

    def _legacy_key(self, reading: "Reading | None") -> bytes | None:
        """The key of a version-1 state (agents up to 0.1.0: the hardware id alone), only
        on a device where no later agent ever ran: no device key yet, and with a TPM no
        secret in it yet. Anywhere else a v1 slot is a forgery and is refused."""
        if os.path.lexists(self._path(DEVICE_KEY_NAME)):
            return None
        if reading is not None and reading.secret is not None:
            return None
        return self.identity.state_key

    def load(self) -> Loaded:
        """Read the state and judge whether it can be trusted (docs/device.md)."""
        reading = self._reading()
        slots = state.read(self.cfg.state_dir, self._state_key(reading), self._legacy_key(reading))
        st, error = slots.state, slots.error
        if reading is None:
            if error is None and st is None and os.path.lexists(self.cfg.machine_file):
                error = StateError(
                    "state_missing",
                    "the device state is missing beside the machine file: " + RECOVER_HINT,
                )
            return Loaded(st if error is None else None, error, slots, reading)
        return Loaded(*self._judge_bound(slots, reading), slots, reading)

    def _judge_bound(
        self, slots: Slots, reading: "Reading"
    ) -> tuple[State | None, StateError | None]:
        from .tpm import INCONSISTENT, RESTORED, UNBOUND, check_binding

        st = slots.state
        evidence = slots.present or os.path.lexists(self.cfg.machine_file)
        if reading.counter is None:
            if evidence or reading.secret is not None:
                return None, _lost(
                    "the TPM counter the state is bound to is gone (undefined, or the TPM "
                    "was cleared)"
                )
            return None, None  # a device never provisioned for the TPM: not activated
        if st is None:
            if slots.error is not None:
                return None, _lost(f"the device state is refused ({slots.error})")
            if evidence or reading.held_state:
                return None, _lost("the TPM counter shows this device held a state, now gone")
            return None, None
        binding = check_binding(st.tpm, reading.counter)
        if binding == UNBOUND:
            return None, _lost("the device state is not bound to the TPM counter")
        if binding == RESTORED:
            return None, _lost(
                f"the device state is older than the TPM counter ({st.tpm} < "
                f"{reading.counter}): a restored image"
            )
        if binding == INCONSISTENT:
            return None, _lost(
                f"the device state does not match the TPM counter ({st.tpm} vs "
                f"{reading.counter}): the TPM was cleared or replaced"
            )
        if reading.secret is None and not st.legacy:
            return None, _lost("the TPM secret the state is sealed with is gone")
        return st, None

    def load_state(self) -> State | None:
        """The trusted state, None when there is none; StateError when it is refused."""
        loaded = self.load()
        if loaded.error is not None:
            raise loaded.error
        return loaded.state

    def save_state(self, st: State, loaded: Loaded, *, bump: bool) -> State:
        """Write the state. With a TPM, a security-relevant save (``bump``: every boot,
        a new machine file, a revocation or lift, a lowered clock mark) writes the state
        carrying counter + 1 and THEN moves the counter, so a power cut between the two
        leaves a state one step ahead, which the next load accepts. A routine save keeps
        the mark: NV memory wears, so the counter moves only when it must."""
        reading = loaded.reading
        if reading is None:
            key = self._state_key(None)
            if key is None:
                self.ensure_device_key()
                key = self._state_key(None)
            assert key is not None
            # no counter to tell an older slot from the newest: what must not come back
            # goes to both slots
            both = state.lasting_change(loaded.state, st)
            return state.save(self.cfg.state_dir, key, st, both=both)
        anchor = self.anchor()
        assert anchor is not None
        from .tpm import TpmError

        try:
            if reading.secret is None or reading.unrecorded is None:
                # Only a migration from an agent that knew no secret gets here (load
                # refuses everything else): complete the TPM's provisioning first.
                reading = anchor.provision()
                loaded.reading = reading
            if self._state_key(reading) is None:
                self.ensure_device_key()
            key = self._state_key(reading)
            assert key is not None and reading.counter is not None
            mark = reading.counter + 1 if bump else max(reading.counter, st.tpm or 0)
            new = state.save(
                self.cfg.state_dir,
                key,
                st.replace(tpm=mark, unrecorded_mark=reading.unrecorded),
            )
            if bump:
                anchor.bump()
                loaded.reading = type(reading)(
                    reading.counter + 1, reading.unrecorded, reading.secret, reading.first
                )
        except TpmError as e:
            raise fsio.StorageError(errno.EIO, f"TPM: {e}") from None
        return new

    # -- the gate -------------------------------------------------------------

    def evaluate(self, now: int, *, record: bool) -> Outcome:
        """Decide the verdict at ``now``; with ``record``, count the boot and move the
        high-water mark (write failures become notes, never a worse verdict at once)."""
        identity = self.identity
        try:
            data = self.stored_machine_file()
        except fsio.NoAccess:
            raise  # not a verdict on the file: the caller says who may read it (exit 71)
        except fsio.StorageError as e:  # a FIFO, a device, too large: reason says which
            return Outcome(
                Verdict(INVALID, f"Machine file refused: {e.strerror}", reason=e.reason),
                identity,
                None,
            )
        key = self.stored_license_key()
        try:
            loaded = self.load()
        except StateError as e:  # the TPM cannot be read: fail closed
            return Outcome(
                Verdict(INVALID, f"Device state refused: {e}", reason=e.reason), identity, None
            )
        st = loaded.state
        if data is None or key is None:
            if loaded.error is not None:
                return Outcome(self._refusal(loaded), identity, None)
            if st is not None and st.returned_at:
                return Outcome(_given_back(st), identity, st)
            what = "no machine file" if data is None else "no license key"
            message = f"This device is not activated ({what}): activate it with a license key"
            return Outcome(Verdict(NOT_ACTIVATED, message), identity, st)
        keyring = self.keyring()
        try:
            claims = open_machine_file(data, keyring, key, identity.fingerprint)
        except WireError as e:  # a file that is not this device's says so first
            message = f"Machine file refused: {e}"
            if e.reason == "wrong_device":
                message += self._source_changed(loaded, data, key)
            return Outcome(Verdict(INVALID, message, reason=e.reason), identity, st)
        if loaded.error is not None:
            return Outcome(self._refusal(loaded, claims), identity, None)
        if st is None:
            return Outcome(
                Verdict(
                    INVALID,
                    "Device state is missing beside the machine file: " + RECOVER_HINT,
                    reason="state_missing",
                    claims=claims,
                ),
                identity,
                None,
            )
        if verdict.given_back(claims, st):
            # the file and key of an activation given back, put back by hand (even over
            # a later activation's), or a return cut short before it removed them:
            # given back all the same
            return Outcome(_given_back(st, claims), identity, st)
        order = verdict.compare(claims, st)
        if order == verdict.OLDER:
            return Outcome(
                Verdict(
                    INVALID,
                    f"Machine file is older than the one this device accepted "
                    f"(serial {claims.serial} < {st.serial}): install the newest file",
                    reason="downgrade",
                    claims=claims,
                ),
                identity,
                st,
            )
        if order == verdict.NEWER:
            st = verdict.absorb(claims, st)
        result = verdict.decide(
            claims, st, now, policy=self.cfg.clock_policy, tolerance_s=self.cfg.tolerance_s
        )
        unrecorded = _unrecorded_boots(st, loaded.reading)
        result = verdict.degrade_unrecorded(result, unrecorded)
        outcome = Outcome(result, identity, st, previous_verdict=st.last_verdict)
        outcome.unrecorded_boots = unrecorded
        if unrecorded:
            outcome.notes.append(
                f"{unrecorded} boot(s) in a row could not be recorded on the data partition; "
                f"after {verdict.MAX_UNRECORDED_BOOTS} the equipment runs in limited mode"
            )
        if record:
            fsio.remove_stale_temps(self.cfg.state_dir)
            after = verdict.advance(st, now, result)
            if st.usage_stop and result.name in (verdict.VALID, verdict.GRACE):
                # the daemon was stopped while the system ran: that time was operating
                from . import usage

                t = result.effective_now if result.effective_now is not None else now
                after = usage.operate(after, st.usage_stop, t).replace(usage_stop=0)
            try:
                outcome.state = self.save_state(after, loaded, bump=True)
                outcome.unrecorded_boots = 0
            except OSError as e:
                outcome.notes.append(f"could not record the check in {self.cfg.state_dir}: {e}")
                self._count_unrecorded(loaded, outcome)
        return outcome

    def _count_unrecorded(self, loaded: Loaded, outcome: Outcome) -> None:
        anchor = self.anchor()
        if anchor is None:
            return
        from .tpm import TpmError

        try:
            anchor.bump_unrecorded()
        except TpmError as e:
            outcome.notes.append(f"could not count the unrecorded boot in the TPM: {e}")

    def _refusal(self, loaded: Loaded, claims: Claims | None = None) -> Verdict:
        error = loaded.error
        assert error is not None
        if error.reason == LOST:
            message = f"This device lost its license state ({error}): {RECOVER_HINT}"
        elif error.reason == "state_missing":
            text = str(error)
            message = text[:1].upper() + text[1:]
        else:
            message = f"Device state refused: {error}"
            if error.reason == "state_foreign":
                message += self._source_changed(loaded)
        return Verdict(INVALID, message, reason=error.reason, claims=claims)

    def _source_changed(self, loaded: Loaded, data: bytes = b"", key: str = "") -> str:
        """When the state or the file belongs to another identity source of this very
        device (an image update changed the order of [identity] sources), say so."""
        from .identity import candidates

        now = self.identity.source
        secret = b""
        if loaded.reading is not None:
            secret = loaded.reading.secret or b""
        seed = self._device_seed() or b""
        for other in candidates(self.cfg):
            if other.source == now:
                continue
            state_key = sodium.hmac_sha256(other.state_key, STATE_KEY_CONTEXT + seed + secret)
            fits = state.read(self.cfg.state_dir, state_key, None).state is not None
            if not fits and data and key:
                try:
                    open_machine_file(data, self.keyring(), key, other.fingerprint)
                    fits = True
                except WireError:
                    pass
            if fits:
                return (
                    f" (the identity source changed: this device was activated with its "
                    f"{other.source}, the image now reads {now} first; restore the order of "
                    "[identity] sources in agent.toml, or re-activate)"
                )
        return ""

    def writer_lock(self) -> fsio.ExclusiveLock:
        """The lock a writer other than the gate takes; creates the state directory."""
        try:
            os.makedirs(self.cfg.state_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise fsio.StorageError(
                e.errno, f"cannot create {self.cfg.state_dir}: {e.strerror}"
            ) from None
        return fsio.ExclusiveLock(self.cfg.state_dir)

    # -- install --------------------------------------------------------------

    def install(
        self, data: bytes, new_key: str | None, now: int, *, nonce: str | None = None
    ) -> tuple[Claims, str]:
        """Verify and store a machine file; return its claims and "installed"/"same".

        ``nonce`` is the nonce this process just sent HQ (an online answer): a file bound
        to it is HQ's word on the time now. Raises InstallRefused (nothing stored
        changed), ConfigError, StorageError.
        """
        if armor.is_armored(data):
            try:
                data = armor.unarmor(data, armor.MACHINE_FILE)
            except FormatError as e:
                raise InstallRefused(INVALID, e.reason, f"not a machine file: {e}") from None
        key = new_key or self.stored_license_key()
        if key is None:
            raise InstallRefused(
                NOT_ACTIVATED,
                "no_license_key",
                "no license key on this device: pass --license-key-file (or --license-key)",
            )
        identity = self.identity
        try:
            claims = open_machine_file(data, self.keyring(), key, identity.fingerprint)
        except WireError as e:
            raise InstallRefused(INVALID, e.reason, f"machine file refused: {e}") from None
        try:
            loaded = self.load()
        except StateError as e:
            raise InstallRefused(INVALID, e.reason, f"cannot install: {e}") from None
        fresh = self._fresh_nonce(claims, nonce, loaded)
        st = loaded.state
        if loaded.error is not None or (st is None and self._needs_binding(loaded)):
            return self._rebuild(data, key, claims, loaded, fresh)
        if st is not None and verdict.given_back(claims, st):
            # any file of an activation given back, bound to a nonce just sent (an answer
            # to a renewal of before the return) or issued later than the current one
            raise InstallRefused(INVALID, "returned", self._returned_refusal(claims, st))
        if st is not None:
            stored = self._stored_claims(key)
            if (
                stored is not None
                and not verdict.given_back(stored, st)
                and verdict.compare(stored, st) == verdict.NEWER
            ):
                st = verdict.absorb(stored, st)  # an install cut short before its state
        # Another activation's file not issued later is newer only as HQ's answer now: to
        # the nonce just sent, or with a TPM to the pending request at the counter as it
        # is now. Without a TPM the pending nonce stays until its own answer comes, so it
        # may name a request of long ago that another file answered since.
        answers_now = fresh and (loaded.reading is not None or _names(claims, nonce))
        order = verdict.compare(claims, st, bound=answers_now)
        if order == verdict.OLDER:
            assert st is not None
            raise InstallRefused(
                INVALID,
                "downgrade",
                f"machine file is older than the installed one (serial {claims.serial} < "
                f"{st.serial}); the installed file stays in force",
            )
        stored_key = self.stored_license_key()
        if order == verdict.SAME and key == stored_key and data == self.stored_machine_file():
            return claims, "same"
        fsio.remove_stale_temps(self.cfg.state_dir)
        if st is None:
            # A fresh device: the state is written first, so a crash before the file
            # leaves "not activated", never acceptance.
            self.ensure_device_key()
            new = verdict.absorb(claims, State(id_source=identity.source), bound=fresh)
            st = self.save_state(_resume_usage(new, claims), loaded, bump=True)
            order = verdict.SAME
        if key != stored_key:
            fsio.atomic_write(self.cfg.license_key_file, key.encode("ascii") + b"\n", 0o600)
        fsio.atomic_write(self.cfg.machine_file, data, 0o600)
        if order == verdict.NEWER:
            # The file first, then the state: a crash between them leaves a newer file
            # that the next check absorbs; never an older file beside a newer state.
            self.save_state(verdict.absorb(claims, st, bound=fresh), loaded, bump=True)
        self._clear_pending(claims)
        return claims, "installed"

    def _returned_refusal(self, claims: Claims, st: State) -> str:
        current = claims.activation_id == st.activation_id and st.returned_at
        when = f" on {verdict.date(st.returned_at)}" if current else ""
        if st.activation_id and not st.returned_at:
            then = "the installed file stays in force"
        else:
            then = "activate the device again"
            if current and os.path.lexists(self.cfg.machine_file):  # cut short: no receipt yet
                then = "run `fieldpass return` to finish giving it back, then " + then
        return (
            f"this device gave activation {claims.activation_id} back{when}: its files "
            f"cannot be installed again; {then}"
        )

    def _needs_binding(self, loaded: Loaded) -> bool:
        """With a TPM even a first install onto empty state must be bound to the counter
        (a kept file issued before a wipe names an older value and cannot match)."""
        return loaded.reading is not None

    def _fresh_nonce(self, claims: Claims, nonce: str | None, loaded: Loaded) -> bool:
        """The file answers this device's latest request: it names the nonce this process
        just sent HQ, or the nonce of the pending air-gapped request (and, with a TPM,
        the counter as it is now: a pending file is on the data partition, the counter
        is not)."""
        if _names(claims, nonce):
            return True
        binding = claims.binding
        if binding is None or binding.nonce is None:
            return False
        pending = self.pending_request()
        if pending is None or binding.nonce != pending[0]:
            return False
        reading = loaded.reading
        return reading is None or binding.counter == reading.counter

    def _rebuild(
        self, data: bytes, key: str, claims: Claims, loaded: Loaded, fresh: bool
    ) -> tuple[Claims, str]:
        """A new state from an answer HQ bound to this device's loss, or refuse."""
        reading = loaded.reading
        binding = claims.binding
        why = loaded.error or StateError(LOST, "a TPM-bound device takes only a bound answer")
        if reading is not None:
            if reading.counter is None:
                raise InstallRefused(
                    INVALID,
                    LOST if loaded.error else "tpm_not_provisioned",
                    "the TPM is not provisioned for Fieldpass: run `fieldpass request` "
                    "(it prepares the TPM) and have HQ answer that request",
                )
            # The counter only moves forward and every accepted answer moves it: an
            # answer naming its current value cannot be one kept from before.
            ok = binding is not None and binding.counter == reading.counter
        else:
            ok = fresh
        if not ok:
            raise InstallRefused(
                INVALID,
                why.reason,
                f"cannot install: {why}; only an answer from HQ to this device's own "
                f"request can restore it: {RECOVER_HINT}",
            )
        fsio.remove_stale_temps(self.cfg.state_dir)
        state.discard(self.cfg.state_dir)
        self.ensure_device_key()
        rebuilt = _resume_usage(
            verdict.absorb(claims, State(id_source=self.identity.source), bound=True), claims
        )
        self.save_state(rebuilt, loaded, bump=True)
        if key != self.stored_license_key():
            fsio.atomic_write(self.cfg.license_key_file, key.encode("ascii") + b"\n", 0o600)
        fsio.atomic_write(self.cfg.machine_file, data, 0o600)
        self._clear_pending(claims)
        return claims, "installed"

    def _stored_claims(self, key: str) -> Claims | None:
        """The stored machine file's claims, or None if there is none or it is invalid."""
        try:
            data = self.stored_machine_file()
            if data is None:
                return None
            return open_machine_file(data, self.keyring(), key, self.identity.fingerprint)
        except (WireError, fsio.StorageError):
            return None

    # -- the air-gapped request's nonce -------------------------------------------------

    def write_pending(self, nonce: str, counter: int | None, now: int) -> None:
        """Remember the nonce of the request just written (its answer is checked
        against it when it rebuilds a lost state)."""
        from .wire import cbor

        doc = {"v": 1, "nonce": nonce, "counter": counter, "at": now}
        fsio.atomic_write(self._path(PENDING_NAME), cbor.dumps(doc), 0o600)

    def pending_request(self) -> tuple[str, int | None] | None:
        from .wire import cbor, fields

        try:
            data = fsio.read_bytes(self._path(PENDING_NAME), MAX_PENDING_BYTES)
            if data is None:
                return None
            doc = cbor.loads(data, max_size=MAX_PENDING_BYTES, max_depth=1)
            fields.exact_keys(doc, frozenset({"v", "nonce", "counter", "at"}), "request.pending")
            assert isinstance(doc, dict)
            counter = doc["counter"]
            return (
                fields.text(doc["nonce"], "the pending nonce", 128),
                None if counter is None else fields.uint(counter, "the pending counter"),
            )
        except (fsio.StorageError, FormatError):
            return None

    def _clear_pending(self, claims: Claims) -> None:
        pending = self.pending_request()
        if pending is None or claims.binding is None or claims.binding.nonce != pending[0]:
            return
        try:
            os.unlink(self._path(PENDING_NAME))
        except OSError:
            pass

    # -- the factory's spool ------------------------------------------------------

    def adopt_provisioned(self, now: int) -> list[str]:
        """First boot after the factory: install what ``fieldpass-hq provision`` left in
        ``state_dir/incoming/`` (call with the lock held). The same checks as
        ``fieldpass install``; the spool is removed once installed, kept (and reported)
        if refused. Does nothing when the device already holds a machine file."""
        incoming = os.path.join(self.cfg.state_dir, INCOMING)
        mf = os.path.join(incoming, "machine.file")
        if not os.path.lexists(mf) or os.path.lexists(self.cfg.machine_file):
            return []
        try:
            data = fsio.read_bytes(mf, MAX_MACHINE_FILE_BYTES) or b""
            raw_key = fsio.read_bytes(os.path.join(incoming, "license.key"), 256) or b""
            key = license_key.normalize(raw_key.decode("ascii", "replace"))
            claims, _ = self.install(data, key, now)
        except (InstallRefused, ValueError, OSError, StateError) as e:
            return [f"provisioned machine file in {incoming} not installed: {e}"]
        for name in ("machine.file", "license.key"):
            try:
                os.unlink(os.path.join(incoming, name))
            except OSError:
                pass
        return [f"installed the provisioned machine file (serial {claims.serial})"]

    # -- answers from HQ ------------------------------------------------------------------

    def _usable_state(self, action: str) -> tuple[State, Loaded]:
        """The trusted state for recording an answer, or InstallRefused saying why not."""
        try:
            loaded = self.load()
        except StateError as e:
            raise InstallRefused(INVALID, e.reason, f"cannot {action}: {e}") from None
        if loaded.error is not None:
            raise InstallRefused(
                INVALID,
                loaded.error.reason,
                f"cannot {action}: {loaded.error}; {RECOVER_HINT}",
            )
        if loaded.state is None or not loaded.state.activation_id:
            raise InstallRefused(NOT_ACTIVATED, "not_activated", "this device is not activated")
        return loaded.state, loaded

    def apply_revocation(self, data: bytes) -> str:
        """Verify a revocation HQ signed for this device's activation and record it (call
        with the writer lock held). Returns "recorded" or "stale" (HQ issued a newer
        machine file, or lifted a revocation, after it). Raises WireError or
        InstallRefused (the state is refused or there is none: nothing is recorded)."""
        from .wire.revocation import verify_revocation

        if armor.is_armored(data):
            data = armor.unarmor(data, armor.REVOCATION)
        st, loaded = self._usable_state("record a revocation")
        rev = verify_revocation(data, self.keyring(), st.activation_id)
        if verdict.is_stale_revocation(st, rev.issued_at):
            return "stale"
        if st.revoked == rev.reason and st.revoked_at >= rev.issued_at:
            return "recorded"
        self.save_state(
            st.replace(revoked=rev.reason, revoked_at=max(st.revoked_at, rev.issued_at)),
            loaded,
            bump=True,
        )
        return "recorded"

    def record_hq_status(self, signed: "SignedStatus") -> None:
        """Record HQ's signed status, verified against the nonce just sent (call with the
        writer lock held): it re-anchors the clock mark (up or down: it is HQ's time
        now); "active" lifts a recorded revocation, "revoked", "suspended",
        "deactivated" record one. Raises InstallRefused when the state is refused."""
        st, loaded = self._usable_state("record HQ's answer")
        changed = st.replace(hwm=signed.t)
        if signed.status == "active":
            if st.revoked:
                changed = verdict.lift(changed, signed.t)
        elif signed.status in ("revoked", "suspended", "deactivated"):
            changed = changed.replace(revoked=signed.status, revoked_at=signed.t)
        bump = changed.revoked != st.revoked or signed.t < st.hwm
        if changed != st:
            self.save_state(changed, loaded, bump=bump)

    # -- usage, reports, giving the license back ---------------------------------------

    def _claims_now(self) -> Claims | None:
        key = self.stored_license_key()
        return self._stored_claims(key) if key is not None else None

    def add_usage(self, name: str, count: int) -> State:
        """Grow an application counter the plan declares (a routine save: the TPM counter
        does not move). Call with the writer lock held."""
        from . import usage

        st, loaded = self._usable_state("count usage")
        new = usage.add(st, self._claims_now(), name, count)
        return self.save_state(new, loaded, bump=False)

    def operated(self, since: int, until: int) -> State:
        """Add operating seconds (the daemon, every interval). Writer lock held."""
        from . import usage

        st, loaded = self._usable_state("count operating time")
        return self.save_state(usage.operate(st, since, until), loaded, bump=False)

    def stopped_counting(self, at: int) -> None:
        """The daemon stopped while the system keeps running: the next boot's gate counts
        the time from ``at`` as operating time (a stopped daemon cannot hide hours)."""
        st, loaded = self._usable_state("record the daemon's stop")
        self.save_state(
            st.replace(usage_stop=at, usage_at=max(st.usage_at, at)), loaded, bump=False
        )

    def report(self, now: int, challenge: str | None = None) -> bytes:
        """A signed usage report with the next sequence number (saved first: numbers are
        never reused, and a lost report loses nothing, its counters being cumulative)."""
        from . import usage
        from .wire import device_msg

        st, loaded = self._usable_state("report usage")
        st = self.save_state(st.replace(report_seq=st.report_seq + 1), loaded, bump=False)
        key = self.ensure_device_key()
        public, proof = self._registration(key, st.activation_id, challenge)
        return device_msg.sign(
            key,
            "report",
            {
                "activation_id": st.activation_id,
                "fingerprint": self.identity.fingerprint,
                "at": now,
                "agent_version": _agent_version(),
                "seq": st.report_seq,
                "counters": usage.counters(st),
                "challenge": challenge,
                "device_key": public,
                "proof": proof,
            },
        )

    def _registration(
        self, key: "DeviceKey", activation_id: str, challenge: str | None
    ) -> tuple[bytes | None, bytes | None]:
        """(public key, proof) when HQ may not know this device's key yet (its file names
        none, or another), so that an offline message can register it; else (None, None)."""
        from .wire.device_key import key_proof

        claims = self._claims_now()
        license = self.stored_license_key()
        if license is None or (claims is not None and claims.device_key == key.public_key):
            return None, None
        return key.public_key, key_proof(license, key.public_key, activation_id, challenge or "")

    def give_back(self, now: int) -> bytes:
        """``fieldpass return``: mark the state returned (a security-relevant save: the
        TPM counter moves), write the signed receipt beside it, then destroy the machine
        file and the license key. Refused for a revoked device or a lost state. Returns
        the receipt (also kept as ``return.receipt`` until HQ has seen it)."""
        from .wire import device_msg

        st, loaded = self._usable_state("give the license back")
        if st.revoked:
            raise InstallRefused(
                "revoked", "revoked", f"this device's license is {st.revoked}: nothing to give back"
            )
        if self.stored_machine_file() is None:
            raise InstallRefused(NOT_ACTIVATED, "not_activated", "this device holds no license")
        waiting = self.pending_receipt()
        # one of the activation being given back (a return cut short) is written again
        earlier = self.receipt_activation(waiting) if waiting is not None else st.activation_id
        if earlier != st.activation_id:
            raise ReceiptWaiting(
                f"the return receipt of an earlier activation ({earlier or 'unreadable'}) "
                "still waits for HQ (return.receipt in the state directory): let it reach HQ "
                "first (the daemon or `fieldpass refresh`; by hand, `fieldpass-hq deactivate "
                "--receipt FILE`), or remove it once HQ shows that activation returned; "
                "nothing was changed"
            )
        key = self.ensure_device_key()
        public, proof = self._registration(key, st.activation_id, None)
        st = self.save_state(verdict.give_back(st, now), loaded, bump=True)
        receipt = device_msg.sign(
            key,
            "receipt",
            {
                "activation_id": st.activation_id,
                "fingerprint": self.identity.fingerprint,
                "at": now,
                "agent_version": _agent_version(),
                "serial": st.serial,
                "returned_at": now,
                "reason": "returned",
                "device_key": public,
                "proof": proof,
            },
        )
        fsio.atomic_write(self._path(RECEIPT_NAME), receipt, 0o600)
        self.remove()
        return receipt

    def pending_receipt(self) -> bytes | None:
        """The return receipt HQ has not acknowledged yet, if any."""
        try:
            return fsio.read_bytes(self._path(RECEIPT_NAME), 4096)
        except fsio.StorageError:
            return None

    def receipt_activation(self, receipt: bytes) -> str | None:
        """The activation a receipt this device signed gives back (None: not one of its
        own, or unreadable)."""
        from .wire import device_msg

        key = self.device_key()
        if key is None:
            return None
        try:
            return device_msg.open_message(
                receipt, {key.kid: key.public_key}.get, "receipt"
            ).activation_id
        except WireError:
            return None

    def verify_receipt_ack(self, receipt: bytes, ack: bytes) -> "SignedStatus":
        """HQ's acknowledgement of ``receipt`` (its signed status, for this device and the
        activation the receipt names, bound to the receipt's own digest), verified; raises
        WireError or ConfigError otherwise. Needs no machine file and no license: a
        returned device has neither (the daemon restarted after a return, say)."""
        from .wire.signed_time import ack_nonce, verify_ack

        activation_id = self.receipt_activation(receipt)
        if activation_id is None:
            raise FormatError("the receipt is not one this device signed")
        return verify_ack(
            ack,
            self.keyring(),
            self.identity.fingerprint,
            ack_nonce(receipt),
            activation_id=activation_id,
        )

    def receipt_delivered(self) -> None:
        try:
            os.unlink(self._path(RECEIPT_NAME))
        except OSError:
            pass

    def remove(self) -> None:
        """Forget the local activation (after HQ freed the seat)."""
        for path in (self.cfg.machine_file, self.cfg.license_key_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fsio.fsync_dir(self.cfg.state_dir)


def _agent_version() -> str:
    from . import __version__

    return __version__


def _names(claims: Claims, nonce: str | None) -> bool:
    """The file is bound to ``nonce``, the nonce this process just sent HQ."""
    return nonce is not None and claims.binding is not None and claims.binding.nonce == nonce


def _given_back(st: State, claims: Claims | None = None) -> Verdict:
    """The verdict of a device whose state records the return of its activation, or
    whose machine file (``claims``) is of an activation it gave back: the current one
    (its file still or again in place) or an earlier one (put back over a later)."""
    if claims is not None and not (claims.activation_id == st.activation_id and st.returned_at):
        then = "activate it again"
        if not st.returned_at:
            then = "put back the current activation's machine file and license key, or " + then
        return Verdict(
            NOT_ACTIVATED,
            f"Machine file is of activation {claims.activation_id}, which this device gave "
            f"back: it cannot run again; {then}",
            reason="returned",
        )
    then = f"This device gave its license back on {verdict.date(st.returned_at)}"
    if claims is not None:  # a return cut short may have written no receipt yet
        message = (
            f"{then}, but its machine file is still here: run `fieldpass return` to "
            "finish (its receipt frees the seat), then activate it again"
        )
    else:
        message = f"{then}: activate it again with a license key"
    return Verdict(NOT_ACTIVATED, message, reason="returned")


def _lost(detail: str) -> StateError:
    return StateError(LOST, detail)


def _unrecorded_boots(st: State, reading: "Reading | None") -> int:
    if reading is None or reading.unrecorded is None or st.unrecorded_mark is None:
        return 0
    return max(0, reading.unrecorded - st.unrecorded_mark)


def _resume_usage(st: State, claims: Claims) -> State:
    """A state rebuilt from HQ's answer resumes usage from what HQ last accepted."""
    binding = claims.binding
    if binding is None:
        return st
    usage = {name: max(value, st.usage.get(name, 0)) for name, value in binding.usage.items()}
    return st.replace(
        usage={**st.usage, **usage}, report_seq=max(st.report_seq, binding.report_seq)
    )
