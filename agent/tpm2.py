"""An in-process TPM 2.0 client: NV define, read, write, increment, over one connection.

It speaks the TPM 2.0 command protocol itself (TPM 2.0 Library, Part 3 commands, Part 2
structures) so that the boot gate pays a few system calls per TPM command instead of a
tpm2-tools process (docs/tpm.md, "The TPM 2.0 client"). Standard library only: ``os``,
``select`` and ``time`` at import (about 0.5 ms), ``_socket`` only for the swtpm/mssim TCP
TCTIs. No ``struct``, ``typing``, ``enum`` or ``re``: this module may sit on
the boot path.

TCTIs, chosen by the caller's string and never by the environment (``TPM2TOOLS_TCTI`` and
``PATH`` choose nothing):

- ``device:/dev/tpmrm0`` (the default, also for ``""``), or any path: the kernel's
  character device. One command per ``write``, the response by ``read``; the fd is
  non-blocking and polled, so a hung TPM costs at most ``timeout_s``;
- ``swtpm:host=H,port=P``: swtpm's server port, raw TPM commands, as libtss2's swtpm
  TCTI sends them; like it, the connection sets locality 0 once on the control port P+1;
- ``mssim:host=H,port=P``: the TCG simulator framing on the command port
  (``TPM_SEND_COMMAND``, locality, size; the answer's size prefix and zero trailer).

Every response is parsed strictly: the header's size must equal the bytes read, at most
``MAX_RESPONSE`` bytes, every field inside its bounds and nothing left over. The
structures are flat, so the parser has no recursion (its depth bound is the structure
itself). Whatever a broken or hostile TPM sends, the caller sees :class:`TpmError` or a
result, never another exception and never a wait past ``timeout_s``. Messages are one line
and never carry an authorization value or a command's bytes.

It must never decide policy (which index, which attributes, what a counter value means):
that is the caller's (agent/tpm.py's protocol, the state binding).
"""

import os
import select
import time

MAX_RESPONSE = 4096  # bytes; the kernel's TPM_BUFSIZE, and swtpm's TPM_PT_MAX_RESPONSE_SIZE
MAX_NV_CHUNK = (
    512  # bytes per NV_Read/NV_Write: one command, below every TPM_PT_NV_BUFFER_MAX known
)
MAX_AUTH = 64  # sizeof(TPMU_HA): the largest TPM2B_AUTH
_MAX_SUBMISSIONS = 5  # as libtss2's ESAPI: a command answered RETRY/YIELDED/TESTING is resent
_RETRY_PAUSE_S = 0.02
DEFAULT_TCTI = "device:/dev/tpmrm0"
_DEFAULT_PORT = 2321

# TPMA_NV bits (Part 2, "TPMA_NV").
TPMA_NV_PPWRITE = 0x00000001
TPMA_NV_OWNERWRITE = 0x00000002
TPMA_NV_AUTHWRITE = 0x00000004
TPMA_NV_POLICYWRITE = 0x00000008
TPMA_NV_TPM_NT_MASK = 0x000000F0
TPM_NT_ORDINARY = 0x0
TPM_NT_COUNTER = 0x1
TPMA_NV_PPREAD = 0x00010000
TPMA_NV_OWNERREAD = 0x00020000
TPMA_NV_AUTHREAD = 0x00040000
TPMA_NV_POLICYREAD = 0x00080000
TPMA_NV_NO_DA = 0x02000000
TPMA_NV_ORDERLY = 0x04000000
TPMA_NV_WRITTEN = 0x20000000
# agent/tpm.py's COUNTER_ATTRIBUTES ("nt=counter|ownerwrite|ownerread|authwrite|authread|no_da").
COUNTER_ATTRIBUTES = (
    (TPM_NT_COUNTER << 4)
    | TPMA_NV_OWNERWRITE
    | TPMA_NV_OWNERREAD
    | TPMA_NV_AUTHWRITE
    | TPMA_NV_AUTHREAD
    | TPMA_NV_NO_DA
)

NV_INDEX_FIRST = 0x01000000
NV_INDEX_LAST = 0x01FFFFFF

_ST_NO_SESSIONS = 0x8001
_ST_SESSIONS = 0x8002
_RH_OWNER = 0x40000001
_RS_PW = 0x40000009
_ALG_SHA256 = 0x000B
_SESSION_CONTINUE = 0x01

