"""What the network can do to the daemon: absence, restarts, duplicates, replays,
forgeries, garbage, and kills at random moments. HQ is the test's in-process signer."""

import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from agent.wire.keys import SigningKey
from agent.wire.revocation import Revocation, sign_revocation
from tests.conftest import DAY, DeviceRoot, Signer
from tests.mqtt.conftest import Broker, Client, Daemon, device_topic, mqtt_config, wait_for

Make = Callable[..., DeviceRoot]
Daemons = Callable[[DeviceRoot], Daemon]


def _device(make_device: Make, signer: Signer, broker: Broker, **kw: object) -> DeviceRoot:
    device = make_device()
    device.write_config(mqtt_config(broker))
    signer.provision(device, **kw)
    return device


def _serial(device: DeviceRoot) -> object:
    try:
        return device.verdict().get("serial")
    except (OSError, ValueError):
        return None


def test_offline_device_gets_what_hq_sent_while_it_was_away(
    make_device: Make, signer: Signer, broker: Broker, hq_client: Client, daemons: Daemons
) -> None:
    device = _device(make_device, signer, broker)
    daemon = daemons(device)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    assert daemon.stop() == 0  # the broker keeps the session (clean start off, expiry)
    fresh = signer.issue(device.fingerprint, serial=2)
    hq_client.publish(device_topic(device, "machine-file"), fresh, retain=False)
    daemon.start()
    wait_for(lambda: _serial(device) == 2, what="the message queued in the session")
    assert device.machine_file.read_bytes() == fresh
    assert daemon.stop() == 0


def test_broker_restarted_mid_session(
    make_device: Make, signer: Signer, broker: Broker, daemons: Daemons
) -> None:
    device = _device(make_device, signer, broker)
    daemon = daemons(device)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    broker.restart()
    daemon.wait_log("retrying in")
    wait_for(lambda: daemon.text().count("state CONNECTING -> CONNECTED") >= 2, 20)
    hq = Client(broker)
    fresh = signer.issue(device.fingerprint, serial=2)
    hq.publish(device_topic(device, "machine-file"), fresh, retain=True)
    wait_for(lambda: _serial(device) == 2, what="the file after the restart")
    hq.close()
    assert daemon.running() and daemon.stop() == 0


def test_duplicates_are_no_ops_and_an_older_file_is_refused(
    make_device: Make, signer: Signer, broker: Broker, hq_client: Client, daemons: Daemons
) -> None:
    device = _device(make_device, signer, broker)
    first = device.machine_file.read_bytes()
    daemon = daemons(device)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    second = signer.issue(device.fingerprint, serial=2)
    for _ in range(3):  # the same message delivered again and again
        hq_client.publish(device_topic(device, "machine-file"), second)
    wait_for(lambda: _serial(device) == 2)
    hq_client.publish(device_topic(device, "machine-file"), first)  # replayed, older
    daemon.wait_log("machine_file_downgrade")
    assert device.machine_file.read_bytes() == second
    assert daemon.text().count("installed machine file serial 2") == 1
    assert daemon.stop() == 0
    assert device.check().returncode == 0 and device.verdict()["serial"] == 2


def test_forged_revocation_ignored_real_one_gives_32_offline(
    make_device: Make, signer: Signer, broker: Broker, hq_client: Client, daemons: Daemons
) -> None:
    device = _device(make_device, signer, broker)
    hooks = device.path / "etc/fieldpass/on-verdict.d"
    hooks.mkdir()
    seen = device.path / "hook.out"
    hook = hooks / "10-record"
    hook.write_text(f'#!/bin/sh\necho "$FIELDPASS_PREVIOUS_VERDICT>$FIELDPASS_VERDICT" >> {seen}\n')
    hook.chmod(0o755)
    device.check()  # the gate records "valid"
    daemon = daemons(device)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    now = int(time.time()) + 1
    topic = device_topic(device, "revocation")
    forged = sign_revocation(SigningKey.generate(), Revocation("act_1", now, "revoked"))
    hq_client.publish(topic, forged)
    other = sign_revocation(signer.key, Revocation("act_other", now, "revoked"))
    hq_client.publish(topic, other)  # signed by HQ, for another activation
    daemon.wait_log("revocation_unknown_key")
    daemon.wait_log("revocation_claim_mismatch")
    assert device.check().returncode == 0
    real = sign_revocation(signer.key, Revocation("act_1", now, "revoked"))
    hq_client.publish(topic, real, retain=True)
    wait_for(lambda: device.verdict().get("verdict") == "revoked", what="the revocation")
    wait_for(lambda: "valid>revoked" in seen.read_text(), what="the on-verdict hook")
    assert daemon.stop() == 0
    assert seen.read_text().splitlines() == [">valid", "valid>revoked"]  # gate, then daemon
    broker.stop()
    assert device.check().returncode == 32
    broker.start()


