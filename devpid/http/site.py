"""The HTTP site: admission, draining, and no tracebacks to clients.

Its channels hold every connection to the ``Limits`` (devpid.http.limits), its
``RequestGuard`` refuses what the routes should never see (devpid.http.guard),
and each answer is one line of the access log (devpid.http.accesslog). The site
itself counts connections by client address, for ``--max-connections-per-client``.

On shutdown the site *drains*: idle keep-alive connections are closed (a proxy
in front retries elsewhere), and every response from then on says
``Connection: close``, so no new work reaches a process that is stopping.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from devpid.common.stats import Stats
from devpid.http.accesslog import AccessLog
from devpid.http.guard import RequestGuard
from devpid.http.limits import LimitedChannel, Limits
from devpid.ops.requests import RequestMetrics


class TimedRequest(Request):
    """A request that knows when it arrived, for the access log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = time.monotonic()

    def handleContentChunk(self, data: bytes) -> None:
        accept_body = getattr(self.channel, "accept_body", None)
        if accept_body is None or accept_body(len(data)):
            super().handleContentChunk(data)


class DevpidSite(Site):
    displayTracebacks = False
    requestFactory = TimedRequest
    protocol = LimitedChannel  # type: ignore[assignment]

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
        self.access_log = AccessLog(stats, source=self)
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

    @property
    def requests(self) -> RequestMetrics | None:
        """Where each request is counted for /+metrics and /+status, when set."""
        return self.access_log.requests

    @requests.setter
    def requests(self, requests: RequestMetrics | None) -> None:
        self.access_log.requests = requests

    def log(self, request: Any) -> None:
        # twisted.web's hook, once per finished response.
        self.access_log.answered(request)