_CC_NV_UNDEFINE_SPACE = 0x00000122
_CC_NV_DEFINE_SPACE = 0x0000012A
_CC_NV_INCREMENT = 0x00000134
_CC_NV_WRITE = 0x00000137
_CC_NV_READ = 0x0000014E
_CC_NV_READ_PUBLIC = 0x00000169
_COMMAND_NAMES = {
    _CC_NV_UNDEFINE_SPACE: "TPM2_NV_UndefineSpace",
    _CC_NV_DEFINE_SPACE: "TPM2_NV_DefineSpace",
    _CC_NV_INCREMENT: "TPM2_NV_Increment",
    _CC_NV_WRITE: "TPM2_NV_Write",
    _CC_NV_READ: "TPM2_NV_Read",
    _CC_NV_READ_PUBLIC: "TPM2_NV_ReadPublic",
}

# The TCG simulator protocol (mssim) and swtpm's control channel.
_MSSIM_SEND_COMMAND = 8
_SWTPM_CMD_SET_LOCALITY = 0x05

# Response codes (Part 2, "TPM_RC"). Format 1 codes carry a handle, session or parameter
# number in bits 8-11; format 0 codes with bit 11 set are warnings.
_RC_FMT1 = 0x080
_RC_WARN = 0x900
RC_HANDLE = 0x08B
RC_AUTH_FAIL = 0x08E
RC_BAD_AUTH = 0x0A2
RC_NV_RANGE = 0x146
RC_NV_LOCKED = 0x148
RC_NV_AUTHORIZATION = 0x149
RC_NV_UNINITIALIZED = 0x14A
RC_NV_SPACE = 0x14B
RC_NV_DEFINED = 0x14C
RC_YIELDED = 0x908
RC_TESTING = 0x90A
RC_RETRY = 0x922
# Part 1 says these three may simply be sent again (the command was not executed, or it
# keeps its progress); libtss2's ESAPI resends them too. NV_RATE and LOCKOUT mean "later",
# not "now", and are reported.
_RETRYABLE = (RC_RETRY, RC_YIELDED, RC_TESTING)

_RC_NAMES = {
    0x000: "TPM_RC_SUCCESS",
    0x01E: "TPM_RC_BAD_TAG",
    0x081: "TPM_RC_ASYMMETRIC",
    0x082: "TPM_RC_ATTRIBUTES",
    0x083: "TPM_RC_HASH",
    0x084: "TPM_RC_VALUE",
    0x085: "TPM_RC_HIERARCHY",
    0x087: "TPM_RC_KEY_SIZE",
    0x088: "TPM_RC_MGF",
    0x089: "TPM_RC_MODE",
    0x08A: "TPM_RC_TYPE",
    0x08B: "TPM_RC_HANDLE",
    0x08C: "TPM_RC_KDF",
    0x08D: "TPM_RC_RANGE",
    0x08E: "TPM_RC_AUTH_FAIL",
    0x08F: "TPM_RC_NONCE",
    0x090: "TPM_RC_PP",
    0x092: "TPM_RC_SCHEME",
    0x095: "TPM_RC_SIZE",
    0x096: "TPM_RC_SYMMETRIC",
    0x097: "TPM_RC_TAG",
    0x098: "TPM_RC_SELECTOR",
    0x09A: "TPM_RC_INSUFFICIENT",
    0x09B: "TPM_RC_SIGNATURE",
    0x09C: "TPM_RC_KEY",
    0x09D: "TPM_RC_POLICY_FAIL",
    0x09F: "TPM_RC_INTEGRITY",
    0x0A0: "TPM_RC_TICKET",
    0x0A1: "TPM_RC_RESERVED_BITS",
    0x0A2: "TPM_RC_BAD_AUTH",
    0x0A3: "TPM_RC_EXPIRED",
    0x0A4: "TPM_RC_POLICY_CC",
    0x0A5: "TPM_RC_BINDING",
    0x0A6: "TPM_RC_CURVE",
    0x0A7: "TPM_RC_ECC_POINT",
    0x100: "TPM_RC_INITIALIZE",
    0x101: "TPM_RC_FAILURE",
    0x103: "TPM_RC_SEQUENCE",
    0x10B: "TPM_RC_PRIVATE",
    0x119: "TPM_RC_HMAC",
    0x120: "TPM_RC_DISABLED",
    0x121: "TPM_RC_EXCLUSIVE",
    0x124: "TPM_RC_AUTH_TYPE",
    0x125: "TPM_RC_AUTH_MISSING",
    0x126: "TPM_RC_POLICY",
    0x127: "TPM_RC_PCR",
    0x128: "TPM_RC_PCR_CHANGED",
    0x12D: "TPM_RC_UPGRADE",
    0x12E: "TPM_RC_TOO_MANY_CONTEXTS",
    0x12F: "TPM_RC_AUTH_UNAVAILABLE",
    0x130: "TPM_RC_REBOOT",
    0x131: "TPM_RC_UNBALANCED",
    0x142: "TPM_RC_COMMAND_SIZE",
    0x143: "TPM_RC_COMMAND_CODE",
    0x144: "TPM_RC_AUTHSIZE",
    0x145: "TPM_RC_AUTH_CONTEXT",
    0x146: "TPM_RC_NV_RANGE",
    0x147: "TPM_RC_NV_SIZE",
    0x148: "TPM_RC_NV_LOCKED",
    0x149: "TPM_RC_NV_AUTHORIZATION",
    0x14A: "TPM_RC_NV_UNINITIALIZED",
    0x14B: "TPM_RC_NV_SPACE",
    0x14C: "TPM_RC_NV_DEFINED",
    0x150: "TPM_RC_BAD_CONTEXT",
    0x151: "TPM_RC_CPHASH",
    0x152: "TPM_RC_PARENT",
    0x153: "TPM_RC_NEEDS_TEST",
    0x154: "TPM_RC_NO_RESULT",
    0x155: "TPM_RC_SENSITIVE",
    0x901: "TPM_RC_CONTEXT_GAP",
    0x902: "TPM_RC_OBJECT_MEMORY",
    0x903: "TPM_RC_SESSION_MEMORY",
    0x904: "TPM_RC_MEMORY",
    0x905: "TPM_RC_SESSION_HANDLES",
    0x906: "TPM_RC_OBJECT_HANDLES",
    0x907: "TPM_RC_LOCALITY",
    0x908: "TPM_RC_YIELDED",
    0x909: "TPM_RC_CANCELED",
    0x90A: "TPM_RC_TESTING",
    0x920: "TPM_RC_NV_RATE",
    0x921: "TPM_RC_LOCKOUT",
    0x922: "TPM_RC_RETRY",
    0x923: "TPM_RC_NV_UNAVAILABLE",
}


