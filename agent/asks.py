"""What the device says to HQ after activation: its signed messages, built from what it
holds (the trusted state, the stored machine file, the device key, the TPM counter).

Transport-free: sync.py sends these over HTTP (to HQ or a technician's laptop), the
daemon over MQTT. The license key is never in a message: a device whose activation HQ
recorded without a device key (factory provisioning by fingerprint, an agent of 0.1.0)
registers its key with a proof that it holds the license key (wire/device_key.py).
Call with the writer lock held when the device key may have to be created.
"""

from . import __version__
from .device import Device
from .state import StateError
from .wire import device_msg
from .wire.device_key import DeviceKey, key_proof
from .wire.machine_file import Claims


class Standing:
    """What the device can say about its own activation right now."""

    __slots__ = ("activation_id", "claims", "expires_at", "lost", "revoked", "serial")

    def __init__(self, device: Device) -> None:
        self.claims: Claims | None = None
        key = device.stored_license_key()
        if key is not None:
            self.claims = device._stored_claims(key)
        self.lost = False
        st = None
        try:
            st = device.load_state()
        except StateError:
            self.lost = True
        self.activation_id = (
            st.activation_id
            if st is not None and st.activation_id
            else (self.claims.activation_id if self.claims is not None else "")
        )
        usable = st is not None and not self.lost
        self.serial = st.serial if usable and st is not None else 0
        self.revoked = bool(st.revoked) if usable and st is not None else False
        self.expires_at = self.claims.expires_at if self.claims is not None and usable else 0


def _common(device: Device, standing: Standing, now: int) -> dict[str, object]:
    return {
        "activation_id": standing.activation_id,
        "fingerprint": device.identity.fingerprint,
        "at": now,
        "agent_version": __version__,
    }


def keyring_ids(device: Device) -> list[str] | None:
    """The ids of the keys the device's keyring holds, for HQ to sign with one of them
    (None when it cannot be read, or holds more than a message carries: HQ then signs
    with its active key, as for an agent of 0.1.0)."""
    from .config import ConfigError

    try:
        kids = sorted(device.keyring().keys)
    except ConfigError:
        return None
    return kids if len(kids) <= device_msg.MAX_KEYRING_IDS else None


def _registration(
    device: Device, key: DeviceKey, standing: Standing, challenge: str | None
) -> tuple[bytes | None, bytes | None]:
    """(device_key, proof) when HQ does not know this device's key yet, else (None, None)."""
    claims = standing.claims
    if claims is not None and claims.device_key == key.public_key:
        return None, None
    license_key = device.stored_license_key()
    if license_key is None or not standing.activation_id:
        return None, None
    proof = key_proof(license_key, key.public_key, standing.activation_id, challenge or "")
    return key.public_key, proof


def renew(
    device: Device,
    now: int,
    *,
    challenge: str | None,
    due: bool,
    ttl_s: int | None = None,
    nonce: str | None = None,
) -> bytes:
    """A signed renewal request. With ``nonce`` (online), or when the state is lost, it
    asks for an answer bound to the nonce and the TPM counter."""
    key = device.ensure_device_key()
    standing = Standing(device)
    counter = _counter(device) if (nonce is not None or standing.lost) else None
    device_key, proof = _registration(device, key, standing, challenge)
    return device_msg.sign(
        key,
        "renew",
        {
            **_common(device, standing, now),
            "challenge": challenge,
            "serial": standing.serial,
            "expires_at": standing.expires_at,
            "due": due,
            "revoked": standing.revoked,
            "ttl_s": ttl_s,
            "counter": counter,
            "nonce": nonce,
            "formats": list(device_msg.CLAIMS_FORMATS),
            "device_key": device_key,
            "proof": proof,
            "keyring": keyring_ids(device),
        },
    )


