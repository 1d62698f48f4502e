"""tpm2-tools as a reference for the TPM tests and the benchmark (never on a device).

This is the backend agents up to 0.1.0 used: one tpm2-tools process per TPM command.
The in-process client (agent/tpm2.py) replaced it on the device; the tests prove the two
agree, and the benchmark measures both in one run.
"""

import os

# TPMA_NV bits (TPM 2.0 Part 2, table "TPMA_NV").
_TPMA_NV_TPM_NT_MASK = 0x000000F0
_TPM_NT_COUNTER = 0x1
_TPMA_NV_WRITTEN = 0x20000000
_NV_INDEX_FIRST = 0x01000000
_NV_INDEX_LAST = 0x01FFFFFF

COUNTER_ATTRIBUTES = "nt=counter|ownerwrite|ownerread|authwrite|authread|no_da"


class TpmError(Exception):
    """A TPM operation failed. The message is one line and never holds a secret."""


def parse_counter(raw: bytes) -> int:
    """The value of an NV counter as ``tpm2_nvread`` prints it: 8 bytes, big-endian."""
    if len(raw) != 8:
        raise TpmError(f"NV counter read returned {len(raw)} bytes, expected 8")
    return int.from_bytes(raw, "big")


def parse_nv_list(text: str) -> dict[int, tuple[int, int]]:
    """Index -> (attributes, size) from the YAML-like output of ``tpm2_nvreadpublic``."""
    found: dict[int, tuple[int, int]] = {}
    index: int | None = None
    section = ""
    attributes = -1
    size = -1
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if depth == 0:
            if index is not None:
                found[index] = (attributes, size)
            try:
                index = int(key, 16)
            except ValueError:
                index = None
            attributes, size, section = -1, -1, ""
        elif depth == 2:
            section = key
            if key == "size":
                size = _int_or(value, -1)
        elif depth == 4 and section == "attributes" and key == "value":
            attributes = _int_or(value, -1)
    if index is not None:
        found[index] = (attributes, size)
    return found


def _int_or(text: str, default: int) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return default


def summarise_stderr(stderr: str) -> str:
    """One short line from the tools' stderr: the tool's own last ``ERROR:`` line, plus
    the low-level cause (``Connection refused``, ``No such file``...) when there is one."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    tool = [ln[len("ERROR:") :].strip() for ln in lines if ln.startswith("ERROR: ")]
    message = tool[-1] if tool else (lines[-1] if lines else "no error output")
    for ln in lines:
        if "errno" in ln or ": No such file" in ln or "Permission denied" in ln:
            cause = ln.rsplit("() ", 1)[-1].strip()
            if cause and cause not in message:
                message = f"{message} ({cause})"
            break
    message = " ".join(message.split())
    return message if len(message) <= 300 else message[:297] + "..."


class NvCounter:
    """A monotonic TPM 2.0 NV counter at ``nv_index``, reached through ``tcti``.

    ``tcti`` is passed to every tool as ``--tcti`` (``"device:/dev/tpmrm0"`` on a device,
    ``"swtpm:host=127.0.0.1,port=2321"`` against swtpm); empty leaves the tools' own
    choice (``TPM2TOOLS_TCTI`` in the environment, else their default). Every tool run is
    bounded by ``timeout_s``.
    """

    def __init__(self, nv_index: int, tcti: str = "", timeout_s: float = 10.0) -> None:
        if not _NV_INDEX_FIRST <= nv_index <= _NV_INDEX_LAST:
            raise TpmError(f"NV index {nv_index:#x} is outside the NV range 0x01000000-0x01ffffff")
        if timeout_s <= 0:
            raise TpmError("TPM timeout must be positive")
        self.nv_index = nv_index
        self.tcti = tcti
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"NvCounter({self.nv_index:#010x}, tcti={self.tcti!r})"

    @property
    def index_arg(self) -> str:
        return f"{self.nv_index:#010x}"

    def _run(self, tool: str, *args: str) -> bytes:
        import subprocess

        cmd = [tool]
        if self.tcti:
            cmd += ["--tcti", self.tcti]
        cmd += list(args)
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError:
            raise TpmError(f"{tool} not found: install tpm2-tools") from None
        except subprocess.TimeoutExpired:
            raise TpmError(
                f"{tool} gave no answer within {self.timeout_s:g} s (TPM at {self._where()})"
            ) from None
        except OSError as exc:
            raise TpmError(f"{tool} could not run: {exc.strerror or exc}") from None
        if result.returncode != 0:
            detail = summarise_stderr(result.stderr.decode("utf-8", "replace"))
            status = (
                f"killed by signal {-result.returncode}"
                if result.returncode < 0
                else f"exit {result.returncode}"
            )
            raise TpmError(f"{tool} failed ({status}, TPM at {self._where()}): {detail}")
        return result.stdout

    def _where(self) -> str:
        return self.tcti or os.environ.get("TPM2TOOLS_TCTI", "") or "the tools' default TCTI"

    def public(self) -> tuple[int, int] | None:
        """(attributes, size) of the index, or None when it is not defined.

        Lists every NV index rather than asking for ours: tpm2_nvreadpublic on an absent
        index fails (and some 5.x releases crash), which is not "absent" reliably.
        """
        out = self._run("tpm2_nvreadpublic").decode("utf-8", "replace")
        return parse_nv_list(out).get(self.nv_index)

    def exists(self) -> bool:
        return self.public() is not None

    def ensure(self) -> None:
        """Define the counter if absent, and increment it once if never incremented.

        An index that exists but is not an 8-byte counter is refused, never redefined:
        it may belong to someone else on this TPM.
        """
        public = self.public()
        if public is None:
            self._run(
                "tpm2_nvdefine",
                self.index_arg,
                "--hierarchy=o",
                "--size=8",
                f"--attributes={COUNTER_ATTRIBUTES}",
            )
            public = self.public()
            if public is None:
                raise TpmError(f"NV index {self.index_arg} is still absent after definition")
        attributes, size = public
        if (attributes & _TPMA_NV_TPM_NT_MASK) >> 4 != _TPM_NT_COUNTER or size != 8:
            raise TpmError(
                f"NV index {self.index_arg} exists but is not an 8-byte counter "
                f"(attributes {attributes:#x}, size {size}): choose another nv_index"
            )
        if not attributes & _TPMA_NV_WRITTEN:
            self.bump()

    def read(self) -> int:
        """The counter's current value (the index must have been incremented once)."""
        raw = self._run("tpm2_nvread", self.index_arg, f"--hierarchy={self.index_arg}", "--size=8")
        return parse_counter(raw)

    def bump(self) -> None:
        """Increment without reading back: one tool run instead of two, for a caller that
        already knows the new value (the save path: it read ``n`` and wrote ``n + 1``)."""
        self._run("tpm2_nvincrement", self.index_arg, f"--hierarchy={self.index_arg}")

    def increment(self) -> int:
        """Increment the counter by one and return the new value."""
        self.bump()
        return self.read()
