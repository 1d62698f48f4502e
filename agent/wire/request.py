"""The activation/renewal request a device writes for the air-gapped flow.

``fieldpass request`` writes it armored (``FIELDPASS REQUEST``); an operator carries it
to HQ (a USB stick, a ticket), where ``fieldpass-hq activate --request``, ``machine-file
--request`` or ``provision --request`` answers it with a machine file. It holds nothing
secret: no license key, no raw hardware id.

Two forms are read:

- version 2 (this agent): a device message of type ``request`` (device_msg.py), signed
  by the device's own key, which it carries (``device_key``). It names the TPM counter
  value (or null) and a fresh nonce: HQ's answer names them (the claims' ``binding``),
  which is how a device in lost state, or a first install onto a TPM-bound device, is
  accepted offline. ``lost`` says the device is in lost state.
- version 1 (agents up to 0.1.0): the unsigned canonical CBOR map
  ``{"v": 1, "type": "request", "fingerprint", "activation_id", "serial", "device_name",
  "agent_version", "created_at"}``.
"""

from . import armor, cbor, device_msg, fields
from .device_key import DeviceKey
from .errors import FormatError, UnsupportedVersionError
from .license_key import is_fingerprint

V1 = 1
MAX_REQUEST_BYTES = 2048
_KEYS_V1 = frozenset(
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
    """A request as HQ reads it (either form); ``signed`` tells which."""

    __slots__ = (
        "activation_id",
        "agent_version",
        "counter",
        "created_at",
        "device_key",
        "device_name",
        "fingerprint",
        "formats",
        "keyring",
        "lost",
        "nonce",
        "serial",
        "signed",
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
        device_key: bytes | None = None,
        counter: int | None = None,
        nonce: str | None = None,
        lost: bool = False,
        formats: tuple[int, ...] = (1,),
        signed: bool = False,
        keyring: tuple[str, ...] | None = None,
    ) -> None:
        if not is_fingerprint(fingerprint):
            raise FormatError("request fingerprint is not 64 lowercase hex characters")
        for name, value in (
            ("activation_id", activation_id),
            ("device_name", device_name),
            ("agent_version", agent_version),
        ):
            fields.text(value, f"request field {name}", 100, empty=True)
        fields.uint(serial, "request field serial")
        fields.time_s(created_at, "request field created_at")
        self.fingerprint = fingerprint
        self.activation_id = activation_id
        self.serial = serial
        self.device_name = device_name
        self.agent_version = agent_version
        self.created_at = created_at
        self.device_key = device_key
        self.counter = counter
        self.nonce = nonce
        self.lost = lost
        self.formats = tuple(formats)
        self.signed = signed
        self.keyring = keyring  # the ids of the keys the device trusts (None: not said)

    def to_bytes_v1(self) -> bytes:
        """The version-1 form (what agents up to 0.1.0 wrote; tests of HQ's reading)."""
        return cbor.dumps(
            {
                "v": V1,
                "type": "request",
                "fingerprint": self.fingerprint,
                "activation_id": self.activation_id,
                "serial": self.serial,
                "device_name": self.device_name,
                "agent_version": self.agent_version,
                "created_at": self.created_at,
            }
        )

    @classmethod
    def parse(cls, data: bytes) -> "Request":
        """From binary CBOR or armored text, either form; a signed one is verified."""
        if armor.is_armored(data):
            data = armor.unarmor(data, armor.REQUEST)
        if len(data) > MAX_REQUEST_BYTES:
            raise FormatError("a request is larger than 2 KiB")
        doc = cbor.loads(data, max_size=MAX_REQUEST_BYTES, max_depth=1)
        if isinstance(doc, dict) and set(doc) == {"kid", "msg", "sig"}:
            return cls._from_message(device_msg.open_self_signed(data, "request"))
        if not isinstance(doc, dict) or not fields.is_version(doc.get("v"), V1):
            raise UnsupportedVersionError("not a version 1 or 2 Fieldpass request")
        if set(doc) != _KEYS_V1 or doc["type"] != "request":
            raise FormatError("request has missing or unknown fields")
        return cls(
            doc["fingerprint"],  # type: ignore[arg-type]
            activation_id=doc["activation_id"],  # type: ignore[arg-type]
            serial=doc["serial"],  # type: ignore[arg-type]
            device_name=doc["device_name"],  # type: ignore[arg-type]
            agent_version=doc["agent_version"],  # type: ignore[arg-type]
            created_at=doc["created_at"],  # type: ignore[arg-type]
        )

    @classmethod
    def _from_message(cls, m: device_msg.DeviceMessage) -> "Request":
        counter = m["counter"]
        return cls(
            m.fingerprint,
            activation_id=m.activation_id,
            serial=int(str(m["serial"])),
            device_name=str(m["device_name"]),
            agent_version=str(m["agent_version"]),
            created_at=int(str(m["at"])),
            device_key=m["device_key"],  # type: ignore[arg-type]
            counter=None if counter is None else int(str(counter)),
            nonce=str(m["nonce"]),
            lost=bool(m["lost"]),
            formats=tuple(m["formats"]),  # type: ignore[arg-type]
            signed=True,
            keyring=device_msg.keyring_of(m),
        )


def make_request(
    key: DeviceKey,
    fingerprint: str,
    *,
    activation_id: str,
    serial: int,
    device_name: str,
    agent_version: str,
    created_at: int,
    counter: int | None,
    nonce: str,
    lost: bool,
    keyring: list[str] | None = None,
) -> str:
    """The armored version-2 request (device side)."""
    data = device_msg.sign(
        key,
        "request",
        {
            "activation_id": activation_id,
            "fingerprint": fingerprint,
            "at": created_at,
            "agent_version": agent_version,
            "serial": serial,
            "device_key": key.public_key,
            "counter": counter,
            "nonce": nonce,
            "device_name": device_name,
            "lost": lost,
            "formats": list(device_msg.CLAIMS_FORMATS),
            "keyring": keyring,
        },
    )
    return armor.armor(data, armor.REQUEST)
