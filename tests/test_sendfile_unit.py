"""``FileSender``'s flow control, with and without ``os.sendfile``, without a running reactor.

The sendfile path needs a real socket: each test connects two TCP sockets on
127.0.0.1 and puts the server's end in a real ``twisted.internet.tcp``
transport on a ``MemoryReactorClock``. The test plays the reactor: it calls
the transport's ``doWrite`` while the transport is registered for writing, and
reads the client's end (with small socket buffers, so the socket fills and
sendfile meets EAGAIN many times per body).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from devpid.files import sender as sender_module
from devpid.files.sender import TURN_BYTES, FileSender, sendfile_transport

BIG = 3 * TURN_BYTES + 12345  # several turns' worth, and not a round number
SMALL = 50_000  # one read and one write, with the headers


class SocketTransport(tcp.Connection):
    """The server's end of a real TCP connection, on the test's reactor."""

    connected = 1  # as ``tcp.Server`` has it once accepted

    def getPeer(self) -> IPv4Address:
        host, port = self.socket.getpeername()
        return IPv4Address("TCP", host, port)

    def getHost(self) -> IPv4Address:
        host, port = self.socket.getsockname()
        return IPv4Address("TCP", host, port)


class Files(Resource):
    """``/<name>``: the file ``name`` of ``root``, sent by a ``FileSender`` (kept in ``sent``)."""

    isLeaf = True

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.senders: list[FileSender] = []

    def render_GET(self, request: server.Request) -> Any:
        path = self.root / request.postpath[0].decode()
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        request.setHeader(b"content-length", b"%d" % size)
        sender = FileSender(request, fd, size)
        self.senders.append(sender)
        sender.start()
        return server.NOT_DONE_YET


class Connection:
    """A site's channel on a real socket, and the client's end of it."""

    def __init__(self, root: Path, timeout: float | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.files = Files(root)
        site = server.Site(self.files, reactor=self.reactor)
        site.timeOut = timeout
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.socket()
        # Small buffers both ways: the server's socket is full after a few KiB.
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.client.connect(listener.getsockname())
        accepted, address = listener.accept()
        listener.close()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.client.setblocking(False)
        self.channel = site.buildProtocol(IPv4Address("TCP", *address))
        self.transport = SocketTransport(accepted, self.channel, self.reactor)
        self.channel.makeConnection(self.transport)
        self.received = bytearray()
        self.lost = False

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def turn(self) -> bool:
        """One turn of the reactor the test plays; whether anything happened."""
        moved = False
        if self.transport in self.reactor.getWriters():
            why = self.transport.doWrite()
            moved = True
            if why is not None and not self.lost:
                self.lose(Failure(why))
        if self.client.fileno() == -1:  # the client closed its end
            return moved
        try:
            data = self.client.recv(65536)
        except BlockingIOError:
            return moved
        self.received += data
        return True

    def lose(self, reason: Failure) -> None:
        """What the reactor does with a transport whose ``doWrite`` failed."""
        self.lost = True
        self.reactor.removeWriter(self.transport)
        self.reactor.removeReader(self.transport)
        self.transport.connectionLost(reason)

    def run_until(self, condition: Callable[[], bool]) -> None:
        idle = 0
        while not condition():
            idle = 0 if self.turn() else idle + 1
            if idle > 1000:  # the loopback delivers at once: nothing will come
                raise AssertionError(f"stuck; received {len(self.received)} bytes")

    def responses(self, count: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
        """The next ``count`` responses (status line, headers, body), read to their ends."""
        found = []
        for _ in range(count):
            self.run_until(lambda: b"\r\n\r\n" in self.received)
            head = bytes(self.received).partition(b"\r\n\r\n")[0]
            status, *lines = head.split(b"\r\n")
            headers = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines)}
            length = int(headers[b"content-length"])
            del self.received[: len(head) + 4]
            self.run_until(lambda length=length: len(self.received) >= length)
            found.append((status, headers, bytes(self.received[:length])))
            del self.received[:length]
        return found

    def close(self) -> None:
        self.client.close()
        if not self.lost:
            self.lose(Failure(ConnectionError("test over")))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    contents = {"big": os.urandom(BIG), "other": os.urandom(BIG - 999), "small": os.urandom(SMALL)}
    for name, body in contents.items():
        (tmp_path / name).write_bytes(body)
    return contents


@pytest.fixture
def connection(tmp_path: Path, files: dict[str, bytes]) -> Iterator[Connection]:
    made = Connection(tmp_path)
    yield made
    made.close()


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``count`` of each ``os.sendfile`` call the sender makes."""
    calls: list[int] = []
    real = os.sendfile

    def counted(out: int, in_: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out, in_, offset, count)

    monkeypatch.setattr(sender_module.os, "sendfile", counted)
    return calls


