"""The evictor: keeps the mirror cache within ``--cache-max-size`` in the background.

A ``Service`` with two timers on the reactor, each doing its work in a thread:

- every ``FLUSH_INTERVAL`` seconds the uses noted by the file route are
  written to the files' atimes (devpid.files.usage), in every process;
- every ``--evict-interval`` seconds, and a second after a commit takes the
  cache past its limit, a check: when the cache may be over the limit, one
  eviction run (devpid.files.eviction) in a thread, under the serverdir's
  ``evict.lock``. A process that finds the lock held skips the run: another
  process (or ``devpid gc``) is at it.

**Knowing the size without walking.** The file store counts each mirror's
bytes at start-up and adds its own commits; a run replaces the count with
what it walked. Other processes sharing the serverdir commit files this
count does not see, so the check also adds how much the file system's used
space grew since the last walk: an overestimate (anything written counts)
that catches every process's downloads. A walk happens only when one of the
two is over the limit, and then sets both straight.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpid.common.clock import iso_time
from devpid.common.offload import Offload
from devpid.files.eviction import CacheLimit, EvictionBusy, EvictionLock, RunReport, evict
from devpid.files.store import FileStore
from devpid.files.usage import FLUSH_INTERVAL, UsageLog, apply_uses

#: Seconds between a commit that takes the cache past its limit and the run it starts.
SOON = 1.0


def disk_used(path: Path) -> int:
    """Bytes used on the file system of ``path`` (blocks in use, whoever wrote them)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@attrs.define(slots=False)
