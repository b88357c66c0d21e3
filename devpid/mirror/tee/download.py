"""One file's download in a process alone, top to bottom: upstream, temporary file, readers.

Clients are never sent the most recently received chunk until the next one
arrives, and the last one only after the whole file has been verified
(sha256 and length) and atomically renamed into place. On a mismatch, an
upstream error, an idle (or crawling) upstream or a cache that cannot be
written, every client connection is aborted so that no one sees a complete
200 of wrong bytes (a client sent nothing yet gets a one-line error instead),
and the temporary file is removed.

Two jobs work on a ``Download`` from modules of their own, through the
``DownloadState`` it is (``state``): ``verify`` (the checks and the commit)
and, only when other processes share the cache, ``shared`` (the lock,
following, taking over, with ``adopt``).
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from devpid.mirror.tee.adopt import resume
from devpid.mirror.tee.body import Discard, IdleWatch, UpstreamBody
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.tee.reader import TeeReader, settle_readers
from devpid.mirror.tee.shared import SharedDownload
from devpid.mirror.tee.state import BAD_GATEWAY, INSUFFICIENT_STORAGE, DownloadState
from devpid.mirror.tee.verify import publish_verified_or_fail
from devpid.mirror.upstream import UpstreamClient, UpstreamError, describe_failure


class DownloadFailed(Exception):
    """The download did not produce a verified file; the message is one line."""

    def __init__(self, reason: str, status: int = BAD_GATEWAY) -> None:
        super().__init__(reason)
        self.status = status


def _no_room_for(directory: Path, name: str, size: int) -> str | None:
    """Why ``size`` bytes cannot be written in ``directory``, when that can be told now."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size > limit:
        return f"{name} ({size} bytes) is larger than the file size limit ({limit} bytes)"
    try:
        status = os.statvfs(directory)
    except OSError:
        return None
    free = status.f_bavail * status.f_frsize
    if size > free:
        return f"not enough space in the cache for {name} ({size} bytes): {free} bytes free"
    return None


def _on_shared(name: str, alone: object) -> Any:
    """``shared.<name>`` under the download's old name for it (tests/test_tee.py sets it)."""
    return property(
        lambda self: alone if self.shared is None else getattr(self.shared, name),
        lambda self, value: setattr(self.shared, name, value),
    )


