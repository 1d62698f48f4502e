"""Topic names and the device id they are built on (documented in docs/mqtt.md).

The device id is derived from the fingerprint with a context string, so a topic never
carries the fingerprint, the license key or a raw hardware id, and never ``+ # /``::

    device_id = "d" + hex(HMAC-SHA256(b"fieldpass/mqtt-device-id/v1", fingerprint))[:24]

HQ computes the same id from the fingerprints it holds.

``ack`` carries HQ's signed status (agent/wire/signed_time.py, as it is) bound to the
nonce ``ack_nonce(payload)`` (wire/signed_time.py; HQ's HTTP answers to a receipt carry
the same) of the report or receipt it acknowledges: the device verifies it as it
verifies HQ's answer to a validation, and stops resending what HQ holds. Pure
functions: no I/O.
"""

from ..wire import sodium
from ..wire.signed_time import ACK_NONCE_PREFIX as ACK_NONCE_PREFIX  # the wire's, named here
from ..wire.signed_time import ack_nonce as ack_nonce

DEVICE_ID_CONTEXT = b"fieldpass/mqtt-device-id/v1"
DEFAULT_PREFIX = "fieldpass/v1"

MACHINE_FILE = "machine-file"  # HQ -> device, retained, QoS 1
REVOCATION = "revocation"  # HQ -> device, retained, QoS 1
RENEW_REQUEST = "renew-request"  # device -> HQ, QoS 1
STATUS = "status"  # device -> HQ, QoS 1
REPORT = "report"  # device -> HQ, QoS 1: a signed usage report
RECEIPT = "receipt"  # device -> HQ, QoS 1: a signed return receipt
ACK = "ack"  # HQ -> device, QoS 1, not retained: HQ holds that report or receipt
FROM_HQ = (MACHINE_FILE, REVOCATION, ACK)
TO_HQ = (RENEW_REQUEST, STATUS, REPORT, RECEIPT)


def device_id(fingerprint: str) -> str:
    digest = sodium.hmac_sha256(DEVICE_ID_CONTEXT, fingerprint.encode("ascii"))
    return "d" + digest.hex()[:24]


def is_device_id(text: str) -> bool:
    return len(text) == 25 and text[0] == "d" and all(c in "0123456789abcdef" for c in text[1:])


def topic(prefix: str, dev_id: str, kind: str) -> str:
    return f"{prefix}/dev/{dev_id}/{kind}"


def parse(prefix: str, name: str) -> tuple[str, str] | None:
    """(device id, kind) for one of our topics, or None."""
    head = prefix + "/dev/"
    if not name.startswith(head):
        return None
    parts = name[len(head) :].split("/")
    if len(parts) != 2 or not is_device_id(parts[0]) or parts[1] not in (*FROM_HQ, *TO_HQ):
        return None
    return parts[0], parts[1]
