"""Requests signed by the device's own key (agent/wire/device_msg.py): HQ's side of the
device protocol after activation, and of activation with a device key.

- ``challenge``: a single-use server nonce (kept in the database, so every replica
  knows it), which a request signed over it spends: a recorded request cannot be
  replayed later.
- ``activate``: the license key (sent only here, to HQ, over TLS) plus the device's
  self-signed ``activate`` message (its key, its TPM counter, its nonce).
- ``renew``, ``validate``, ``deactivate``: signed by the activation's recorded device
  key; HQ finds the activation by the key's id, never by anything unsigned. A renewal
  may register a key for an activation that has none, with the proof that the device
  holds the license key.

Every answer names the nonce (and TPM counter) of the request it answers, so a device
can tell HQ's word on the time now from an old file. Refusals are typed errors with a
stable code; nothing here reads the clock or logs.
"""

import secrets
from dataclasses import dataclass, replace

from agent.wire import device_msg, signed_time
from agent.wire.device_key import check_key_proof, key_id
from agent.wire.errors import FormatError, WireError
from agent.wire.license_key import license_id
from agent.wire.machine_file import Binding
from agent.wire.request import Request
from agent.wire.signed import signed_kid

from ..errors import (
    ActivationNotFound,
    ChallengeInvalid,
    DeviceKeyMismatch,
    DeviceUnauthenticated,
    FingerprintMismatch,
    InvalidRequest,
)
from ..models import Activation, Actor, License
from ..storage import Store, Tx
from .audit import event
from .issuing import Contact, Issued, Issuing, Validation
from .keys import Keys
from .licenses import license_status

CHALLENGE_TTL_S = 300
# The message types that may register a device key (with the proof of the license key):
# a device HQ activated by fingerprint learns of its own key only when it speaks.
REGISTERING = frozenset({"renew", "status", "report", "receipt"})
CHANNELS = ("http", "mqtt", "laptop", "air-gapped")


def claims_format(formats: object) -> int:
    """The newest claims version both HQ and the device read."""
    known = [f for f in formats if f in (1, 2)] if isinstance(formats, list) else []
    return max(known, default=1)


def _binding(msg: device_msg.DeviceMessage) -> Binding | None:
    counter, nonce = msg.fields.get("counter"), msg.fields.get("nonce")
    if counter is None and nonce is None:
        return None
    return Binding(
        counter=counter if isinstance(counter, int) else None,
        nonce=nonce if isinstance(nonce, str) else None,
    )


@dataclass(frozen=True)
class Verified:
    """A device message HQ verified, and the activation (and license) it is about."""

    message: device_msg.DeviceMessage
    activation: Activation
    license: License
    registering: bool  # the message registers a device key for an activation without one

    def contact(self, channel: str) -> Contact:
        m = self.message
        return Contact(
            channel=channel,
            agent_version=str(m["agent_version"]),
            claims_format=claims_format(m.fields.get("formats", [1])),
            device_key=self.activation.device_key if not self.registering else _key(m),
            binding=_binding(m),
            keyring=device_msg.keyring_of(m),
        )


def open_for(act: Activation, data: bytes, msg_type: str) -> device_msg.DeviceMessage:
    """A device message verified against ``act``'s recorded device key, naming ``act``'s
    device and activation (for a caller that holds the activation already: ``push``
    knows those it renewed)."""
    msg = _signed_by(act, data, msg_type)
    _names(msg, act)
    return msg


def _signed_by(act: Activation, data: bytes, msg_type: str) -> device_msg.DeviceMessage:
    key = act.device_key
    kid = None if key is None else key_id(key)
    try:
        return device_msg.open_message(data, lambda k: key if k == kid else None, msg_type)
    except WireError as e:
        raise DeviceUnauthenticated(f"device request refused ({e})") from None


def _names(m: device_msg.DeviceMessage, act: Activation) -> None:
    if m.fingerprint != act.fingerprint:
        raise FingerprintMismatch("the request names another device than its key's")
    if m.activation_id not in ("", act.id):
        raise FingerprintMismatch("the request names another activation than its key's")


def _same_key(tx: Tx, act: Activation, named: str) -> Activation:
    """The activation a message verified against ``act``'s key names, when it holds the
    same device key (an earlier activation of the same device: its receipt or report
    sent again after it activated anew); else ``act``, whose name check refuses it."""
    other = tx.get_activation(named)
    return other if other is not None and other.device_key == act.device_key else act


def _key(m: device_msg.DeviceMessage) -> bytes | None:
    value = m.fields.get("device_key")
    return value if isinstance(value, bytes) else None


