"""The HTTP site: one structured access-log line per request, no tracebacks to clients.

Every connection is held to the site's ``Limits`` (see docs/configuration.md):
the size of a request's header fields, URL and body, the connections one client
address may hold, and how long a connection may sit idle or take to send a
request. What goes over a limit is refused by ``LimitedChannel`` in one line
(``431 Request Header Fields Too Large: ...``), logged in the access log like
any answer, and the connection is closed.

On shutdown the site *drains*: idle keep-alive connections are closed (a proxy
in front retries elsewhere), and every response from then on says
``Connection: close``, so no new work reaches a process that is stopping.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections import Counter
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from devpid.common.stats import Stats
from devpid.ops.metrics import RequestMetrics, route_name

#: Room for the method, the version and the spaces around the URL in a request line.
REQUEST_LINE_SLACK = 64
#: Seconds a refused connection is read (and what arrives dropped) after the answer,
#: so that closing it does not reset it under a client that is still sending.
LINGER_SECONDS = 2.0


@attrs.frozen
class Limits:
    """What one client may send, and for how long (``--max-*``, ``--idle-timeout``)."""

    #: Bytes of a request's header fields in all, each with its CRLF (not the request line).
    max_header_size: int = 16384
    #: Bytes of a request's URL, as sent.
    max_url_length: int = 8192
    #: Bytes of a request body (as announced, or as received when chunked); 0: no limit.
    max_body_size: int = 65536
    #: Connections one client address may hold open at once; 0: no limit.
    max_connections_per_client: int = 0
    #: Seconds a connection may sit idle between requests, and a request may take to
    #: arrive once it started; 0: never time out.
    idle_timeout: float = 75.0


class TimedRequest(Request):
    """A request that knows when it arrived, for the access log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = time.monotonic()

    def handleContentChunk(self, data: bytes) -> None:
        accept_body = getattr(self.channel, "accept_body", None)
        if accept_body is None or accept_body(len(data)):
            super().handleContentChunk(data)


@functools.lru_cache(maxsize=256)  # on every request; a deployment sees few host names
def _routable_host(host: bytes) -> bool:
    """Whether a Host header's name is one the router can take (a UTF-8, IDNA-able name)."""
    try:
        name = host.decode("utf-8").lower()
        if name.startswith("[") and name.endswith("]"):  # an IPv6 literal
            return True
        name.encode("idna")
    except UnicodeError:
        return False
    return True


class RequestGuard(Resource):
    """Refuses what the routes should never see: over-long or non-UTF-8 URLs."""

    isLeaf = True

    def __init__(
        self, routes: IResource, via: bytes | None = None, max_url_length: int = 8192
    ) -> None:
        super().__init__()
        self.routes = routes
        self.via = via
        self.max_url_length = max_url_length

    def render(self, request: Request) -> bytes | int:
        site = getattr(request.channel, "site", None)
        if getattr(site, "draining", False):  # this connection ends with this response
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
        problem = None
        via = request.getHeader(b"via")
        if self.via is not None and via is not None and self.via in via:
            problem = (508, b"508 Loop Detected: this devpid is its own upstream\n")
        elif len(request.uri) > self.max_url_length:
            problem = (414, b"414 URI Too Long: at most %d bytes\n" % self.max_url_length)
        elif request.method != request.method.upper():
            problem = (405, b"405 Method Not Allowed: methods are case-sensitive\n")
        elif not _routable_host(request.getRequestHostname()):
            problem = (400, b"400 Bad Request: the Host header is not a host name\n")
        else:
            try:
                unquote_to_bytes(request.path).decode("utf-8")
            except UnicodeDecodeError:
                problem = (400, b"400 Bad Request: the path is not valid UTF-8\n")
        if problem is None:
            return self.routes.render(request)
        request.setResponseCode(problem[0])
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return problem[1]


