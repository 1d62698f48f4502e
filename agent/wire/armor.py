"""The armored text form: BEGIN/END lines around base64, for copy and paste.

Emitted strictly (LF line endings, 64 columns, nothing around it); parsed tolerantly:
CRLF or CR line endings, blank lines, indentation, trailing spaces, e-mail quoting
(``> ``) and any text before BEGIN or after END are all accepted. The base64 itself is
decoded strictly, and the label must be the expected one.
"""

import binascii
import codecs

from .errors import FormatError

MACHINE_FILE = "FIELDPASS MACHINE FILE"
REQUEST = "FIELDPASS REQUEST"
REVOCATION = "FIELDPASS REVOCATION"
REPORT = "FIELDPASS USAGE REPORT"
RECEIPT = "FIELDPASS RETURN RECEIPT"

MAX_ARMOR_CHARS = 256 * 1024
_WIDTH = 64


def armor(data: bytes, label: str) -> str:
    body = binascii.b2a_base64(data, newline=False).decode("ascii")
    lines = [f"-----BEGIN {label}-----"]
    lines += [body[i : i + _WIDTH] for i in range(0, len(body), _WIDTH)]
    lines.append(f"-----END {label}-----")
    return "\n".join(lines) + "\n"


def _clean(line: str) -> str:
    line = line.strip()
    while line.startswith(">"):
        line = line[1:].strip()
    return line


def is_armored(data: bytes) -> bool:
    """True for text holding an armored block; False for binary CBOR, though its text
    fields hold "-----BEGIN " (a device named so): every CBOR map starts with a byte
    (0xa0-0xbf) that no UTF-8 text starts with."""
    head = data[:MAX_ARMOR_CHARS]
    if b"-----BEGIN " not in head:
        return False
    try:  # a character cut at the end of head is no error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def unarmor(text: str | bytes, label: str) -> bytes:
    """The bytes inside the first ``label`` block of ``text``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError("armored text is not UTF-8") from e
    if len(text) > MAX_ARMOR_CHARS:
        raise FormatError("armored text is too long")
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    body: list[str] | None = None
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _clean(raw)
        if body is None:
            if line == begin:
                body = []
            elif line.startswith("-----BEGIN "):
                raise FormatError(f"expected {label}, found {line.strip('-')[6:]}")
            continue
        if line == end:
            try:
                return binascii.a2b_base64("".join(body), strict_mode=True)
            except binascii.Error as e:
                raise FormatError("armored text has invalid base64") from e
        if line:
            body.append(line)
    if body is None:
        raise FormatError(f"no '{begin}' line found")
    raise FormatError(f"no '{end}' line found: the text was cut short")