class TpmError(Exception):
    """A TPM operation failed. The message is one line and never holds a secret;
    ``rc`` is the TPM's response code when the TPM answered with one, else None."""

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class NvMissing(TpmError):
    """The NV index is not defined (TPM_RC_HANDLE on the index's handle)."""


class NvUninitialized(TpmError):
    """The NV index is defined but was never written (TPM_RC_NV_UNINITIALIZED)."""


def rc_base(rc: int) -> int:
    """The response code without its handle, session or parameter number."""
    if rc & 0xFFFF0000:
        return rc  # a TSS or resource-manager layer: no TPM structure to strip
    if rc & _RC_FMT1:
        return rc & 0x0BF
    return rc & 0xFFF


def rc_name(rc: int) -> str:
    """A short name and what it points at, e.g. ``TPM_RC_HANDLE (0x18b, handle 1)``."""
    name = _RC_NAMES.get(rc_base(rc))
    if name is None:
        name = "a TSS or resource manager error" if rc >> 16 else "an unknown response code"
    where = ""
    if rc & _RC_FMT1 and not rc >> 16:
        number = (rc >> 8) & 0xF
        if rc & 0x40:
            where = f", parameter {number}"
        elif number & 0x8:
            where = f", session {number & 0x7}"
        elif number:
            where = f", handle {number}"
    return f"{name} ({rc:#x}{where})"


def _rc_handle_number(rc: int) -> int:
    """1-based handle number of a format-1 handle error, 0 when it names none."""
    if not rc & _RC_FMT1 or rc & 0x40 or rc & 0x800:
        return 0
    return (rc >> 8) & 0x7


# --- marshalling --------------------------------------------------------------------


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _tpm2b(data: bytes) -> bytes:
    return _u16(len(data)) + data


def _password_area(auth: bytes) -> bytes:
    """An authorization area with one password session (TPMS_AUTH_COMMAND, TPM_RS_PW)."""
    session = _u32(_RS_PW) + _tpm2b(b"") + bytes([_SESSION_CONTINUE]) + _tpm2b(auth)
    return _u32(len(session)) + session


