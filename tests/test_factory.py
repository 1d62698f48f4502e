"""The factory line: fieldpass-hq provision writes devices before their first boot; the
gate installs the file at first boot. One device and a CSV; idempotent and resumable."""

from collections.abc import Callable
from pathlib import Path

from tests.conftest import HQ, DeviceRoot


def test_one_device_first_boot(hq: HQ, make_device: Callable[..., DeviceRoot]) -> None:
    key = hq.setup(seats=3)
    robot = make_device()
    result = hq.run(
        "provision",
        key,
        "--fingerprint",
        robot.fingerprint,
        "--root",
        str(robot.path),
        "--name",
        "robot-17",
    )
    assert "Next: boot the device" in result.stdout
    assert (robot.path / "etc/fieldpass/keyring").exists()
    assert 'device_name = "robot-17"' in (robot.path / "etc/fieldpass/agent.toml").read_text()
    incoming = robot.state_dir / "incoming"
    assert (incoming / "license.key").stat().st_mode & 0o777 == 0o600
    first_boot = robot.check()
    assert first_boot.returncode == 0, first_boot.stdout + first_boot.stderr
    assert "installed the provisioned machine file" in first_boot.stderr
    assert not (incoming / "machine.file").exists()
    assert robot.check().returncode == 0


def test_a_file_provisioned_for_another_device_is_refused_at_boot(
    hq: HQ, make_device: Callable[..., DeviceRoot]
) -> None:
    key = hq.setup()
    a, b = make_device(), make_device()
    hq.run("provision", key, "--fingerprint", a.fingerprint, "--root", str(b.path))
    boot = b.check()
    assert boot.returncode == 30
    assert "not installed" in boot.stderr


def test_csv_with_progress_resumable_and_idempotent(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    key = hq.setup(seats=3)
    robots = [make_device() for _ in range(4)]
    csv_file = tmp_path / "line.csv"
    rows = ["name,fingerprint,root"]
    rows += [f"robot-{i},{r.fingerprint},{r.path}" for i, r in enumerate(robots)]
    csv_file.write_text("\n".join(rows) + "\n")
    first = hq.run("provision", key, "--csv", str(csv_file), check=False)
    assert first.returncode == 1  # the fourth robot is past the three seats
    assert "3 provisioned, 0 skipped, 1 failed" in first.stdout
    assert "seat" in first.stdout
    again = hq.run("provision", key, "--csv", str(csv_file), check=False)
    assert "0 provisioned, 3 skipped, 1 failed" in again.stdout
    doc = hq.json("licenses", "show", key)
    assert doc["seats_used"] == 3
    for robot in robots[:3]:
        assert robot.check().returncode == 0


def test_a_csv_line_without_a_root_refuses_the_whole_csv(
    hq: HQ, make_device: Callable[..., DeviceRoot], tmp_path: Path
) -> None:
    """A short line used to crash (70), and an empty root would have meant the CSV's own
    folder: the whole CSV is refused, nothing is written, no seat is taken."""
    key = hq.setup(seats=3)
    robot = make_device()
    csv_file = tmp_path / "line.csv"
    for bad in (f"robot-1,{robot.fingerprint}\n", f"robot-1,{robot.fingerprint},\n"):
        csv_file.write_text(
            f"name,fingerprint,root\nrobot-0,{robot.fingerprint},{robot.path}\n{bad}"
        )
        res = hq.run("provision", key, "--csv", str(csv_file), check=False)
        assert res.returncode == 2, res.stderr
        assert "line 3" in res.stderr and res.stderr.count("\n") == 1
    assert hq.json("licenses", "show", key)["seats_used"] == 0
    assert not (tmp_path / "data").exists() and not robot.machine_file.exists()
    assert not (robot.path / "data/fieldpass/incoming").exists()
