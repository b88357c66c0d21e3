"""A pass-through HTTP server on loopback that pip resolves through.

pip before 25.3 downloads every wheel it resolved even with ``--dry-run``
(pypa/pip#12603), so by the time its report is read, devpid has already fetched
those files and a second request would only ever see ``hit``. Rather than fetch
them twice and count them wrong, pip is pointed at this relay: it forwards each
request to devpid unchanged (same path, same headers, devpid's ``Host``), streams
the answer back chunk by chunk, and records, for every distribution file, whether
devpid answered ``X-Devpid-Cache: hit`` or ``miss`` and how many bytes went through.
Those files are then counted from the record and not fetched again; a newer pip that
downloads nothing simply leaves the record empty.

One thread per connection (``ThreadingHTTPServer``), one connection to devpid per
request, nothing buffered beyond one chunk.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs

from devpid.tools.warm.http import CACHE_HEADER, Origin, file_key, is_distribution_path
from devpid.tools.warm.progress import Progress

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_RELAY_CHUNK = 256 * 1024


@attrs.frozen
class Relayed:
    """What devpid answered for one distribution file pip downloaded."""

    path: str
    status: int
    cache: str | None
    size: int
    expected_size: int | None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return (
            self.status == 200
            and self.error is None
            and (self.expected_size is None or self.size == self.expected_size)
        )


@attrs.define
class Relay:
    """Forwards to ``origin``; ``records`` maps a file's path to what devpid said."""

    origin: Origin
    progress: Progress
    timeout: float
    records: dict[str, Relayed] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def record(self, relayed: Relayed) -> None:
        """Keep the first complete answer for a file: it says whether this warm fetched it."""
        key = file_key(relayed.path)
        with self._lock:
            earlier = self.records.get(key)
            if earlier is None or not earlier.complete:
                self.records[key] = relayed

    def forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = self.origin.connect(self.timeout)
        try:
            try:
                connection.request(method, handler.path, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as e:
                handler.send_error(502, f"devpid-warm relay: {e}")
                return
            self._answer(handler, method, response)
        finally:
            connection.close()

    def _answer(
        self, handler: BaseHTTPRequestHandler, method: str, response: http.client.HTTPResponse
    ) -> None:
        is_file = method == "GET" and is_distribution_path(handler.path)
        length_text = response.getheader("content-length")
        expected = int(length_text) if length_text and length_text.isdigit() else None
        has_body = method != "HEAD" and response.status not in (204, 304)
        chunked = has_body and expected is None
        handler.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                handler.send_header(name, value)
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        if not has_body:
            return
        counting = is_file and response.status == 200
        if counting:
            self.progress.expect_file()
            if expected is not None:
                self.progress.expect_bytes(expected)
        size, error = 0, None
        try:
            while chunk := response.read1(_RELAY_CHUNK):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                size += len(chunk)
                if counting:
                    self.progress.advance_bytes(len(chunk))
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException) as e:
            error = f"cut off after {size} bytes: {e.__class__.__name__}"
            handler.close_connection = True
        if counting:
            self.progress.file_done()
        if is_file:
            cache = response.getheader(CACHE_HEADER)
            self.record(Relayed(handler.path, response.status, cache, size, expected, error))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RelayServer

    def do_GET(self) -> None:
        self.server.relay.forward(self, "GET")

    def do_HEAD(self) -> None:
        self.server.relay.forward(self, "HEAD")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pip's own errors say what went wrong."""


class _RelayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, relay: Relay) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.relay = relay


@contextmanager
def running_relay(relay: Relay) -> Iterator[str]:
    """Serve ``relay`` on a loopback port while the block runs; yields its base URL."""
    server = _RelayServer(relay)
    thread = threading.Thread(target=server.serve_forever, name="devpid-warm-relay", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
