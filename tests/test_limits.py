"""Resource limits: header size, URL length, body size, connections per client, idle timeout.

Each limit is shown with its default and with a configured value, through the
real site on a memory reactor; then a real ``twistd -n devpid`` with small
limits meets a slowloris, a client with too many connections and an oversize
header.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from devpid.config import DEFAULTS
from devpid.http.limits import LINGER_SECONDS, Limits
from devpid.http.site import DevpidSite
from devpid.service import ListenerService
from devpid.tap import makeService
from tests.fixtures.devpid_process import DevpidProcess

UNREACHABLE_UPSTREAM = "http://127.0.0.1:9/simple/"


# -- in memory -----------------------------------------------------------------


class HalfClosingTransport(StringTransport):
    """A TCP-like transport: it can end its writing side and keep reading."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


@attrs.define
class Connection:
    protocol: Any
    transport: StringTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def closed(self) -> bool:
        transport = self.transport
        return bool(transport.disconnecting or getattr(transport, "write_closed", False))

    def answer(self) -> tuple[int, bytes]:
        """The status and body of the one response written so far."""
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), self.transport.value()[:300]
        return int(head.split()[1]), body

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("closed")))


@attrs.define
class Site:
    """``twistd devpid`` on a memory reactor, with the given options; connections in bytes."""

    site: DevpidSite
    reactor: MemoryReactorClock
    access: list[LogEvent]

    def connect(
        self, host: str = "10.0.0.1", port: int = 40000, half_close: bool = False
    ) -> Connection:
        address: Any = IPv4Address("TCP", host, port)
        protocol = self.site.buildProtocol(address)
        transport = (HalfClosingTransport if half_close else StringTransport)(peerAddress=address)
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def request(self, head: bytes, body: bytes = b"", **connect: Any) -> Connection:
        connection = self.connect(**connect)
        connection.send(head + b"\r\n\r\n" + body)
        return connection

    def codes(self) -> list[int]:
        return [event["code"] for event in self.access]


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Any]:
    observers: list[Any] = []

    def make(**options: str) -> Site:
        reactor = MemoryReactorClock()
        given = {
            "serverdir": str(tmp_path / "serverdir"),
            "upstream": UNREACHABLE_UPSTREAM,
            "listen": "tcp:0:interface=127.0.0.1",
            "changelog-interval": "0",
            **options,
        }
        top = makeService(given, reactor=reactor)
        site = next(s for s in top if isinstance(s, ListenerService)).site
        assert isinstance(site, DevpidSite)
        access: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_source") is site and "code" in event:  # an access-log line
                access.append(event)
            assert "log_failure" not in event, event  # never a traceback

        globalLogPublisher.addObserver(observe)
        observers.append(observe)
        return Site(site, reactor, access)

    yield make
    for observe in observers:
        globalLogPublisher.removeObserver(observe)


