"""The streaming tee: one upstream download per file, any number of clients.

A ``Download`` writes upstream chunks to a temporary file beside the file's
final path. Each client is a ``TeeReader`` that reads that file from its own
offset and writes to its own request, as fast as *its* connection allows
(a push producer registered on the request: the valve). Slow clients never
slow the download, and the memory held per client is one chunk.

Clients are never sent the most recently received chunk until the next one
arrives, and the last one only after the whole file has been verified
(sha256 and length) and atomically renamed into place. On a mismatch, an
upstream error or an idle timeout, every client connection is aborted so that
no one sees a complete 200 of wrong bytes, and the temporary file is removed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from devpid.filestore import FileStore
from devpid.stats import Stats
from devpid.upstream import UpstreamClient, UpstreamError, describe_failure

READ_CHUNK = 64 * 1024


class DownloadFailed(Exception):
    """The download did not produce a verified file; the message is one line."""


@attrs.frozen
class FileSpec:
    """What to fetch and how to check it."""

    url: str
    final_path: Path
    sha256: str | None
    size: int | None


@attrs.define(eq=False)
class Download:
    spec: FileSpec
    files: FileStore
    clock: IReactorTime
    idle_timeout: float
    #: Called once with the Download when it is over, verified or not.
    on_done: Callable[[Download], None] = lambda download: None
    state: str = "connecting"
    error: str | None = None
    received: int = 0
    #: Bytes that clients may be sent: everything but the newest chunk until verified.
    releasable: int = 0
    total: int | None = None
    started_at: float = 0.0
    partial_path: Path | None = None
    readers: set[TeeReader] = attrs.field(factory=set)
    _fd: int | None = None
    _hasher: Any = attrs.field(factory=hashlib.sha256)
    _header_waiters: list[Deferred[Download]] = attrs.field(factory=list)
    _idle_timer: IDelayedCall | None = None
    _body: _UpstreamBody | None = None
    _upstream: UpstreamClient | None = None
    log = Logger()

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    @property
    def over(self) -> bool:
        return self.state in ("verified", "failed")

    def progress(self) -> dict[str, Any]:
        return {
            "url": self.spec.url,
            "path": str(self.spec.final_path.relative_to(self.files.files_root)),
            "state": self.state,
            "bytes": self.received,
            "total": self.total,
            "clients": len(self.readers),
            "seconds": round(self.clock.seconds() - self.started_at, 3),
        }

    # -- upstream side -------------------------------------------------------

    async def run(self, upstream: UpstreamClient) -> None:
        self.started_at = self.clock.seconds()
        try:
            response = await upstream.open_file(self.spec.url)
        except UpstreamError as e:
            self._fail(str(e))
            return
        if response.code != 200:
            response.deliverBody(Protocol())
            self._fail(f"upstream answered {response.code} for {self.spec.url}")
            return
        self._start_streaming(response, upstream)

    def _start_streaming(self, response: IResponse, upstream: UpstreamClient) -> None:
        length = response.length if isinstance(response.length, int) else None
        if length is not None and self.spec.size is not None and length != self.spec.size:
            response.deliverBody(Protocol())
            self._fail(f"upstream sent {length} bytes where the index said {self.spec.size}")
            return
        self.total = length if length is not None else self.spec.size
        try:
            self.partial_path, self._fd = self.files.create_partial(self.spec.final_path)
        except OSError as e:
            response.deliverBody(Protocol())
            self._fail(f"cannot create a temporary file: {e.strerror}")
            return
        self.state = "streaming"
        self._upstream = upstream
        self._body = _UpstreamBody(self)
        self._reset_idle_timer()
        response.deliverBody(self._body)
        waiters, self._header_waiters = self._header_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def wait_for_headers(self) -> Deferred[Download]:
        """Fires when clients can attach (streaming or verified), fails if it never will.

        Each caller gets its own Deferred: cancelling it (a client went away)
        leaves the download running.
        """
        if self.state in ("streaming", "verified"):
            return succeed(self)
        if self.state == "failed":
            return fail(DownloadFailed(self.error or "download failed"))
        waiter: Deferred[Download] = Deferred(lambda d: self._header_waiters.remove(d))
        self._header_waiters.append(waiter)
        return waiter

    def chunk_received(self, data: bytes) -> None:
        if self.over or self._fd is None:
            return
        try:
            os.write(self._fd, data)
        except OSError as e:
            self._abort_upstream()
            self._fail(f"cannot write to the cache: {e.strerror}")
            return
        self._hasher.update(data)
        self.releasable = self.received
        self.received += len(data)
        if self._upstream is not None:
            self._upstream.health.bytes_fetched += len(data)
        if self.total is not None and self.received > self.total:
            self._abort_upstream()
            self._fail(f"upstream sent more than the {self.total} bytes announced")
            return
        self._reset_idle_timer()
        for reader in list(self.readers):
            reader.pump()

    def body_finished(self, reason: Failure) -> None:
        if self.over:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._fail(
                f"upstream transfer of {self.spec.url} broke off: {describe_failure(reason)}"
            )
            return
        problem = self._verify()
        if problem:
            self._fail(problem)
            return
        assert self.partial_path is not None
        self._close_fd()
        try:
            self.files.commit(self.partial_path, self.spec.final_path)
        except OSError as e:
            self._fail(f"cannot commit to the cache: {e.strerror}")
            return
        self.state = "verified"
        self.releasable = self.received
        self.log.info(
            "upstream GET {url} -> 200 {size} bytes in {seconds:.3f}s, verified {check}",
            url=self.spec.url,
            size=self.received,
            seconds=self.clock.seconds() - self.started_at,
            check="sha256+length" if self.spec.sha256 else "length only (no hash upstream)",
        )
        self._finish()

    def _verify(self) -> str | None:
        if self.total is not None and self.received != self.total:
            return f"got {self.received} of {self.total} bytes from {self.spec.url}"
        digest = self._hasher.hexdigest()
        if self.spec.sha256 is not None and digest != self.spec.sha256:
            return (
                f"sha256 mismatch for {self.spec.url}: got {digest}, index says {self.spec.sha256}"
            )
        return None

    def _reset_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.idle_timeout)
        else:
            self._idle_timer = self.clock.callLater(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        self._abort_upstream()
        self._fail(f"upstream stalled for {self.idle_timeout:g}s on {self.spec.url}")

    def _abort_upstream(self) -> None:
        if self._body is not None and self._body.transport is not None:
            self._body.transport.stopProducing()  # type: ignore[attr-defined]

    def abort(self, reason: str) -> None:
        """Give up (shutdown): clients are cut off and nothing is kept."""
        if not self.over:
            self._abort_upstream()
            self._fail(reason)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fail(self, reason: str) -> None:
        if self.over:
            return
        self.state = "failed"
        self.error = reason
        self.log.warn(
            "upstream GET {url} failed after {size} bytes in {seconds:.3f}s: {reason}",
            url=self.spec.url,
            size=self.received,
            seconds=self.clock.seconds() - self.started_at,
            reason=reason,
        )
        self._close_fd()
        if self.partial_path is not None:
            self.files.discard(self.partial_path)
        waiters, self._header_waiters = self._header_waiters, []
        for waiter in waiters:
            waiter.errback(DownloadFailed(reason))
        self._finish()

    def _finish(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        for reader in list(self.readers):
            reader.pump()
        self.on_done(self)

    # -- client side ---------------------------------------------------------

    def attach(self, request: Request) -> TeeReader:
        """Stream this download to ``request`` (its headers must already be set)."""
        path = self.spec.final_path if self.verified else self.partial_path
        assert path is not None
        reader = TeeReader(self, request, os.open(path, os.O_RDONLY))
        self.readers.add(reader)
        request.registerProducer(reader, True)
        request.notifyFinish().addBoth(reader.client_gone)
        reader.pump()
        return reader


class _UpstreamBody(Protocol):
    def __init__(self, download: Download) -> None:
        self.download = download

    def dataReceived(self, data: bytes) -> None:
        self.download.chunk_received(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        self.download.body_finished(reason)


@implementer(IPushProducer)
@attrs.define(eq=False)
class TeeReader:
    """One client's view of a download: reads the file from its offset, at its own pace."""

    download: Download
    request: Request
    fd: int | None
    offset: int = 0
    paused: bool = False
    done: bool = False

    def pump(self) -> None:
        if self.done or self.fd is None:
            return
        download = self.download
        while not self.paused and self.offset < download.releasable:
            size = min(READ_CHUNK, download.releasable - self.offset)
            data = os.pread(self.fd, size, self.offset)
            if not data:
                break
            self.offset += len(data)
            self.request.write(data)
            if self.done:
                return
        if download.state == "failed":
            self._cut_off()
        elif download.verified and self.offset >= download.received:
            self._complete()

    def _complete(self) -> None:
        self._detach()
        self.request.unregisterProducer()
        self.request.finish()

    def _cut_off(self) -> None:
        """Abort the client's connection: a truncated transfer, never a complete 200."""
        self._detach()
        self.request.unregisterProducer()
        transport = getattr(self.request, "channel", None)
        transport = getattr(transport, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _detach(self) -> None:
        self.done = True
        self.download.readers.discard(self)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def client_gone(self, _: object) -> None:
        """The request finished or the client disconnected: let go of the download."""
        if not self.done:
            self._detach()

    # IPushProducer, driven by the client's transport buffer.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self.client_gone(None)


@attrs.define
class DownloadManager:
    """The running downloads, addressed by the file's final path."""

    files: FileStore
    upstream: UpstreamClient
    clock: IReactorTime
    idle_timeout: float
    stats: Stats
    running: dict[Path, Download] = attrs.field(factory=dict)
    _drained: list[Deferred[None]] = attrs.field(factory=list)

    def download_for(self, spec: FileSpec) -> tuple[Download, bool]:
        """The running download of ``spec`` and whether this call started it."""
        download = self.running.get(spec.final_path)
        if download is not None:
            return download, False
        download = Download(spec, self.files, self.clock, self.idle_timeout, self._done)
        self.running[spec.final_path] = download
        Deferred.fromCoroutine(download.run(self.upstream))
        return download, True

    def _done(self, download: Download) -> None:
        self.running.pop(download.spec.final_path, None)
        if download.verified and download.spec.sha256 is None:
            self.stats.incr("files_without_hash")
        if download.state == "failed":
            self.stats.incr("download_failures")
        if not self.running:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """Fires when no download is running."""
        d: Deferred[None] = Deferred()
        if self.running:
            self._drained.append(d)
        else:
            d.callback(None)
        return d

    def abort_all(self, reason: str) -> None:
        for download in list(self.running.values()):
            download.abort(reason)