def get(name: str) -> bytes:
    return f"GET /{name} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_a_big_file_goes_by_sendfile_through_a_full_socket(
    connection: Connection, files: dict[str, bytes], sendfile_calls: list[int]
) -> None:
    connection.send(get("big"))
    [(status, headers, body)] = connection.responses(1)
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"content-length"] == b"%d" % BIG
    assert hashlib.sha256(body).digest() == hashlib.sha256(files["big"]).digest()
    [sender] = connection.files.senders
    assert sender.transport is not None and sender.fd is None  # by sendfile; closed
    # The socket took a few KiB at a time: many waits for it, never a byte lost.
    assert len(sendfile_calls) > 20
    assert max(sendfile_calls) <= TURN_BYTES
    assert sender.request.sentLength == BIG
    assert sender.request.finished


def test_no_sendfile_while_the_transport_holds_bytes(
    connection: Connection, files: dict[str, bytes], sendfile_calls: list[int]
) -> None:
    """Resumed early (by whatever), the sender still lets the headers go first."""
    connection.send(get("big"))
    [sender] = connection.files.senders
    assert connection.transport.dataBuffer or connection.transport._tempDataLen  # the headers
    sender.resumeProducing()
    assert sendfile_calls == [] and sender.paused
    [(_, _, body)] = connection.responses(1)
    assert body == files["big"]


def test_one_turn_sends_at_most_its_share(
    tmp_path: Path, files: dict[str, bytes], sendfile_calls: list[int]
) -> None:
    """With room in the socket, a turn stops after TURN_BYTES and the transport wakes it."""
    made = Connection(tmp_path)
    try:
        made.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * TURN_BYTES)
        made.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * TURN_BYTES)
        made.send(get("big"))
        [(_, _, body)] = made.responses(1)
        assert body == files["big"]
        assert all(count <= TURN_BYTES for count in sendfile_calls)
    finally:
        made.close()


