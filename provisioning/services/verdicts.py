"""A device's verdict as HQ last heard it, for the fleet views.

HQ records, per live activation, the newest file it issued (when, until when), when and
how it last heard from the device, and its license's status. From those, ``verdict``
says what the device's gate decides with that file at ``now``, by the agent's own rules
(agent/verdict.py): a warning inside the warning window, grace after expiry, none once
the license's own term ended; the plan's grace and warning as they are now; ``revoked``
for a revoked or suspended license (the device stops once it learns of it).
``unknown``: HQ has no record of hearing from the device (activations older than
schema 4).

This is the one place the fleet views take a verdict from: when HQ records what devices
report of themselves (their signed status over MQTT, a laptop's report), this module
reads it and prefers it. Pure: no I/O, no clock.
"""

VALID, WARNING, GRACE, EXPIRED, REVOKED, UNKNOWN = (
    "valid",
    "warning",
    "grace",
    "expired",
    "revoked",
    "unknown",
)
VERDICTS = (VALID, WARNING, GRACE, EXPIRED, REVOKED, UNKNOWN)


def verdict(
    *,
    issued_at: int,
    expires_at: int,
    seen_at: int | None,
    license_status: str,
    license_expires_at: int | None,
    grace_s: int,
    warn_s: int | None,
    now: int,
) -> str:
    """One of VERDICTS for a device whose newest file HQ issued at ``issued_at``, valid
    until ``expires_at``, under a license stored as ``license_status``."""
    if seen_at is None:
        return UNKNOWN
    if license_status != "active":
        return REVOKED
    if license_expires_at is not None and now >= license_expires_at:
        return EXPIRED  # the license's term ended: no grace (agent/verdict.py)
    # As issuing does: the plan's warning window, else a third of the file's TTL.
    window = warn_s if warn_s is not None else (expires_at - issued_at) // 3
    if now < expires_at - window:
        return VALID
    if now < expires_at:
        return WARNING
    if now < expires_at + grace_s:
        return GRACE
    return EXPIRED
