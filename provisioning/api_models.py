"""Request bodies of the HTTP API: strict, closed (unknown fields refused), bounded.

Validation happens here, before any service call, so that a refused body never touches
the database.
"""

from pydantic import BaseModel, ConfigDict, Field

from agent.wire.signed_time import MAX_NONCE_CHARS

from .units import MAX_DURATION_S

FINGERPRINT = r"^[0-9a-f]{64}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_TIME = (1 << 53) - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DeviceRequest(Strict):
    license_key: str = Field(min_length=1, max_length=64, description="FP-XXXXX-... (a secret)")
    fingerprint: str = Field(pattern=FINGERPRINT, description="64 lowercase hex characters")


class ActivateRequest(DeviceRequest):
    pass


class MachineFileRequest(DeviceRequest):
    ttl_s: int | None = Field(
        default=None, ge=1, le=MAX_DURATION_S, description="Capped by the plan's offline TTL."
    )
    activation_id: str | None = Field(default=None, min_length=1, max_length=64)


class DeactivateRequest(DeviceRequest):
    activation_id: str | None = Field(default=None, min_length=1, max_length=64)


class ValidateRequest(DeviceRequest):
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
