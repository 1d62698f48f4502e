"""Typed HQ errors: every refusal has a stable code, an HTTP status and a CLI exit code.

The CLI and the server never decide exit codes or statuses on their own: they read them
from the error. Messages never contain a license key or a private key.
"""

# CLI exit codes (documented in docs/hq.md).
EXIT_OK = 0
EXIT_REFUSED = 1  # a licensing rule refused: seat limit, suspended, revoked, expired...
EXIT_USAGE = 2  # bad command line or bad argument value
EXIT_NOT_FOUND = 3  # no such license, activation, plan or key
EXIT_DATAERR = 65  # input data malformed (sysexits EX_DATAERR)
EXIT_UNAVAILABLE = 69  # a port to listen on, the MQTT broker (sysexits EX_UNAVAILABLE)
EXIT_NOINPUT = 66  # an input file cannot be read
EXIT_SOFTWARE = 70  # internal error (a bug)
EXIT_CANTCREAT = 73  # an output file cannot be written
EXIT_IOERR = 74  # the database or the key store failed
EXIT_CONFIG = 78  # HQ home not usable, no signing key yet, database too new


class HQError(Exception):
    code = "error"
    http_status = 400
    exit_code = EXIT_REFUSED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(HQError):
    code = "invalid_request"
    http_status = 422
    exit_code = EXIT_USAGE


class SeatLimitReached(HQError):
    code = "seat_limit_reached"
    http_status = 409


class LicenseSuspended(HQError):
    code = "license_suspended"
    http_status = 403


class LicenseRevoked(HQError):
    code = "license_revoked"
    http_status = 403


class LicenseExpired(HQError):
    code = "license_expired"
    http_status = 403


class FingerprintMismatch(HQError):
    code = "fingerprint_mismatch"
    http_status = 403


class DeviceKeyMismatch(HQError):
    """A live activation belongs to another device key (replaced only by an operator)."""

    code = "device_key_mismatch"
    http_status = 409


class DeviceUnauthenticated(HQError):
    """A device request is not signed by the key HQ knows for it (or cannot be read)."""

    code = "device_unauthenticated"
    http_status = 401


class ChallengeInvalid(HQError):
    """The request's server challenge is unknown, used already or too old."""

    code = "challenge_invalid"
    http_status = 401


class SignedRequestRequired(HQError):
    """A device that has a device key must sign its requests (no license key)."""

    code = "signed_request_required"
    http_status = 403


class Conflict(HQError):
    code = "conflict"
    http_status = 409


class DeviceKeyInUse(Conflict):
    """The device's key holds a live activation already (of another license, or of
    another fingerprint): one device key, one live activation. That one is given back
    (``fieldpass return``) or deactivated first."""

    code = "device_key_in_use"


class ActivationReturned(Conflict):
    """The device gave its license back (a signed return receipt HQ holds) and its seat
    waits to free: HQ issues that activation no file, renewal or reactivation, or a copy
    of its data put back would outlive the time the seat goes to another device."""

    code = "activation_returned"


class NotFound(HQError):
    code = "not_found"
    http_status = 404
    exit_code = EXIT_NOT_FOUND


class LicenseNotFound(NotFound):
    code = "license_not_found"


class ActivationNotFound(NotFound):
    code = "activation_not_found"


class PlanNotFound(NotFound):
    code = "plan_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class Unauthorized(HQError):
    code = "unauthorized"
    http_status = 401


class ConfigError(HQError):
    """HQ cannot work as set up: no signing key yet, unusable home, newer database."""

    code = "hq_not_configured"
    http_status = 503
    exit_code = EXIT_CONFIG


class StorageError(HQError):
    code = "storage_error"
    http_status = 503
    exit_code = EXIT_IOERR


class MalformedInput(HQError):
    """An input file named by the caller is not what it claims (a field bundle or report
    with a missing, mistyped or implausible field): nothing of it is used."""

    code = "malformed_input"
    http_status = 422
    exit_code = EXIT_DATAERR


class CannotRead(HQError):
    """An input file named by the caller cannot be read (missing, unreadable, not text)."""

    code = "cannot_read"
    http_status = 400
    exit_code = EXIT_NOINPUT


class CannotWrite(HQError):
    code = "cannot_write"
    http_status = 500
    exit_code = EXIT_CANTCREAT
