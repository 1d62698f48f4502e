"""The verdict the fleet views show (services/verdicts.py) is the agent's own: for every
file HQ could issue and every moment, it names what ``agent.verdict.decide_at`` decides
with that file then (``warning`` where the agent says valid with a warning), and
``revoked`` or ``unknown`` where the license or the record say so."""

from hypothesis import given
from hypothesis import strategies as st

from agent import verdict as agent_verdict
from agent.wire.machine_file import Claims
from provisioning.services import verdicts

DAY = 86400
T0 = 1_800_000_000


@given(
    issued=st.integers(T0, T0 + 400 * DAY),
    ttl=st.integers(1, 800 * DAY),
    grace=st.integers(0, 90 * DAY),
    warn=st.none() | st.integers(0, 120 * DAY),
    license_end=st.none() | st.integers(T0, T0 + 1200 * DAY),
    offset=st.integers(-10 * DAY, 1500 * DAY),
)
def test_the_verdict_is_the_agents(
    issued: int, ttl: int, grace: int, warn: int | None, license_end: int | None, offset: int
) -> None:
    expires = issued + ttl
    if license_end is not None:
        expires = max(issued, min(expires, license_end))  # as issuing caps a file
    # As issuing writes it: the plan's window, else a third of the file's TTL.
    warn_s = warn if warn is not None else (expires - issued) // 3
    claims = Claims(
        license_id="lic_" + "0" * 20,
        product="p",
        plan="std",
        activation_id="act_" + "0" * 20,
        fingerprint="0" * 64,
        issued_at=issued,
        not_before=issued,
        expires_at=expires,
        grace_s=grace,
        warn_s=warn_s,
        serial=1,
        kid="fpk_0",
        license_expires_at=license_end,
    )
    now = issued + offset
    decided = agent_verdict.decide_at(claims, now)
    expected = "warning" if decided.name == "valid" and decided.warning else decided.name
    common = dict(issued_at=issued, expires_at=expires, grace_s=grace, warn_s=warn, now=now)
    shown = verdicts.verdict(
        seen_at=issued, license_status="active", license_expires_at=license_end, **common
    )
    assert shown == expected
    revoked = verdicts.verdict(
        seen_at=issued, license_status="suspended", license_expires_at=license_end, **common
    )
    assert revoked == "revoked"
    never = verdicts.verdict(
        seen_at=None, license_status="active", license_expires_at=license_end, **common
    )
    assert never == "unknown"
