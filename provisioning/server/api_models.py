"""Request bodies and error documents of the HTTP API: strict, closed (unknown fields
refused), bounded.

Validation happens here, before any service call, so that a refused body never touches
the database.
"""

import base64
import binascii
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.wire.fields import MAX_TIME_S
from agent.wire.signed_time import MAX_NONCE_CHARS

from ..services.names import NAME_PATTERN
from ..services.swap import MAX_RECEIPTS
from ..units import MAX_DURATION_S

FINGERPRINT = r"^[0-9a-f]{64}$"
# agent.wire.license_key's alphabet (no I, O, 0, 1), either case as a person may type it.
LICENSE_KEY = r"^[Ff][Pp](-[A-HJ-NP-Za-hj-np-z2-9]{5}){5}$"
LICENSE_ID = r"^lic_[0-9a-f]{20}$"
ACTIVATION_ID = r"^act_[0-9a-f]{20}$"
NAME = NAME_PATTERN
MAX_TIME = MAX_TIME_S  # 9999-12-31T23:59:59Z: later than that, no date can be shown


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Base64 with its padding, whole groups of four: what ``base64.b64decode`` takes.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
SIGNED_REQUEST = Field(
    default=None,
    max_length=4096,
    pattern=BASE64,
    description="A device message signed by the device's own key, base64 "
    "(docs/wire-format.md section 9). Agents after 0.1.0 send this instead of the "
    "license key.",
)
LEGACY_KEY = Field(
    default=None,
    pattern=LICENSE_KEY,
    description="The license key (a secret): agents up to 0.1.0 only, for devices "
    "without a device key.",
)
LEGACY_FINGERPRINT = Field(
    default=None, pattern=FINGERPRINT, description="64 lowercase hex (agents up to 0.1.0)"
)


def _check_base64(text: str | None) -> None:
    """The pattern lets through text of a length no base64 has ("0"): refused here (422),
    not by the decoder in the route (a 500)."""
    if text is not None:
        try:
            base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("request: not base64") from None


_STRING = {"type": "string"}
_ABSENT = {"type": "null"}  # or left out


def _forms(*forms: tuple[list[str], list[str]]) -> ConfigDict:
    """The document's ``oneOf`` of a body's forms, each (fields it needs, fields it must
    leave out or null): the rule the validator below applies, stated for clients."""
    one_of: list[Any] = [
        {
            "required": list(needs),
            "properties": {**{n: _STRING for n in needs}, **{n: _ABSENT for n in out}},
        }
        for needs, out in forms
    ]
    return ConfigDict(json_schema_extra={"oneOf": one_of})


class SignedOrLegacy(Strict):
    """Either ``request`` (signed, agents after 0.1.0) or ``license_key`` and
    ``fingerprint`` (the form of agents up to 0.1.0), never both."""

    model_config = _forms(
        (["request"], ["license_key", "fingerprint"]),
        (["license_key", "fingerprint"], ["request"]),
    )

    request: str | None = SIGNED_REQUEST
    license_key: str | None = LEGACY_KEY
    fingerprint: str | None = LEGACY_FINGERPRINT

    @model_validator(mode="after")
    def _one_form(self) -> "SignedOrLegacy":
        legacy = self.license_key is not None or self.fingerprint is not None
        if self.request is not None and legacy:
            raise ValueError("give a signed request, or license_key and fingerprint, not both")
        if self.request is None and (self.license_key is None or self.fingerprint is None):
            raise ValueError("give a signed request (or license_key and fingerprint)")
        _check_base64(self.request)
        return self

    def signed(self) -> bytes | None:
        return None if self.request is None else base64.b64decode(self.request)


class ChallengeRequest(Strict):
    pass


class SignedMessage(Strict):
    """A device message signed by the device's own key (a usage report, a receipt)."""

    request: str = Field(
        max_length=4096,
        pattern=BASE64,
        description="The signed device message, base64 (docs/wire-format.md section 9).",
    )

    @model_validator(mode="after")
    def _base64(self) -> "SignedMessage":
        _check_base64(self.request)
        return self


