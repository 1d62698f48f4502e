"""The TPM 2.0 anchor of the device state (``[tpm] enabled``): three NV indices that a
copy of the data partition cannot carry and a restore cannot wind back.

- ``nv_index`` (the *state counter*): an NV counter. Every boot and every security-relevant
  save moves it one step; the state carries the value it expects. A counter index that
  is deleted and defined again starts above every value any counter on this TPM had, so
  a kept state (or a kept machine file bound to a counter value) can never match again.
- ``nv_index + 1`` (the *unrecorded-boot counter*): moved on every boot whose check could
  not be written to the data partition; the state records the value at its last save, so
  the difference is the number of boots in a row that were not recorded.
- ``nv_index + 2`` (the *secret*): 40 bytes, 32 random bytes that key the state's MAC
  together with the device key, then the state counter's value when the indices were
  provisioned (a counter above it shows the device has held a state).

docs/tpm.md describes the protocol and what a root attacker on the running device can
still do. Nothing here defines an index by itself: ``provision`` is called only by the
explicit steps (``fieldpass tpm provision``, ``request``, ``activate``), never by the gate
or by ``install``, so a counter that disappeared is lost state, not a fresh start.
Standard library only; the TPM is spoken to in process (agent/tpm2.py).
"""

# TPMA_NV bits (TPM 2.0 Part 2, table "TPMA_NV").
_OWNERWRITE = 0x00000002
_AUTHWRITE = 0x00000004
_NT_MASK = 0x000000F0
_NT_COUNTER = 0x00000010
_OWNERREAD = 0x00020000
_AUTHREAD = 0x00040000
_NO_DA = 0x02000000
_WRITTEN = 0x20000000
_NV_INDEX_FIRST = 0x01000000
_NV_INDEX_LAST = 0x01FFFFFF

COUNTER_ATTRIBUTES = _OWNERWRITE | _AUTHWRITE | _NT_COUNTER | _OWNERREAD | _AUTHREAD | _NO_DA
SECRET_ATTRIBUTES = _OWNERWRITE | _AUTHWRITE | _OWNERREAD | _AUTHREAD | _NO_DA
# The same, as tpm2-tools spells them (docs, and tests that define indices with the tools).
COUNTER_ATTRIBUTES_TEXT = "nt=counter|ownerwrite|ownerread|authwrite|authread|no_da"
SECRET_BYTES = 32
SECRET_SIZE = SECRET_BYTES + 8
DEFAULT_TCTI = "device:/dev/tpmrm0"

# Binding verdicts of check_binding().
OK = "ok"
REPAIR = "repair"
RESTORED = "restored"
INCONSISTENT = "inconsistent"
UNBOUND = "unbound"


class TpmError(Exception):
    """A TPM operation failed. The message is one line and never holds a secret."""


def check_binding(state_tpm: int | None, counter: int) -> str:
    """Classify the state's TPM mark against the state counter (pure).

    ``ok``: state and counter agree. ``repair``: the state was written but the device
    lost power before the increment (accept; the next save moves the counter). ``restored``:
    the state is older than the counter (a restored image). ``inconsistent``: the state
    is ahead of the counter by more than one step (TPM cleared or replaced, or a forged
    mark). ``unbound``: the state carries no mark (written before the TPM was enabled).
    """
    if state_tpm is None:
        return UNBOUND
    if state_tpm == counter:
        return OK
    if state_tpm == counter + 1:
        return REPAIR
    if state_tpm < counter:
        return RESTORED
    return INCONSISTENT


def parse_nv_index(text: str) -> int:
    """``"0x01500016"`` (the config's form) -> int, refusing anything outside the NV range
    (the anchor uses this index and the two after it)."""
    try:
        value = int(text.strip(), 16 if text.strip().lower().startswith("0x") else 10)
    except ValueError:
        raise TpmError(f"NV index {text!r} is not a number (expected e.g. 0x01500016)") from None
    if not _NV_INDEX_FIRST <= value <= _NV_INDEX_LAST - 2:
        raise TpmError(f"NV index {text!r} is outside the NV range 0x01000000-0x01fffffd")
    return value


class Reading:
    """What the anchor holds now. ``counter`` and ``unrecorded`` are None when their
    index is absent or was never written; ``secret`` is None when its index is absent."""

    __slots__ = ("counter", "first", "secret", "unrecorded")

    def __init__(
        self,
        counter: int | None,
        unrecorded: int | None,
        secret: bytes | None,
        first: int | None,
    ) -> None:
        self.counter = counter
        self.unrecorded = unrecorded
        self.secret = secret
        self.first = first

    @property
    def provisioned(self) -> bool:
        return None not in (self.counter, self.unrecorded, self.secret)

    @property
    def held_state(self) -> bool:
        """The state counter moved past its provisioning value: a state was saved."""
        return self.counter is not None and self.first is not None and self.counter > self.first

    def __repr__(self) -> str:  # never the secret
        return f"Reading(counter={self.counter}, unrecorded={self.unrecorded})"


