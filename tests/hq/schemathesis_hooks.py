"""Schemathesis hooks of tests/hq/test_schemathesis.py, loaded by schemathesis (its
``hooks`` setting), not by pytest.

Dropped are only these ``positive_data_acceptance`` failures (ST202, "a schema-valid
body refused"):

- the body is not schema-valid at all: schemathesis substitutes known values (its
  dictionaries, values captured from earlier answers) into a generated body field by
  field, without checking the whole body again, so a cross-field rule the document does
  state (one request form or the other, ``oneOf``) can be broken by the substitution;
  such a case is negative data mislabelled, and HQ's 422 is right;
- HQ applies a rule JSON Schema cannot state, recognised by the body AND HQ's exact
  refusal (422 and its message), on ``POST /v1/licenses``: ``expires_at`` already past,
  "the license would expire before it is created" (a schema has no clock); two
  entitlements with the same ``feature``, "an entitlement is named twice" (a schema can
  make whole items unique, not one of their fields); on every device route, a signed
  ``request`` that is not a device message signed by a key HQ knows, "does not verify"
  or "not a signed device request" (a schema cannot state a signature; schemathesis
  cannot make one).

Any other refusal of a schema-valid body still fails the run.
"""

import time
from collections.abc import Callable
from typing import Any

import schemathesis


def _expired(body: dict[str, Any]) -> bool:
    expires_at = body.get("expires_at")
    return isinstance(expires_at, int | float) and expires_at <= time.time()


def _feature_twice(body: dict[str, Any]) -> bool:
    entitlements = body.get("entitlements")
    if not isinstance(entitlements, list):
        return False
    features = [e.get("feature") for e in entitlements if isinstance(e, dict)]
    return len(set(features)) < len(features)


def _signed(body: dict[str, Any]) -> bool:
    return isinstance(body.get("request"), str)


SIGNED_ROUTES = ("activate", "machine-file", "deactivate", "validate", "status", "report",
                 "receipt")  # fmt: skip
UNSTATABLE: list[tuple[str, Callable[[dict[str, Any]], bool], bytes]] = [
    ("POST /v1/licenses", _expired, b"the license would expire before it is created"),
    ("POST /v1/licenses", _feature_twice, b"an entitlement is named twice"),
    *[
        (f"POST /v1/{route}", _signed, message)
        for route in SIGNED_ROUTES
        for message in (b"does not verify", b"not a signed device request")
    ],
]


def expected_refusal(label: str, body: Any, status: int, content: bytes) -> bool:
    return (
        isinstance(body, dict)
        and status == 422
        and any(
            label == operation and applies(body) and message in content
            for operation, applies, message in UNSTATABLE
        )
    )


def schema_valid(case: Any) -> bool:
    """Whether the body sent is valid against the operation's own body schema (True when
    this cannot be told: then the failure is kept)."""
    try:
        from schemathesis.core.jsonschema import make_validator

        body = case.operation.get_body_for_media_type(case.media_type)
        validator_cls = case.operation.schema.adapter.jsonschema_validator_cls
        return bool(make_validator(body.optimized_schema, validator_cls).is_valid(case.body))
    except Exception:
        return True


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    if failure.code != "ST202" or response.status_code != 422:
        return True
    if not schema_valid(case):
        return False
    content = response.content or b""
    return not expected_refusal(case.operation.label, case.body, response.status_code, content)
