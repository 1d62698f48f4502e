"""A paho client whose network loop runs on a thread of HQ's own, publishing through a
bounded window: what ``push`` and every bridge replica publish with.

The window: paho numbers QoS 1 publishes with 16-bit packet ids and, with more than
65,535 awaiting their PUBACK, reuses an id still in flight without a check; the message
it replaces is never acknowledged (and mosquitto drops one of the two). A link has at
most ``window`` publishes written and awaiting their PUBACK, or waiting to be written;
``publish`` waits for room, so that the caller goes at the broker's pace. A publish not
acknowledged within ``ack_wait_s`` of when it was written or of the last
acknowledgement, whichever is later, is reported failed and leaves the window: a broker
that stops acknowledging costs that wait once, not once per message. Paho keeps such a
publish under its packet id (and writes it again on reconnection) until the broker
answers it: that late PUBACK is ignored (each ``done`` is told once), and, until it
comes, paho is never given that id again (the ids paho numbers next skip it), so that
the late PUBACK cannot settle a newer publish, nor a newer publish replace the one
paho keeps (tests/mqtt/test_link.py). What paho keeps of those is not bounded by the
window: a broker that stops answering is found out by the keepalive, and what paho
keeps is written again once reconnected, and answered.

The loop: every paho call is made on the link's thread, with paho's own external-loop
API (``loop_read``, ``loop_write``, ``loop_misc`` on ``select``), never ``loop_start``,
which, for every packet queued (each PUBACK of a status, too), writes a wake-up byte
through a socket pair and waits on a ``Condition`` per publish. Here a publish is handed
over with one wake-up byte per batch, written at once by the link's thread, and
settled by paho's ``on_publish``: accepted, or, with an MQTT 5 failure reason code in
the PUBACK (0x80 and up: the broker's ACL denied it, a quota...), failed. A lost
connection is reconnected (at most ``RECONNECT_MAX_S`` apart), as paho's own loop does;
the ``on_connect`` callback subscribes again. Callbacks (``on_message``, ``done``) run
on the link's thread and must not raise; if paho fails under the link, it is logged, and
whatever is outstanding then or published later is reported failed (nobody waits for
it). Never logs a payload.
"""

import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt

Done = Callable[[bool], None]  # True: the broker acknowledged it (False: refused, or no answer)
log = logging.getLogger("fieldpass.hq.mqtt")
RECONNECT_MAX_S = 30.0
MISC_EVERY_S = 1.0  # keepalive (paho's loop_misc)