class LimitedChannel(HTTPChannel):
    """HTTP/1.1 held to the site's ``Limits``; what breaks them is refused in one line.

    The idle timer is twisted.web's, with one change: bytes arriving do not restart
    it, only the first bytes of a request do. A request's line, header fields and
    body must then all arrive within the timeout, so a client trickling bytes
    (slowloris) cannot hold a connection open. While a request is answered the
    timer is off (twisted.web's own rule): a slow download is not cut.
    """

    site: DevpidSite
    limits = Limits()
    #: Bytes of a request have arrived and it is not complete yet.
    _receiving = False
    #: Between a request line and the empty line that ends its header fields.
    _in_head = False
    _request_started: float | None = None
    _request_line = b""
    _header_bytes = 0
    _header_fields = 0
    _body_bytes = 0
    _client: str | None = None
    _counted = False
    _refused = False
    _lingering: IDelayedCall | None = None

    def connectionMade(self) -> None:
        limits = self.limits
        # The longest line twisted.web's parser buffers: a request line or one header field.
        self.MAX_LENGTH = max(limits.max_url_length + REQUEST_LINE_SLACK, limits.max_header_size)
        # twisted.web's own total (request line included) stays behind the checks here.
        self.totalHeadersSize = self.MAX_LENGTH + limits.max_header_size
        super().connectionMade()
        transport: Any = self.transport
        self._client = getattr(transport.getPeer(), "host", None)
        if self._client is None:  # a UNIX socket: no client address to count by
            return
        if not self.site.admit(self._client):
            self.refuse(
                503,
                f"too many connections from {self._client} "
                f"(at most {limits.max_connections_per_client})",
            )
            return
        self._counted = True

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        self._lingering = None
        if self._counted:
            self._counted = False
            assert self._client is not None
            self.site.release(self._client)
        super().connectionLost(reason)

    # -- the request timer ---------------------------------------------------------

    def resetTimeout(self) -> None:
        # twisted.web calls this for every read: only a request's first bytes restart it.
        if not self._receiving:
            self._receiving = True
            self._request_started = time.monotonic()
            super().resetTimeout()

    def timeoutConnection(self) -> None:
        if self._receiving and not self._refused:
            self.refuse(
                408, f"the request did not arrive within {self.limits.idle_timeout:g} seconds"
            )
            return
        super().timeoutConnection()

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._receiving = False
        self._request_line = b""
        self._request_started = None
        super().allContentReceived()

    # -- the request head ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            if line:  # a request line (twisted.web skips one empty line before it)
                self._in_head = True
                self._request_line = line
                self._header_bytes = self._header_fields = self._body_bytes = 0
        elif not line:
            self._in_head = False
        else:
            limit = self.limits.max_header_size
            self._header_bytes += len(line) + 2
            self._header_fields += 1
            if self._header_bytes > limit:
                self.refuse(431, f"the header fields are over {limit} bytes")
                return
            if self._header_fields > self.maxHeaders:
                self.refuse(431, f"more than {self.maxHeaders} header fields")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self.refuse(431, f"the header fields are over {self.limits.max_header_size} bytes")
        else:
            self._request_line = line[: self.MAX_LENGTH]
            self.refuse(414, f"at most {self.limits.max_url_length} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to what it cannot parse is a bare 400: make it one line too.
        self.refuse(400, "the request is malformed")

    # -- the body --------------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        limit = self.limits.max_body_size
        if limit and self.length is not None and self.length > limit:
            self.refuse(413, f"the body is over {limit} bytes")
            return
        super().allHeadersReceived()

    def accept_body(self, size: int) -> bool:
        """Whether the request body may take ``size`` more bytes (a chunked body's count)."""
        if self._refused:
            return False
        self._body_bytes += size
        limit = self.limits.max_body_size
        if limit and self._body_bytes > limit:
            self.refuse(413, f"the body is over {limit} bytes")
            return False
        return True

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    # -- refusing --------------------------------------------------------------------

    def refuse(self, code: int, reason: str) -> None:
        """Answer ``code`` with one line, log it, and close the connection."""
        if self._refused:
            return
        self._refused = True
        self.persistent = False
        self.setTimeout(None)
        status = HTTPStatus(code)
        body = f"{code} {status.phrase}: {reason}\n".encode()
        head = (
            f"HTTP/1.1 {code} {status.phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Cache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        transport: Any = self.transport
        transport.write(head + body)
        self.site.log_refusal(self, code, len(body))
        self._close_after_answer()

    def describe_request(self) -> tuple[str, str, str, float]:
        """The method, URL, user agent and milliseconds so far of the request being refused."""
        method, _, rest = self._request_line.partition(b" ")
        uri = rest.rpartition(b" ")[0] if rest.count(b" ") else rest
        agent = None
        if self.requests:
            agent = self.requests[-1].requestHeaders.getRawHeaders(b"user-agent", [None])[0]
        started = self._request_started
        duration_ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
        return (
            method.decode("latin-1") or "-",
            uri.decode("latin-1") or "-",
            (agent or b"-").decode("latin-1"),
            duration_ms,
        )

    def _close_after_answer(self) -> None:
        producer: Any = self._networkProducer
        producer.unregisterProducer()
        transport: Any = self.transport
        close_write = getattr(transport, "loseWriteConnection", None)
        if close_write is None:
            transport.loseConnection()
            return
        # Closing with unread input resets the connection, and the client may lose
        # the answer: send it and end our side, read (and drop) what still comes
        # until the client closes, for a short while at most.
        close_write()
        self._lingering = self.callLater(LINGER_SECONDS, transport.abortConnection)


class DevpidSite(Site):
    displayTracebacks = False
    requestFactory = TimedRequest
    protocol = LimitedChannel  # type: ignore[assignment]
    access = Logger(namespace="devpid.access")

    def __init__(
        self,
        resource: IResource,
        stats: Stats,
        via: bytes | None = None,
        limits: Limits = Limits(),
        **kwargs: Any,
    ) -> None:
        super().__init__(RequestGuard(resource, via, limits.max_url_length), **kwargs)
        self.stats = stats
        self.limits = limits
        self.timeOut = limits.idle_timeout or None
        #: Where each request is counted for /+metrics and /+status, when set.
        self.requests: RequestMetrics | None = None
        #: True once the process is stopping (see the module's docstring).
        self.draining = False
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Open connections by client address.
        self.connections: Counter[str] = Counter()

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/1.1 only, also over TLS: the limits are enforced by LimitedChannel.
        return [b"http/1.1"]

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.limits = self.limits
            self._channels.add(channel)
        return channel

    def admit(self, client: str) -> bool:
        """Count a new connection from ``client``, unless it has as many as it may have."""
        limit = self.limits.max_connections_per_client
        if limit and self.connections[client] >= limit:
            return False
        self.connections[client] += 1
        return True

    def release(self, client: str) -> None:
        """A connection ``admit`` counted has closed."""
        self.connections[client] -= 1
        if self.connections[client] <= 0:
            del self.connections[client]

    def start_draining(self) -> int:
        """Stop taking new work on open connections; the number of idle ones closed."""
        self.draining = True
        closed = 0
        for channel in list(self._channels):
            transport = getattr(channel, "transport", None)
            if transport is None or not getattr(transport, "connected", True):
                continue
            if channel.requests:  # busy: it closes after its response
                channel.persistent = False
            else:
                transport.loseConnection()
                closed += 1
        return closed

    def log(self, request: Any) -> None:
        address = request.getClientAddress()
        arrived = getattr(request, "arrived", None)
        self._access(
            client=getattr(address, "host", "-"),
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            code=request.code,
            sent=request.sentLength,
            duration_ms=(time.monotonic() - arrived) * 1000 if arrived is not None else 0.0,
            agent=(request.getHeader(b"user-agent") or b"-").decode("latin-1"),
            path=getattr(request, "path", b""),
        )

    def log_refusal(self, channel: LimitedChannel, code: int, sent: int) -> None:
        """Log and count an answer a channel gave itself (a limit, a malformed request)."""
        method, uri, agent, duration_ms = channel.describe_request()
        transport: Any = channel.transport
        self._access(
            client=getattr(transport.getPeer(), "host", "-"),
            method=method,
            uri=uri,
            code=code,
            sent=sent,
            duration_ms=duration_ms,
            agent=agent,
            path=uri.encode("latin-1").partition(b"?")[0],
        )

    def _access(
        self,
        client: str,
        method: str,
        uri: str,
        code: int,
        sent: int,
        duration_ms: float,
        agent: str,
        path: bytes,
    ) -> None:
        self.stats.incr("requests")
        self.stats.incr("bytes_served", sent)
        if self.requests is not None:
            self.requests.observe(route_name(path), code, duration_ms / 1000, sent)
        uri = uri[:2000]
        agent = agent[:200]
        # The line is formatted here once: the log format is then a single field,
        # which is far cheaper for twisted.logger's observers than a full format
        # string on the hottest path; the fields stay in the event for JSON logs.
        line = f'{client} "{method} {uri}" {code} {sent} {duration_ms:.1f}ms "{agent}"'
        self.access.info(
            "{line}",
            line=line,
            client=client,
            method=method,
            uri=uri,
            code=code,
            size=sent,
            duration_ms=duration_ms,
            agent=agent,
        )