def build_command(code: int, handles: tuple[int, ...], auth: bytes | None, params: bytes) -> bytes:
    """A complete command: header, handles, the password area if ``auth`` is not None
    (TPM_ST_SESSIONS), the parameters."""
    body = b"".join(_u32(h) for h in handles)
    tag = _ST_NO_SESSIONS
    if auth is not None:
        tag = _ST_SESSIONS
        body += _password_area(auth)
    body += params
    return _u16(tag) + _u32(10 + len(body)) + _u32(code) + body


class _Reader:
    """Strict reads from a response: every read is bounds-checked, TpmError otherwise."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise TpmError(f"malformed response ({n} bytes wanted, {self.end - self.pos} left)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def tpm2b(self, limit: int) -> bytes:
        size = self.uint(2)
        if size > limit:
            raise TpmError(f"malformed response (a {size}-byte field, at most {limit})")
        return self.take(size)

    def sub(self, size: int) -> "_Reader":
        """A reader over the next ``size`` bytes, which this reader then skips."""
        start = self.pos
        self.take(size)
        return _Reader(self.data, start, self.pos)

    def done(self) -> None:
        if self.pos != self.end:
            raise TpmError(f"malformed response ({self.end - self.pos} bytes left over)")


def parse_response(raw: bytes, sessions: bool) -> tuple[int, _Reader]:
    """(rc, parameters) of one response; the reader covers exactly the parameter area
    (empty for an error). With ``sessions`` the password session's answer is checked too."""
    if len(raw) < 10:
        raise TpmError(f"malformed response ({len(raw)} bytes, a header is 10)")
    head = _Reader(raw, 0, len(raw))
    tag, size, rc = head.uint(2), head.uint(4), head.uint(4)
    if size != len(raw):
        raise TpmError(f"malformed response (size field {size}, {len(raw)} bytes read)")
    if rc != 0:
        if tag != _ST_NO_SESSIONS or size != 10:
            raise TpmError(f"malformed error response (tag {tag:#06x}, {size} bytes, rc {rc:#x})")
        return rc, head
    if tag != (_ST_SESSIONS if sessions else _ST_NO_SESSIONS):
        raise TpmError(f"malformed response (tag {tag:#06x})")
    if not sessions:
        return 0, head
    params = head.sub(head.uint(4))
    head.tpm2b(MAX_AUTH)  # nonceTPM: empty for a password session, bounded either way
    head.take(1)  # sessionAttributes
    head.tpm2b(MAX_AUTH)  # hmac: empty for a password session
    head.done()
    return 0, params


# --- transport: one non-blocking fd (a TPM device, or a socket), polled ----------------


def _remaining_ms(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000.0 + 0.999))


def _ready(fd: int, events: int, deadline: float) -> bool:
    """Whether ``fd`` is ready (or hung up, or failed) before ``deadline``."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(_remaining_ms(deadline)))


def write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write ``data`` to a non-blocking fd before ``deadline`` (else TimeoutError)."""
    view = memoryview(data)
    while view:
        if not _ready(fd, select.POLLOUT, deadline):
            raise TimeoutError
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue


def _read_some(fd: int, limit: int, deadline: float) -> bytes:
    """At least one byte, at most ``limit``, before ``deadline`` (TimeoutError, TpmError)."""
    while True:
        if not _ready(fd, select.POLLIN, deadline):
            raise TimeoutError
        try:
            chunk = os.read(fd, limit)
        except BlockingIOError:
            continue
        if not chunk:
            raise TpmError("the TPM closed the connection")
        return chunk


def read_response(fd: int, deadline: float, framed: bool) -> bytes:
    """One response: raw (its header's size field says how long) or, ``framed``, the TCG
    simulator's size prefix + response + zero trailer. Never reads more than
    MAX_RESPONSE (+ 8 framing bytes); a size field out of bounds, or more bytes than it
    says, is TpmError; the deadline is TimeoutError."""
    prefix = trailer = 4 if framed else 0
    limit = prefix + MAX_RESPONSE + trailer
    got = b""
    want = 0  # the whole length, known once the header is in
    while not want or len(got) < want:
        got += _read_some(fd, limit - len(got), deadline)
        if not want and len(got) >= prefix + 10:
            size = int.from_bytes(got[prefix + 2 : prefix + 6], "big")
            if not 10 <= size <= MAX_RESPONSE:
                raise TpmError(f"malformed response (size field {size}, at most {MAX_RESPONSE})")
            if framed and int.from_bytes(got[:4], "big") != size:
                raise TpmError("malformed response (the simulator's length is not its size)")
            want = prefix + size + trailer
        if want and len(got) > want:
            raise TpmError(
                f"malformed response ({len(got) - prefix - trailer} bytes, size field "
                f"{want - prefix - trailer})"
            )
    if framed:
        if got[-4:] != b"\0\0\0\0":
            raise TpmError("malformed response (the simulator's trailer is not zero)")
        return got[4:-4]
    return got


