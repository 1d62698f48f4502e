"""The activation/renewal request a device writes for the air-gapped flow.

``fieldpass request`` writes it armored (``FIELDPASS REQUEST``); an operator carries it
to HQ (a USB stick, a ticket, read over the phone), where ``fieldpass-hq activate
--request`` or ``machine-file --request`` answers it with a machine file. It holds
nothing secret: no license key, no raw hardware id. It is not signed (a device has no
signing key); HQ trusts only the license key the operator gives and the seat rules.

Canonical CBOR map, exactly these keys::

    {"v": 1, "type": "request", "fingerprint": 64-hex, "activation_id": text ("" if none),
     "serial": uint (0 if none), "device_name": text, "agent_version": text,
     "created_at": uint}
"""

from . import armor, cbor
from .errors import FormatError, UnsupportedVersionError
from .license_key import is_fingerprint

FORMAT_VERSION = 1
MAX_REQUEST_BYTES = 1024
_KEYS = frozenset(
    {
        "v",
        "type",
        "fingerprint",
        "activation_id",
        "serial",
        "device_name",
        "agent_version",
        "created_at",
    }
)


class Request:
    __slots__ = (
        "activation_id",
        "agent_version",
        "created_at",
        "device_name",
        "fingerprint",
        "serial",
    )

    def __init__(
        self,
        fingerprint: str,
        *,
        activation_id: str = "",
        serial: int = 0,
        device_name: str = "",
        agent_version: str = "",
        created_at: int = 0,
    ) -> None:
        if not is_fingerprint(fingerprint):
            raise FormatError("request fingerprint is not 64 lowercase hex characters")
        for name, value in (
            ("activation_id", activation_id),
            ("device_name", device_name),
            ("agent_version", agent_version),
        ):
            if type(value) is not str or len(value) > 100:
                raise FormatError(f"request field {name} must be a text of at most 100 characters")
        for name, number in (("serial", serial), ("created_at", created_at)):
            if type(number) is not int or not 0 <= number < 1 << 63:
                raise FormatError(f"request field {name} must be a non-negative integer")
        self.fingerprint = fingerprint
        self.activation_id = activation_id
        self.serial = serial
        self.device_name = device_name
        self.agent_version = agent_version
        self.created_at = created_at

    def to_bytes(self) -> bytes:
        return cbor.dumps(
            {
                "v": FORMAT_VERSION,
                "type": "request",
                "fingerprint": self.fingerprint,
                "activation_id": self.activation_id,
                "serial": self.serial,
                "device_name": self.device_name,
                "agent_version": self.agent_version,
                "created_at": self.created_at,
            }
        )

    def armored(self) -> str:
        return armor.armor(self.to_bytes(), armor.REQUEST)

    @classmethod
    def parse(cls, data: bytes) -> "Request":
        """From binary CBOR or armored text."""
        if armor.is_armored(data):
            data = armor.unarmor(data, armor.REQUEST)
        doc = cbor.loads(data, max_size=MAX_REQUEST_BYTES, max_depth=1)
        if not isinstance(doc, dict):
            raise FormatError("a request is a CBOR map")
        if doc.get("v") != FORMAT_VERSION:
            raise UnsupportedVersionError(f"request version {doc.get('v')!r} is not supported")
        if set(doc) != _KEYS or doc["type"] != "request":
            raise FormatError("request has missing or unknown fields")
        return cls(
            doc["fingerprint"],  # type: ignore[arg-type]
            activation_id=doc["activation_id"],  # type: ignore[arg-type]
            serial=doc["serial"],  # type: ignore[arg-type]
            device_name=doc["device_name"],  # type: ignore[arg-type]
            agent_version=doc["agent_version"],  # type: ignore[arg-type]
            created_at=doc["created_at"],  # type: ignore[arg-type]
        )
