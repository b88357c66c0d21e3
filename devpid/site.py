"""The HTTP site: one structured access-log line per request, no tracebacks to clients.

On shutdown the site *drains*: idle keep-alive connections are closed (a proxy
in front retries elsewhere), and every response from then on says
``Connection: close``, so no new work reaches a process that is stopping.
"""

from __future__ import annotations

import time
import weakref
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from devpid.metrics import RequestMetrics, route_name
from devpid.stats import Stats


class TimedRequest(Request):
    """A request that knows when it arrived, for the access log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = time.monotonic()


MAX_URI_LENGTH = 8192


class RequestGuard(Resource):
    """Refuses what the routes should never see: over-long or non-UTF-8 URLs."""

    isLeaf = True

    def __init__(self, routes: IResource, via: bytes | None = None) -> None:
        super().__init__()
        self.routes = routes
        self.via = via

    def render(self, request: Request) -> bytes | int:
        site = getattr(request.channel, "site", None)
        if getattr(site, "draining", False):  # this connection ends with this response
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
        problem = None
        via = request.getHeader(b"via")
        if self.via is not None and via is not None and self.via in via:
            problem = (508, b"508 Loop Detected: this devpid is its own upstream\n")
        elif len(request.uri) > MAX_URI_LENGTH:
            problem = (414, b"414 URI Too Long: at most %d bytes\n" % MAX_URI_LENGTH)
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


class DevpidSite(Site):
    displayTracebacks = False
    requestFactory = TimedRequest
    access = Logger(namespace="devpid.access")

    def __init__(
        self, resource: IResource, stats: Stats, via: bytes | None = None, **kwargs: Any
    ) -> None:
        super().__init__(RequestGuard(resource, via), **kwargs)
        self.stats = stats
        #: Where each request is counted for /+metrics and /+status, when set.
        self.requests: RequestMetrics | None = None
        #: True once the process is stopping (see the module's docstring).
        self.draining = False
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            self._channels.add(channel)
        return channel

    def start_draining(self) -> int:
        """Stop taking new work on open connections; the number of idle ones closed."""
        self.draining = True
        closed = 0
        for wrapper in list(self._channels):
            # twisted.web wraps each HTTPChannel (to negotiate HTTP/2); the channel is inside.
            channel = getattr(wrapper, "_channel", wrapper)
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
        sent = request.sentLength
        self.stats.incr("requests")
        self.stats.incr("bytes_served", sent)
        arrived = getattr(request, "arrived", None)
        duration_ms = (time.monotonic() - arrived) * 1000 if arrived is not None else 0.0
        if self.requests is not None:
            route = route_name(getattr(request, "path", b""))
            self.requests.observe(route, request.code, duration_ms / 1000, sent)
        address = request.getClientAddress()
        client = getattr(address, "host", "-")
        method = request.method.decode("latin-1")
        uri = request.uri.decode("latin-1")[:2000]
        agent = (request.getHeader(b"user-agent") or b"-").decode("latin-1")[:200]
        # The line is formatted here once: the log format is then a single field,
        # which is far cheaper for twisted.logger's observers than a full format
        # string on the hottest path; the fields stay in the event for JSON logs.
        line = f'{client} "{method} {uri}" {request.code} {sent} {duration_ms:.1f}ms "{agent}"'
        self.access.info(
            "{line}",
            line=line,
            client=client,
            method=method,
            uri=uri,
            code=request.code,
            size=sent,
            duration_ms=duration_ms,
            agent=agent,
        )
