"""The long-lived parts of a devpid process, started and stopped in order by twistd.

``CacheService`` owns the serverdir, the state store, the counters and the
upstream HTTP pool; ``ListenerService`` owns the listening port. twistd stops
services in reverse order, so the listener closes first, then in-flight
downloads and the responses still being sent drain (up to a grace period,
side by side) before the pool and store close. A second stop signal ends the
grace at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from devpid.common.offload import Offload
from devpid.common.stats import Stats
from devpid.files.census import Tally, WalkResult
from devpid.files.store import FileStore
from devpid.http.site import DevpidSite
from devpid.mirror.tee import DownloadManager
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.upstream import describe_failure
from devpid.store import StateStore, StoreUnavailable

STATS_FLUSH_INTERVAL = 10.0
#: How often a stopping listener looks whether its last responses are out.
RESPONSE_POLL_INTERVAL = 0.1


_log = Logger()


def exit_at_once(reactor: Any, message: str) -> None:
    """Start-up failed: say so in one line (log and terminal) and exit with status 1."""
    _log.critical(message)
    # twistd points sys.stderr at the log; the operator's terminal is fd 2.
    os.write(2, message.encode("utf-8", errors="replace") + b"\n")
    # twistd would exit 0 after a plain reactor.stop(); a service manager
    # must see that start-up failed.
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    # Start-up happens while twistd starts the reactor; stop once it runs.
    reactor.callWhenRunning(reactor.stop)


@attrs.define(slots=False)
class CacheService(Service):
    files: FileStore
    store: StateStore
    stats: Stats
    downloads: DownloadManager
    pool: HTTPConnectionPool | None
    clock: Any
    shutdown_grace: float = 30.0
    #: Other processes sharing the serverdir (with Redis), or None for a lone process.
    peers: SharedDownloads | None = None
    #: Whether SIGTERM stops this process with status 0 (the real reactor only).
    handle_sigterm: bool = False
    #: The upstream (password masked) and why it is this one, for the start-up line.
    upstream_url: str = ""
    upstream_origin: str = ""
    #: ``--offline``: said in the start-up log.
    offline: bool = False
    #: Where the serverdir is counted (a thread); None: at once, in ``startService``.
    offload: Offload | None = None
    _flusher: LoopingCall | None = None
    #: A stop signal came; a second one stops at once.
    _signalled: bool = False
    _at_once: bool = False
    log = Logger()

    def startService(self) -> None:
        super().startService()
        if self.upstream_url:
            self.log.info(
                "mirroring {upstream} ({origin})",
                upstream=self.upstream_url,
                origin=self.upstream_origin,
            )
        if self.offline:
            self.log.info("offline: serving only what is cached; the upstream is never contacted")
        self.files.prepare_layout()
        self._count_serverdir()
        started = Deferred.fromCoroutine(self._start())
        started.addErrback(self._cannot_start)
        if self.handle_sigterm:
            # Now, for a signal before the reactor runs (the port already listens),
            # and again once it runs, over the handlers the reactor installs itself.
            self._handle_stop_signals()
            self.clock.callWhenRunning(self._handle_stop_signals)
            # And should the reactor's own handler have taken it (it is installed a
            # moment before the one above), twistd must still not re-raise SIGTERM.
            self.clock.addSystemEventTrigger("after", "shutdown", self._forget_sigterm)

    def _count_serverdir(self) -> None:
        """Count the cache and clear up after a crash, in a thread while devpid serves
        (devpid.files.census): seconds with 100,000 pages, so not before listening."""
        census = self.files.census
        census.begin()
        if self.offload is None:
            self.files.finish_count(census.walk())
            return
        counting = self.offload(census.walk)
        counting.addCallbacks(self._counted, self._count_failed)

    def _counted(self, result: WalkResult) -> None:
        if result.interrupted:
            return  # stopping
        self.files.finish_count(result)
        self.log.info(
            "counted the cache in {seconds:.2f}s: {files} files, {bytes} bytes, {pages} pages",
            seconds=result.seconds,
            files=self.files.counts.files,
            bytes=self.files.counts.bytes,
            pages=self.files.counts.pages,
        )

    def _count_failed(self, failure: Failure) -> None:
        """Not expected (the walk reports what it cannot read): the counts are then only
        the changes since the start, and the evictor's runs count again."""
        self.log.failure("could not count the cache", failure)
        self.files.finish_count(WalkResult(Tally(), 0, [], 0.0))

    def _handle_stop_signals(self) -> None:
        """SIGTERM is how supervisors stop devpid: drain, then exit 0 (twistd re-raises it).

        SIGINT (Ctrl-C) drains the same way. A second one of either, while
        draining, stops at once.
        """

        def stop(signum: int, frame: object) -> None:
            # Nothing else here: a signal handler must not write to a log (or any stream).
            self.clock.callFromThread(self._stop_signalled, signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _forget_sigterm(self) -> None:
        if getattr(self.clock, "_exitSignal", None) == signal.SIGTERM:
            self.clock._exitSignal = None

    def _stop_signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._signalled:
            self._signalled = True
            if signum == signal.SIGINT:
                # As the reactor's own handler does: twistd then ends by SIGINT, as shells expect.
                self.clock._exitSignal = signum
            self.log.info(
                "{signal}: shutting down (a second SIGTERM or Ctrl-C stops at once)", signal=name
            )
            with contextlib.suppress(ReactorNotRunning):  # already stopping for another reason
                self.clock.stop()
        elif not self._at_once:
            self.log.info("{signal} again: stopping at once", signal=name)
            self.stop_at_once()

    def stop_at_once(self) -> None:
        """End the shutdown's grace now: abort the downloads, cut off the responses."""
        self._at_once = True
        self.downloads.abort_all("devpid is stopping at once")
        for sibling in list(self.parent or ()):
            if isinstance(sibling, ListenerService):
                sibling.cut_off()

    def _cannot_start(self, failure: Failure) -> None:
        """The state store (or the serverdir) is unusable: end with one line and status 1."""
        self.log.failure("could not start the cache", failure)
        exit_at_once(self.clock, f"devpid: cannot start the cache: {describe_failure(failure)}")

    async def _start(self) -> None:
        await self.store.open()
        try:
            self.stats.base.update(await self.store.counters())
        except StoreUnavailable as e:
            self.log.warn("counters start from zero: {reason}", reason=str(e))
        self._flusher = LoopingCall(self._flush_tick)
        self._flusher.clock = self.clock
        self._flusher.start(STATS_FLUSH_INTERVAL, now=False)
        counted = self.files.counted
        self.log.info(
            "devpid cache ready in {serverdir} ({counts}; store: {store})",
            serverdir=str(self.files.serverdir),
            counts=f"{self.files.counts.files} files, {self.files.counts.bytes} bytes"
            if counted
            else "counting its files in a thread",
            store=self.store.description,
        )

    def _flush_tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.flush_stats())
        d.addErrback(self._flush_failed)
        return d

    def _flush_failed(self, failure: Failure) -> None:
        if not failure.check(StoreUnavailable):  # that one is logged once by the store
            self.log.failure("could not save counters", failure)

    async def flush_stats(self) -> None:
        pending = self.stats.take_pending()
        if not pending:
            return
        try:
            await self.store.increment(pending)
        except Exception:
            self.stats.restore(pending)
            raise

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.files.census.stopping = True  # the reactor's thread pool waits for the walk
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.downloads.running and not self._at_once:
            self.log.info(
                "waiting up to {grace}s for {count} download{s}",
                grace=self.shutdown_grace,
                count=len(self.downloads.running),
                s="" if len(self.downloads.running) == 1 else "s",
            )
            drained = self.downloads.drain()
            drained.addTimeout(self.shutdown_grace, self.clock)
            try:
                await drained
            except Exception:
                self.downloads.abort_all("devpid is shutting down")
        # Let go of shared download locks before the store closes, so other
        # processes take over at once instead of after the lock's TTL.
        await self.downloads.unlocked()
        try:
            await self.flush_stats()
        except Exception:
            self.log.failure("could not save counters at shutdown")
        if self.pool is not None:
            await self.pool.closeCachedConnections()
        await self.store.close()


