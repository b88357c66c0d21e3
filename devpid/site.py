"""The HTTP site: one structured access-log line per request, no tracebacks to clients."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

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

    def __init__(self, routes: IResource) -> None:
        super().__init__()
        self.routes = routes

    def render(self, request: Request) -> bytes | int:
        problem = None
        if len(request.uri) > MAX_URI_LENGTH:
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
        return problem[1]


class DevpidSite(Site):
    displayTracebacks = False
    requestFactory = TimedRequest
    access = Logger(namespace="devpid.access")

    def __init__(self, resource: IResource, stats: Stats, **kwargs: Any) -> None:
        super().__init__(RequestGuard(resource), **kwargs)
        self.stats = stats

    def log(self, request: Any) -> None:
        sent = request.sentLength
        self.stats.incr("requests")
        self.stats.incr("bytes_served", sent)
        arrived = getattr(request, "arrived", None)
        duration = (time.monotonic() - arrived) * 1000 if arrived is not None else 0.0
        self.access.info(
            '{client} "{method} {uri}" {code} {size} {duration_ms:.1f}ms "{agent}"',
            client=request.getClientAddress().host
            if hasattr(request.getClientAddress(), "host")
            else "-",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1")[:2000],
            code=request.code,
            size=sent,
            duration_ms=duration,
            agent=(request.getHeader(b"user-agent") or b"-").decode("latin-1")[:200],
        )