def get(path: bytes = b"/+metrics", *headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"\r\n".join([b"GET " + path + b" " + version, b"Host: devpid", *headers])


def assert_refused(connection: Connection, code: int, mentions: str, closes: bool = True) -> None:
    status, body = connection.answer()
    assert status == code
    assert body.count(b"\n") == 1 and body.endswith(b"\n"), body
    assert body.startswith(b"%d " % code)
    assert mentions.encode() in body, body
    assert b"Traceback" not in connection.transport.value()
    assert connection.closed is closes


def test_the_defaults_match_the_settings() -> None:
    assert Limits() == Limits(
        max_header_size=DEFAULTS["max-header-size"][0],
        max_url_length=DEFAULTS["max-url-length"][0],
        max_body_size=DEFAULTS["max-body-size"][0],
        max_connections_per_client=DEFAULTS["max-connections-per-client"][0],
        idle_timeout=DEFAULTS["idle-timeout"][0],
    )
    assert DEFAULTS["max-upload-size"][0] == "1G"
    assert Limits() == Limits(16384, 8192, 65536, 0, 75.0)


def padding(total: int) -> list[bytes]:
    """Header fields of ``total`` bytes in all, each counted with its CRLF."""
    fields = []
    while total > 0:
        size = min(total, 1000)
        assert size >= 8
        fields.append(b"X-" + b"a" * (size - 7) + b": b")
        total -= size
    return fields


@pytest.mark.parametrize(("options", "limit"), [({}, 16384), ({"max-header-size": "2048"}, 2048)])
def test_max_header_size(make_site: Any, options: dict[str, str], limit: int) -> None:
    site = make_site(**options)
    host = len(b"Host: devpid\r\n")
    fits = site.request(get(b"/+metrics", *padding(limit - host)))
    assert fits.answer()[0] == 200

    over = site.request(get(b"/+metrics", *padding(limit - host + 10)))
    assert_refused(over, 431, f"the header fields are over {limit} bytes")
    # One header field longer than any line the parser buffers.
    long_line = site.request(get(b"/+metrics", b"X-Long: " + b"a" * (limit + 100)))
    assert_refused(long_line, 431, f"over {limit} bytes")
    assert site.codes() == [200, 431, 431]
    assert site.access[1]["uri"] == "/+metrics"


def test_header_fields_are_counted_too(make_site: Any) -> None:
    site = make_site()
    fits = site.request(get(b"/+metrics", *[b"X: y"] * 499))  # and Host
    assert fits.answer()[0] == 200
    many = site.request(get(b"/+metrics", *[b"X: y"] * 500))
    assert_refused(many, 431, "more than 500 header fields")


@pytest.mark.parametrize(("options", "limit"), [({}, 8192), ({"max-url-length": "300"}, 300)])
def test_max_url_length(make_site: Any, options: dict[str, str], limit: int) -> None:
    site = make_site(**options)
    base = b"/+metrics?"
    fits = site.request(get(base + b"a" * (limit - len(base))))
    assert fits.answer()[0] == 200
    over = site.request(get(base + b"a" * (limit - len(base) + 1)))
    assert_refused(over, 414, f"at most {limit} bytes", closes=False)  # an ordinary answer
    # A request line longer than the parser buffers is refused as it arrives.
    huge = site.connect()
    huge.send(b"GET /" + b"a" * (limit + 20000))
    assert_refused(huge, 414, f"at most {limit} bytes")
    assert site.codes() == [200, 414, 414]


def test_max_url_length_default_is_unchanged(make_site: Any) -> None:
    site = make_site()
    assert site.request(get(b"/" + b"a" * 8191)).answer()[0] == 404
    assert site.request(get(b"/" + b"a" * 8192)).answer()[0] == 414


def post(path: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b"POST " + path + b" HTTP/1.1", b"Host: devpid", *headers])


def chunked(body: bytes, size: int = 10) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [*parts, b""])


@pytest.mark.parametrize(("options", "limit"), [({}, 65536), ({"max-body-size": "100"}, 100)])
def test_max_body_size(make_site: Any, options: dict[str, str], limit: int) -> None:
    site = make_site(**options)
    # /+metrics takes no POST: a body within the limit reaches it and gets its 405.
    fits = site.request(post(b"/+metrics", b"Content-Length: %d" % limit), b"x" * limit)
    assert fits.answer()[0] == 405
    # Refused on the announced length, before any of the body arrives.
    announced = site.request(post(b"/+metrics", b"Content-Length: %d" % (limit + 1)))
    assert_refused(announced, 413, f"the body is over {limit} bytes")
    # No 100 Continue for a body that is refused.
    expecting = site.request(
        post(b"/+metrics", b"Expect: 100-continue", b"Content-Length: %d" % (limit + 1))
    )
    assert b"100 Continue" not in expecting.transport.value()
    assert_refused(expecting, 413, f"the body is over {limit} bytes")
    # A chunked body is counted as it arrives.
    small = site.request(post(b"/+metrics", b"Transfer-Encoding: chunked"), chunked(b"x" * limit))
    assert small.answer()[0] == 405
    big = site.request(
        post(b"/+metrics", b"Transfer-Encoding: chunked"), chunked(b"x" * (limit + 1), 1000)
    )
    assert_refused(big, 413, f"the body is over {limit} bytes")
    assert site.codes() == [405, 413, 413, 405, 413]


def test_max_body_size_zero_is_no_limit(make_site: Any) -> None:
    site = make_site(**{"max-body-size": "0"})
    size = 300_000
    connection = site.request(post(b"/+metrics", b"Content-Length: %d" % size), b"x" * size)
    assert connection.answer()[0] == 405