class ActivateRequest(Strict):
    model_config = _forms(
        (["request"], ["fingerprint"]), (["fingerprint"], ["request", "receipts"])
    )

    license_key: str = Field(
        pattern=LICENSE_KEY, description="FP-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX (a secret)"
    )
    request: str | None = Field(
        default=None,
        max_length=4096,
        pattern=BASE64,
        description="The device's self-signed activation message (`fieldpass activate`), "
        "or its air-gapped request (`fieldpass request`, relayed by a technician's laptop), "
        "base64 (docs/wire-format.md section 9).",
    )
    fingerprint: str | None = LEGACY_FINGERPRINT
    receipts: list[Annotated[str, Field(max_length=4096, pattern=BASE64)]] = Field(
        default_factory=list,
        max_length=MAX_RECEIPTS,
        description="Return receipts of the old board(s) of a mainboard swap, base64, taken "
        "first as POST /v1/receipt takes them, each of this license "
        "(docs/runbooks/mainboard-swap.md); only with `request`.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> "ActivateRequest":
        if (self.request is None) == (self.fingerprint is None):
            raise ValueError("give the signed activation request, or (0.1.0) a fingerprint")
        if self.receipts and self.request is None:
            raise ValueError("receipts go with a signed activation request")
        for text in (self.request, *self.receipts):
            _check_base64(text)
        return self


class MachineFileRequest(SignedOrLegacy):
    ttl_s: int | None = Field(
        default=None, ge=1, le=MAX_DURATION_S, description="Capped by the plan's offline TTL."
    )
    activation_id: str | None = Field(default=None, pattern=ACTIVATION_ID)


class DeactivateRequest(SignedOrLegacy):
    activation_id: str | None = Field(default=None, pattern=ACTIVATION_ID)


class ValidateRequest(SignedOrLegacy):
    nonce: str | None = Field(default=None, max_length=MAX_NONCE_CHARS)


class PlanCreate(Strict):
    name: str = Field(pattern=NAME)
    product: str = Field(default="default", pattern=NAME)
    offline_ttl_s: int = Field(ge=1, le=MAX_DURATION_S)
    grace_s: int = Field(default=0, ge=0, le=MAX_DURATION_S)
    warn_s: int | None = Field(default=None, ge=0, le=MAX_DURATION_S)
    seats: int = Field(ge=1, le=1_000_000)


class EntitlementIn(Strict):
    feature: str = Field(pattern=NAME)
    expires_at: int | None = Field(default=None, ge=0, le=MAX_TIME)


class LicenseCreate(Strict):
    plan: str = Field(pattern=NAME)
    entitlements: list[EntitlementIn] = Field(default_factory=list, max_length=64)
    expires_at: int | None = Field(default=None, ge=0, le=MAX_TIME)


class PlanUpdate(Strict):
    """What changes (a field left out stays; ``warn_s: null``: a third of the TTL)."""

    seats: int | None = Field(default=None, ge=1, le=1_000_000)
    offline_ttl_s: int | None = Field(default=None, ge=1, le=MAX_DURATION_S)
    grace_s: int | None = Field(default=None, ge=0, le=MAX_DURATION_S)
    warn_s: int | None = Field(default=None, ge=0, le=MAX_DURATION_S)


class LicenseSeats(Strict):
    seats: int | None = Field(ge=1, le=1_000_000, description="null: the plan's seats")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable: seat_limit_reached, license_not_found, activation_returned, ..."
    )
    message: str = Field(description="One line for a person; never holds a secret.")


class ErrorBody(BaseModel):
    error: ErrorDetail


_ACK = (
    "HQ's signed acknowledgement of this very receipt, base64: its signed status of the "
    "activation (docs/wire-format.md §7) bound to the nonce `ack/` + hex(SHA-256(the "
    "receipt's bytes)). The device drops its copy only once this verifies."
)


class ReceiptTaken(BaseModel):
    activation_id: str
    freed: bool = Field(description="The seat is free now (else at `frees_at`).")
    frees_at: int = Field(description="When the seat frees (Unix seconds).")
    ack: str = Field(description=_ACK)


class ReceiptSettled(ErrorBody):
    """A refusal that settles the receipt (`conflict`, `activation_not_found` of a seat
    freed by hand) carries `ack`; other refusals of these statuses carry none."""

    ack: str | None = Field(default=None, description=_ACK)


# Every route may answer 413 (middleware.RequestBody) and 422 (validation); 503 when HQ
# has no key or its storage fails. app.CONNECTION_ERRORS adds, on every operation of the
# OpenAPI document, what any request may get before its route runs.
COMMON_ERRORS = (413, 422, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The OpenAPI ``responses`` of a route's error statuses, all ``ErrorBody``."""
    what = {
        400: "Malformed JSON.",
        401: "No bearer token, or one that is unknown, expired or revoked; a device "
        "request not signed by its key, or over an unknown, used or expired challenge.",
        403: "The license is suspended, revoked or expired, or another device's.",
        404: "No such license, activation, plan or token.",
        409: "A seat limit or a conflict (a token already revoked).",
        413: "The body is larger than the limit.",
        422: "A field is missing, unknown, of the wrong type or out of range.",
        503: "HQ is not configured (no signing key) or its storage failed.",
    }
    return {s: {"model": ErrorBody, "description": what[s]} for s in statuses}
