"""The device's licensing store: the one place that combines the pure core with files.

``Device.evaluate`` is the boot gate's decision; ``Device.install`` takes a new machine
file. Both hold the state directory's lock while they write, so the gate, the daemon
and ``install`` never interleave. Write order on install (crash-safe at every point):
the state exists before the first machine file, the machine file is replaced
atomically, then the state absorbs it; a crash between the last two is repaired by the
next check, which absorbs a newer file the same way.
"""

import errno
import os

from . import fsio, state, verdict
from .config import Config, ConfigError
from .identity import Identity, read_identity
from .state import State, StateError
from .verdict import INVALID, NOT_ACTIVATED, Verdict
from .wire import armor, license_key
from .wire.errors import FormatError, WireError
from .wire.keys import Keyring
from .wire.machine_file import MAX_MACHINE_FILE_BYTES, Claims, open_machine_file

if False:  # typing only: agent.tpm is imported when [tpm] is enabled, not on every boot
    from .tpm import NvCounter

MAX_LICENSE_KEY_BYTES = 256
INCOMING = "incoming"  # the factory's spool: fieldpass-hq provision writes here


class InstallRefused(Exception):
    """A machine file was refused; the stored one is untouched."""

    def __init__(self, verdict_name: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.verdict_name = verdict_name
        self.reason = reason


class Outcome:
    """A verdict plus what the device knows around it (for files, status and hooks)."""

    __slots__ = ("identity", "notes", "previous_verdict", "state", "verdict")

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


class Device:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._identity: Identity | None = None
        self._tpm: NvCounter | None = None
        self._tpm_value: int | None = None  # the counter as last read or written

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = read_identity(self.cfg)
        return self._identity

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

    def _counter(self) -> "NvCounter | None":
        """The TPM NV counter the state is bound to, when ``[tpm] enabled``."""
        if not self.cfg.tpm_enabled:
            return None
        if self._tpm is None:
            from .tpm import NvCounter, TpmError, parse_nv_index

            try:
                index = parse_nv_index(self.cfg.tpm_nv_index)
            except (TpmError, ValueError) as e:
                raise ConfigError(f"{self.cfg.path}: [tpm] nv_index: {e}") from None
            self._tpm = NvCounter(index, self.cfg.tpm_tcti)
        return self._tpm

    def load_state(self) -> State | None:
        """The newest authenticated state; with a TPM, also bound to its counter: a state
        older than the counter (a restored image) or ahead of it by more than the one
        step a power cut can leave is refused, and an unreadable TPM fails closed."""
        st = state.load(self.cfg.state_dir, self.identity.state_key)
        counter = self._counter()
        if counter is None or st is None:
            return st
        from .tpm import INCONSISTENT, RESTORED, TpmError, check_binding

        try:
            if st.tpm is None and not counter.exists():
                return st  # not bound yet: the next save defines the index and binds it
            value = counter.read()
        except TpmError as e:
            raise StateError("tpm_unavailable", f"TPM counter unreadable ({e})") from None
        binding = check_binding(st.tpm, value)
        if binding == RESTORED:
            raise StateError(
                "state_restored",
                f"device state is older than the TPM counter ({st.tpm} < {value}): "
                "a restored image; install a newer machine file from HQ",
            )
        if binding == INCONSISTENT:
            raise StateError(
                "tpm_mismatch",
                f"device state does not match the TPM counter ({st.tpm} vs {value}): "
                "the TPM was cleared or replaced; install a newer machine file from HQ",
            )
        self._tpm_value = value
        return st

    def save_state(self, st: State) -> State:
        """Write the state; with a TPM, first the state carrying counter + 1, then the
        increment, so a power cut between the two leaves a state one step ahead, which
        the next load accepts (and the next save repairs)."""
        counter = self._counter()
        if counter is None:
            return state.save(self.cfg.state_dir, self.identity.state_key, st)
        from .tpm import TpmError

        try:
            if self._tpm_value is None:
                counter.ensure()
                self._tpm_value = counter.read()
            new = state.save(
                self.cfg.state_dir, self.identity.state_key, st.replace(tpm=self._tpm_value + 1)
            )
            counter.bump()
        except TpmError as e:
            raise fsio.StorageError(errno.EIO, f"TPM counter: {e}") from None
        self._tpm_value += 1
        return new

    # -- the gate -------------------------------------------------------------

    def evaluate(self, now: int, *, record: bool) -> Outcome:
        """Decide the verdict at ``now``; with ``record``, count the boot and move the
        high-water mark (write failures become notes, never a worse verdict)."""
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
        if data is None or key is None:
            what = "no machine file" if data is None else "no license key"
            return Outcome(
                Verdict(
                    NOT_ACTIVATED,
                    f"This device is not activated ({what}): activate it with a license key",
                ),
                identity,
                None,
            )
        keyring = self.keyring()
        try:
            st = self.load_state()
        except StateError as e:
            return Outcome(
                Verdict(INVALID, f"Device state refused: {e}", reason=e.reason), identity, None
            )
        try:
            claims = open_machine_file(data, keyring, key, identity.fingerprint)
        except WireError as e:
            return Outcome(
                Verdict(INVALID, f"Machine file refused: {e}", reason=e.reason), identity, st
            )
        if st is None:
            return Outcome(
                Verdict(
                    INVALID,
                    "Device state is missing beside the machine file: "
                    "install a machine file from HQ again",
                    reason="state_missing",
                    claims=claims,
                ),
                identity,
                None,
            )
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
        outcome = Outcome(result, identity, st, previous_verdict=st.last_verdict)
        if record:
            fsio.remove_stale_temps(self.cfg.state_dir)
            try:
                outcome.state = self.save_state(verdict.advance(st, now, result))
            except OSError as e:
                outcome.notes.append(f"could not record the check in {self.cfg.state_dir}: {e}")
        return outcome

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

    def install(self, data: bytes, new_key: str | None, now: int) -> tuple[Claims, str]:
        """Verify and store a machine file; return its claims and "installed"/"same".

        Raises InstallRefused (nothing stored changed), ConfigError, StorageError.
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
            st: State | None = self.load_state()
        except StateError:
            st = None
        stored = self._stored_claims(key)
        if st is not None:
            if stored is not None and verdict.compare(stored, st) == verdict.NEWER:
                st = verdict.absorb(stored, st)  # an install cut short before its state
            baseline: State | None = st
        else:
            baseline = verdict.absorb(stored, State()) if stored is not None else None
        order = verdict.compare(claims, baseline)
        if order == verdict.OLDER:
            assert baseline is not None
            raise InstallRefused(
                INVALID,
                "downgrade",
                f"machine file is older than the installed one (serial {claims.serial} < "
                f"{baseline.serial}); the installed file stays in force",
            )
        if order == verdict.SAME and st is None:
            raise InstallRefused(
                INVALID,
                "state_damaged",
                "the device state is missing or damaged and this file is the one already "
                "installed: install a newer machine file from HQ (a renewal)",
            )
        stored_key = self.stored_license_key()
        if order == verdict.SAME and key == stored_key and data == self.stored_machine_file():
            return claims, "same"
        fsio.remove_stale_temps(self.cfg.state_dir)
        if st is None:
            state.discard(self.cfg.state_dir)
            # A new or rebuilt state is written first: a crash before the file leaves
            # "not activated" or the refusal the device already had, never acceptance.
            self.save_state(verdict.absorb(claims, State()))
        if key != stored_key:
            fsio.atomic_write(self.cfg.license_key_file, key.encode("ascii") + b"\n", 0o600)
        fsio.atomic_write(self.cfg.machine_file, data, 0o600)
        if st is not None and order == verdict.NEWER:
            # The file first, then the state: a crash between them leaves a newer file
            # that the next check absorbs; never an older file beside a newer state.
            self.save_state(verdict.absorb(claims, st))
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

    def adopt_provisioned(self, now: int) -> list[str]:
        """First boot after the factory: install what ``fieldpass-hq provision`` left in
        ``state_dir/incoming/`` (call with the lock held). The same checks as
        ``fieldpass install``; the spool is removed once installed, kept (and reported)
        if refused. Does nothing when the device already holds a machine file."""
        incoming = os.path.join(self.cfg.state_dir, INCOMING)
        mf = os.path.join(incoming, "machine.file")
        if not os.path.exists(mf) or os.path.exists(self.cfg.machine_file):
            return []
        try:
            data = fsio.read_bytes(mf, MAX_MACHINE_FILE_BYTES) or b""
            raw_key = fsio.read_bytes(os.path.join(incoming, "license.key"), 256) or b""
            key = license_key.normalize(raw_key.decode("ascii", "replace"))
            claims, _ = self.install(data, key, now)
        except (InstallRefused, ValueError, OSError) as e:
            return [f"provisioned machine file in {incoming} not installed: {e}"]
        for name in ("machine.file", "license.key"):
            try:
                os.unlink(os.path.join(incoming, name))
            except OSError:
                pass
        return [f"installed the provisioned machine file (serial {claims.serial})"]

    def apply_revocation(self, data: bytes) -> str:
        """Verify a revocation HQ signed for this device's activation and record it (call
        with the writer lock held). Returns "recorded" or "stale" (HQ issued a newer
        machine file after it). Raises WireError, StateError or InstallRefused."""
        from .wire.revocation import verify_revocation

        if armor.is_armored(data):
            data = armor.unarmor(data, armor.REVOCATION)
        st = self.load_state()
        if st is None or not st.activation_id:
            raise InstallRefused(NOT_ACTIVATED, "not_activated", "this device is not activated")
        rev = verify_revocation(data, self.keyring(), st.activation_id)
        if rev.issued_at < st.issued_at:
            return "stale"
        self.save_state(st.replace(revoked=rev.reason, revoked_at=rev.issued_at))
        return "recorded"

    def record_hq_status(self, status: str, hq_time: int | None) -> None:
        """Record an authoritative answer from HQ (call with the writer lock held).

        "active" lifts a recorded revocation; "revoked", "suspended", "deactivated" record
        one (the license's own end of term is in the machine file already). A verified
        HQ time re-anchors the clock mark.
        """
        try:
            st = self.load_state()
        except StateError:
            return  # damaged state: the gate refuses anyway; nothing trustworthy to amend
        if st is None:
            return
        changes: dict[str, object] = {}
        if hq_time is not None:
            changes["hwm"] = hq_time
        if status == "active":
            changes.update(revoked="", revoked_at=0)
        elif status in ("revoked", "suspended", "deactivated"):
            changes.update(revoked=status, revoked_at=hq_time if hq_time is not None else st.hwm)
        if changes:
            self.save_state(st.replace(**changes))

    def remove(self) -> None:
        """Forget the local activation (after HQ freed the seat)."""
        for path in (self.cfg.machine_file, self.cfg.license_key_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fsio.fsync_dir(self.cfg.state_dir)