@attrs.define(slots=False)
class ListenerService(Service):
    """Listen on an endpoint; a failure to listen ends the process with one line."""

    description: str
    endpoint: IStreamServerEndpoint
    site: DevpidSite
    reactor: IReactorCore
    port: IListeningPort | None = None
    #: How long responses still being sent at shutdown may take; None: the CacheService's.
    shutdown_grace: float | None = None
    log = Logger()

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.site)
        d.addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info("devpid listening on {address}", address=str(port.getHost()))

    def _cannot_listen(self, failure: Failure) -> None:
        exit_at_once(
            self.reactor,
            f"devpid: cannot listen on {self.description}: {describe_failure(failure)}",
        )

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        closed = self.site.start_draining()
        if closed:
            self.log.info("closed {count} idle connections", count=closed)
        waits: list[Deferred[Any]] = []
        if self.port is not None:
            port, self.port = self.port, None
            waits.append(maybeDeferred(port.stopListening))
        busy = self.site.busy_channels()
        if busy:
            waits.append(self._finish_responses(busy))
        return gatherResults(waits, consumeErrors=True) if waits else None

    def _grace(self) -> float:
        if self.shutdown_grace is not None:
            return self.shutdown_grace
        siblings = [s for s in self.parent or () if isinstance(s, CacheService)]
        return siblings[0].shutdown_grace if siblings else 30.0

    def _finish_responses(self, busy: list[Any]) -> Deferred[None]:
        """Let the responses being sent finish and flush, up to the grace; then cut them off."""
        grace = self._grace()
        self.log.info(
            "waiting up to {grace}s for {count} response{s} still being sent",
            grace=grace,
            count=len(busy),
            s="" if len(busy) == 1 else "s",
        )
        finished: Deferred[None] = Deferred()
        reactor = cast(IReactorTime, self.reactor)
        timer = reactor.callLater(grace, self.cut_off)

        def check() -> None:
            # A connection closes once its last bytes are out (draining made it
            # non-persistent): that, not the request's finish, is when it is safe to stop.
            if not any(getattr(c.transport, "connected", False) for c in busy):
                poll.stop()
                if timer.active():
                    timer.cancel()
                finished.callback(None)

        poll = LoopingCall(check)
        poll.clock = reactor
        poll.start(RESPONSE_POLL_INTERVAL)
        return finished

    def cut_off(self) -> None:
        """Abort the connections whose responses are still being sent."""
        count = self.site.cut_off()
        if count:
            self.log.info("cut off {count} response{s}", count=count, s="" if count == 1 else "s")
