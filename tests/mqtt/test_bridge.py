"""The bridge's decisions and the outbox in process (HQ's service on a temporary home;
no broker): rate limits shared through the database, what each change of standing
tells each device, what confirms it, and hostile payloads. The same behaviour through
a real mosquitto and the real processes: test_hq_bridge.py, test_hostile.py,
test_replicas.py."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.daemon import messages, topics
from agent.wire import device_msg
from agent.wire.device_key import DeviceKey, key_proof
from agent.wire.keys import Keyring
from agent.wire.machine_file import open_machine_file
from agent.wire.revocation import verify_revocation
from provisioning.models import Activation, Actor, Plan
from provisioning.mqtt import brokerconf, credentials
from provisioning.mqtt.bridge import Bridge
from provisioning.services import HQ
from provisioning.services.outbox import Held
from tests.engines import Engine, connect, url_of
from tests.mqtt.simdevices import SimDevice, enroll

ACTOR = Actor("test", "local")
FP = "ab" * 32


@pytest.fixture
def service(tmp_path: Path, hq_engine: Engine) -> Iterator[HQ]:
    hq_engine.configure(tmp_path / "home")
    hq = HQ(tmp_path / "home")
    hq.generate_key(1000, ACTOR)
    hq.create_plan(Plan("industrial", "robot-os", 365 * 86400, 86400, 1000, None, 1000), ACTOR)
    yield hq
    hq.store.close()


def _request(serial: int, due: bool) -> bytes:
    return messages.renew_request(serial, 0, due)


def _topic(dev: str, kind: str) -> str:
    return topics.topic(topics.DEFAULT_PREFIX, dev, kind)


def _kinds(out: list[tuple[str, bytes, bool]]) -> list[str]:
    return [t.rsplit("/", 1)[1] for t, _, _ in out]


def _renews(hq: HQ) -> int:
    return sum(1 for e in hq.audit(100000) if e.action == "renew")


def test_bridge_answers_due_requests_within_the_rate_limit(service: HQ) -> None:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    service.activate(lic.license_key, FP, 1000, ACTOR)
    clock = [2000]
    bridge = Bridge(service, min_interval_s=60, clock=lambda: clock[0])
    request_topic = _topic(topics.device_id(FP), topics.RENEW_REQUEST)
    assert bridge.handle(request_topic, _request(1, False)) == []  # not due: nothing
    out = bridge.handle(request_topic, _request(1, True))
    assert [(k, r) for k, (_, _, r) in zip(_kinds(out), out, strict=True)] == [
        ("machine-file", True),
        ("revocation", True),
    ]
    assert out[1][1] == b""  # a stale revocation cleared
    first = out[0][1]
    # Whatever the request says (serial 0, not due...), one new file per interval: the
    # same file again for a device that says it lacks it, nothing for one that has it.
    for _ in range(50):
        again = bridge.handle(request_topic, _request(0, False))
        assert again[0][1] == first
    assert bridge.handle(request_topic, _request(2, True)) == []
    assert bridge.counts["rate_limited"] == 1
    assert _renews(service) == 1
    clock[0] += 60
    assert bridge.handle(request_topic, _request(2, True))[0][1] != first
    assert _renews(service) == 2


def test_two_bridges_on_one_database_issue_one_file_per_interval(
    service: HQ, tmp_path: Path
) -> None:
    """Two replicas are two processes with their own store on one database: the check
    and set of the rate limit is the database's, not a process's."""
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    (device,) = enroll(service, lic.license_key, 1, now=1000)
    other = HQ(tmp_path / "home")  # a second store: its own connections and writer lock
    bridges = [Bridge(hq, min_interval_s=60, clock=lambda: 5000) for hq in (service, other)]
    files: set[bytes] = set()
    for i in range(2000):
        out = bridges[i % 2].handle(device.topic(topics.RENEW_REQUEST), device.renew(serial=0))
        files.update(data for t, data, _ in out if t.endswith("machine-file"))
    other.store.close()
    assert len(files) == 1
    assert _renews(service) == 1
    assert service.get_activation(device.activation_id).serial == 2


def test_a_returned_device_is_refused_renewals_and_push_skips_it(service: HQ) -> None:
    """A device that gave its license back without a TPM (its seat frees at its file's
    expiry and grace) gets no renewal over MQTT: refused ``activation_returned`` and
    audited, whichever serial it says it holds; a whole license's bulk issuance renews
    the others and skips it."""
    from provisioning.models import ReturnRecord

    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    gave, kept = enroll(service, lic.license_key, 2, now=1000)
    act = service.get_activation(gave.activation_id)
    frees_at = act.last_expires_at + 86400  # the plan's grace
    with service.store.write() as tx:
        tx.insert_return(ReturnRecord(act.id, act.serial, 1500, 1500, "mqtt", "-", frees_at, None))
    bridge = Bridge(service, min_interval_s=60, clock=lambda: 2000)
    for serial in (0, act.serial):
        assert bridge.handle(gave.topic(topics.RENEW_REQUEST), gave.renew(serial=serial)) == []
    assert bridge.counts["activation_returned"] == 2
    assert service.get_activation(act.id).serial == act.serial
    refused = [e for e in service.audit(100000) if e.action == "mqtt_refused"]
    assert [(e.activation_id, e.detail) for e in refused] == [(act.id, "activation_returned")] * 2
    out = bridge.handle(kept.topic(topics.RENEW_REQUEST), kept.renew(serial=1))
    assert _kinds(out) == ["machine-file", "revocation"]  # the other device: as ever
    issued = service.issuing.renew_all(lic.id, None, 3000, ACTOR)
    assert [i.activation.id for i in issued] == [kept.activation_id]


def _registering_receipt(key: DeviceKey, license_key: str, act: Activation) -> bytes:
    """A receipt that registers ``key`` for ``act`` (an activation HQ made without a
    key), with the proof of the license key, as the agent makes it."""
    return device_msg.sign(
        key,
        "receipt",
        {"activation_id": act.id, "fingerprint": act.fingerprint, "at": 1500,
         "agent_version": "0.2.0", "serial": act.serial, "returned_at": 1500,
         "reason": "returned", "device_key": key.public_key,
         "proof": key_proof(license_key, key.public_key, act.id, "")},
    )  # fmt: skip


def test_a_receipt_refused_over_mqtt_registers_no_key(service: HQ) -> None:
    """A receipt that registers the device key, refused past the plan's return limit,
    leaves the activation without a key (registration and return are one transaction,
    over MQTT as over HTTP): counted ``return_limit_reached``, unacknowledged."""
    from provisioning.services.usage import set_terms

    set_terms(service.store, "industrial", [], [], 0, 1000, ACTOR)  # no return allowed
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    act = service.activate(lic.license_key, "3" * 64, 1000, ACTOR).activation
    bridge = Bridge(service, min_interval_s=60, clock=lambda: 2000)
    topic = _topic(topics.device_id(act.fingerprint), topics.RECEIPT)
    receipt = _registering_receipt(DeviceKey.generate(), lic.license_key, act)
    assert bridge.handle(topic, receipt) == []
    assert bridge.counts == {"return_limit_reached": 1}
    assert service.get_activation(act.id).device_key is None
    assert "device_key_register" not in [e.action for e in service.audit(100000)]


def test_a_registering_receipt_of_a_seat_freed_by_hand_is_acknowledged(service: HQ) -> None:
    """The operator freed by hand an activation HQ made without a key; its receipt
    comes after, registering the key with the proof of the license key: acknowledged
    (``receipt_not_live``: nothing left to free), and no key recorded on the freed
    activation. A report registering a key there is refused and not acknowledged, and
    neither is a fault of the bridge. Before, the receipt was refused before its proof
    was read (``activation_not_found``, unacknowledged) and came again at every contact."""
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    act = service.activate(lic.license_key, "5" * 64, 1000, ACTOR).activation
    service.deactivate(1200, ACTOR, activation_id=act.id)
    bridge = Bridge(service, min_interval_s=60, clock=lambda: 2000)
    key = DeviceKey.generate()
    receipt = _registering_receipt(key, lic.license_key, act)
    out = bridge.handle(_topic(topics.device_id(act.fingerprint), topics.RECEIPT), receipt)
    assert _kinds(out) == ["ack"] and bridge.counts == {"receipt_not_live": 1}
    report = device_msg.sign(
        key,
        "report",
        {"activation_id": act.id, "fingerprint": act.fingerprint, "at": 1500,
         "agent_version": "0.2.0", "seq": 1, "counters": {}, "challenge": None,
         "device_key": key.public_key,
         "proof": key_proof(lic.license_key, key.public_key, act.id, "")},
    )  # fmt: skip
    topic = _topic(topics.device_id(act.fingerprint), topics.REPORT)
    assert bridge.handle(topic, report) == []
    assert bridge.counts == {"receipt_not_live": 1, "activation_not_found": 1}
    assert service.get_activation(act.id).device_key is None
    assert "device_key_register" not in [e.action for e in service.audit(100000)]


def test_only_a_receipt_of_a_returned_activation_is_acknowledged_as_one(
    service: HQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge acknowledges a receipt HQ refuses only when HQ holds a return of that
    activation (the same receipt or another: ``receipt_returned_already``). A receipt HQ
    refused for another reason, which took nothing, is counted under that reason and
    left unacknowledged (the device keeps it): its key registered by another device
    between the receipt's check and its write (``device_key_mismatch``), or a write the
    database refused (``device_key_in_use``: the key it registers taken meanwhile by
    another activation). Here the other replica's write lands between the two, as a race would
    have it."""
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    first, second = (
        service.activate(lic.license_key, fp, 1000, ACTOR).activation for fp in ("1" * 64, "2" * 64)
    )
    key, other = DeviceKey.generate(), DeviceKey.generate()
    bridge = Bridge(service, min_interval_s=60, clock=lambda: 2000)
    verify = service.device.verify
    meanwhile: list[tuple[str, bytes]] = []

    def verify_then_race(data: bytes, msg_type: str, *, live: bool = True) -> object:
        verified = verify(data, msg_type, live=live)
        while meanwhile:
            act_id, public = meanwhile.pop()
            with service.store.write() as tx:
                tx.set_device_key(act_id, public)
        return verified

    monkeypatch.setattr(service.device, "verify", verify_then_race)
    topic = _topic(topics.device_id(first.fingerprint), topics.RECEIPT)
    receipt = _registering_receipt(key, lic.license_key, first)
    meanwhile.append((second.id, key.public_key))  # its key, taken by another activation
    assert bridge.handle(topic, receipt) == []
    with service.store.write() as tx:
        tx.set_device_key(second.id, None)  # free again
    meanwhile.append((first.id, other.public_key))  # another device registers first
    assert bridge.handle(topic, receipt) == []
    assert bridge.counts == {"device_key_in_use": 1, "device_key_mismatch": 1}
    with service.store.read() as tx:
        assert tx.get_return(first.id) is None
    assert service.get_activation(first.id).device_key == other.public_key
    # a receipt of an activation HQ holds a return of: acknowledged, whichever receipt
    device = enroll(service, lic.license_key, 1, now=1000)[0]
    again = device.receipt()
    for payload in (device.receipt(), again, again):
        assert _kinds(bridge.handle(device.topic(topics.RECEIPT), payload)) == ["ack"]
    assert bridge.counts["receipt_returned_already"] == 2