class Anchor:
    """The three NV indices at ``nv_index``. Each operation opens its own connection to
    the TPM and closes it (0.1 ms): swtpm, and some resource managers, serve one client
    at a time, and the daemon must never hold the TPM the gate needs at boot."""

    def __init__(self, nv_index: int, tcti: str = "", timeout_s: float = 10.0) -> None:
        if not _NV_INDEX_FIRST <= nv_index <= _NV_INDEX_LAST - 2:
            raise TpmError(f"NV index {nv_index:#x} is outside the NV range")
        self.counter_index = nv_index
        self.unrecorded_index = nv_index + 1
        self.secret_index = nv_index + 2
        self.tcti = tcti or DEFAULT_TCTI
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"Anchor({self.counter_index:#010x}, tcti={self.tcti!r})"

    def _open(self) -> "Tpm":
        from . import tpm2

        try:
            return tpm2.Tpm(self.tcti, self.timeout_s)
        except tpm2.TpmError as e:
            raise TpmError(str(e)) from None

    def _counter(self, tpm: "Tpm", index: int) -> int | None:
        public = tpm.nv_read_public(index)
        if public is None:
            return None
        attributes, size = public
        if attributes & _NT_MASK != _NT_COUNTER or size != 8:
            raise TpmError(
                f"NV index {index:#010x} is not an 8-byte counter (attributes "
                f"{attributes:#x}): it was replaced, or another application uses it"
            )
        if not attributes & _WRITTEN:
            return None
        return tpm.nv_read_counter(index)

    def _read(self, tpm: "Tpm") -> Reading:
        from . import tpm2

        counter = self._counter(tpm, self.counter_index)
        unrecorded = self._counter(tpm, self.unrecorded_index)
        try:
            raw = tpm.nv_read(self.secret_index, SECRET_SIZE)
        except (tpm2.NvMissing, tpm2.NvUninitialized):
            return Reading(counter, unrecorded, None, None)
        if len(raw) != SECRET_SIZE:
            raise TpmError(f"NV index {self.secret_index:#010x} holds {len(raw)} bytes, not 40")
        return Reading(counter, unrecorded, raw[:SECRET_BYTES], int.from_bytes(raw[32:], "big"))

    def read(self) -> Reading:
        """The two counters and the secret (two public areas and three reads)."""
        from . import tpm2

        tpm = self._open()
        try:
            return self._read(tpm)
        except tpm2.TpmError as e:
            raise TpmError(str(e)) from None
        finally:
            tpm.close()

    def provision(self) -> Reading:
        """Define what is missing (an explicit step, never the gate's). A secret is
        written anew whenever the state counter had to be defined: states sealed before
        can then never authenticate again, which is what a lost counter means."""
        import os

        from . import tpm2

        tpm = self._open()
        try:
            before = self._read(tpm)
            defined_counter = False
            for index, value in (
                (self.counter_index, before.counter),
                (self.unrecorded_index, before.unrecorded),
            ):
                if value is not None:
                    continue
                if tpm.nv_read_public(index) is None:
                    tpm.nv_define(index, 8, COUNTER_ATTRIBUTES)
                tpm.nv_increment(index)
                defined_counter = defined_counter or index == self.counter_index
            if before.secret is None or defined_counter:
                if tpm.nv_read_public(self.secret_index) is not None:
                    tpm.nv_undefine(self.secret_index)
                tpm.nv_define(self.secret_index, SECRET_SIZE, SECRET_ATTRIBUTES)
                counter = self._counter(tpm, self.counter_index)
                assert counter is not None
                tpm.nv_write(
                    self.secret_index, os.urandom(SECRET_BYTES) + counter.to_bytes(8, "big")
                )
            return self._read(tpm)
        except tpm2.TpmError as e:
            raise TpmError(str(e)) from None
        finally:
            tpm.close()

    def _increment(self, index: int) -> None:
        from . import tpm2

        tpm = self._open()
        try:
            tpm.nv_increment(index)
        except tpm2.TpmError as e:
            raise TpmError(str(e)) from None
        finally:
            tpm.close()

    def bump(self) -> None:
        """Move the state counter one step (after the state carrying counter + 1 is on
        the disk: a power cut in between leaves the state one ahead, which is repaired)."""
        self._increment(self.counter_index)

    def bump_unrecorded(self) -> None:
        """Count a boot whose check could not be recorded."""
        self._increment(self.unrecorded_index)


if False:  # typing only
    from .tpm2 import Tpm
