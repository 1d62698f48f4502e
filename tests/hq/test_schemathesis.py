"""Schemathesis against the server's own OpenAPI document, over real HTTP, with every
check on (``--checks all``).

It generates valid and invalid requests for every operation (coverage, fuzzing and
stateful phases) and checks that none gets a server error, that every status, header
and body is the one documented, that invalid data is refused and valid data accepted,
that a deleted resource stays gone and that admin routes ignore no missing token. Half
the time a field or path parameter takes a real value (a license key, license id,
activation id or plan HQ knows; ``BINDINGS``), so requests reach the services instead of
stopping at "not found".

What differs from schemathesis's defaults, each as narrow as it can be:

- ``negative_data_rejection`` also counts 413 as a rejection: an invalid body over 16 KiB
  is refused before it is parsed, as the document says.
- Three kinds of ``positive_data_acceptance`` failure are dropped, each recognised by the
  body and HQ's exact 422 (tests/hq/schemathesis_hooks.py says why): a body that is not
  valid against the operation's own schema (schemathesis's substitution of known values
  broke a cross-field rule), a license whose ``expires_at`` has passed, and two
  entitlements of one feature (no schema can say either). Every other refusal of a valid
  body still fails.

``make test`` runs a bounded pass on a fixed seed (deterministic: one worker, no example
database); ``make fuzz`` (``FIELDPASS_FUZZ=long``) twenty times the examples on a random
seed, printed so that a failure reproduces with ``--seed``.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import fingerprint
from .server import prepare_home, start_server

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
LONG = os.environ.get("FIELDPASS_FUZZ", "") == "long"
EXAMPLES = 30 * (20 if LONG else 1)
SEED = random.SystemRandom().randrange(1 << 32) if LONG else 20261129


def _strings(values: list[str]) -> str:
    return json.dumps(values)  # a JSON array of ASCII strings is a TOML array


# Where a known value goes, half the time. Only into fields no cross-field rule of a model
# involves: schemathesis substitutes the value into a generated body (a ``null`` too)
# without checking the whole body again, so binding ``fingerprint`` or the license key of
# the either-or device forms would make schema-invalid "valid" cases. The license key
# is bound on POST /v1/activate alone, where it is always required.
BINDINGS = {
    "body.activation_id": "activation_id",
    "body.plan": "plan",
    "path.license_id": "license_id",
    "query.license_id": "license_id",
    "path.activation_id": "activation_id",
}
ACTIVATE_BINDINGS = {"body.license_key": "license_key"}


def _binding(key: str, name: str) -> str:
    return f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}'


def config(known: dict[str, list[str]]) -> str:
    """schemathesis.toml: the settings above, and a dictionary per kind of known value."""
    lines = [
        f"hooks = {json.dumps(str(HOOKS))}",
        "",
        "[checks.negative_data_rejection]",
        'expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]',
    ]
    for name, values in known.items():
        lines += ["", f"[dictionaries.{name}]", f"values = {_strings(values)}"]
    lines += ["", "[parameters]", *(_binding(k, n) for k, n in BINDINGS.items())]
    lines += [
        "",
        "[[operations]]",
        'include-path = "/v1/activate"',
        'include-method = "POST"',
        "",
        "[operations.parameters]",
        *(_binding(k, n) for k, n in ACTIVATE_BINDINGS.items()),
    ]
    return "\n".join(lines) + "\n"


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(tmp_path: Path) -> None:
    home = tmp_path / "hq"
    token = prepare_home(home, seats=5)
    # An invalid body over 16 KiB is refused with 413 before it is read: a rejection too.
    (tmp_path / "schemathesis.toml").write_text(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]\n'
    )
    server = start_server(home)
    try:
        admin = {"Authorization": f"Bearer {token}"}
        lic = httpx.post(server.url + "/v1/licenses", json={"plan": "std"}, headers=admin)
        assert lic.status_code == 201, lic.text
        body = {"license_key": lic.json()["key"], "fingerprint": fingerprint(1)}
        act = httpx.post(server.url + "/v1/activate", json=body, timeout=30)
        assert act.status_code == 201, act.text
        known = {
            "license_key": [lic.json()["key"]],
            "license_id": [lic.json()["id"]],
            "activation_id": [act.json()["activation_id"]],
            "plan": ["std"],
        }
        settings = tmp_path / "schemathesis.toml"
        settings.write_text(config(known))
        print(f"schemathesis seed {SEED}, {EXAMPLES} examples per operation")
        res = subprocess.run(
            [
                SCHEMATHESIS,
                "--config-file",
                str(settings),
                "--no-color",
                "run",
                server.url + "/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {token}",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                # One worker: deterministic order; and with two, hypothesis's ast.parse
                # runs in two threads at once and this CPython (3.11.7) at times raises
                # "SystemError: AST constructor recursion depth mismatch".
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "20",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=3600 if LONG else 600,
            cwd=tmp_path,
        )
    finally:
        server.stop()
    assert res.returncode == 0, f"seed {SEED}\n" + res.stdout[-8000:] + res.stderr[-2000:]
    summary = res.stdout.split("SUMMARY")[-1]
    assert " passed" in res.stdout and "failed" not in summary and "error" not in summary.lower()
    log = server.log.read_text()
    assert "/v1/activate" in log and '" 500 ' not in log
    assert "Traceback" not in log and "internal error" not in log
    assert token not in log