def test_a_receipt_that_loses_the_race_to_another_replicas_is_acknowledged(
    service: HQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas take two receipts of one activation at once: both read no return,
    the database refuses the second's write. HQ then holds a return of the activation
    (the other's): the loser is ``receipt_returned_already`` and acknowledged, as if it
    had come second, not a refusal the device would send again for ever. Here the
    loser's read is the one before the other's commit (what PostgreSQL's READ COMMITTED
    gives it in the race)."""
    from provisioning.storage.usage_ops import UsageOps

    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    device = enroll(service, lic.license_key, 1, now=1000)[0]
    first = device.receipt()
    service.usage.accept_receipt(first, 1500, "http", ACTOR)  # the other replica's
    real = UsageOps.get_return
    stale = [1]

    def read_before_the_commit(self: UsageOps, activation_id: str) -> object:
        if stale:
            stale.pop()
            return None
        return real(self, activation_id)

    monkeypatch.setattr(UsageOps, "get_return", read_before_the_commit)
    bridge = Bridge(service, min_interval_s=60, clock=lambda: 2000)
    second = device_msg.sign(
        device.key,
        "receipt",
        {"activation_id": device.activation_id, "fingerprint": device.fingerprint,
         "at": 1600, "agent_version": "0.2.0", "serial": device.serial,
         "returned_at": 1600, "reason": "returned", "device_key": None, "proof": None},
    )  # fmt: skip
    assert _kinds(bridge.handle(device.topic(topics.RECEIPT), second)) == ["ack"]
    assert not stale  # the stale read happened
    assert bridge.counts == {"receipt_returned_already": 1}
    with service.store.read() as tx:
        held = tx.get_return(device.activation_id)
    assert held is not None and held.via == "http"  # the first one's, kept


def _keyring(hq: HQ) -> Keyring:
    return hq.keyring()  # type: ignore[no-any-return]


def test_a_suspension_is_told_until_the_device_confirms_it(service: HQ) -> None:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    devices = enroll(service, lic.license_key, 3, now=1000)
    clock = [2000]
    bridge = Bridge(service, clock=lambda: clock[0])
    service.set_status(lic.id, "suspend", 2000, ACTOR)  # the outbox, in the same transaction
    out = bridge.deliver_due()
    assert sorted(_kinds(out)) == ["revocation"] * 3
    by_topic = {t: data for t, data, _ in out}
    for d in devices:
        rev = verify_revocation(
            by_topic[d.topic(topics.REVOCATION)], _keyring(service), d.activation_id
        )
        assert (rev.reason, rev.issued_at) == ("suspended", 2000)  # dated at the change
    assert bridge.deliver_due() == []  # not due again before RETRY_S
    clock[0] += 31
    assert len(bridge.deliver_due()) == 3  # no confirmation: published again
    # Two devices confirm with their status; the third only asks (RESEND_GAP_S after the
    # last send): it is connected, its entry is due now.
    for d in devices[:2]:
        status = d.status(d.serial, "suspended", 2000)
        assert bridge.handle(d.topic(topics.STATUS), status) == []
    clock[0] += 11
    assert bridge.handle(devices[2].topic(topics.RENEW_REQUEST), devices[2].renew()) == []
    again = bridge.deliver_due()
    assert [t for t, _, _ in again] == [devices[2].topic(topics.REVOCATION)]
    assert [e.activation_id for e in service.outbox.pending()] == [devices[2].activation_id]

    # Reinstated in the same second as the suspension: the file waits one second (a
    # file lifts a revocation only if HQ issued it strictly later).
    service.set_status(lic.id, "suspend", 3000, ACTOR)
    service.set_status(lic.id, "reinstate", 3000, ACTOR)
    clock[0] = 3000
    assert bridge.deliver_due() == []
    clock[0] = 3001
    out = bridge.deliver_due()
    assert sorted(_kinds(out)) == ["machine-file"] * 3 + ["revocation"] * 3
    d = devices[0]
    machine_file = {t: data for t, data, _ in out}[d.topic(topics.MACHINE_FILE)]
    claims = open_machine_file(machine_file, _keyring(service), lic.license_key, d.fingerprint)
    assert (claims.issued_at, claims.serial) == (3001, 2)
    # A status that still holds the suspension with the new serial: a newer file is made.
    bridge.handle(d.topic(topics.STATUS), d.status(2, "suspended", 3001))
    clock[0] = 3002
    newer = {t: data for t, data, _ in bridge.deliver_due()}
    claims = open_machine_file(
        newer[d.topic(topics.MACHINE_FILE)], _keyring(service), lic.license_key, d.fingerprint
    )
    assert (claims.issued_at, claims.serial) == (3002, 3)
    bridge.handle(d.topic(topics.STATUS), d.status(3))
    entry = service.outbox.get(d.activation_id)
    assert entry is not None and entry.confirmed_at == 3002


def test_a_reinstatement_prepared_before_a_return_is_sent_no_more(service: HQ) -> None:
    """A reinstatement's file, published and not confirmed yet, is published again and
    again until the device's status confirms it. A device that gave its license back
    refuses any file of the activation (and HQ issues it none): its receipt drops the
    entry, and an entry an older HQ left prepared for a returned activation is dropped
    when next taken (audited ``mqtt_refused``), never published again, after an outage
    (``rearm``) neither. The other devices are told as ever."""
    from provisioning.models import ReturnRecord

    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    gave, kept, older = enroll(service, lic.license_key, 3, now=1000)
    clock = [2000]
    bridge = Bridge(service, clock=lambda: clock[0])
    service.set_status(lic.id, "suspend", 2000, ACTOR)
    assert sorted(_kinds(bridge.deliver_due())) == ["revocation"] * 3
    service.set_status(lic.id, "reinstate", 2100, ACTOR)
    clock[0] = 2100
    assert sorted(_kinds(bridge.deliver_due())) == ["machine-file"] * 3 + ["revocation"] * 3
    # one returns over MQTT; for another, a return recorded as an older HQ did (the
    # entry left as it was)
    receipt = gave.receipt()
    assert _kinds(bridge.handle(gave.topic(topics.RECEIPT), receipt)) == ["ack"]
    assert service.outbox.get(gave.activation_id) is None
    act = service.get_activation(older.activation_id)
    with service.store.write() as tx:
        tx.insert_return(
            ReturnRecord(act.id, act.serial, 2150, 2150, "http", "-", act.last_expires_at, None)
        )
    for _ in range(2):
        clock[0] += 3600
        out = bridge.deliver_due()
        assert [t for t, _, r in out if r and t.endswith(topics.MACHINE_FILE)] == [
            kept.topic(topics.MACHINE_FILE)
        ]
        service.outbox.rearm(clock[0])
    assert [e.activation_id for e in service.outbox.pending()] == [kept.activation_id]
    refused = [e.activation_id for e in service.audit(100000) if e.action == "mqtt_refused"]
    assert refused == [older.activation_id]


def test_a_large_fleet_is_told_batch_after_batch(service: HQ) -> None:
    from provisioning.mqtt.bridge import OUTBOX_BATCH

    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    enroll(service, lic.license_key, OUTBOX_BATCH + 20, now=1000)
    bridge = Bridge(service, clock=lambda: 2000)
    service.set_status(lic.id, "revoke", 2000, ACTOR)
    first = bridge.deliver_due()
    assert len(first) == OUTBOX_BATCH and bridge.more_due  # the loop takes the next at once
    rest = bridge.deliver_due()
    assert len(rest) == 20 and not bridge.more_due
    assert len({t for t, _, _ in first + rest}) == OUTBOX_BATCH + 20


def test_a_deactivation_is_told_and_agents_of_0_1_0_are_told_revoked(service: HQ) -> None:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    (keyed,) = enroll(service, lic.license_key, 1, now=1000)
    old = service.activate(lic.license_key, FP, 1000, ACTOR).activation  # claims format 1
    bridge = Bridge(service, clock=lambda: 2000)
    for act_id in (keyed.activation_id, old.id):
        service.deactivate(2000, ACTOR, activation_id=act_id)
    out = {t: data for t, data, _ in bridge.deliver_due()}
    rev = verify_revocation(
        out[keyed.topic(topics.REVOCATION)], _keyring(service), keyed.activation_id
    )
    assert rev.reason == "deactivated"
    legacy = out[_topic(topics.device_id(FP), topics.REVOCATION)]
    assert verify_revocation(legacy, _keyring(service), old.id).reason == "revoked"
    # The deactivated device is still heard (its key is kept): its status confirms, and
    # the retained deactivation is cleared (the same device activated again reads none).
    done = bridge.handle(keyed.topic(topics.STATUS), keyed.status(1, "deactivated", 2000))
    assert done == [(keyed.topic(topics.REVOCATION), b"", True)]
    status = messages.status({"verdict": "revoked", "serial": 1, "revoked": True})
    bridge.handle(_topic(topics.device_id(FP), topics.STATUS), status)
    assert service.outbox.pending() == []
    # A device's own deactivation has its answer already: nothing to tell.
    again = service.activate(lic.license_key, FP, 2100, ACTOR).activation
    service.deactivate(2100, ACTOR, license_key=lic.license_key, fingerprint=FP)
    assert service.outbox.get(again.id) is None


def test_an_old_suspension_is_told_after_the_upgrade(service: HQ, tmp_path: Path) -> None:
    """Licenses suspended before the outbox existed (schema 6): their live devices get
    an entry from the migration, on either engine."""
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    act = service.activate(lic.license_key, FP, 1000, ACTOR).activation
    service.set_status(lic.id, "suspend", 1500, ACTOR)
    service.store.close()
    home = tmp_path / "home"
    undo_8 = [  # back to schema 6: undo 12 (sealing), 11 (files' end), 10, 9, 8, 7
        "DROP TABLE sealing",
        "ALTER TABLE activations DROP COLUMN files_run_until",
        "DROP INDEX activations_returning",
        "ALTER TABLE activations DROP COLUMN return_frees_at",
        "ALTER TABLE activations DROP COLUMN keyring",
        "DROP TABLE console_sessions",
        "DROP INDEX activations_by_expiry",
        "DROP INDEX audit_by_time",
        "ALTER TABLE licenses DROP COLUMN seats",
    ]
    if url_of(home) is None:
        undo_8.append("DROP INDEX audit_by_license")  # PostgreSQL's is from version 1
    undo_7 = [
        "DROP TABLE device_outbox",
        "DROP TABLE bridge_answers",
        "DROP INDEX activations_by_any_device_key",
        "DELETE FROM schema_version WHERE version >= 7",
    ]
    with connect(home) as db:
        for statement in undo_8 + undo_7:
            db.execute(statement)
        db.commit()
    upgraded = HQ(tmp_path / "home")
    (entry,) = upgraded.outbox.pending()
    upgraded.store.close()
    assert (entry.activation_id, entry.action, entry.created_at) == (act.id, "suspend", 1500)


def test_confirmation_rules() -> None:
    from provisioning.models import Activation, OutboxEntry
    from provisioning.services.outbox import confirms

    act = Activation("act_1", "lic", FP, 3, 0, 0, 0, None, claims_format=2)

    def entry(action: str, serial: int | None = None) -> OutboxEntry:
        return OutboxEntry("act_1", "lic", action, 100, 0, 1, 100, None, serial, b"x", None)

    assert confirms(entry("suspend"), act, Held(3, "suspended", 100))
    assert not confirms(entry("suspend"), act, Held(3, "suspended", 99))  # an older one
    assert not confirms(entry("revoke"), act, Held(3, "suspended", 100))  # not the newest
    assert confirms(entry("deactivate"), act, Held(3, "deactivated", 150))
    assert confirms(entry("suspend"), act, Held(0, "revoked", None))  # 0.1.0 says revoked
    assert confirms(entry("reinstate", 4), act, Held(4, "", 0))
    assert not confirms(entry("reinstate", 4), act, Held(4, "suspended", 100))  # not lifted
    assert not confirms(entry("reinstate", 4), act, Held(3, "", 0))


@pytest.fixture
def hostile_setup(service: HQ) -> tuple[HQ, Bridge, SimDevice]:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    (device,) = enroll(service, lic.license_key, 1, now=1000)
    service.activate(lic.license_key, FP, 1000, ACTOR)  # an agent of 0.1.0
    return service, Bridge(service, min_interval_s=3600, clock=lambda: 5000), device


def _json_bomb(depth: int) -> bytes:
    """The 0.1.0 form nested ``depth`` deep, within its 1 KiB bound (json recurses once
    per level: near 1,000 levels, RecursionError)."""
    return b'{"v":1,"serial":' + b"[" * depth


hostile = st.one_of(
    st.binary(max_size=3000),
    st.integers(1, 5000).map(lambda n: b"[" * n),
    st.integers(1, 1008).map(_json_bomb),
    st.just(_json_bomb(1008)),
    st.integers(1, 5000).map(lambda n: b"\x81" * n),  # CBOR arrays in arrays
    st.integers(1, 3000).map(lambda n: b"\xbf" * n),  # indefinite maps
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=40,
    ).map(lambda doc: json.dumps(doc).encode()),
    st.fixed_dictionaries(  # the 0.1.0 form, with a field of the wrong type
        {"v": st.just(1), "serial": st.integers(), "expires_at": st.integers()},
        optional={"due": st.none() | st.integers() | st.text(max_size=3), "revoked": st.none()},
    ).map(lambda doc: json.dumps(doc).encode()),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=hostile, kind=st.sampled_from(["renew-request", "status"]), legacy=st.booleans())
def test_no_payload_stops_the_bridge_or_changes_what_hq_stores(
    hostile_setup: tuple[HQ, Bridge, SimDevice], payload: bytes, kind: str, legacy: bool
) -> None:
    hq, bridge, device = hostile_setup
    dev = topics.device_id(FP) if legacy else device.device_id
    before = (_renews(hq), [hq.get_activation(a.id) for a in hq.list_activations()])
    out = bridge.handle(_topic(dev, kind), payload)  # never raises
    assert all(len(data) < 4096 for _, data, _ in out)
    assert not any(t.endswith("machine-file") for t, _, _ in out)
    assert (_renews(hq), [hq.get_activation(a.id) for a in hq.list_activations()]) == before
    retained = bridge.handle(device.topic(topics.RENEW_REQUEST), device.renew(), retained=True)
    assert retained == [] and bridge.counts["retained"] >= 1  # a poison message, unread


def test_broker_config_files(service: HQ, tmp_path: Path) -> None:
    lic = service.create_license("industrial", [], None, 1000, ACTOR)
    service.activate(lic.license_key, FP, 1000, ACTOR)
    secret = credentials.secret(service.home)
    assert credentials.secret(service.home) == secret  # created once, then kept
    doc = brokerconf.write(tmp_path / "out", secret, service.list_activations(), "fieldpass/v1")
    assert doc["devices"] == 1
    assert doc["hq_users"] == [
        "fieldpass-hq-bridge-1",
        "fieldpass-hq-bridge-2",
        "fieldpass-hq-push",
        "fieldpass-hq-field",
    ]
    passwd = (tmp_path / "out/passwd").read_text()
    dev = topics.device_id(FP)
    assert passwd.startswith("fieldpass-hq-bridge-1:$") and f"\n{dev}:$" in passwd  # hashed
    assert credentials.password(secret, dev) not in passwd
    acl = (tmp_path / "out/acl").read_text()
    assert "pattern read fieldpass/v1/dev/%u/machine-file" in acl
    assert "pattern write fieldpass/v1/dev/%u/status" in acl
    conf = (tmp_path / "out/mosquitto.conf").read_text()
    assert "use_username_as_clientid true" in conf and "allow_anonymous false" in conf
    assert oct((tmp_path / "out/credentials.csv").stat().st_mode & 0o777) == "0o600"


def test_push_selection_narrows_by_each_option(service: HQ) -> None:
    from provisioning.mqtt.push import Selection, select

    service.create_plan(Plan("lab", "robot-os", 30 * 86400, 86400, 5, None, 1000), ACTOR)
    industrial = service.create_license("industrial", [], None, 1000, ACTOR)
    lab = service.create_license("lab", [], None, 1000, ACTOR)
    a = service.activate(industrial.license_key, "a" * 64, 1000, ACTOR).activation
    b = service.activate(industrial.license_key, "b" * 64, 1000, ACTOR).activation
    c = service.activate(lab.license_key, "c" * 64, 1000, ACTOR).activation
    d = service.activate(lab.license_key, "d" * 64, 1000, ACTOR).activation
    service.deactivate(2000, ACTOR, activation_id=b.id)  # told: still selected
    service.deactivate(2000, ACTOR, activation_id=d.id)
    service.outbox.confirm(d, Held(1, "revoked", None), 2001)  # told and confirmed

    def ids(sel: Selection) -> set[str]:
        return {x.id for x in select(service, sel, 1000)}

    assert ids(Selection(license_id=industrial.id)) == {a.id, b.id}
    assert ids(Selection(plan="lab")) == {c.id}
    assert ids(Selection(devices=(a.id, "c" * 64))) == {a.id, c.id}
    assert ids(Selection(expiring_within_s=31 * 86400)) == {c.id}  # lab files: 30 days
    assert ids(Selection(plan="industrial", expiring_within_s=31 * 86400)) == set()