def parse_tcti(tcti: str) -> tuple[str, str, int]:
    """``(kind, where, port)``: ``("device", path, 0)`` or ``("swtpm"|"mssim", host, port)``."""
    name, _, conf = tcti.partition(":")
    name = name.strip()
    if not name:
        name, conf = "device", ""
    if name == "device":
        return "device", conf or DEFAULT_TCTI.partition(":")[2], 0
    if name not in ("swtpm", "mssim"):
        raise TpmError(f"TCTI {tcti!r} is not supported (device:PATH, swtpm:..., mssim:...)")
    host, port = "localhost", _DEFAULT_PORT
    for item in conf.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key and not sep:
            continue
        if key == "host" and value.strip():
            host = value.strip()
        elif key == "port" and value.strip().isdigit() and 0 < int(value) < 65535:
            port = int(value)
        else:
            raise TpmError(f"TCTI {tcti!r}: {item.strip()!r} is not host=NAME or port=NUMBER")
    return name, host, port


def _addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """(family, address) to try. A numeric address skips getaddrinfo, whose first call in
    a process loads the resolver (10-16 ms here): boot paths should name 127.0.0.1."""
    import _socket

    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port))]
    try:
        found = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot resolve {host}: {exc.strerror or exc}") from None
    return [(family, (str(address[0]), int(address[1]))) for family, _, _, _, address in found]


def _connect_tcp(host: str, port: int, deadline: float) -> int:
    """A connected, non-blocking TCP socket's fd (the caller closes it with os.close)."""
    import _socket

    error: OSError = OSError(f"no address for {host}")
    for family, address in _addresses(host, port):
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(address)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        fd = sock.detach()
        os.set_blocking(fd, False)
        return fd
    raise error


def _swtpm_set_locality(host: str, port: int, deadline: float) -> None:
    """What libtss2's swtpm TCTI does at start: CMD_SET_LOCALITY 0 on the control port
    (``port``, the server port + 1). TimeoutError at the deadline, TpmError otherwise."""
    try:
        fd = _connect_tcp(host, port, deadline)
    except TimeoutError:
        raise
    except OSError as exc:
        raise TpmError(f"swtpm's control port {port}: {_why(exc)}") from None
    try:
        write_all(fd, _u32(_SWTPM_CMD_SET_LOCALITY) + b"\0", deadline)
        answer = b""
        while len(answer) < 4:
            answer += _read_some(fd, 4 - len(answer), deadline)
    except TpmError as exc:
        raise TpmError(f"swtpm's control port {port}: {exc}") from None
    except TimeoutError:
        raise
    except OSError as exc:
        raise TpmError(f"swtpm's control port {port}: {_why(exc)}") from None
    finally:
        os.close(fd)
    if answer != b"\0\0\0\0":
        raise TpmError(f"swtpm's control port {port} refused locality 0 ({answer.hex()})")


# --- the client ---------------------------------------------------------------------


