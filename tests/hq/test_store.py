"""The store's schema: migrations from an older database, and the seat count the
database keeps itself (schema 2) agreeing with the activations at every step, on both
engines (the PostgreSQL migration from version 1: tests/hq/test_db.py)."""

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.wire import license_key
from provisioning.errors import (
    ActivationNotFound,
    ActivationReturned,
    Conflict,
    DeviceKeyInUse,
    HQError,
    SeatLimitReached,
    StorageError,
)
from provisioning.models import Activation, Actor, AuditEvent, Plan, ReturnRecord
from provisioning.services import HQ
from provisioning.storage import SCHEMA_VERSION
from provisioning.storage.sqlite import MIGRATIONS
from provisioning.storage.sqlite import SQLiteStore as Store
from provisioning.units import format_time
from tests.engines import Engine, connect

from .conftest import fingerprint

ACTOR = Actor("test", "local")


def counted(db: Path) -> dict[str, tuple[int, int]]:
    """license id -> (seats_used as stored, live activations counted)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT l.id, l.seats_used, (SELECT COUNT(*) FROM activations a "
            "WHERE a.license_id = l.id AND a.deactivated_at IS NULL) FROM licenses l"
        ).fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_version_1_database_is_migrated_with_its_seats_counted(tmp_path: Path) -> None:
    db = tmp_path / "hq.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in MIGRATIONS[0][1]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO plans VALUES ('std', 'default', 86400, 0, NULL, 5, 0)")
    conn.execute("INSERT INTO licenses VALUES ('lic_a', 'FP-A', 'std', 'active', NULL, 0, 0)")
    for n, off in enumerate([None, None, 10, None]):
        conn.execute(
            "INSERT INTO activations VALUES (?, 'lic_a', ?, 1, 0, 0, 1, ?)",
            (f"act_{n}", fingerprint(n), off),
        )
    conn.commit()
    conn.close()

    store = Store(db)
    assert store.schema_version() == SCHEMA_VERSION  # every migration applied
    assert counted(db) == {"lic_a": (3, 3)}
    with store.write() as tx:
        assert tx.count_seats("lic_a") == 3
        tx.deactivate("act_0", 20)
        tx.deactivate("act_0", 21)  # already off: not counted twice
    assert counted(db) == {"lic_a": (2, 2)}
    store.close()


OPS = st.lists(
    st.tuples(st.sampled_from(["activate", "deactivate", "renew"]), st.integers(0, 7)),
    max_size=40,
)


def counted_in(home: Path) -> dict[str, tuple[int, int]]:
    """As ``counted``, for the home's database whichever the engine."""
    with connect(home) as conn:
        rows = conn.execute(
            "SELECT l.id, l.seats_used, (SELECT COUNT(*) FROM activations a "
            "WHERE a.license_id = l.id AND a.deactivated_at IS NULL) FROM licenses l"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture(scope="module")
def hq_home(tmp_path_factory: pytest.TempPathFactory, hq_engine: Engine) -> Path:
    home = tmp_path_factory.mktemp("store") / "hq"
    hq_engine.configure(home)
    if (home / "hq.toml").exists():  # one thread here: two connections are plenty
        (home / "hq.toml").write_text((home / "hq.toml").read_text() + "pool_size = 2\n")
    hq = HQ(home)
    hq.generate_key(0, ACTOR)
    hq.store.close()
    return home


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_the_seat_count_agrees_with_the_activations_after_any_sequence(
    hq_home: Path, ops: list[tuple[str, int]]
) -> None:
    hq = HQ(hq_home)
    now = int(time.time())
    plan = f"p{time.monotonic_ns()}"
    hq.create_plan(Plan(plan, "default", 365 * 86400, 0, 3, None, now), ACTOR)
    key = hq.create_license(plan, [], None, now, ACTOR).license_key
    lic = license_key.license_id(key)
    live: set[int] = set()
    for op, n in ops:
        try:
            if op == "activate":
                hq.activate(key, fingerprint(n), now, ACTOR)
                live.add(n)
            elif op == "deactivate":
                hq.deactivate(now, ACTOR, license_key=key, fingerprint=fingerprint(n))
                live.discard(n)
            else:
                hq.renew(now, ACTOR, license_key=key, fingerprint=fingerprint(n))
        except SeatLimitReached:
            assert len(live) == 3 and n not in live
        except ActivationNotFound:
            assert n not in live
        assert counted_in(hq_home)[lic] == (len(live), len(live))
    hq.store.close()


def one_activation(home: Path) -> tuple[HQ, str, Activation, int]:
    """A new 3-seat plan, a license on it and one activation of it."""
    hq = HQ(home)
    now = int(time.time())
    plan = f"p{time.monotonic_ns()}"
    hq.create_plan(Plan(plan, "default", 365 * 86400, 0, 3, None, now), ACTOR)
    key = hq.create_license(plan, [], None, now, ACTOR).license_key
    return hq, key, hq.activate(key, fingerprint(1), now, ACTOR).activation, now


def test_a_write_the_database_refuses_fails_its_whole_transaction(hq_home: Path) -> None:
    """On PostgreSQL a write whose result nobody reads is sent on without waiting
    (storage/postgres.py's pipeline): its refusal surfaces at the commit. Either way
    the transaction fails as a Conflict, nothing of it is stored (the audit line
    written before the refused insert neither), and the next one runs."""
    hq, key, act, now = one_activation(hq_home)
    before = len(hq.audit_log.audit(10_000))
    with pytest.raises(Conflict, match="refused by the database"), hq.store.write() as tx:
        tx.append_audit(AuditEvent(now, "test", "local", "refused", act.license_id))
        tx.insert_activation(act)  # its id is taken
    assert len(hq.audit_log.audit(10_000)) == before
    assert counted_in(hq_home)[act.license_id] == (1, 1)
    hq.activate(key, fingerprint(2), now, ACTOR)  # the connection is usable again
    assert counted_in(hq_home)[act.license_id] == (2, 2)
    hq.store.close()


def test_a_second_live_activation_of_one_device_key_is_device_key_in_use(
    hq_home: Path,
) -> None:
    """The database's own guard (one live activation per device key) surfaces as the
    typed refusal ``device_key_in_use`` on both engines (SQLite names the columns,
    PostgreSQL the index), never as the database's words; nothing is stored."""
    from dataclasses import replace

    from agent.wire.device_key import DeviceKey

    hq, _, act, _ = one_activation(hq_home)
    public = DeviceKey.generate().public_key
    with hq.store.write() as tx:
        tx.set_device_key(act.id, public)
    other = replace(act, id=f"act_{time.monotonic_ns():020x}"[:24], fingerprint=fingerprint(2),
                    device_key=public)  # fmt: skip
    with pytest.raises(DeviceKeyInUse, match="holds a live activation"), hq.store.write() as tx:
        tx.insert_activation(other)
    assert counted_in(hq_home)[act.license_id] == (1, 1)
    hq.store.close()


def test_a_serial_that_is_not_the_next_fails_its_whole_transaction(hq_home: Path) -> None:
    """Recording a file's serial checks it is the stored one + 1 (on PostgreSQL in the
    statement itself, without waiting for a row count): otherwise the transaction
    fails as a storage error naming the reason, and nothing of it is stored."""
    hq, _, act, now = one_activation(hq_home)
    before = len(hq.audit_log.audit(10_000))
    with pytest.raises(StorageError, match="serial changed"), hq.store.write() as tx:
        tx.append_audit(AuditEvent(now, "test", "local", "skipped", act.license_id))
        tx.record_issues([(act.id, act.serial + 2, now + 1, now + 2, now + 2)])
    assert len(hq.audit_log.audit(10_000)) == before
    assert hq.get_activation(act.id) == act
    issued = hq.renew(now + 3, ACTOR, activation_id=act.id)  # the next serial is taken
    assert issued.claims.serial == act.serial + 1
    assert hq.get_activation(act.id).serial == act.serial + 1
    hq.store.close()


def test_a_returned_activation_whose_seat_waits_gets_no_file_past_it(hq_home: Path) -> None:
    """Without a TPM, HQ frees a returned device's seat only once the returned file's
    expiry and grace have passed, because a copy of the data directory put back would
    still run on it (docs/usage.md). A copy put back also renews: every file HQ issues
    to the activation after its return must expire (with the grace) by the time its
    seat frees, or be refused; else the seat goes to another device while this one
    keeps a file valid for another TTL."""
    hq, _key, act, now = one_activation(hq_home)
    frees_at = act.last_expires_at  # the plan's grace is 0
    with hq.store.write() as tx:  # what a receipt records for a device without a TPM
        tx.insert_return(ReturnRecord(act.id, act.serial, now, now, "http", "-", frees_at, None))
    try:
        renewed = hq.renew(frees_at - 86_400, ACTOR, activation_id=act.id)
    except HQError:
        return  # refused: what a fix may do
    finally:
        hq.store.close()
    assert renewed.claims.expires_at <= frees_at


def returned_one(home: Path) -> tuple[HQ, str, Activation, int, int]:
    """``one_activation`` whose device gave its license back without a TPM: its seat
    frees at its file's expiry (the plan's grace is 0)."""
    hq, key, act, now = one_activation(home)
    frees_at = act.last_expires_at
    with hq.store.write() as tx:
        tx.insert_return(ReturnRecord(act.id, act.serial, now, now, "http", "-", frees_at, None))
    return hq, key, act, now, frees_at


def test_a_returned_activation_is_refused_every_file_until_its_seat_frees(
    hq_home: Path,
) -> None:
    """Renewal (by id, by key and fingerprint) and reactivation by the same device are
    refused with ``activation_returned``, saying when the seat frees and how the
    operator frees it now; nothing is recorded; the activation keeps its seat."""
    hq, key, act, now, frees_at = returned_one(hq_home)
    try:
        assert hq.get_activation(act.id).return_frees_at == frees_at
        later = now + 3600
        with pytest.raises(ActivationReturned) as by_id:
            hq.renew(later, ACTOR, activation_id=act.id)
        assert by_id.value.code == "activation_returned" and by_id.value.http_status == 409
        assert isinstance(by_id.value, Conflict)
        assert format_time(frees_at) in by_id.value.message
        assert f"fieldpass-hq deactivate {act.id} --reason" in by_id.value.message
        with pytest.raises(ActivationReturned):
            hq.renew(later, ACTOR, license_key=key, fingerprint=fingerprint(1))
        with pytest.raises(ActivationReturned):
            hq.activate(key, fingerprint(1), later, ACTOR)
        stored = hq.get_activation(act.id)
        assert (stored.serial, stored.deactivated_at) == (act.serial, None)
        assert counted_in(hq_home)[act.license_id] == (1, 1)
        # bulk issuance skips it (and says so), and renews the others
        other = hq.activate(key, fingerprint(2), later, ACTOR).activation
        issued = hq.renew_all(act.license_id, None, later, ACTOR)
        assert [i.activation.id for i in issued] == [other.id]
        assert hq.get_activation(act.id).serial == act.serial
        bulk = [
            e.detail
            for e in hq.audit_log.audit(10_000)
            if e.action == "renew_all" and e.license_id == act.license_id
        ]
        assert bulk == ["files=1 skipped_returned=1"]
        # the operator frees it by hand: the device activates anew, on a new seat
        hq.deactivate(later, ACTOR, activation_id=act.id, reason="returned, freed early")
        fresh = hq.activate(key, fingerprint(1), later, ACTOR)
        assert fresh.created and fresh.activation.id != act.id
        assert fresh.activation.return_frees_at is None
    finally:
        hq.store.close()


def test_once_the_returned_seat_frees_the_device_activates_anew(hq_home: Path) -> None:
    """After ``frees_at`` the old activation still gets no file (the device gave it
    back); the same device's activation frees the due seat and takes a new one."""
    hq, key, act, _now, frees_at = returned_one(hq_home)
    try:
        after = frees_at + 1
        with pytest.raises(ActivationReturned, match="seat is free since"):
            hq.renew(after, ACTOR, activation_id=act.id)
        assert hq.renew_all(act.license_id, None, after, ACTOR) == []
        fresh = hq.activate(key, fingerprint(1), after, ACTOR)
        assert fresh.created and fresh.activation.id != act.id
        assert hq.get_activation(act.id).deactivated_at == after
        assert counted_in(hq_home)[act.license_id] == (1, 1)
        renewed = hq.renew(after + 60, ACTOR, activation_id=fresh.activation.id)
        assert renewed.claims.serial == 2
    finally:
        hq.store.close()


def test_a_field_bundle_skips_a_returned_device_and_carries_the_others(hq_home: Path) -> None:
    """``field export`` renews every chosen device in turn: a device that gave its
    license back is ``skipped`` (status ``returned``), not a failure of the export."""
    from provisioning.field import bundle

    hq, key, act, now, _frees_at = returned_one(hq_home)
    try:
        other = hq.activate(key, fingerprint(2), now, ACTOR).activation
        lic, acts = hq.licenses.get_license(act.license_id)
        by_id = {a.id: a for a in acts}
        doc = bundle.export(hq, [(by_id[act.id], lic), (by_id[other.id], lic)], None, now, ACTOR)
        assert [d["activation_id"] for d in doc["devices"]] == [other.id]
        assert doc["skipped"] == [
            {"activation_id": act.id, "license_id": lic.id, "status": "returned"}
        ]
        assert hq.get_activation(act.id).serial == act.serial
    finally:
        hq.store.close()


def test_a_device_returned_after_the_export_chose_it_is_skipped_too(hq_home: Path) -> None:
    """``field export`` chooses the devices first, then renews them one by one: a
    receipt HQ takes in between (over HTTP, MQTT, a laptop's report) makes that device
    ``skipped`` (status ``returned``) as if it had come before, not the export's end."""
    from provisioning.field import bundle

    hq, key, act, now = one_activation(hq_home)
    try:
        other = hq.activate(key, fingerprint(2), now, ACTOR).activation
        chosen = bundle.select(hq, (act.license_id,), None, None, None, now)
        assert {a.id for a, _ in chosen} == {act.id, other.id}
        with hq.store.write() as tx:  # what a receipt records for a device without a TPM
            tx.insert_return(
                ReturnRecord(act.id, act.serial, now, now, "http", "-", act.last_expires_at, None)
            )
        doc = bundle.export(hq, chosen, None, now, ACTOR)
        assert [d["activation_id"] for d in doc["devices"]] == [other.id]
        assert doc["skipped"] == [
            {"activation_id": act.id, "license_id": act.license_id, "status": "returned"}
        ]
        assert hq.get_activation(act.id).serial == act.serial
    finally:
        hq.store.close()


def test_an_override_counts_only_the_returns_past_the_limit(hq_home: Path) -> None:
    """``--override REASON`` lets receipts past a plan's return limit free their seats
    (a laptop's report imported with it, ``deactivate --receipt``): a receipt within
    the limit has nothing to override and counts as the year's return it is, so the
    limit holds for the next one; the one past it is recorded with the reason."""
    from provisioning.services.usage import ReturnLimitReached, set_terms
    from tests.hq.fleet import SeedDevice

    hq = HQ(hq_home)
    try:
        now = int(time.time())
        plan = f"p{time.monotonic_ns()}"
        hq.create_plan(Plan(plan, "default", 365 * 86400, 0, 3, None, now), ACTOR)
        set_terms(hq.store, plan, [], [], 1, now, ACTOR)
        key = hq.create_license(plan, [], None, now, ACTOR).license_key
        within, past, later = (SeedDevice(hq, key, fingerprint(n), now) for n in (1, 2, 3))
        within.give_back(now, "laptop", override="import with --override, ticket 7")
        past.give_back(now, "laptop", override="import with --override, ticket 7")
        with pytest.raises(ReturnLimitReached):
            later.give_back(now + 60, "http")  # the year's one return is taken
        with hq.store.read() as tx:
            held = {a.id: tx.get_return(a.id) for a in (within.act, past.act)}
        assert [None if r is None else r.override for r in held.values()] == [
            None,
            "import with --override, ticket 7",
        ]
    finally:
        hq.store.close()


def test_a_return_without_a_tpm_waits_for_every_file_issued_before_it(hq_home: Path) -> None:
    """A copy of the data directory taken before the return may hold any file HQ issued
    the activation, not only the last: a device that took a year's file, had the data
    copied, then asked a one-day file (``fieldpass prepare-offline --days 1``) and gave
    its license back frees its seat only when the year's file and its grace (the grace
    it was issued with, whatever the plan says since) have passed; until then HQ issues
    the activation nothing."""
    from provisioning.services.terms import PlanChange
    from tests.hq.fleet import SeedDevice

    hq = HQ(hq_home)
    try:
        now = int(time.time())
        year, month = 365 * 86400, 30 * 86400
        plan = f"p{time.monotonic_ns()}"
        hq.create_plan(Plan(plan, "default", year, month, 3, None, now), ACTOR)
        key = hq.create_license(plan, [], None, now, ACTOR).license_key
        device = SeedDevice(hq, key, fingerprint(1), now)
        first_ends = device.act.last_expires_at + month  # the year's file, with its grace
        short = hq.renew(now + 60, ACTOR, activation_id=device.act.id, ttl_s=86400)
        assert short.claims.expires_at == now + 60 + 86400
        hq.update_plan(plan, PlanChange(grace_s=0), now + 120, ACTOR)
        device.give_back(now + 180, "http")
        with hq.store.read() as tx:
            held = tx.get_return(device.act.id)
        assert held is not None and held.frees_at >= first_ends
        with pytest.raises(ActivationReturned):
            hq.renew(now + 2 * 86400, ACTOR, activation_id=device.act.id)
    finally:
        hq.store.close()


def test_a_receipt_refused_past_the_return_limit_registers_no_key(hq_home: Path) -> None:
    """A receipt may register the device key (a key-registration proof inside it, for
    an activation HQ made without one). Registration and return are one transaction:
    a receipt HQ refuses (here past the plan's return limit) leaves the activation
    without a key and the audit without a ``device_key_register`` line; taken with an
    override, it records both."""
    from agent.wire import device_msg
    from agent.wire.device_key import DeviceKey, key_proof
    from provisioning.services.usage import ReturnLimitReached, set_terms

    hq = HQ(hq_home)
    try:
        now = int(time.time())
        plan = f"p{time.monotonic_ns()}"
        hq.create_plan(Plan(plan, "default", 365 * 86400, 0, 3, None, now), ACTOR)
        set_terms(hq.store, plan, [], [], 0, now, ACTOR)  # no return allowed
        key = hq.create_license(plan, [], None, now, ACTOR).license_key
        act = hq.activate(key, fingerprint(1), now, ACTOR).activation
        assert act.device_key is None
        device = DeviceKey.generate()
        receipt = device_msg.sign(
            device,
            "receipt",
            {"activation_id": act.id, "fingerprint": act.fingerprint, "at": now,
             "agent_version": "test", "serial": act.serial, "returned_at": now,
             "reason": "returned", "device_key": device.public_key,
             "proof": key_proof(key, device.public_key, act.id, "")},
        )  # fmt: skip
        before = len(hq.audit_log.audit(10_000))
        with pytest.raises(ReturnLimitReached):
            hq.usage.accept_receipt(receipt, now + 60, "http", ACTOR)
        assert hq.get_activation(act.id).device_key is None
        assert len(hq.audit_log.audit(10_000)) == before
        with hq.store.read() as tx:
            assert tx.get_return(act.id) is None
        hq.usage.accept_receipt(receipt, now + 120, "http", ACTOR, override="ticket 9")
        assert hq.get_activation(act.id).device_key == device.public_key
        actions = [e.action for e in hq.audit_log.audit(10_000)[before:]]
        assert sorted(actions) == ["device_key_register", "return"]
    finally:
        hq.store.close()


def test_a_seat_freed_when_its_return_falls_due_is_audited_once(hq_home: Path) -> None:
    """Without a TPM the receipt's ``return`` line says when the seat will free
    (``frees_at``); HQ frees it at the first activation of the license after that, in
    its transaction, and audits that too: one ``return_freed`` line, naming the
    activation, its serial and ``frees_at``, written once however many activations
    come after (the same device's as another's)."""
    hq, key, act, _now, frees_at = returned_one(hq_home)
    try:
        after = frees_at + 1
        hq.activate(key, fingerprint(2), after, ACTOR)  # the due seat frees here
        hq.activate(key, fingerprint(1), after + 1, ACTOR)  # the returned device, anew
        hq.activate(key, fingerprint(3), after + 2, ACTOR)
        freed = [
            e
            for e in hq.audit_log.audit(10_000, act.license_id)  # the home is the module's
            if e.action == "return_freed"
        ]
        assert [(e.at, e.license_id, e.activation_id, e.detail) for e in freed] == [
            (after, act.license_id, act.id, f"serial={act.serial} frees_at={frees_at}")
        ]
        assert hq.get_activation(act.id).deactivated_at == after
        assert counted_in(hq_home)[act.license_id] == (3, 3)
    finally:
        hq.store.close()