class Link:
    """A connected paho client (``connection.open_link``) and the thread that runs it."""

    def __init__(self, client: mqtt.Client, window: int, ack_wait_s: float) -> None:
        self.client = client
        self.window = window
        self.ack_wait_s = ack_wait_s
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._queued: deque[tuple[str, bytes, bool, Done | None]] = deque()
        self._writing = 0  # taken from the queue, being handed to paho
        # packet id -> what to tell, and when it was written (monotonic), oldest first
        self._awaiting: dict[int, tuple[Done | None, float]] = {}
        self._acked_at = 0.0
        # packet ids failed without their PUBACK, which paho keeps: the broker may still
        # answer them, and paho gives none of them to a publish until it does (the
        # link's thread only)
        self._expired: set[int] = set()
        self._woken = False
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        client.on_publish = self._on_publish
        self._thread = threading.Thread(target=self._run, name="fieldpass-mqtt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, retain: bool = False, done: Done | None = None
    ) -> None:
        """Publish at QoS 1 once the window has room (waits for it, except on the
        link's own thread); ``done`` is told, on the link's thread, whether the broker
        acknowledged it."""
        on_loop = threading.current_thread() is self._thread
        wake = False
        with self._room:
            while not on_loop and not self._stopping and self._used() >= self.window:
                self._room.wait()
            stopped = self._stopping
            if not stopped:
                self._queued.append((topic, payload, retain, done))
                wake = not self._woken
                self._woken = True
        if stopped:
            if done is not None:
                done(False)
        elif wake:
            self._wake()

    def awaiting(self) -> int:
        """Publishes waiting to be written or for their PUBACK (at most ``window``)."""
        with self._lock:
            return self._used()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every publish is settled (acknowledged or failed); False if some
        are still outstanding after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._room:
            while self._used() and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(min(left, 0.5))
        return True

    def close(self, flush_s: float = 0.0) -> None:
        """Settle what is outstanding (up to ``flush_s``), disconnect, stop the thread."""
        if flush_s > 0 and self._thread.is_alive():
            self.flush(flush_s)
        with self._room:
            self._stopping = True
            self._room.notify_all()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(10)
        else:  # never started: nothing runs paho but this thread
            self.client.disconnect()
        self._wake_r.close()
        self._wake_w.close()

    def _used(self) -> int:
        return len(self._queued) + self._writing + len(self._awaiting)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the thread is awake anyway) or closed
            pass

    # -- the link's thread --------------------------------------------------------------
    def _on_publish(
        self, client: object, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        # MQTT 5: a PUBACK with a failure reason code (0x80 and up: 0x87 not authorized,
        # 0x97 quota exceeded...) is the broker refusing the message; a success-class
        # code (0x10 no matching subscribers) is an acknowledgement.
        accepted = not getattr(reason, "is_failure", False)
        with self._lock:
            if mid in self._expired:  # failed already: told once
                self._expired.discard(mid)
                entry = None
            else:
                entry = self._awaiting.pop(mid, None)
            self._acked_at = time.monotonic()
        if entry is not None and entry[0] is not None:
            entry[0](accepted)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # paho failed under us: say so, and fail what waits
            log.exception("the MQTT link stopped")
        finally:
            with self._room:
                self._stopping = True
                left = [done for *_, done in self._queued]
                left += [done for done, _ in self._awaiting.values()]
                self._queued.clear()
                self._awaiting.clear()
                self._expired.clear()
                self._room.notify_all()
            for done in left:
                if done is not None:
                    done(False)

    def _loop(self) -> None:
        client = self.client
        misc_at = time.monotonic()
        retry_s = 1.0
        while True:
            with self._lock:
                if self._stopping:
                    break
            sock = client.socket()
            if sock is None:  # paho keeps what is published now, and writes it once back
                self._write_queued()
                self._expire(time.monotonic())
                retry_s = self._reconnect(retry_s)
                continue
            wants = [sock] if client.want_write() else []
            pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS: read already
            try:
                readable, _, _ = select.select([sock, self._wake_r], wants, [], 0 if pending else 1)
            except (OSError, ValueError, TypeError):  # closed under us: reconnect
                readable = []
            if self._wake_r in readable:
                self._drain_wake()
            if sock in readable or pending:
                client.loop_read()
            self._write_queued()
            if client.socket() is not None and client.want_write():
                client.loop_write()
            now = time.monotonic()
            if now - misc_at >= MISC_EVERY_S:
                misc_at = now
                client.loop_misc()
            self._expire(now)
            retry_s = 1.0
        client.disconnect()

    def _reconnect(self, retry_s: float) -> float:
        """Wait ``retry_s`` (a close ends the wait), try once; the next wait."""
        select.select([self._wake_r], [], [], retry_s)
        self._drain_wake()
        with self._lock:
            if self._stopping:
                return retry_s
        try:
            self.client.reconnect()
        except (OSError, ValueError):
            return min(retry_s * 2, RECONNECT_MAX_S)
        return 1.0

    def _drain_wake(self) -> None:
        with self._lock:
            self._woken = False
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # nothing more to read
            pass

    def _write_queued(self) -> None:
        with self._lock:
            batch = list(self._queued)
            self._queued.clear()
            self._writing = len(batch)  # still counted in the window (``_used``)
        for topic, payload, retain, done in batch:
            # Written at once, or (connection lost meanwhile) kept by paho and written
            # again on reconnection: awaited either way. Its PUBACK can only come in a
            # later loop_read on this thread.
            self._skip_expired_ids()
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            with self._lock:
                self._awaiting[info.mid] = (done, time.monotonic())
                self._writing -= 1

    def _skip_expired_ids(self) -> None:
        """Have paho number the next publish with an id no failed publish it keeps has:
        paho (``Client._mid_generate``, 1 to 65,535 and round again) checks none."""
        expired = self._expired  # changed on this thread only: no lock
        client = self.client
        for _ in range(len(expired)):
            if client._last_mid % 65535 + 1 not in expired:
                break
            client._mid_generate()

    def _expire(self, now: float) -> None:
        """Fail the publishes not acknowledged in time (oldest first); make room."""
        failed: list[Done | None] = []
        with self._room:
            for done, written_at in self._awaiting.values():
                if now < max(written_at, self._acked_at) + self.ack_wait_s:
                    break
                failed.append(done)
            if failed:
                for mid in list(self._awaiting)[: len(failed)]:
                    del self._awaiting[mid]
                    self._expired.add(mid)
            if self._used() < self.window:
                self._room.notify_all()
        for done in failed:
            if done is not None:
                done(False)