def test_keep_alive_and_pipelined_bodies_do_not_interleave(
    connection: Connection, files: dict[str, bytes], sendfile_calls: list[int]
) -> None:
    """A small answer still in the transport's buffer, then big ones by sendfile, in order."""
    connection.send(get("small") + get("big") + get("small") + get("other"))
    answers = connection.responses(4)
    assert [body for _, _, body in answers] == [
        files["small"],
        files["big"],
        files["small"],
        files["other"],
    ]
    connection.send(get("big"))  # the same connection, kept alive
    [(_, _, body)] = connection.responses(1)
    assert body == files["big"]
    assert [s.fd for s in connection.files.senders] == [None] * 5
    small = [s for s in connection.files.senders if s.size == SMALL]
    assert all(s.transport is None for s in small)  # one read and one write, no sendfile


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
@pytest.mark.parametrize("after", [0, 3])
def test_sendfile_failing_hands_the_rest_to_reads_and_writes(
    connection: Connection,
    files: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    after: int,
) -> None:
    real = os.sendfile
    calls = []

    def failing(out: int, in_: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(out, in_, offset, count)

    monkeypatch.setattr(sender_module.os, "sendfile", failing)
    connection.send(get("big") + get("other"))
    answers = connection.responses(2)
    assert [body for _, _, body in answers] == [files["big"], files["other"]]
    assert [s.request.sentLength for s in connection.files.senders] == [BIG, BIG - 999]
    assert all(s.transport is None and s.fd is None for s in connection.files.senders)


def test_a_client_gone_mid_body_closes_the_file_once(
    connection: Connection, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[int] = []
    real_close = os.close

    def counted_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(sender_module.os, "close", counted_close)
    connection.send(get("big"))
    connection.run_until(lambda: len(connection.received) > 100_000)
    [sender] = connection.files.senders
    fd = sender.fd
    finished: list[object] = []
    sender.request.notifyFinish().addBoth(finished.append)
    # The client resets the connection: sendfile or the transport's write fails.
    connection.client.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    connection.client.close()
    connection.run_until(lambda: connection.lost)
    assert sender.fd is None and closed.count(fd) == 1 if fd is not None else True
    assert len(finished) == 1 and isinstance(finished[0], Failure)
    assert 0 < sender.request.sentLength < BIG
    assert not sender.request.finished


def test_the_idle_timer_does_not_cut_a_slow_body(tmp_path: Path, files: dict[str, bytes]) -> None:
    """twisted.web turns the channel's timer off while it answers: a slow reader is not cut."""
    made = Connection(tmp_path, timeout=5)
    try:
        made.send(get("big"))
        made.run_until(lambda: len(made.received) > 200_000)
        made.reactor.advance(60)  # far past the idle timeout, mid-body
        assert not made.transport.disconnecting and not made.lost
        [(_, _, body)] = made.responses(1)
        assert body == files["big"]
        made.reactor.advance(6)  # idle after the answer: now it times out
        assert made.transport.disconnecting
    finally:
        made.close()


def test_without_a_socket_the_file_is_read_and_written(tmp_path: Path) -> None:
    """A transport that is not a TCP socket (a test's, TLS, HTTP/2): chunks through twisted.web."""
    body = os.urandom(BIG)
    (tmp_path / "f").write_bytes(body)
    channel = DummyChannel()
    request = server.Request(channel)
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.setHeader(b"content-length", b"%d" % BIG)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    sender = FileSender(request, fd, BIG)
    sender.start()
    assert sender.transport is None
    transport: Any = channel.transport
    assert transport.written.getvalue().endswith(body)
    assert request.sentLength == BIG and request.finished and sender.fd is None


def test_paused_by_the_consumer_the_read_path_waits(tmp_path: Path) -> None:
    """The read path writes until paused and goes on when resumed, as before."""
    body = os.urandom(BIG)
    (tmp_path / "f").write_bytes(body)
    written = bytearray()
    sender: FileSender

    class Pausing(StringTransport):
        def write(self, data: bytes) -> None:
            written.extend(data)
            sender.pauseProducing()

    request = server.Request(DummyChannel())
    request.method = b"GET"
    request.setHeader(b"content-length", b"%d" % BIG)
    request.channel.transport = Pausing()  # type: ignore[attr-defined]
    sender = FileSender(request, os.open(tmp_path / "f", os.O_RDONLY), BIG)
    sender.start()
    assert 0 < sender.offset < BIG and not request.finished
    while not request.finished:
        sender.resumeProducing()
    assert bytes(written).endswith(body) and sender.fd is None


@pytest.mark.parametrize(
    "change",
    [
        lambda r: setattr(r, "method", b"HEAD"),
        lambda r: r.responseHeaders.removeHeader(b"content-length"),
        lambda r: setattr(r, "_encoder", object()),
        lambda r: setattr(r, "isSecure", lambda: True),
    ],
    ids=["HEAD", "no length", "encoded", "TLS"],
)
def test_sendfile_only_for_a_plain_get_with_a_length(
    connection: Connection, change: Callable[[server.Request], object]
) -> None:
    request = server.Request(connection.channel._channel)
    request.method = b"GET"
    request.setHeader(b"content-length", b"1000000")
    assert sendfile_transport(request) is connection.transport
    change(request)
    assert sendfile_transport(request) is None