@pytest.mark.parametrize(("options", "limit"), [({}, 0), ({"max-connections-per-client": "2"}, 2)])
def test_max_connections_per_client(make_site: Any, options: dict[str, str], limit: int) -> None:
    site = make_site(**options)
    allowed = limit or 50
    held = [site.connect(port=40000 + n) for n in range(allowed)]
    assert not any(connection.transport.value() for connection in held)
    assert site.site.connections == {"10.0.0.1": allowed}
    if not limit:
        return
    refused = site.connect(port=41000, half_close=True)
    assert_refused(refused, 503, f"too many connections from 10.0.0.1 (at most {limit})")
    assert refused.protocol.transport.write_closed
    refused.send(get())  # what it still sends is read and dropped
    assert refused.answer()[0] == 503
    refused.lose()
    assert site.codes() == [503]
    assert site.access[0]["client"] == "10.0.0.1"
    # The connections held go on; others' are not counted against this client's.
    held[0].send(get() + b"\r\n\r\n")
    assert held[0].answer()[0] == 200
    other = site.connect(host="10.0.0.2")
    assert not other.closed
    # A UNIX socket has no client address: it is not counted.
    unix = site.site.buildProtocol(UNIXAddress(None))
    unix.makeConnection(StringTransport(peerAddress=UNIXAddress(None)))
    assert unix.transport.value() == b""
    # Once one closes, the client may open another.
    held[1].lose()
    again = site.connect(port=41001)
    assert not again.closed
    assert site.site.connections == {"10.0.0.1": limit, "10.0.0.2": 1}


def test_a_refused_connection_lingers_then_is_aborted(make_site: Any) -> None:
    site = make_site(**{"max-connections-per-client": "1"})
    site.connect()
    refused = site.connect(port=40001, half_close=True)
    assert refused.answer()[0] == 503
    transport = refused.transport
    assert isinstance(transport, HalfClosingTransport)
    assert transport.write_closed and not transport.aborted
    site.reactor.advance(LINGER_SECONDS)
    assert transport.aborted
    refused.lose()
    assert site.site.connections == {"10.0.0.1": 1}


@pytest.mark.parametrize(("options", "timeout"), [({}, 75.0), ({"idle-timeout": "5"}, 5.0)])
def test_idle_timeout(make_site: Any, options: dict[str, str], timeout: float) -> None:
    site = make_site(**options)
    reactor = site.reactor
    # An idle connection is closed quietly.
    idle = site.connect()
    reactor.advance(timeout - 0.5)
    assert not idle.closed
    reactor.advance(1)
    assert idle.closed
    assert idle.transport.value() == b""

    # A keep-alive connection: the timer starts again after each answer.
    kept = site.connect(port=40001)
    reactor.advance(timeout - 0.5)
    kept.send(get() + b"\r\n\r\n")
    assert kept.answer()[0] == 200
    reactor.advance(timeout - 0.5)
    assert not kept.closed
    reactor.advance(1)
    assert kept.closed

    # A slowloris: bytes trickling in do not restart the timer; the request gets 408.
    slow = site.connect(port=40002)
    reactor.advance(timeout / 2)
    slow.send(b"GET /+metrics HTTP/1.1\r\n")
    for _ in range(9):
        reactor.advance(timeout / 10)
        slow.send(b"X: y\r\n")
    assert not slow.closed
    reactor.advance(timeout / 10)
    assert_refused(slow, 408, f"the request did not arrive within {timeout:g} seconds")
    assert site.codes() == [200, 408]
    assert site.access[-1]["uri"] == "/+metrics"


def test_idle_timeout_zero_never_closes(make_site: Any) -> None:
    site = make_site(**{"idle-timeout": "0"})
    connection = site.connect()
    connection.send(b"GET /+metrics HTTP/1.1\r\n")
    site.reactor.advance(100_000)
    assert not connection.closed


def test_a_malformed_request_gets_one_line_too(make_site: Any) -> None:
    site = make_site()
    bad = site.request(b"GET /+metrics HTTP/1.1\r\nno colon here")
    assert_refused(bad, 400, "the request is malformed")
    bad_chunk = site.request(post(b"/+metrics", b"Transfer-Encoding: chunked"), b"zz\r\n")
    assert_refused(bad_chunk, 400, "the request is malformed")
    assert site.codes() == [400, 400]


def test_refusals_are_counted_in_the_metrics(make_site: Any) -> None:
    site = make_site(**{"max-url-length": "256"})
    assert_refused(site.request(get(b"/" + b"a" * 300)), 414, "at most 256 bytes", closes=False)
    assert_refused(
        site.request(post(b"/root/pypi/+simple/x/refresh", b"Content-Length: 99999999")),
        413,
        "the body is over",
    )
    assert site.site.requests is not None
    counted = site.site.requests.requests
    # Refused before the router: no route took them, whatever their path.
    assert counted["other", 414] == 1
    assert counted["other", 413] == 1
    assert site.site.stats.totals()["requests"] == 2


