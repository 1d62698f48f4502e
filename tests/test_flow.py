"""The whole offline flow as a user runs it: the installed ``fieldpass-hq`` and
``fieldpass`` in subprocesses, simulated device roots, SQLite at HQ."""

from collections.abc import Callable
from pathlib import Path

from tests.conftest import HQ, DeviceRoot


def test_keys_plan_license_activate_install_check(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key = hq.setup()
    robot = make_device()
    hq.image(robot)
    fp = robot.run("fingerprint", "--json")
    assert fp.returncode == 0 and robot.fingerprint in fp.stdout
    machine = tmp_path / "robot.machine"
    assert hq.activate(key, robot, machine).returncode == 0
    key_file = tmp_path / "key.txt"
    key_file.write_text(key + "\n")
    install = robot.run("install", str(machine), "--license-key-file", str(key_file))
    assert install.returncode == 0, install.stderr
    check = robot.check()
    assert check.returncode == 0, check.stdout + check.stderr
    assert "(365 days left)" in check.stdout
    assert robot.verdict()["entitlements"] == ["navigation"]
    # the same file on a second device
    other = make_device()
    hq.image(other)
    copied = other.run("install", str(machine), "--license-key-file", str(key_file))
    assert copied.returncode == 31
    assert "another device" in copied.stderr


def test_seat_limit_next_fingerprint_refused_known_one_not(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key = hq.setup(seats=2)
    robots = [make_device() for _ in range(3)]
    assert hq.activate(key, robots[0], tmp_path / "0").returncode == 0
    assert hq.activate(key, robots[1], tmp_path / "1").returncode == 0
    refused = hq.activate(key, robots[2], tmp_path / "2")
    assert refused.returncode != 0
    assert "seat" in refused.stderr.lower()
    assert refused.stderr.count("\n") == 1 and key not in refused.stderr
    again = hq.activate(key, robots[0], tmp_path / "0b")
    assert again.returncode == 0  # a known device takes no new seat and gets a fresh file


def test_renewal_from_hq_installs_and_an_older_file_is_refused(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key = hq.setup()
    robot = make_device()
    hq.image(robot)
    first = tmp_path / "first.machine"
    activation = hq.json("activate", key, "--fingerprint", robot.fingerprint, "-o", str(first))
    key_file = tmp_path / "key.txt"
    key_file.write_text(key)
    assert robot.run("install", str(first), "--license-key-file", str(key_file)).returncode == 0
    renewal = tmp_path / "renewal.txt"
    hq.run(
        "machine-file",
        str(activation["activation_id"]),
        "--ttl",
        "30d",
        "--armor",
        "-o",
        str(renewal),
    )
    assert "BEGIN FIELDPASS MACHINE FILE" in renewal.read_text()
    assert robot.run("install", str(renewal)).returncode == 0
    assert robot.check().returncode == 0
    assert robot.verdict()["days_left"] == 30
    older = robot.run("install", str(first))
    assert older.returncode == 31
    assert robot.check().returncode == 0 and robot.verdict()["days_left"] == 30
