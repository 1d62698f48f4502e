"""The product document's acceptance stories that need only HQ's HTTP server, as
automated end-to-end tests (the real server, faketime on the device; the 365-day robot
and the revoked license through a laptop are in test_field.py)."""

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import HQ, DeviceRoot
from tests.hq.server import Server, start_server


@pytest.fixture
def server(hq: HQ) -> Iterator[Server]:
    hq.setup(ttl="30d", grace="7d", warn="10d")
    srv = start_server(hq.home)
    try:
        yield srv
    finally:
        srv.stop()


class Airplane:
    """Airplane mode: a route that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.held:
            s.close()
        self.sock.close()


def test_the_14_hour_flight(hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]) -> None:
    """Refreshed before the flight; on the plane the online check times out and falls
    back to the offline file, every hour for 14 hours; on landing it validates online
    and refreshes."""
    key = str(hq.json("licenses", "create", "--plan", "industrial")["key"])
    laptop = make_device()
    hq.image(laptop)
    laptop.write_config(f'[online]\nserver = "{server.url}"\ntimeout_s = 1\n')
    assert laptop.run("activate", key).returncode == 0
    assert laptop.run("refresh").returncode == 0  # before the flight: a fresh 30-day file
    plane = Airplane()
    try:
        laptop.write_config(f'[online]\nserver = "{plane.url}"\ntimeout_s = 1\n')
        for hour in range(0, 15, 2):
            check = laptop.run("check", "--online", faketime=f"+{hour}h")
            assert check.returncode == 0, check.stdout + check.stderr
            assert "offline verdict" in check.stderr
    finally:
        plane.close()
    laptop.write_config(f'[online]\nserver = "{server.url}"\ntimeout_s = 1\n')
    landed = laptop.run("check", "--online", faketime="+14h")
    assert landed.returncode == 0 and "offline verdict" not in landed.stderr
    assert laptop.run("refresh", faketime="+14h").returncode == 0
    assert laptop.check(faketime="+14h").returncode == 0
    assert laptop.verdict()["serial"] == 3


def test_the_30_day_tour_over_http(
    hq: HQ, server: Server, make_device: Callable[..., DeviceRoot]
) -> None:
    """Prepare for offline before leaving, a warning on day 20, five minutes of VPN on
    day 25 refresh the file (HTTP here; over MQTT in tests/mqtt), valid past day 30."""
    key = str(hq.json("licenses", "create", "--plan", "industrial")["key"])
    plugin = make_device()
    hq.image(plugin)
    plugin.write_config(f'[online]\nserver = "{server.url}"\ntimeout_s = 2\n')
    assert plugin.run("activate", key).returncode == 0
    assert plugin.run("prepare-offline").returncode == 0
    for day in (1, 8, 15):
        assert plugin.check(faketime=f"+{day}d").returncode == 0
    day20 = plugin.check(faketime="+20d")
    assert day20.returncode == 0
    assert "Offline license expires in 10 days: connect to extend" in day20.stdout
    # the five minutes of VPN: the device asks HQ (whose clock is also on day 25)
    srv25 = start_server(hq.home, env=_faketime("+25d"))
    try:
        plugin.write_config(f'[online]\nserver = "{srv25.url}"\ntimeout_s = 2\n')
        assert plugin.run("refresh", faketime="+25d").returncode == 0
    finally:
        srv25.stop()
    for day in (26, 31, 40, 50):
        assert plugin.check(faketime=f"+{day}d").returncode == 0, day
    assert plugin.check(faketime="+56d").returncode == 10  # 30 days after day 25, in grace


def _faketime(offset: str) -> dict[str, str]:
    from tests.conftest import faketime_env

    return faketime_env(offset)
