"""Fetching a project page whose body may be too large to hold: past a MB, to a file.

``UpstreamClient.fetch_page`` keeps a body whole in memory (up to 64 MB); a
page of 200,000 files is more than that as PEP 691 JSON, and the parser must
not need it in memory either. Here a body is kept in memory while it is
small (most pages) and moved to an anonymous file in the serverdir once it
passes ``SPOOL_BYTES``; the parser then reads the file in a thread
(``devpid.simple.parse`` takes either). The rules are ``fetch_page``'s: the
progress timeout, a size cap (larger, as the body is on disk), the same
health bookkeeping and log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from devpid.mirror.spool import anonymous_file
from devpid.mirror.upstream import (
    PageBody,
    PageResponse,
    PageTooLarge,
    UpstreamClient,
    UpstreamError,
    last_serial,
    response_header,
)

#: A body larger than this goes to a file as it arrives.
SPOOL_BYTES = 1 << 20
#: The largest page body accepted: it is on disk, not in memory.
MAX_SPOOLED_BYTES = 1 << 30


@attrs.frozen
class SpooledPageResponse(PageResponse):
    """A page response whose body is in ``file`` (at its start), not in ``body``."""

    file: IO[bytes] | None = None
    size: int = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _SpoolingBody(PageBody):
    """``PageBody`` (limit, progress timeout) that moves the body to a file once large."""

    def __init__(self, limit: int, clock: IReactorTime, timeout: float, directory: Path) -> None:
        super().__init__(limit, clock, timeout)
        self.directory = directory
        self.fd: int | None = None

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.finished.called:
            self._close()
            return
        try:
            if self.fd is None and self.size > SPOOL_BYTES:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.fd = anonymous_file(self.directory)
            if self.fd is not None:
                for part in self.parts:
                    view = memoryview(part)
                    while view:
                        view = view[os.write(self.fd, view) :]
                self.parts.clear()
        except OSError as e:
            self.fail(UpstreamError(f"cannot keep the page body: {e.strerror or e}"))
            self._close()

    def abandon(self) -> None:
        self._close()
        super().abandon()

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        if self.fd is None:
            super().connectionLost(reason)
            return
        self.stop_timer()
        if self.finished.called:
            self._close()
        elif reason.check(ResponseDone, PotentialDataLoss):
            fd, self.fd = self.fd, None
            os.lseek(fd, 0, os.SEEK_SET)
            self.finished.callback(os.fdopen(fd, "rb"))
        else:
            self._close()
            self.finished.errback(reason)


def _read_body(
    response: IResponse, clock: IReactorTime, timeout: float, directory: Path
) -> Deferred[bytes | IO[bytes]]:
    if isinstance(response.length, int) and response.length > MAX_SPOOLED_BYTES:
        response.deliverBody(Protocol())
        raise PageTooLarge(f"page of {response.length} bytes is larger than {MAX_SPOOLED_BYTES}")
    body = _SpoolingBody(MAX_SPOOLED_BYTES, clock, timeout, directory)
    response.deliverBody(body)
    return body.finished


async def fetch_project_page(
    upstream: UpstreamClient, project: str, etag: str | None, directory: Path
) -> PageResponse:
    """``upstream.fetch_page(project, etag)``, with a large 200's body in a file
    (a ``SpooledPageResponse``: the caller closes it)."""
    url = upstream.project_url(project)
    started = upstream.clock.seconds()
    try:
        response = await upstream.open_page(project, etag)
        body: bytes | IO[bytes] = b""
        if response.code == 200:
            body = await _read_body(response, upstream.clock, upstream.timeout, directory)
        else:
            response.deliverBody(Protocol())
    except Exception as e:
        raise upstream.fetch_failed(url, e) from None
    size = len(body) if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
    serial = last_serial(response)
    upstream.fetched(url, response.code, size, serial, started)
    fields: dict[str, Any] = {
        "status": response.code,
        "content_type": response_header(response, "Content-Type") or "",
        "etag": response_header(response, "ETag"),
        "serial": serial,
        "url": str(response.request.absoluteURI.decode("utf-8"))
        if getattr(response, "request", None) is not None
        else url,
    }
    if isinstance(body, bytes):
        return PageResponse(body=body, **fields)
    return SpooledPageResponse(body=b"", file=body, size=size, **fields)