class Tpm:
    """A connection to one TPM, reused for every command until :meth:`close`.

    Each call is bounded by ``timeout_s`` (retries included). After a transport failure
    (timeout, closed connection, malformed response) the connection is closed and every
    later call raises TpmError: a late answer must never be read as the next one's.
    swtpm serves one client connection at a time, so while this object is open other
    clients of the same swtpm (tpm2-tools) wait; ``/dev/tpmrm0`` multiplexes. One caller
    at a time: the object is not shared between threads.
    """

    def __init__(self, tcti: str = "", timeout_s: float = 10.0) -> None:
        if not timeout_s > 0:
            raise ValueError("TPM timeout must be positive")
        self.tcti = tcti or DEFAULT_TCTI
        self.timeout_s = timeout_s
        self._kind, self._where, self._port = parse_tcti(self.tcti)
        self._fd = -1
        self._broken = ""
        deadline = time.monotonic() + timeout_s
        try:
            if self._kind == "device":
                self._fd = os.open(self._where, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            else:
                self._fd = _connect_tcp(self._where, self._port, deadline)
                if self._kind == "swtpm":
                    _swtpm_set_locality(self._where, self._port + 1, deadline)
        except TimeoutError:
            self.close()
            raise TpmError(f"TPM at {self.tcti}: no answer within {timeout_s:g} s") from None
        except OSError as exc:
            self.close()
            raise TpmError(f"cannot open the TPM at {self.tcti}: {_why(exc)}") from None
        except TpmError as exc:
            self.close()
            raise TpmError(f"cannot open the TPM at {self.tcti}: {exc}") from None

    @classmethod
    def from_fd(cls, fd: int, name: str, timeout_s: float = 10.0) -> "Tpm":
        """Speak the device protocol over an fd the caller opened (this object owns it)."""
        if not timeout_s > 0:
            raise ValueError("TPM timeout must be positive")
        self = cls.__new__(cls)
        self.tcti, self.timeout_s = name, timeout_s
        self._kind, self._where, self._port = "device", name, 0
        self._fd, self._broken = fd, ""
        os.set_blocking(fd, False)
        return self

    def __repr__(self) -> str:
        return f"Tpm({self.tcti!r})"

    def __enter__(self) -> "Tpm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    # --- one command -----------------------------------------------------------------

    def _exchange(self, command: bytes, deadline: float) -> bytes:
        framed = self._kind == "mssim"
        if framed:
            command = _u32(_MSSIM_SEND_COMMAND) + b"\0" + _u32(len(command)) + command
        self._expect_quiet()
        write_all(self._fd, command, deadline)
        return read_response(self._fd, deadline, framed)

    def _expect_quiet(self) -> None:
        """Before a command nothing may be waiting: stray bytes would be taken for its
        answer. A server that closed the connection (swtpm restarted, or started with
        ``disconnect``) is an error here too; nothing is resent on a new connection."""
        if not _ready(self._fd, select.POLLIN, time.monotonic()):
            return
        try:
            stale = os.read(self._fd, 1)
        except BlockingIOError:
            return
        if stale:
            raise TpmError("malformed response (bytes arrived before the command)")
        raise TpmError("the TPM closed the connection")

    def _call(
        self,
        code: int,
        index: int,
        handles: tuple[int, ...],
        auth: bytes | None,
        params: bytes,
        nv_handles: tuple[int, ...] = (),
    ) -> _Reader:
        """Send one command (again on RETRY/YIELDED/TESTING) and return its parameters.

        ``nv_handles`` are the 1-based positions of the handles that name the NV index:
        TPM_RC_HANDLE on one of them means the index is not defined (:class:`NvMissing`).
        """
        what = f"{_COMMAND_NAMES[code]} {index:#010x} at {self.tcti}"
        if self._fd < 0:
            why = f" after an earlier error ({self._broken})" if self._broken else ""
            raise TpmError(f"{what}: the connection is closed{why}")
        command = build_command(code, handles, auth, params)
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(_MAX_SUBMISSIONS):
            try:
                rc, reader = parse_response(self._exchange(command, deadline), auth is not None)
            except TimeoutError:
                raise self._fail(what, f"no answer within {self.timeout_s:g} s") from None
            except OSError as exc:
                raise self._fail(what, _why(exc)) from None
            except TpmError as exc:
                raise self._fail(what, str(exc)) from None
            if rc == 0:
                return reader
            base = rc_base(rc)
            if base in _RETRYABLE and attempt + 1 < _MAX_SUBMISSIONS:
                pause = min(_RETRY_PAUSE_S * (attempt + 1), deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
                continue
            message = f"{what}: {rc_name(rc)}"
            if base == RC_HANDLE and _rc_handle_number(rc) in nv_handles:
                raise NvMissing(message, rc)
            if base == RC_NV_UNINITIALIZED:
                raise NvUninitialized(message, rc)
            raise TpmError(message, rc)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _fail(self, what: str, reason: str) -> TpmError:
        """Close the connection for good: whatever it still delivers is not trusted."""
        self._broken = reason
        self.close()
        return TpmError(f"{what}: {reason}")

    # --- NV commands -----------------------------------------------------------------

    def nv_read_public(self, index: int) -> tuple[int, int] | None:
        """(attributes, data size) of the index, or None when it is not defined."""
        _check_index(index)
        try:
            reader = self._call(_CC_NV_READ_PUBLIC, index, (index,), None, b"", nv_handles=(1,))
        except NvMissing:
            return None
        public = reader.sub(reader.uint(2))
        found = public.uint(4)
        public.uint(2)  # nameAlg
        attributes = public.uint(4)
        public.tpm2b(MAX_AUTH)  # authPolicy
        size = public.uint(2)
        public.done()
        reader.tpm2b(2 + MAX_AUTH)  # the index's name: nameAlg + digest
        reader.done()
        if found != index:
            raise TpmError(
                f"TPM2_NV_ReadPublic {index:#010x} at {self.tcti}: the answer is for {found:#010x}"
            )
        return attributes, size

    def nv_define(
        self,
        index: int,
        size: int,
        attributes: int,
        auth: bytes = b"",
        owner_auth: bytes = b"",
    ) -> None:
        """Define an index in the owner hierarchy (nameAlg SHA-256, no policy)."""
        _check_index(index)
        _check_auth(auth)
        _check_auth(owner_auth)
        if not 0 <= size <= 0xFFFF or not 0 <= attributes <= 0xFFFFFFFF:
            raise ValueError("NV size or attributes out of range")
        public = _u32(index) + _u16(_ALG_SHA256) + _u32(attributes) + _tpm2b(b"") + _u16(size)
        params = _tpm2b(auth) + _tpm2b(public)
        self._call(_CC_NV_DEFINE_SPACE, index, (_RH_OWNER,), owner_auth, params).done()

    def nv_undefine(self, index: int, owner_auth: bytes = b"") -> None:
        """Delete an index with the owner's authorization."""
        _check_index(index)
        _check_auth(owner_auth)
        reader = self._call(
            _CC_NV_UNDEFINE_SPACE, index, (_RH_OWNER, index), owner_auth, b"", nv_handles=(2,)
        )
        reader.done()

    def nv_read(self, index: int, size: int, offset: int = 0, auth: bytes = b"") -> bytes:
        """``size`` bytes at ``offset``, authorized by the index itself (its password)."""
        _check_index(index)
        _check_auth(auth)
        _check_span(size, offset)
        params = _u16(size) + _u16(offset)
        reader = self._call(_CC_NV_READ, index, (index, index), auth, params, nv_handles=(1, 2))
        data = reader.tpm2b(MAX_NV_CHUNK)
        reader.done()
        if len(data) != size:
            raise TpmError(
                f"TPM2_NV_Read {index:#010x} at {self.tcti}: {len(data)} bytes, asked {size}"
            )
        return data

    def nv_write(self, index: int, data: bytes, offset: int = 0, auth: bytes = b"") -> None:
        """Write ``data`` at ``offset`` in one command, authorized by the index itself."""
        _check_index(index)
        _check_auth(auth)
        _check_span(len(data), offset)
        params = _tpm2b(bytes(data)) + _u16(offset)
        self._call(_CC_NV_WRITE, index, (index, index), auth, params, nv_handles=(1, 2)).done()

    def nv_increment(self, index: int, auth: bytes = b"") -> None:
        """Increment a counter index by one, authorized by the index itself."""
        _check_index(index)
        _check_auth(auth)
        self._call(_CC_NV_INCREMENT, index, (index, index), auth, b"", nv_handles=(1, 2)).done()

    def nv_read_counter(self, index: int, auth: bytes = b"") -> int:
        """A counter index's value: 8 bytes, big-endian."""
        return int.from_bytes(self.nv_read(index, 8, 0, auth), "big")


def _check_index(index: int) -> None:
    if not NV_INDEX_FIRST <= index <= NV_INDEX_LAST:
        raise ValueError(f"NV index {index:#x} is outside the NV range 0x01000000-0x01ffffff")


def _check_auth(auth: bytes) -> None:
    if len(auth) > MAX_AUTH:
        raise ValueError(f"an authorization value is at most {MAX_AUTH} bytes")


def _check_span(size: int, offset: int) -> None:
    if not 0 <= size <= MAX_NV_CHUNK or not 0 <= offset <= 0xFFFF:
        raise ValueError(f"NV reads and writes are 0-{MAX_NV_CHUNK} bytes at offsets 0-65535")


def _why(exc: OSError) -> str:
    """``Connection refused``, ``No such file or directory``...: the cause, one line."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return " ".join(text.split())