class EvictionService(Service):
    files: FileStore
    limit: CacheLimit
    #: The mirror indexes now (read on the reactor: the private data is not thread-safe).
    mirrors: Callable[[], Iterable[str]]
    clock: IReactorTime
    offload: Offload
    interval: float = 60.0
    flush_interval: float = FLUSH_INTERVAL
    measure_disk: Callable[[Path], int] = disk_used
    usage: UsageLog = attrs.field(factory=UsageLog)
    #: Runs that walked the cache (under the lock), and their totals.
    runs: int = 0
    evicted_files: int = 0
    evicted_bytes: int = 0
    #: Checks that found another process evicting.
    busy: int = 0
    last_run: RunReport | None = None
    last_error: str | None = None
    _running: Deferred[Any] | None = None
    _soon: IDelayedCall | None = None
    _stopping: bool = False
    #: Mirror bytes and the file system's used bytes at the last walk (or the start).
    _walked: tuple[int, int] = (0, 0)
    #: The store's per-index counts when the running run started.
    _counts_at_start: dict[str, int] = attrs.field(factory=dict)
    _warned_full: bool = False
    _timers: list[LoopingCall] = attrs.field(factory=list)
    log = Logger()

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.files.usage = self.usage
        self.files.grown = self._grown
        timer = LoopingCall(self._flush)
        timer.clock = self.clock
        timer.start(self.flush_interval, now=False)
        self._timers.append(timer)
        # The size is known once the start-up count is over (devpid.files.census).
        self.files.when_counted(self._counted)

    def _counted(self) -> None:
        if self._stopping:
            return
        self._walked = (self.mirror_bytes(), self._disk_used())
        timer = LoopingCall(self.check)
        timer.clock = self.clock
        timer.start(self.interval, now=False)
        self._timers.append(timer)
        self.log.info(
            "mirror cache limit {limit} bytes: {bytes} bytes cached now",
            limit=self.limit.max_bytes,
            bytes=self.mirror_bytes(),
        )
        self.clock.callLater(0, self.check)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        for timer in self._timers:
            if timer.running:
                timer.stop()
        self._timers.clear()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self.files.grown = None
        running = self._running if self._running is not None else succeed(None)
        d: Deferred[Any] = Deferred()
        running.addBoth(lambda _: self._flush().chainDeferred(d))
        return d

    # -- size -----------------------------------------------------------------------

    def mirror_bytes(self) -> int:
        """The mirror cache's size as this process counts it (exact after a walk)."""
        return self.files.mirror_bytes(self.mirrors())

    def _disk_used(self) -> int:
        try:
            return self.measure_disk(self.files.serverdir)
        except OSError:
            return 0

    def may_be_over(self) -> bool:
        walked_bytes, walked_disk = self._walked
        grown_since = self._disk_used() - walked_disk
        estimate = max(self.mirror_bytes(), walked_bytes + grown_since)
        return estimate > self.limit.max_bytes

    # -- timers ---------------------------------------------------------------------

    def _flush(self) -> Deferred[None]:
        batch = self.usage.take()
        if not batch:
            return succeed(None)
        d = self.offload(partial(apply_uses, batch))
        d.addCallbacks(lambda _: None, self._failed, errbackArgs=("could not record uses",))
        return d

    def _grown(self) -> None:
        """After a commit: over the limit now? Then a run soon, not at the next check."""
        if self._running is not None or (self._soon is not None and self._soon.active()):
            return
        if not self.files.counted:
            return  # the check after the count looks
        if self.mirror_bytes() > self.limit.max_bytes:
            self._soon = self.clock.callLater(SOON, self.check)

    def check(self) -> Deferred[None]:
        """A run when the cache may be over its limit (never two at once); never fails
        (an exception would stop its timer for good)."""
        try:
            if self._running is not None or self._stopping or not self.files.counted:
                return succeed(None)
            if not self.may_be_over():
                return succeed(None)
            mirrors = tuple(self.mirrors())
        except Exception:
            self._failed(Failure(), "cannot check the mirror cache's size")
            return succeed(None)
        batch = self.usage.take()
        self._counts_at_start = {name: self.files.index_bytes.get(name, 0) for name in mirrors}
        running = self.offload(partial(self._run, mirrors, batch))
        running.addCallback(self._finished)
        running.addErrback(self._failed, "eviction failed")
        self._running = running

        def done(_: object) -> None:
            self._running = None

        running.addBoth(done)
        return running

    # -- the run (in a thread) ------------------------------------------------------

    def _run(self, mirrors: tuple[str, ...], batch: dict[str, float]) -> RunReport | None:
        """Blocking: this process's last uses written, then one run under the lock."""
        apply_uses(batch)
        lock = EvictionLock(self.files.serverdir)
        try:
            lock.acquire()
        except EvictionBusy:
            return None
        try:
            return evict(
                self.files.files_root,
                mirrors,
                self.limit,
                last_noted=self.usage.last_noted,
                stopping=lambda: self._stopping,
            )
        finally:
            lock.release()

    # -- back on the reactor --------------------------------------------------------

    def _finished(self, report: RunReport | None) -> None:
        if report is None:
            self.busy += 1
            return
        self.runs += 1
        self.last_run = report
        self.last_error = None
        self.evicted_files += report.files
        self.evicted_bytes += report.bytes
        self.files.counts.files -= report.files
        self.files.counts.bytes -= report.bytes
        for index, walked in report.index_bytes.items():
            # Plus what this process committed while the run walked.
            since = self.files.index_bytes.get(index, 0) - self._counts_at_start.get(index, 0)
            self.files.index_bytes[index] = walked + since
        self._walked = (self.mirror_bytes(), self._disk_used())
        if report.files:
            self.log.info(
                "evicted {files} files ({bytes} bytes) in {seconds:.3f}s: mirror cache "
                "{before} -> {after} bytes (limit {limit})",
                files=report.files,
                bytes=report.bytes,
                seconds=report.seconds,
                before=report.bytes_before,
                after=report.bytes_after,
                limit=self.limit.max_bytes,
            )
        over = report.bytes_after > self.limit.max_bytes and report.interrupted is None
        if over and not self._warned_full:
            self.log.warn(
                "mirror cache {bytes} bytes is over its limit {limit}: what is left was used "
                "within the last {grace:g}s or is being downloaded",
                bytes=report.bytes_after,
                limit=self.limit.max_bytes,
                grace=self.limit.grace,
            )
        self._warned_full = over

    def _failed(self, failure: Failure, what: str) -> None:
        kind = failure.type.__name__ if failure.type is not None else "error"
        self.last_error = f"{kind}: {failure.getErrorMessage()}"
        self.log.failure(what, failure)

    # -- what /+status shows --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``eviction`` section of ``/+status`` (documented in docs/api.md)."""
        last = self.last_run
        return {
            "max_bytes": self.limit.max_bytes,
            "target_bytes": self.limit.target,
            "grace_seconds": self.limit.grace,
            "interval_seconds": self.interval,
            "running": self._running is not None,
            "runs": self.runs,
            "busy": self.busy,
            "files": self.evicted_files,
            "bytes": self.evicted_bytes,
            "pending_uses": len(self.usage),
            "last_error": self.last_error,
            "last_run": None
            if last is None
            else {
                "at": iso_time(last.started_at),
                "timestamp": round(last.started_at, 3),
                "seconds": round(last.seconds, 3),
                "files": last.files,
                "bytes": last.bytes,
                "bytes_before": last.bytes_before,
                "bytes_after": last.bytes_after,
                "kept": last.kept,
                "protected": last.protected,
            },
        }
