"""What one client may send, and for how long: the ``Limits`` and the channel that holds to them.

Every connection is held to the site's ``Limits`` (see docs/configuration.md):
the size of a request's header fields, URL and body, the connections one client
address may hold, and how long a connection may sit idle or take to send a
request. What goes over a limit is refused by ``LimitedChannel`` in one line
(``431 Request Header Fields Too Large: ...``), logged in the access log like
any answer, and the connection is closed.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from devpid.http.accesslog import AccessLog

#: Bytes read from a connection at once (twisted.web's default is 64 KiB).
READ_SIZE = 256 * 1024
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


class ChannelSite(Protocol):
    """What a ``LimitedChannel`` asks of its site (``DevpidSite``)."""

    access_log: AccessLog

    def admit(self, client: str) -> bool:
        """Count a new connection from ``client``, unless it has as many as it may have."""

    def release(self, client: str) -> None:
        """A connection ``admit`` counted has closed."""


class LimitedChannel(HTTPChannel):
    """HTTP/1.1 held to the site's ``Limits``; what breaks them is refused in one line.

    The idle timer is twisted.web's, with one change: bytes arriving do not restart
    it, only the first bytes of a request do. A request's line, header fields and
    body must then all arrive within the timeout, so a client trickling bytes
    (slowloris) cannot hold a connection open. While a request is answered the
    timer is off (twisted.web's own rule): a slow download is not cut.

    One job, and long for it: each limit needs its own hook of twisted.web's
    parser (line, line too long, headers done, body chunk, timer), and each
    hook must also stand still once a request has been refused.
    """

    site: ChannelSite
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
    #: The body limit of the request being received (an upload has its own).
    _body_limit = 0
    _client: str | None = None
    _counted = False
    _refused = False
    _lingering: IDelayedCall | None = None
    #: The local address: asked of the socket once, not by every request (``getsockname``).
    _host: Any = None

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def connectionMade(self) -> None:
        limits = self.limits
        # The longest line twisted.web's parser buffers: a request line or one header field.
        self.MAX_LENGTH = max(limits.max_url_length + REQUEST_LINE_SLACK, limits.max_header_size)
        # twisted.web's own total (request line included) stays behind the checks here.
        self.totalHeadersSize = self.MAX_LENGTH + limits.max_header_size
        super().connectionMade()
        transport: Any = self.transport
        if hasattr(transport, "bufferSize"):
            # Larger reads: an upload's body arrives in fewer, cheaper reactor turns.
            transport.bufferSize = READ_SIZE
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
        limit = self._body_limit = self._request_body_limit()
        if limit and self.length is not None and self.length > limit:
            self.refuse(413, f"the body is over {limit} bytes")
            return
        super().allHeadersReceived()

    def _request_body_limit(self) -> int:
        command: bytes = getattr(self, "_command", b"")
        path: bytes = getattr(self, "_path", b"")
        headers = self.requests[-1].requestHeaders if self.requests else None
        receiver = getattr(self.site, "uploads", None)
        if headers is not None and receiver is not None:
            limit = receiver.body_limit(command, path, headers)
            if limit is not None:
                return int(limit)
        return self.limits.max_body_size

    def accept_body(self, size: int) -> bool:
        """Whether the request body may take ``size`` more bytes (a chunked body's count)."""
        if self._refused:
            return False
        self._body_bytes += size
        limit = self._body_limit
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
        agent = None
        if self.requests:
            agent = self.requests[-1].requestHeaders.getRawHeaders(b"user-agent", [None])[0]
        self.site.access_log.refused(
            getattr(transport.getPeer(), "host", "-"),
            self._request_line,
            agent,
            self._request_started,
            code,
            len(body),
        )
        self._close_after_answer()

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