@attrs.define(eq=False)
class Download(DownloadState):
    """One file's download in this process: it fetches the file, or follows another process."""

    #: Called once with the Download when it is over, verified or not.
    on_done: Callable[[Download], None] = lambda download: None
    #: Told of every release of the shared lock, which may outlive ``on_done``.
    on_unlock: Callable[[Deferred[None]], None] = lambda unlocked: None
    #: Other processes that may download the same file; None when this one is alone.
    peers: SharedDownloads | None = None
    _header_waiters: list[Deferred[Download]] = attrs.field(factory=list)
    _body: UpstreamBody | None = None
    _idle_watch: IdleWatch = attrs.field(init=False)
    _upstream: UpstreamClient | None = None
    _shared: SharedDownload | None = attrs.field(init=False, default=None)
    _finished: bool = False
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._idle_watch = IdleWatch(self.clock, self.idle_timeout, self._idle)

    @property
    def shared(self) -> SharedDownload | None:
        """This download's dealings with other processes; None for a process alone."""
        if self._shared is None and self.peers is not None:
            self._shared = SharedDownload(self, self.peers, self.on_unlock)
        return self._shared

    def progress(self) -> dict[str, Any]:
        return {
            "url": self.spec.url,
            "path": self.files.relative(self.spec.final_path),
            "role": self.role,
            "state": self.state,
            "bytes": self.received,
            "total": self.total,
            "clients": len(self.readers),
            "seconds": round(self.clock.seconds() - self.started_at, 3),
        }

    # -- upstream to temporary file ------------------------------------------

    async def run(self, upstream: UpstreamClient) -> None:
        """Download the file, or follow the process that does; never raises."""
        self.started_at = self.clock.seconds()
        try:
            if self.shared is None or await self.shared.decide():
                await self._fetch(upstream)
        except Exception as e:  # a bug must not leave clients waiting forever
            self.log.failure("download of {url} broke", url=self.spec.url)
            self.fail(f"internal error: {describe_failure(e)}")
        if self.shared is not None and self.shared.unlocked is not None:
            await self.shared.unlocked  # a lock let go before the download got going

    async def _fetch(self, upstream: UpstreamClient) -> None:
        shared = self.shared
        offset = await shared.before_fetch() if shared is not None else 0
        if self.over:
            return
        try:
            response = await upstream.open_file(self.spec.url, offset)
        except UpstreamError as e:
            self.fail(str(e))
            return
        if self.over:  # aborted while connecting
            response.deliverBody(Discard())
            return
        if offset:  # the rest of a file adopted from a process that died
            offset, problem = resume(self, response, offset)
            if problem:
                response.deliverBody(Protocol())
                self.fail(problem)
                return
        if response.code not in (200, 206) or (response.code == 206 and not offset):
            response.deliverBody(Protocol())
            self.fail(f"error {response.code} getting {self.spec.url}")
            return
        self._start_streaming(response, upstream)

    def _start_streaming(self, response: IResponse, upstream: UpstreamClient) -> None:
        length = response.length if isinstance(response.length, int) else None
        if response.code == 206:
            length = self.total
        if length is not None and self.spec.size is not None and length != self.spec.size:
            response.deliverBody(Protocol())
            self.fail(f"upstream sent {length} bytes where the index said {self.spec.size}")
            return
        self.total = length if length is not None else self.spec.size
        if self.fd is None:
            final = self.spec.final_path
            problem = None
            if self.total is not None:
                problem = _no_room_for(self.files.files_root, final.name, self.total)
            if problem:
                response.deliverBody(Discard())
                self.fail(problem, INSUFFICIENT_STORAGE)
                return
            try:
                self.partial_path, self.fd = self.files.create_partial(final)
                self.read_fd = os.open(self.partial_path, os.O_RDONLY)
            except OSError as e:
                response.deliverBody(Protocol())
                self.fail(f"cannot create a temporary file: {e.strerror}", INSUFFICIENT_STORAGE)
                return
        settle_readers(self.readers, self.read_fd, self.total)
        self.state = "streaming"
        self._upstream = upstream
        self._body = UpstreamBody(self.chunk_received, self.body_finished)
        self._idle_watch.start(self.received)
        response.deliverBody(self._body)
        assert self.partial_path is not None
        if self.shared is not None:
            self.shared.announce(
                state="streaming", partial=self.partial_path.name, total=self.total
            )
        self.headers_known()

    def headers_known(self) -> None:
        waiters, self._header_waiters = self._header_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def chunk_received(self, data: bytes) -> None:
        if self.over or self.fd is None:
            return
        try:
            # A full disk or a file size limit may take part of a write: the rest
            # of it then gets the error.
            rest = memoryview(data)
            while rest:
                written = os.write(self.fd, rest)
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                rest = rest[written:]
        except OSError as e:
            self._abort_upstream()
            self.fail(f"cannot write to the cache: {e.strerror}", INSUFFICIENT_STORAGE)
            return
        self.hasher.update(data)
        self.releasable = self.received
        self.received += len(data)
        if self._upstream is not None:
            self._upstream.health.bytes_fetched += len(data)
        if self.total is not None and self.received > self.total:
            self._abort_upstream()
            self.fail(f"upstream sent more than the {self.total} bytes announced")
            return
        self._idle_watch.progress(self.received)
        for reader in list(self.readers):
            reader.pump()

    def body_finished(self, reason: Failure) -> None:
        if self.over:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.fail(f"upstream transfer of {self.spec.url} broke off: {describe_failure(reason)}")
            return
        publish_verified_or_fail(self)

    def _idle(self) -> None:
        """The upstream sent under ``MIN_PROGRESS`` bytes in ``idle_timeout`` seconds."""
        self._abort_upstream()
        got = self.received - self._idle_watch.window_start
        if got:
            self.fail(
                f"upstream too slow: {got} bytes in {self.idle_timeout:g}s on {self.spec.url}"
            )
        else:
            self.fail(f"upstream stalled for {self.idle_timeout:g}s on {self.spec.url}")

    def _abort_upstream(self) -> None:
        if self._body is not None:
            self._body.stop()

    def abort(self, reason: str) -> None:
        """Give up (shutdown): clients are cut off and nothing is kept."""
        if not self.over:
            self._abort_upstream()
            self.fail(reason)

    # -- the end ---------------------------------------------------------------

    def fail(self, reason: str, status: int = BAD_GATEWAY) -> None:
        if self.over:
            return
        self.state = "failed"
        self.error = reason
        self.error_status = status
        self.log.warn(
            "{role} GET {url} failed after {size} bytes in {seconds:.3f}s: {reason}",
            role="upstream" if self.role == "owner" else "shared",
            url=self.spec.url,
            size=self.received,
            seconds=self.clock.seconds() - self.started_at,
            reason=reason,
        )
        if self.role == "owner":
            # Unlinked while still flock-ed: nobody can adopt a file judged bad.
            if self.partial_path is not None:
                self.files.discard(self.partial_path)
            self.close_fds()
        waiters, self._header_waiters = self._header_waiters, []
        for waiter in waiters:
            waiter.errback(DownloadFailed(reason, status))
        self.finish()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._idle_watch.stop()
        if self.shared is not None:
            self.shared.stop_renewing()
        try:
            for reader in list(self.readers):
                reader.pump()
            self.close_fds()
        finally:  # whatever a client's pump did, the lock and the manager must hear
            if self.shared is not None:
                self.shared.release_lock()
            self.on_done(self)

    # -- temporary file to clients -------------------------------------------

    def wait_for_headers(self) -> Deferred[Download]:
        """Fires when clients can attach (streaming or verified), fails if it never will.

        Each caller gets its own Deferred: cancelling it (a client went away)
        leaves the download running.
        """
        if self.state in ("streaming", "verified"):
            return defer.succeed(self)
        if self.state == "failed":
            return defer.fail(DownloadFailed(self.error or "download failed", self.error_status))
        waiter: Deferred[Download] = Deferred(lambda d: self._header_waiters.remove(d))
        self._header_waiters.append(waiter)
        return waiter

    def attach(
        self, request: Request, refuse: Callable[[int, str], None] | None = None
    ) -> TeeReader:
        """Stream this download to ``request`` (its headers must already be set).

        If it fails before the client was sent a byte, ``refuse(status, reason)``
        answers instead (without it, the connection is cut as for a later failure).
        """
        if self.read_fd is not None:
            fd = os.dup(self.read_fd)
        else:
            fd = os.open(self.spec.final_path, os.O_RDONLY)
        reader = TeeReader(self, request, fd, promised=self.total, refuse=refuse)
        self.readers.add(reader)
        request.registerProducer(reader, True)
        request.notifyFinish().addBoth(reader.client_gone)
        reader.pump()
        return reader

    # -- old names, which tests/test_tee.py drives the download by -------------

    _locked = _on_shared("locked", alone=False)
    _lock_value = _on_shared("lock_value", alone="")
    _close_fds = DownloadState.close_fds

    def _renew(self) -> Deferred[None]:
        assert self.shared is not None
        return self.shared.renew()

    def _take_over(self, _peers: SharedDownloads) -> None:
        assert self.shared is not None
        self.shared.take_over()