def _garbage(device: DeviceRoot, signer: Signer, other: DeviceRoot, n: int) -> list[bytes]:
    rng = random.Random(5)
    good = signer.issue(device.fingerprint, serial=9)
    samples = [
        signer.issue(other.fingerprint, serial=9),  # another device's file
        good[: len(good) // 2],  # truncated
        good[:-1] + bytes([good[-1] ^ 1]),  # one bit flipped
        b"\x9f" * 5000,  # deeply nested indefinite arrays
        b"\xbf\x61a\x01\x61a\x02\xff",  # duplicate keys
        b"-----BEGIN FIELDPASS MACHINE FILE-----\r\nzz\r\n",
        sign_revocation(SigningKey.generate(), Revocation("act_1", 1, "revoked")),
    ]
    out = []
    for i in range(n):
        if i % 50 == 0:
            out.append(os.urandom(70 * 1024))  # over the 64 KiB bound
        elif i % 3 == 0:
            out.append(samples[i % len(samples)])
        else:
            out.append(os.urandom(rng.randrange(1, 2000)))
    return out


def test_a_thousand_garbage_messages_leave_the_daemon_running_and_the_file_intact(
    make_device: Make, signer: Signer, broker: Broker, hq_client: Client, daemons: Daemons
) -> None:
    device = _device(make_device, signer, broker)
    before = device.machine_file.read_bytes()
    daemon = daemons(device)
    daemon.start()
    daemon.wait_log("state CONNECTING -> CONNECTED")
    garbage = _garbage(device, signer, make_device(), 1000)
    for i, payload in enumerate(garbage):
        kind = "machine-file" if i % 2 else "revocation"
        hq_client.client.publish(device_topic(device, kind), payload, qos=1)
    hq_client.publish(device_topic(device, "machine-file"), b"last")
    daemon.wait_log("machine_file_", 30)
    time.sleep(1)
    assert daemon.running()
    assert device.machine_file.read_bytes() == before
    assert device.check().returncode == 0
    warnings = [line for line in daemon.text().splitlines() if "ignored a bad message" in line]
    assert 1 <= len(warnings) <= 12  # logged once per kind, then counted
    fresh = signer.issue(device.fingerprint, serial=2)  # and it still takes a real file
    hq_client.publish(device_topic(device, "machine-file"), fresh)
    wait_for(lambda: _serial(device) == 2)
    assert daemon.stop() == 0
    assert "ignored bad messages:" in daemon.text()


@pytest.mark.slow
def test_killed_at_random_moments_and_restarted_keeps_a_valid_state(
    make_device: Make, signer: Signer, broker: Broker, hq_client: Client, daemons: Daemons
) -> None:
    # due, so every start asks and every file runs the whole install path
    device = _device(make_device, signer, broker, issued_at=int(time.time()) - 300 * DAY)
    rng = random.Random(7)
    daemon = daemons(device)
    for serial in range(2, 22):
        daemon.start()
        fresh = signer.issue(device.fingerprint, serial=serial)
        hq_client.client.publish(device_topic(device, "machine-file"), fresh, qos=1, retain=True)
        time.sleep(rng.uniform(0.0, 0.6))
        daemon.stop(signal.SIGKILL)
        check = device.check()
        assert check.returncode == 0, check.stdout + check.stderr
    daemon.start()
    wait_for(lambda: _serial(device) == 21, 20, "the last file after the kills")
    daemon.wait_log("state CONNECTING -> CONNECTED")
    assert daemon.stop() == 0
    assert device.check().returncode == 0