class DeviceRequests:
    def __init__(self, store: Store, keys: Keys, issuing: Issuing) -> None:
        self.store = store
        self.keys = keys
        self.issuing = issuing

    # -- challenges -------------------------------------------------------------------
    def challenge(self, now: int) -> str:
        """A fresh single-use challenge, valid for CHALLENGE_TTL_S."""
        value = secrets.token_urlsafe(24)
        with self.store.write() as tx:
            tx.insert_challenge(value, now)
            if secrets.randbelow(64) == 0:  # now and then, forget the expired ones
                tx.prune_challenges(now - CHALLENGE_TTL_S)
        return value

    def _spend(self, tx: Tx, challenge: object, now: int, required: bool) -> None:
        if challenge is None:
            if required:
                raise ChallengeInvalid("this request must be signed over a fresh challenge")
            return
        if not isinstance(challenge, str) or not tx.use_challenge(
            challenge, now, now - CHALLENGE_TTL_S
        ):
            raise ChallengeInvalid(
                "the request's challenge is unknown, used already or older than 5 minutes: "
                "ask for a new one (POST /v1/challenge)"
            )

    # -- verifying ----------------------------------------------------------------------
    def verify(self, data: bytes, msg_type: str, *, live: bool = True) -> Verified:
        """The message, verified against the device key HQ holds for it. A renewal that
        carries a key for an activation without one is verified against that key and
        the proof that the device holds the license key. With ``live=False``, a message
        naming an earlier activation of the same device key (the device activated anew
        since) is about that activation."""
        try:
            kid = signed_kid(data, device_msg.MAX_MESSAGE_BYTES)
        except WireError as e:
            raise InvalidRequest(f"not a signed device request ({e})") from None
        with self.store.read() as tx:
            act = tx.find_by_device_key(kid)  # the live one, by its unique index
            if act is None and not live:
                act = tx.find_by_device_key_any(kid)
            if act is not None:
                msg = _signed_by(act, data, msg_type)
                if not live and msg.activation_id not in ("", act.id):
                    act = _same_key(tx, act, msg.activation_id)
                _names(msg, act)
                lic = tx.get_license(act.license_id)
                assert lic is not None
                return Verified(msg, act, lic, registering=False)
            verified = self._registration(tx, data, msg_type, live)
        _names(verified.message, verified.activation)
        return verified

    def _registration(self, tx: Tx, data: bytes, msg_type: str, live: bool) -> Verified:
        """A message carrying the device key it is signed with, verified by the proof
        that the device holds the license key. A receipt (``live=False``) of an
        activation freed meanwhile is no refusal here: its proof verified, the caller
        acknowledges it (nothing is left to free)."""
        unknown = DeviceUnauthenticated(
            "no live activation has this device key: activate the device, or register "
            "its key with a renewal"
        )
        if msg_type not in REGISTERING:
            raise unknown
        try:
            msg = device_msg.open_self_signed(data, msg_type)
        except WireError:
            raise unknown from None
        public = _key(msg)
        proof = msg.fields.get("proof")
        act = tx.get_activation(msg.activation_id) if msg.activation_id else None
        if public is None or not isinstance(proof, bytes) or act is None:
            raise unknown
        if act.deactivated_at is not None and (live or msg_type != "receipt"):
            raise ActivationNotFound(f"no live activation {act.id}")
        if act.device_key is not None:
            raise DeviceKeyMismatch(
                f"activation {act.id} belongs to another device key: an operator must reset "
                f"it first (fieldpass-hq activations reset-key {act.id})"
            )
        lic = tx.get_license(act.license_id)
        assert lic is not None
        challenge = msg.fields.get("challenge")
        if not check_key_proof(
            lic.license_key, public, act.id, challenge if isinstance(challenge, str) else "", proof
        ):
            raise DeviceUnauthenticated("the device key's registration proof does not verify")
        return Verified(msg, act, lic, registering=True)

    # -- the requests -------------------------------------------------------------------
    def activate(
        self, license_key: str, data: bytes, now: int, actor: Actor, channel: str = "http"
    ) -> Issued:
        """Take a seat with the license key and the device's self-signed message."""
        fingerprint, contact = self.activation_contact(license_key, data, channel)
        return self.issuing.activate(license_key, fingerprint, now, actor, contact)

    def activation_contact(
        self, license_key: str, data: bytes, channel: str = "http"
    ) -> tuple[str, Contact]:
        """The fingerprint and what the device says of itself, verified, from its
        self-signed ``activate`` message (``fieldpass activate``) or from its air-gapped
        ``request`` (``fieldpass request``) that a technician's laptop relays with the
        license key (``fieldpass-hq field relay``): answered as ``activate --request``."""
        try:
            msg = device_msg.open_self_signed(data, "activate")
        except WireError as e:
            try:
                req = Request.parse(data)
            except WireError as other:  # neither: say why the likelier one failed
                why = other if isinstance(e, FormatError) else e
                raise InvalidRequest(f"the activation request does not verify ({why})") from None
            if not req.signed:
                raise InvalidRequest(
                    "an unsigned request (agent 0.1.0) is answered by hand only"
                ) from None
            return req.fingerprint, replace(request_contact(req), channel=channel)
        if msg["license_id"] != license_id(license_key):
            raise InvalidRequest("the activation request names another license than the key")
        contact = Contact(
            channel=channel,
            agent_version=str(msg["agent_version"]),
            claims_format=claims_format(msg["formats"]),
            device_key=_key(msg),
            binding=_binding(msg),
            keyring=device_msg.keyring_of(msg),
        )
        return msg.fingerprint, contact

    def renew(
        self,
        data: bytes,
        now: int,
        actor: Actor,
        channel: str = "http",
        *,
        challenge_required: bool = True,
    ) -> Issued:
        """A fresh file for the signed request's activation, bound to its nonce."""
        return self.renew_verified(
            self.verify(data, "renew"), now, actor, channel, challenge_required=challenge_required
        )

    def renew_verified(
        self,
        verified: Verified,
        now: int,
        actor: Actor,
        channel: str,
        *,
        challenge_required: bool = True,
    ) -> Issued:
        m = verified.message
        with self.store.write() as tx:
            self._spend(tx, m["challenge"], now, challenge_required)
        ttl = m["ttl_s"]
        return self.issuing.renew(
            now,
            actor,
            activation_id=verified.activation.id,
            ttl_s=ttl if isinstance(ttl, int) else None,
            contact=verified.contact(channel),
        )

    def register(self, verified: Verified, now: int, actor: Actor) -> bool:
        """Record the key a renewal registers (even when no file is due): from then on
        the device's status and requests verify. Audited. False if nothing to do."""
        if not verified.registering:
            return False
        with self.store.write() as tx:
            return self.register_in(tx, verified, now, actor)

    @staticmethod
    def register_in(tx: Tx, verified: Verified, now: int, actor: Actor) -> bool:
        """``register`` within the caller's transaction: a report or receipt that
        registers the key records it with what it brings, or not at all (a refused
        receipt leaves no key behind)."""
        if not verified.registering:
            return False
        key = _key(verified.message)
        act = verified.activation
        current = tx.get_activation(act.id)
        if current is None or current.deactivated_at is not None:
            raise ActivationNotFound(f"no live activation {act.id}")
        if current.device_key is not None:
            if current.device_key == key:
                return False
            raise DeviceKeyMismatch(f"activation {act.id} belongs to another device key")
        tx.set_device_key(act.id, key)
        tx.append_audit(event(now, actor, "device_key_register", act.license_id, act.id, "renewal"))
        return True

    def reset_key(self, activation_id: str, now: int, actor: Actor) -> Activation:
        """The operator's way to replace a live activation's device key (a mainboard's
        storage replaced, a key file lost): the key is forgotten, audited, and the
        device registers a new one (with the proof of the license key) or activates
        again. Never done by a request."""
        with self.store.write() as tx:
            act = tx.get_activation(activation_id)
            if act is None or act.deactivated_at is not None:
                raise ActivationNotFound(f"no live activation {activation_id}")
            tx.set_device_key(act.id, None)
            detail = "had no key" if act.device_key is None else "key forgotten"
            tx.append_audit(event(now, actor, "device_key_reset", act.license_id, act.id, detail))
        from dataclasses import replace

        return replace(act, device_key=None)

    def validate(self, data: bytes, now: int, channel: str = "http") -> Validation:
        """HQ's signed status of the request's activation, bound to its nonce."""
        verified = self.verify(data, "validate", live=False)
        m = verified.message
        if str(m["nonce"]).startswith(signed_time.ACK_NONCE_PREFIX):
            # HQ's acknowledgements are signed statuses bound to such a nonce: a
            # validation never answers as one (an agent's nonces are random hex)
            raise InvalidRequest("a validation's nonce may not start with 'ack/'")
        act, lic = verified.activation, verified.license
        with self.store.write() as tx:
            self._spend(tx, m["challenge"], now, True)
            if act.deactivated_at is None:
                tx.record_contact(act.id, now, channel, str(m["agent_version"]), act.claims_format)
                act = Issuing.take_keyring(tx, act, device_msg.keyring_of(m))
            signing = self.keys.signing_key(tx, device_msg.keyring_of(m) or act.keyring)
        status = license_status(lic, now)
        signed = "deactivated" if act.deactivated_at is not None and status == "active" else status
        token = signed_time.sign_time(
            signing,
            now,
            act.fingerprint,
            str(m["nonce"]),
            signed,
            license_id=lic.id,
            activation_id=act.id,
        )
        return Validation(lic.id, status, lic.expires_at, act, now, token)

    def status(self, data: bytes, now: int, actor: Actor, channel: str = "http") -> Verified:
        """The device's signed status, over a challenge (``POST /v1/status``): HQ records
        the contact, and the key a status registers with its proof."""
        verified = self.verify(data, "status")
        m, act = verified.message, verified.activation
        with self.store.write() as tx:
            self._spend(tx, m["challenge"], now, True)
            tx.record_contact(act.id, now, channel, str(m["agent_version"]), act.claims_format)
            Issuing.take_keyring(tx, act, device_msg.keyring_of(m))
        self.register(verified, now, actor)
        return verified

    def heard_keyring(self, verified: Verified) -> Activation:
        """Record the keyring a verified message names (its status over MQTT, where no
        challenge is spent); the activation as HQ holds it now."""
        return self.keyring_heard(verified.activation, verified.message)

    def keyring_heard(self, act: Activation, message: device_msg.DeviceMessage) -> Activation:
        """``heard_keyring`` for a message the caller verified against ``act``, an
        activation it holds already (``push``, per device it sends to): written only
        when the keyring differs from ``act``'s (no write, no read otherwise); the
        activation with the keyring recorded (the caller keeps it, so that the next
        status naming the same keyring costs nothing)."""
        kids = device_msg.keyring_of(message)
        if kids is None or kids == act.keyring:
            return act
        with self.store.write() as tx:
            current = tx.get_activation(act.id)
            if current is None:
                return act
            return Issuing.take_keyring(tx, current, kids)

    def deactivate(self, data: bytes, now: int, actor: Actor) -> Activation:
        verified = self.verify(data, "deactivate")
        with self.store.write() as tx:
            self._spend(tx, verified.message["challenge"], now, True)
        return self.issuing.deactivate(
            now, actor, activation_id=verified.activation.id, tell_device=False
        )

    def refuse_legacy(self, license_key: str, fingerprint: str) -> None:
        """A request in the form of agents up to 0.1.0 (the license key in the body) is
        still answered for a device without a device key; a device with one must sign."""
        with self.store.read() as tx:
            from .licenses import license_of_key

            lic = license_of_key(tx, license_key)
            act = tx.find_live_activation(lic.id, fingerprint)
        Contact(unsigned=True).refuse_unsigned(act)


