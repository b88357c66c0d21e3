"""Fetching the upstream's project list into a file, never into memory.

The list of 700,000 names is 20-40 MB of body; ``fetch_page`` would hold it
whole (and the parser several times that). Here the body goes to a temporary
file as it arrives, with ``fetch_page``'s rules: the progress timeout
(``MIN_PROGRESS`` bytes every ``timeout`` seconds), a size cap, the same
health bookkeeping and log line.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from devpid.mirror.upstream import (
    PageBody,
    PageResponse,
    UpstreamClient,
    UpstreamError,
    last_serial,
    response_header,
)

#: The project list is on disk, not in memory: it may be larger than a page.
MAX_LIST_BYTES = 512 * 1024 * 1024


@attrs.frozen
class ListResponse(PageResponse):
    """A page response whose body (status 200) is in the file ``path``, not ``body``."""

    path: Path | None = None
    size: int = 0


class _FileBody(PageBody):
    """``PageBody`` (the size cap, the progress timeout) writing the body to ``fd``."""

    def __init__(self, fd: int, limit: int, clock: IReactorTime, timeout: float) -> None:
        super().__init__(limit, clock, timeout)
        self.fd = fd

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.finished.called:
            return
        self.parts.clear()  # on disk, not in memory
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.fail(UpstreamError(f"cannot save the project list: {e.strerror or e}"))

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        self.stop_timer()
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(self.size)
        else:
            self.finished.errback(reason)


async def fetch_list(upstream: UpstreamClient, etag: str | None, target: Path) -> ListResponse:
    """GET the upstream's project list (conditionally on ``etag``); a 200's body is saved
    to ``target`` (removed again on failure). Raises ``UpstreamError`` as ``fetch_page``."""
    url = upstream.simple_url
    started = upstream.clock.seconds()
    size = 0
    try:
        response = await upstream.open_page(None, etag)
        if response.code == 200:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                body = _FileBody(fd, MAX_LIST_BYTES, upstream.clock, upstream.timeout)
                response.deliverBody(body)
                size = await body.finished
            finally:
                os.close(fd)
        else:
            response.deliverBody(Protocol())
    except Exception as e:
        target.unlink(missing_ok=True)
        raise upstream.fetch_failed(url, e) from None
    serial = last_serial(response)
    upstream.fetched(url, response.code, size, serial, started)
    return ListResponse(
        status=response.code,
        body=b"",
        content_type=response_header(response, "Content-Type") or "",
        etag=response_header(response, "ETag"),
        serial=serial,
        url=url,
        path=target if response.code == 200 else None,
        size=size,
    )


__all__ = ["MAX_LIST_BYTES", "ListResponse", "fetch_list"]
