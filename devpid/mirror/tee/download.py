"""The streaming tee: one upstream download per file, any number of clients.

A ``Download`` writes upstream chunks to a temporary file beside the file's
final path. Each client is a ``TeeReader`` that reads that file from its own
offset and writes to its own request, as fast as *its* connection allows
(a push producer registered on the request: the valve). Slow clients never
slow the download, and the memory held per client is one chunk.

Clients are never sent the most recently received chunk until the next one
arrives, and the last one only after the whole file has been verified
(sha256 and length) and atomically renamed into place. On a mismatch, an
upstream error, an idle (or crawling) upstream or a cache that cannot be
written, every client connection is aborted so that no one sees a complete
200 of wrong bytes (a client sent nothing yet gets a one-line error instead),
and the temporary file is removed.

Across processes (``peers.SharedDownloads``) a ``Download`` is either the
*owner*, which does the above, or a *follower*, which streams the owner's
growing temporary file to its own clients: it learns the file from the owner's
announcement, watches it grow with ``fstat``, releases its last byte only once
the owner has renamed the very same inode into place, and cuts its clients off
when the file is unlinked without being committed. When the owner dies, a
follower takes the lock over and becomes the owner, adopting the temporary
file and resuming the upstream transfer where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from devpid.common.stats import Stats
from devpid.files.store import FileStore
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.upstream import UpstreamClient, UpstreamError, describe_failure

READ_CHUNK = 64 * 1024
#: How often a follower looks at the owner's temporary file.
FOLLOW_POLL = 0.05
#: Bytes hashed per reactor turn when adopting another process's temporary file.
ADOPT_HASH_STEP = 8 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
#: Fewer bytes than this within the idle timeout is no progress: an upstream
#: that drips a byte at a time is cut off like a silent one.
MIN_PROGRESS = 1024
#: The status of a failed download: the upstream failed, or the cache cannot hold the file.
BAD_GATEWAY = 502
INSUFFICIENT_STORAGE = 507


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
    #: Told of every release of the shared lock, which may outlive ``on_done``.
    on_unlock: Callable[[Deferred[None]], None] = lambda unlocked: None
    #: Other processes that may download the same file; None when this one is alone.
    peers: SharedDownloads | None = None
    #: "owner" (fetches from the upstream) or "follower" (streams another process's file).
    role: str = "owner"
    state: str = "connecting"
    error: str | None = None
    #: The HTTP status for clients that got nothing yet when it failed.
    error_status: int = BAD_GATEWAY
    received: int = 0
    #: Bytes that clients may be sent: everything but the newest chunk until verified.
    releasable: int = 0
    total: int | None = None
    started_at: float = 0.0
    partial_path: Path | None = None
    readers: set[TeeReader] = attrs.field(factory=set)
    #: Bytes adopted from a process that died, resumed with a Range request.
    resumed_from: int = 0
    #: Whether this process fetched, verified and committed the file.
    committed_here: bool = False
    _fd: int | None = None
    #: Read side of the temporary file; each client reads a duplicate of it.
    _read_fd: int | None = None
    _hasher: Any = attrs.field(factory=hashlib.sha256)
    _header_waiters: list[Deferred[Download]] = attrs.field(factory=list)
    _idle_timer: IDelayedCall | None = None
    #: ``received`` when the current idle window began (see ``MIN_PROGRESS``).
    _window_start: int = 0
    _body: _UpstreamBody | None = None
    _upstream: UpstreamClient | None = None
    _renewal: LoopingCall | None = None
    #: Whether this download holds the shared lock of its file (under ``_lock_value``).
    _locked: bool = False
    _lock_value: str = ""
    #: Whether this download announced itself as the owner to the other processes.
    _announced: bool = False
    _finished: bool = False
    #: Fires when the shared lock has been let go after the download ended.
    unlocked: Deferred[None] | None = None
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
            "path": self.files.relative(self.spec.final_path),
            "role": self.role,
            "state": self.state,
            "bytes": self.received,
            "total": self.total,
            "clients": len(self.readers),
            "seconds": round(self.clock.seconds() - self.started_at, 3),
        }

    # -- deciding who downloads ----------------------------------------------

    async def run(self, upstream: UpstreamClient) -> None:
        """Download the file, or follow the process that does; never raises."""
        self.started_at = self.clock.seconds()
        try:
            await self._run(upstream)
        except Exception as e:  # a bug must not leave clients waiting forever
            self.log.failure("download of {url} broke", url=self.spec.url)
            self._fail(f"internal error: {describe_failure(e)}")
        if self.unlocked is not None:  # a lock let go before the download got going
            await self.unlocked

    async def _run(self, upstream: UpstreamClient) -> None:
        peers = self.peers
        if peers is not None:
            if self._committed_elsewhere():
                return
            self._lock_value = peers.lock_value()
            claim = await peers.claim(self.spec.final_path, self._lock_value)
            self._locked = claim == "owned"
            if self.over:
                self._release_lock()
                return
            if claim == "busy":
                self.role = "follower"
                if not await self._follow(peers):
                    return
                self._take_over(peers)
            elif claim == "unavailable":
                peers.uncoordinated += 1
            if self._locked:
                self._renewal = LoopingCall(self._renew)
                self._renewal.clock = self.clock
                self._renewal.start(peers.renew_interval, now=False)
            if self._committed_elsewhere():
                return
        await self._fetch(upstream)

    def _take_over(self, peers: SharedDownloads) -> None:
        """The owner went away and this process holds the lock: become the owner.

        What the follower knew of the owner's file is dropped; ``_adopt``
        looks at it afresh (and clients keep their offsets if it adopts it).
        """
        peers.takeovers += 1
        self.log.info("taking over the download of {url}: its owner went away", url=self.spec.url)
        self.role = "owner"
        self.state = "connecting"
        self._close_fds()
        self.partial_path = None
        self.total = None
        self.received = self.releasable = 0
        self._hasher = hashlib.sha256()

    def _committed_elsewhere(self) -> bool:
        """Finish at once if the file is in the cache (another process committed it).

        Clients that were sent bytes of another file than the committed one
        are cut off; those that had nothing yet read the committed file.
        """
        if self.over:
            return True
        try:
            fd = os.open(self.spec.final_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        self._close_fds()
        self._read_fd = fd
        size = os.fstat(fd).st_size
        self.total = size
        self._settle_readers()
        self.state = "verified"
        self.received = self.releasable = size
        self._headers_known()
        self._finish()
        return True

    def _renew(self) -> Deferred[None]:
        async def renew() -> None:
            assert self.peers is not None
            if self.over:
                return
            claim = await self.peers.claim(self.spec.final_path, self._lock_value)
            if self.over:
                if claim == "owned" and not self._locked:  # taken back too late: let go
                    await self.peers.release(self.spec.final_path, self._lock_value)
                return
            if claim == "busy" and self._locked:
                self._lose_lock()
            elif claim == "owned" and not self._locked:
                self._locked = True
                self.log.info("got the download lock of {url} back", url=self.spec.url)

        d = Deferred.fromCoroutine(renew())
        d.addErrback(lambda f: self.log.failure("could not renew a download lock", f))
        return d

    def _lose_lock(self) -> None:
        """Another process holds the lock (the store lost ours): go on without it.

        Its process cannot adopt this file while this one writes it (the
        ``flock``), so the worst outcome is a second download of the same
        bytes. The renewal goes on trying, and takes the lock back once it is
        free (a follower that found this file still written gives it back).
        """
        assert self.peers is not None
        self.peers.lost_locks += 1
        self._locked = False
        self.log.warn(
            "lost the download lock of {url} to another process; going on without it",
            url=self.spec.url,
        )

    # -- owner: upstream side ------------------------------------------------

    async def _fetch(self, upstream: UpstreamClient) -> None:
        offset = await self._adopt()
        if self.over:
            return
        if self.peers is not None and self._locked:
            self._announced = True
            await self.peers.announce(self.spec.final_path, state="connecting")
            if self.over:
                return
        try:
            response = await upstream.open_file(self.spec.url, offset)
        except UpstreamError as e:
            self._fail(str(e))
            return
        if self.over:  # aborted while connecting
            response.deliverBody(_Discard())
            return
        if offset and response.code == 200:
            # No range support: start again in a file of our own; clients of
            # the adopted bytes cannot be given bytes the new file vouches for.
            self.log.info(
                "upstream ignored the Range request; fetching {url} again", url=self.spec.url
            )
            self._drop_adopted()
            offset = 0
        elif offset and response.code == 206:
            problem = self._check_content_range(response, offset)
            if problem:
                response.deliverBody(Protocol())
                self._fail(problem)
                return
        if response.code not in (200, 206) or (response.code == 206 and not offset):
            response.deliverBody(Protocol())
            self._fail(f"upstream answered {response.code} for {self.spec.url}")
            return
        self._start_streaming(response, upstream)

    async def _adopt(self) -> int:
        """Continue the temporary file of an owner that went away; the bytes it holds."""
        if self.peers is None or not self._locked:
            return 0
        final = self.spec.final_path
        announced = await self.peers.announcement(final)
        if self.over or not announced or announced.get("owner") == self.peers.token:
            return 0
        name, total = announced.get("partial"), announced.get("total")
        if not isinstance(name, str) or not isinstance(total, int) or "/" in name:
            return 0
        if self.spec.size is not None and total != self.spec.size:
            return 0
        adopted = self.files.adopt_partial(final.with_name(name), final)
        if adopted is None:
            return 0
        self.partial_path, self._fd = adopted
        self._read_fd = os.open(self.partial_path, os.O_RDONLY)
        size = os.fstat(self._read_fd).st_size
        offset = 0
        while offset < size:  # hash what is there, a step per reactor turn
            data = os.pread(self._read_fd, min(ADOPT_HASH_STEP, size - offset), offset)
            if not data:
                break
            self._hasher.update(data)
            offset += len(data)
            await deferLater(self.clock, 0, lambda: None)
            if self.over:  # aborted meanwhile; _fail removed the file
                return 0
        self.total = total
        self._settle_readers()
        self.received = self.releasable = self.resumed_from = offset
        if offset >= total:  # the owner died between its last byte and the rename
            self._publish_verified_or_fail()
            return offset
        self.log.info(
            "adopted {bytes} of {total} bytes of {url} from a process that went away",
            bytes=offset,
            total=total,
            url=self.spec.url,
        )
        return offset

    def _drop_adopted(self) -> None:
        """Forget the adopted bytes; ``_start_streaming`` cuts off the clients that had some."""
        if self.partial_path is not None:
            self.files.discard(self.partial_path)
        self._close_fds()
        self.partial_path = None
        self._hasher = hashlib.sha256()
        self.received = self.releasable = self.resumed_from = 0
        self.total = None

    def _check_content_range(self, response: IResponse, offset: int) -> str | None:
        values = response.headers.getRawHeaders(b"content-range") or [b""]
        match = _CONTENT_RANGE.match(values[0].decode("latin-1"))
        if match is None:
            return f"upstream sent a 206 without a usable Content-Range for {self.spec.url}"
        first, last, total = (int(g) for g in match.groups())
        if first != offset or last != total - 1 or total != self.total:
            return f"upstream sent bytes {first}-{last}/{total}, not {offset}- of {self.total}"
        return None

    def _start_streaming(self, response: IResponse, upstream: UpstreamClient) -> None:
        length = response.length if isinstance(response.length, int) else None
        if response.code == 206:
            length = self.total
        if length is not None and self.spec.size is not None and length != self.spec.size:
            response.deliverBody(Protocol())
            self._fail(f"upstream sent {length} bytes where the index said {self.spec.size}")
            return
        self.total = length if length is not None else self.spec.size
        if self._fd is None:
            final = self.spec.final_path
            problem = None
            if self.total is not None:
                problem = _no_room_for(self.files.files_root, final.name, self.total)
            if problem:
                response.deliverBody(_Discard())
                self._fail(problem, INSUFFICIENT_STORAGE)
                return
            try:
                self.partial_path, self._fd = self.files.create_partial(final)
                self._read_fd = os.open(self.partial_path, os.O_RDONLY)
            except OSError as e:
                response.deliverBody(Protocol())
                self._fail(f"cannot create a temporary file: {e.strerror}", INSUFFICIENT_STORAGE)
                return
        self._settle_readers()
        self.state = "streaming"
        self._upstream = upstream
        self._body = _UpstreamBody(self)
        self._start_idle_window()
        response.deliverBody(self._body)
        assert self.partial_path is not None
        self._announce(state="streaming", partial=self.partial_path.name, total=self.total)
        self._headers_known()

    def _announce(self, **fields: Any) -> None:
        if self.peers is not None and self._locked:
            d = Deferred.fromCoroutine(self.peers.announce(self.spec.final_path, **fields))
            d.addErrback(lambda f: self.log.failure("could not announce a download", f))

    def _headers_known(self) -> None:
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
            return fail(DownloadFailed(self.error or "download failed", self.error_status))
        waiter: Deferred[Download] = Deferred(lambda d: self._header_waiters.remove(d))
        self._header_waiters.append(waiter)
        return waiter

    def chunk_received(self, data: bytes) -> None:
        if self.over or self._fd is None:
            return
        try:
            # A full disk or a file size limit may take part of a write: the rest
            # of it then gets the error.
            rest = memoryview(data)
            while rest:
                written = os.write(self._fd, rest)
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                rest = rest[written:]
        except OSError as e:
            self._abort_upstream()
            self._fail(f"cannot write to the cache: {e.strerror}", INSUFFICIENT_STORAGE)
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
        if self.received - self._window_start >= MIN_PROGRESS:
            self._start_idle_window()
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
        self._publish_verified_or_fail()

    def _publish_verified_or_fail(self) -> None:
        problem = self._verify()
        if problem:
            self._fail(problem)
            return
        assert self.partial_path is not None
        try:
            # The temporary file stays open (and flock-ed) until it is in place.
            self.files.commit(self.partial_path, self.spec.final_path)
        except OSError as e:
            self._fail(f"cannot commit to the cache: {e.strerror}")
            return
        self.state = "verified"
        self.committed_here = True
        self.releasable = self.received
        self.log.info(
            "upstream GET {url} -> 200 {size} bytes in {seconds:.3f}s, verified {check}",
            url=self.spec.url,
            size=self.received,
            seconds=self.clock.seconds() - self.started_at,
            check="sha256+length" if self.spec.sha256 else "length only (no hash upstream)",
        )
        self._headers_known()
        self._finish()

    def _verify(self) -> str | None:
        if self._fd is not None:
            on_disk = os.fstat(self._fd).st_size
            if on_disk != self.received:
                return (
                    f"the temporary file of {self.spec.url} holds {on_disk} bytes, "
                    f"not the {self.received} received"
                )
        if self.total is not None and self.received != self.total:
            return f"got {self.received} of {self.total} bytes from {self.spec.url}"
        digest = self._hasher.hexdigest()
        if self.spec.sha256 is not None and digest != self.spec.sha256:
            return (
                f"sha256 mismatch for {self.spec.url}: got {digest}, index says {self.spec.sha256}"
            )
        return None

    def _start_idle_window(self) -> None:
        """The upstream has ``idle_timeout`` seconds from now to send ``MIN_PROGRESS`` bytes."""
        self._window_start = self.received
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.idle_timeout)
        else:
            self._idle_timer = self.clock.callLater(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        self._abort_upstream()
        got = self.received - self._window_start
        if got:
            self._fail(
                f"upstream too slow: {got} bytes in {self.idle_timeout:g}s on {self.spec.url}"
            )
        else:
            self._fail(f"upstream stalled for {self.idle_timeout:g}s on {self.spec.url}")

    def _abort_upstream(self) -> None:
        if self._body is not None and self._body.transport is not None:
            self._body.transport.stopProducing()  # type: ignore[attr-defined]

    def abort(self, reason: str) -> None:
        """Give up (shutdown): clients are cut off and nothing is kept."""
        if not self.over:
            self._abort_upstream()
            self._fail(reason)

    # -- follower: another process downloads --------------------------------

    async def _follow(self, peers: SharedDownloads) -> bool:
        """Stream the owner's temporary file until it is committed or fails.

        True when the owner went away and this download now holds the lock.
        While the store is unreachable nobody can take a lock over, so a
        follower keeps following (the file itself says when it is committed
        or removed).
        """
        final = self.spec.final_path
        followed: str | None = None
        last_size, last_progress = -1, self.clock.seconds()
        next_check = self.clock.seconds() + peers.check_interval
        stall_limit = self.idle_timeout + peers.lock_ttl
        while not self.over:
            if self._committed_elsewhere():
                return False
            if self._read_fd is None:
                announced = await peers.announcement(final) or {}
                if self.over:
                    break
                owner, state = announced.get("owner"), announced.get("state")
                if state == "failed" and owner == followed:
                    self._fail(str(announced.get("error") or "the download failed elsewhere"))
                    return False
                if state in ("connecting", "streaming"):
                    followed = owner
                if state == "streaming" and self._open_announced(announced):
                    self._headers_known()
            else:
                status = os.fstat(self._read_fd)
                if status.st_nlink == 0:  # unlinked, not renamed into place: it failed
                    announced = await peers.announcement(final) or {}
                    if self._committed_elsewhere():
                        return False
                    reason = announced.get("error") if announced.get("state") == "failed" else None
                    self._fail(str(reason or "the download failed in another devpid process"))
                    return False
                if status.st_size != last_size:
                    last_size, last_progress = status.st_size, self.clock.seconds()
                    self.received = status.st_size
                    # The last byte waits for the owner's commit of this very file.
                    hold_back = self.total - 1 if self.total else self.received
                    self.releasable = min(self.received, hold_back)
                    for reader in list(self.readers):
                        reader.pump()
            now = self.clock.seconds()
            if now - last_progress > stall_limit:
                self._fail(f"the download of {self.spec.url} in another process stalled")
                return False
            if now >= next_check:
                next_check = now + peers.check_interval
                if await peers.claim(final, self._lock_value) == "owned":
                    self._locked = True
                    if self.over:
                        self._release_lock()
                        return False
                    if self.partial_path is None or not self.files.being_written(self.partial_path):
                        return True
                    # The lock ran out under an owner that still writes (the store
                    # lost it, or a renewal got no answer in time): keep following,
                    # and let the owner have its lock back.
                    self._locked = False
                    await peers.release(final, self._lock_value)
            await deferLater(self.clock, FOLLOW_POLL, lambda: None)
        return False

    def _open_announced(self, announced: dict[str, Any]) -> bool:
        name, total = announced.get("partial"), announced.get("total")
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            return False
        path = self.spec.final_path.with_name(name)
        try:
            self._read_fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        self.partial_path = path
        self.total = total if isinstance(total, int) else None
        self.state = "streaming"
        return True

    def _settle_readers(self) -> None:
        """Point every client at the file being written or committed now.

        A client that was already sent bytes of another file (one that failed,
        or a copy another process fetched) is cut off; one that had nothing
        yet reads the current file from its start.
        """
        if self._read_fd is None:
            return
        current = os.fstat(self._read_fd)
        for reader in list(self.readers):
            if reader.fd is None:
                continue
            theirs = os.fstat(reader.fd)
            if (theirs.st_dev, theirs.st_ino) == (current.st_dev, current.st_ino):
                continue
            # It must not have had bytes of the other file, nor been promised
            # another length (its Content-Length is sent).
            if reader.offset or reader.promised not in (None, self.total):
                reader.cut_off()
                continue
            fd = os.dup(self._read_fd)
            os.close(reader.fd)
            reader.fd = fd

    # -- the end ---------------------------------------------------------------

    def _close_fds(self) -> None:
        for name in ("_fd", "_read_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def _fail(self, reason: str, status: int = BAD_GATEWAY) -> None:
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
            self._close_fds()
        waiters, self._header_waiters = self._header_waiters, []
        for waiter in waiters:
            waiter.errback(DownloadFailed(reason, status))
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        try:
            for reader in list(self.readers):
                reader.pump()
            self._close_fds()
        finally:  # whatever a client's pump did, the lock and the manager must hear
            self._release_lock()
            self.on_done(self)

    def _release_lock(self) -> None:
        if self._locked and self.peers is not None:
            self._locked = False
            self.unlocked = Deferred.fromCoroutine(self._unlock(self.peers))
            self.unlocked.addErrback(lambda f: self.log.failure("could not release a lock", f))
            self.on_unlock(self.unlocked)

    async def _unlock(self, peers: SharedDownloads) -> None:
        """Tell the followers how it ended, then let go of the lock (in that order)."""
        if self.verified:
            await peers.forget(self.spec.final_path)
        elif self._announced:  # a follower that never owned the file has nothing to say
            await peers.announce(self.spec.final_path, state="failed", error=self.error)
        await peers.release(self.spec.final_path, self._lock_value)

    # -- client side ---------------------------------------------------------

    def attach(
        self, request: Request, refuse: Callable[[int, str], None] | None = None
    ) -> TeeReader:
        """Stream this download to ``request`` (its headers must already be set).

        If it fails before the client was sent a byte, ``refuse(status, reason)``
        answers instead (without it, the connection is cut as for a later failure).
        """
        if self._read_fd is not None:
            fd = os.dup(self._read_fd)
        else:
            fd = os.open(self.spec.final_path, os.O_RDONLY)
        reader = TeeReader(self, request, fd, promised=self.total, refuse=refuse)
        self.readers.add(reader)
        request.registerProducer(reader, True)
        request.notifyFinish().addBoth(reader.client_gone)
        reader.pump()
        return reader


class _Discard(Protocol):
    """Takes a response body that is no longer wanted, and closes its connection."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


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
    #: The Content-Length the client was sent (None: none was).
    promised: int | None = None
    #: Answers with an error status and reason when the download fails before any byte.
    refuse: Callable[[int, str], None] | None = None
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
                if download.over:  # the file is shorter than it said: never stall
                    self.cut_off()
                    return
                break
            self.offset += len(data)
            self.request.write(data)
            if self.done:
                return
        if download.state == "failed":
            self._failed()
        elif download.verified and self.offset >= download.received:
            self._complete()

    def _failed(self) -> None:
        """An error answer if the client has nothing yet, else a cut connection."""
        if self.offset or self.refuse is None:
            self.cut_off()
            return
        self._detach()
        self.request.unregisterProducer()
        download = self.download
        self.refuse(download.error_status, download.error or "the download failed")

    def _complete(self) -> None:
        self._detach()
        self.request.unregisterProducer()
        self.request.finish()

    def cut_off(self) -> None:
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
    #: Other processes sharing the serverdir and store; None for a lone process.
    peers: SharedDownloads | None = None
    running: dict[Path, Download] = attrs.field(factory=dict)
    _drained: list[Deferred[None]] = attrs.field(factory=list)
    #: Shared locks still being let go by downloads that are over.
    _unlocking: set[Deferred[None]] = attrs.field(factory=set)
    #: ``Download.run`` of each download whose coroutine has not returned yet.
    _runs: set[Deferred[None]] = attrs.field(factory=set)

    def download_for(self, spec: FileSpec) -> tuple[Download, bool]:
        """The running download of ``spec`` and whether this call started it."""
        download = self.running.get(spec.final_path)
        if download is not None:
            return download, False
        download = Download(
            spec,
            self.files,
            self.clock,
            self.idle_timeout,
            self._done,
            self._track_unlock,
            peers=self.peers,
        )
        self.running[spec.final_path] = download
        self._track(self._runs, Deferred.fromCoroutine(download.run(self.upstream)))
        return download, True

    def _done(self, download: Download) -> None:
        self.running.pop(download.spec.final_path, None)
        if download.committed_here and download.spec.sha256 is None:
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

    def _track_unlock(self, unlocked: Deferred[None]) -> None:
        self._track(self._unlocking, unlocked)

    @staticmethod
    def _track(pending: set[Deferred[None]], d: Deferred[None]) -> None:
        if d.called:
            return
        pending.add(d)

        def let_go(result: object) -> object:
            pending.discard(d)
            return result

        d.addBoth(let_go)

    def unlocked(self) -> Deferred[Any]:
        """Fires when every shared lock of a download that is over has been let go.

        That includes a lock granted to a download aborted while it asked for it.
        """
        return gatherResults([*self._runs, *self._unlocking], consumeErrors=True)

    def abort_all(self, reason: str) -> None:
        for download in list(self.running.values()):
            download.abort(reason)