def validate(device: Device, now: int, *, challenge: str | None, nonce: str) -> bytes:
    key = device.ensure_device_key()
    standing = Standing(device)
    body = {
        **_common(device, standing, now),
        "nonce": nonce,
        "challenge": challenge,
        "keyring": keyring_ids(device),
    }
    return device_msg.sign(key, "validate", body)


def deactivate(device: Device, now: int, *, challenge: str | None) -> bytes:
    key = device.ensure_device_key()
    standing = Standing(device)
    return device_msg.sign(
        key, "deactivate", {**_common(device, standing, now), "challenge": challenge}
    )


def activate(device: Device, license_id: str, now: int, *, nonce: str) -> bytes:
    """The signed part of an online activation (sent with the license key, over TLS).
    Prepares the TPM first: the answer must name its counter (docs/tpm.md)."""
    key = device.ensure_device_key()
    reading = device.provision_tpm()
    return device_msg.sign(
        key,
        "activate",
        {
            "activation_id": "",
            "fingerprint": device.identity.fingerprint,
            "at": now,
            "agent_version": __version__,
            "license_id": license_id,
            "device_key": key.public_key,
            "counter": reading.counter if reading is not None else None,
            "nonce": nonce,
            "device_name": device.cfg.device_name[:100],
            "formats": list(device_msg.CLAIMS_FORMATS),
            "keyring": keyring_ids(device),
        },
    )


def status(device: Device, doc: dict[str, object], now: int) -> bytes:
    """The device's signed status (MQTT telemetry; a laptop's record of an install)."""
    key = device.ensure_device_key()
    standing = Standing(device)
    notes = [str(n)[: device_msg.MAX_NOTE_CHARS] for n in _list(doc.get("notes"))]
    bad = doc.get("bad_messages")
    raw_challenge = doc.get("challenge")
    challenge = raw_challenge if isinstance(raw_challenge, str) else None
    device_key, proof = _registration(device, key, standing, challenge)
    return device_msg.sign(
        key,
        "status",
        {
            **_common(device, standing, now),
            "verdict": str(doc.get("verdict", ""))[:100],
            "reason": str(doc.get("reason", ""))[:100],
            "serial": standing.serial,
            "expires_at": standing.expires_at,
            "revoked": str(doc.get("revoked_reason", ""))[:100],
            "revoked_at": _uint(doc.get("revoked_at")),
            "lifted_at": _uint(doc.get("lifted_at")),
            "hwm": _uint(doc.get("hwm")),
            "unrecorded_boots": _uint(doc.get("unrecorded_boots")),
            "notes": notes[: device_msg.MAX_NOTES],
            "bad_messages": dict(bad) if isinstance(bad, dict) else {},
            "challenge": challenge,
            "device_key": device_key,
            "proof": proof,
            "keyring": keyring_ids(device),
        },
    )


def _counter(device: Device) -> int | None:
    """The TPM state counter now (None without a TPM, or when it is not provisioned)."""
    anchor = device.anchor()
    if anchor is None:
        return None
    from .tpm import TpmError

    try:
        return anchor.read().counter
    except TpmError:
        return None


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _uint(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def request(device: Device, now: int) -> tuple[str, Standing]:
    """The armored air-gapped request, and what it is for. Prepares the TPM (an explicit
    step), and remembers the request's nonce: the answer must name it (or, with a TPM,
    the counter value it carries) to rebuild a lost state."""
    from .online import new_nonce
    from .wire.request import make_request

    key = device.ensure_device_key()
    reading = device.provision_tpm()
    standing = Standing(device)
    nonce = new_nonce()
    counter = reading.counter if reading is not None else None
    device.write_pending(nonce, counter, now)
    text = make_request(
        key,
        device.identity.fingerprint,
        activation_id=standing.activation_id,
        serial=standing.serial,
        device_name=device.cfg.device_name[:100],
        agent_version=__version__,
        created_at=now,
        counter=counter,
        nonce=nonce,
        lost=standing.lost,
        keyring=keyring_ids(device),
    )
    return text, standing