def request_contact(req: Request) -> Contact:
    """What an air-gapped request says of the device (version 1: an agent of 0.1.0)."""
    if not req.signed:
        return Contact(channel="air-gapped", agent_version=req.agent_version or "0.1.0")
    return Contact(
        channel="air-gapped",
        agent_version=req.agent_version,
        claims_format=claims_format(list(req.formats)),
        device_key=req.device_key,
        binding=Binding(counter=req.counter, nonce=req.nonce),
        keyring=req.keyring,
    )


def answer_request(
    hq_device: DeviceRequests,
    req: Request,
    now: int,
    actor: Actor,
    license_key: str | None = None,
) -> Issued:
    """The machine file answering an air-gapped request, run by an operator (audited).

    With ``license_key``: an activation (or the same device's seat again), bound to the
    request's TPM counter and nonce. Without: a renewal of the activation the request
    names (or whose device key signed it); a request from a device whose activation has
    no key yet registers the key it carries (the operator's action is the audit)."""
    contact = request_contact(req)
    issuing = hq_device.issuing
    if license_key is not None:
        return issuing.activate(license_key, req.fingerprint, now, actor, contact)
    with hq_device.store.read() as tx:
        act = tx.get_activation(req.activation_id) if req.activation_id else None
        if act is None and req.device_key is not None:
            from agent.wire.device_key import key_id

            act = tx.find_by_device_key(key_id(req.device_key))
    if act is None:
        raise InvalidRequest(
            "the request names no live activation of this device: answer it with "
            "`fieldpass-hq activate LICENSE_KEY --request FILE`"
        )
    if act.fingerprint != req.fingerprint:
        raise FingerprintMismatch("the request's activation belongs to another device")
    if req.signed and act.device_key is not None and act.device_key != req.device_key:
        raise DeviceKeyMismatch(
            f"the request is signed by another key than activation {act.id}'s: an operator "
            f"must reset it first (fieldpass-hq activations reset-key {act.id})"
        )
    return issuing.renew(now, actor, activation_id=act.id, contact=contact)
