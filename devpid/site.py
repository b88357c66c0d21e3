"""The HTTP site: one structured access-log line per request, no tracebacks to clients."""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from devpid.stats import Stats


class TimedRequest(Request):
    """A request that knows when it arrived, for the access log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = time.monotonic()


class DevpidSite(Site):
    displayTracebacks = False
    requestFactory = TimedRequest
    access = Logger(namespace="devpid.access")

    def __init__(self, resource: IResource, stats: Stats, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
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