# -- a real twistd -------------------------------------------------------------


def start_devpid(tmp_path: Path, *options: str) -> DevpidProcess:
    return DevpidProcess.start(
        tmp_path / "serverdir", UNREACHABLE_UPSTREAM, "--changelog-interval", "0", *options
    )


def raw_exchange(url: str, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def status_code(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split()[1])


def one_line_body(raw: bytes) -> bytes:
    body = raw.partition(b"\r\n\r\n")[2]
    assert body.count(b"\n") == 1 and body.endswith(b"\n"), raw
    return body


@pytest.mark.integration
def test_real_devpid_closes_a_slowloris_and_serves_others(tmp_path: Path) -> None:
    timeout = 2.0
    with start_devpid(tmp_path, "--idle-timeout", str(timeout)) as devpid:
        slow = connect(devpid.url)
        started = time.monotonic()
        slow.sendall(b"GET /+status HTTP/1.1\r\nHost: devpid\r\n")
        slow.setblocking(False)
        received = b""
        served = 0
        while time.monotonic() - started < 60:
            # Once the server has closed its side, sending may fail; its answer is still to read.
            with contextlib.suppress(OSError):
                slow.sendall(b"X-Slow: 1\r\n")
            try:
                chunk = slow.recv(65536)
            except BlockingIOError:
                chunk = None
            except OSError:
                break
            if chunk == b"":
                break
            if chunk:
                received += chunk
                continue
            # Others are served meanwhile.
            assert devpid.get("/+status").status == 200
            served += 1
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        slow.close()
        assert status_code(received) == 408, received
        assert b"408 Request Timeout: the request did not arrive within 2 seconds\n" in received
        assert elapsed >= timeout - 0.1  # the timer starts after the connection is accepted
        assert elapsed < 60
        assert served >= 1
        log = devpid.log_text()
        assert '"GET /+status" 408 ' in log
        assert "Traceback" not in log


@pytest.mark.integration
def test_real_devpid_refuses_connections_over_the_limit_and_oversize_headers(
    tmp_path: Path,
) -> None:
    limit = 3
    options = ("--max-connections-per-client", str(limit), "--max-header-size", "1024")
    with start_devpid(tmp_path, *options) as devpid:
        held = [connect(devpid.url) for _ in range(limit)]
        try:
            # A request on each proves the server counted them all.
            for sock in held:
                sock.sendall(b"GET /+status HTTP/1.1\r\nHost: devpid\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            refused = raw_exchange(devpid.url, b"GET /+status HTTP/1.1\r\nHost: devpid\r\n\r\n")
            assert status_code(refused) == 503
            assert one_line_body(refused) == (
                b"503 Service Unavailable: too many connections from 127.0.0.1 (at most 3)\n"
            )
        finally:
            for sock in held:
                sock.close()

        # Once they are closed, the client is served again (the server may take a moment).
        deadline = time.monotonic() + 30
        while devpid.get("/+status").status == 503:
            assert time.monotonic() < deadline, "the closed connections were never released"
            time.sleep(0.1)

        oversize = raw_exchange(
            devpid.url,
            b"GET /+status HTTP/1.1\r\nHost: devpid\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n",
        )
        assert status_code(oversize) == 431
        assert one_line_body(oversize) == (
            b"431 Request Header Fields Too Large: the header fields are over 1024 bytes\n"
        )
        assert devpid.get("/+status").status == 200
        log = devpid.log_text()
        assert '"- -" 503 ' in log
        assert '"GET /+status" 431 ' in log
        assert "Traceback" not in log


class _CountingHostTransport(StringTransport):
    hosts_asked = 0

    def getHost(self) -> Any:
        self.hosts_asked += 1
        return super().getHost()


def test_a_connection_asks_its_socket_for_the_local_address_once(make_site: Any) -> None:
    site = make_site()
    address: Any = IPv4Address("TCP", "10.0.0.1", 40000)
    protocol = site.site.buildProtocol(address)
    transport = _CountingHostTransport(peerAddress=address)
    protocol.makeConnection(transport)
    for _ in range(3):  # three requests on one keep-alive connection
        protocol.dataReceived(b"GET /+api HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200 ") == 3
    assert transport.hosts_asked == 1
