"""The HTTP site: admission, draining, and no tracebacks to clients.

Its channels hold every connection to the ``Limits`` (devpid.http.limits), its
``RequestGuard`` refuses what the routes should never see (devpid.http.guard),
and each answer is one line of the access log (devpid.http.accesslog). The site
itself counts connections by client address, for ``--max-connections-per-client``.

On shutdown the site *drains*: idle keep-alive connections are closed (a proxy
in front retries elsewhere), and every response from then on says
``Connection: close``, so no new work reaches a process that is stopping.
The listener then waits for the busy connections to close (``busy_channels``)
and cuts off (``cut_off``) what is still open after the grace.
"""

from __future__ import annotations

import io
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
from devpid.http.uploads import UploadReceiver, attach_form
from devpid.ops.requests import RequestMetrics
from devpid.upload.form import StreamingForm


class TimedRequest(Request):
    """A request that knows when it arrived, for the access log.

    One whose connection is lost before its response is finished is logged too,
    as ``cut off``, with the bytes actually sent.
    """

    #: Whether the whole request has arrived (and so has a method and a path to log).
    received = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = time.monotonic()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.received = True
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self._form is not None and not self.received:
            self._form.abort()  # an upload cut off: nothing of it stays
        cut_off = self.received and not self.finished and not self._disconnected
        site = self.site
        super().connectionLost(reason)
        access_log = getattr(site, "access_log", None)
        if cut_off and access_log is not None:
            access_log.answered(self, cut_off=True)

    #: An upload's body goes here, to disk, instead of to ``content``.
    _form: StreamingForm | None = None

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        receiver: UploadReceiver | None = getattr(getattr(channel, "site", None), "uploads", None)
        if receiver is not None:
            self._form = receiver.start(
                getattr(channel, "_command", b""),
                getattr(channel, "_path", b""),
                self.requestHeaders,
            )
        if self._form is None:
            super().gotLength(length)
            return
        assert receiver is not None
        attach_form(self, self._form, receiver.current_serial())
        form = self._form
        # answered by anything before the route took the file over (a refusal of the
        # guard, say): its temporary file goes; after ``finish`` this does nothing
        self.notifyFinish().addBoth(lambda _: form.abort())
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        accept_body = getattr(self.channel, "accept_body", None)
        if accept_body is None or accept_body(len(data)):
            if self._form is not None:
                self._form.feed(data)
            else:
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
        #: Streams upload bodies to disk; None: uploads are bodies like any other.
        self.uploads: UploadReceiver | None = None
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
        for channel in self._open_channels():
            transport = channel.transport
            if channel.requests:  # busy: it closes after its response
                channel.persistent = False
            else:
                transport.loseConnection()
                closed += 1
        return closed

    def _open_channels(self) -> list[Any]:
        return [
            channel
            for channel in list(self._channels)
            if getattr(channel, "transport", None) is not None
            and getattr(channel.transport, "connected", True)
        ]

    def busy_channels(self) -> list[Any]:
        """The connections with a response still being sent (after ``start_draining``).

        Each closes once its response has been sent, its buffered bytes included:
        a response finished but not yet flushed is cut off if the process ends.
        """
        return [channel for channel in self._open_channels() if channel.requests]

    def cut_off(self) -> int:
        """Abort every connection still open; how many."""
        channels = self._open_channels()
        for channel in channels:
            channel.transport.abortConnection()
        return len(channels)

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
