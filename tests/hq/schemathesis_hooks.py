"""Schemathesis hooks of tests/hq/test_schemathesis.py, loaded by schemathesis (its
``hooks`` setting), not by pytest.

Dropped are only the ``positive_data_acceptance`` failures (ST202, a schema-valid body
refused) where HQ applies a rule that JSON Schema cannot state, recognised by the body
AND HQ's exact refusal (422 and its message), on ``POST /v1/licenses``:

- ``expires_at`` already past: "the license would expire before it is created" (a
  schema has no clock);
- two entitlements with the same ``feature``: "an entitlement is named twice" (a schema
  can make whole items unique, not one of their fields).

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


UNSTATABLE: list[tuple[str, Callable[[dict[str, Any]], bool], bytes]] = [
    ("POST /v1/licenses", _expired, b"the license would expire before it is created"),
    ("POST /v1/licenses", _feature_twice, b"an entitlement is named twice"),
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


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    refused = expected_refusal(
        case.operation.label, case.body, response.status_code, response.content or b""
    )
    return not (failure.code == "ST202" and refused)
