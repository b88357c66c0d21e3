"""The changelog poller: marks cached pages stale as soon as the upstream changes them.

Every ``interval`` seconds it asks the upstream's XML-RPC changelog what changed
since the serial it last saw (kept in the store as ``changelog:<index>``, so a
restart resumes without replaying) and marks the projects devpid has cached
stale; their next request revalidates them, whatever ``--cache-expiry`` says.
An upstream without a changelog is asked once; from then on ``--cache-expiry``
alone decides.

Of several processes sharing a store, one polls: the holder of the leader lock
``poller:<index>``. Every process tries to take or renew it each
``election_interval`` (a third of the interval, at most 10 s), and the lock
lives three of those, so a dead leader is replaced within about 1.3 intervals.
While the store is unreachable nobody polls (the cursor and marks live there).
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
from packaging.utils import canonicalize_name
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpid.common.clock import iso_time
from devpid.common.identity import ProcessIdentity
from devpid.mirror.index import MirrorIndex
from devpid.mirror.upstream import (
    ChangelogEntry,
    ChangelogUnsupported,
    RateLimited,
    UpstreamClient,
    UpstreamError,
    describe_failure,
)
from devpid.store import StateStore, StoreUnavailable

#: A reply this long means devpid fell too far behind: mark everything instead.
GAP_LIMIT = 50_000


@attrs.define
class ChangelogPoller:
    mirror: MirrorIndex
    upstream: UpstreamClient
    store: StateStore
    clock: IReactorTime
    interval: float = 60.0
    gap_limit: int = GAP_LIMIT
    last_serial: int | None = None
    last_tick_at: float | None = None
    last_error: str | None = None
    #: False once the upstream showed it has no changelog; later ticks do nothing.
    supported: bool = True
    #: After a 429, ticks before this clock time do nothing.
    backoff_until: float | None = None
    #: Projects marked stale since the process started.
    marked: int = 0
    identity: ProcessIdentity = attrs.field(factory=ProcessIdentity)
    #: The token of the process that polls (None: unknown, or nobody).
    leader: str | None = None
    is_leader: bool = False
    #: Why nobody here polls right now (the store is unreachable), or None.
    paused: str | None = None
    #: When the leader last polled successfully (from the store, for every process).
    last_poll_at: float | None = None
    #: The poll running now, if any.
    _polling: Deferred[None] | None = None
    log = Logger()

    @property
    def cursor_key(self) -> str:
        return f"changelog:{self.mirror.name}"

    @property
    def progress_key(self) -> str:
        return f"changelog-progress:{self.mirror.name}"

    @property
    def lock_name(self) -> str:
        return f"poller:{self.mirror.name}"

    @property
    def election_interval(self) -> float:
        return min(self.interval / 3, 10.0)

    @property
    def lease(self) -> float:
        return 3 * self.election_interval

    def make_service(self) -> TimerService:
        service = PollerService(self.election_interval, self.step)
        service.clock = self.clock
        service.poller = self
        return service

    def step(self) -> Deferred[None]:
        """Take or renew the leader lock; the leader polls once an interval. Never fails."""
        return Deferred.fromCoroutine(self._step())

    async def _step(self) -> None:
        token = self.identity.token
        try:
            leading = await self.store.acquire_lock(self.lock_name, token, self.lease)
            self.leader = token if leading else await self.store.lock_owner(self.lock_name)
            progress = await self.store.get_document(self.progress_key) or {}
            if not leading:
                cursor = await self.store.get_document(self.cursor_key) or {}
                self.last_serial = cursor.get("serial", self.last_serial)
        except StoreUnavailable as e:
            if self.paused is None:
                self.log.warn("changelog poller paused: {reason}", reason=str(e))
            self.paused, self.is_leader, self.leader = str(e), False, None
            return
        except Exception:
            self.log.failure("changelog leader election failed")
            return
        if self.paused is not None:
            self.log.info("changelog poller resumed: the store is reachable again")
            self.paused = None
        if leading != self.is_leader:
            self.log.info(
                "changelog poller: {what} (process {token})",
                what="this process polls now" if leading else "another process polls now",
                token=token,
            )
        self.is_leader = leading
        at = progress.get("at")
        self.last_poll_at = float(at) if isinstance(at, int | float) else self.last_poll_at
        due = self.last_tick_at is None or (
            self.clock.seconds() - self.last_tick_at >= self.interval - self.election_interval / 2
        )
        if leading and due and self._polling is None:
            # The poll runs beside the election loop, so a slow upstream cannot
            # outlast the lease and let a second process poll at the same time.
            self._polling = Deferred.fromCoroutine(self._tick())
            self._polling.addBoth(self._polled)

    def _polled(self, _: object) -> None:
        self._polling = None

    async def stop(self) -> None:
        """Let the running poll finish, then let another process lead at once."""
        if self._polling is not None:
            await self._polling
        await self.resign()

    async def resign(self) -> None:
        """Let another process lead at once (on shutdown)."""
        if self.is_leader:
            self.is_leader = False
            with contextlib.suppress(StoreUnavailable):
                await self.store.release_lock(self.lock_name, self.identity.token)

    def tick(self) -> Deferred[None]:
        """One poll for a ``TimerService``; it never fails, so the loop never stops."""
        return Deferred.fromCoroutine(self._tick())

    async def _tick(self) -> None:
        if not self.supported:
            return
        now = self.clock.seconds()
        if self.backoff_until is not None and now < self.backoff_until:
            return
        self.last_tick_at = now
        try:
            await self.poll()
        except RateLimited as e:
            self.backoff_until = now + e.retry_after
            self.last_error = str(e)
            self.log.warn(
                "changelog: rate limited, asking again in {seconds:g}s", seconds=e.retry_after
            )
        except ChangelogUnsupported as e:
            self.supported = False
            self.last_error = None
            self.log.info(
                "upstream has no changelog; relying on --cache-expiry ({reason})", reason=str(e)
            )
        except StoreUnavailable as e:
            self.last_error = str(e)
        except UpstreamError as e:  # the upstream is away or broken: one line, not a traceback
            if self.last_error != str(e):
                self.log.warn("changelog poll failed: {reason}", reason=str(e))
            self.last_error = str(e)
        except Exception as e:
            self.last_error = describe_failure(e)
            self.log.failure("changelog poll failed")
        else:
            self.last_error = None
            self.backoff_until = None
            self.last_poll_at = self.clock.seconds()
            try:
                await self.store.set_document(
                    self.progress_key, {"at": self.last_poll_at, "by": self.identity.token}
                )
            except StoreUnavailable:
                pass
            except Exception:
                self.log.failure("could not record the changelog poll")

    async def poll(self) -> None:
        """Ask for the changes since the stored cursor and mark the cached ones stale."""
        document = await self.store.get_document(self.cursor_key) or {}
        cursor = document.get("serial")
        if not isinstance(cursor, int) or isinstance(cursor, bool):
            await self._restart_from_head("no changelog cursor yet")
            return
        changes = await self.upstream.changelog_since_serial(cursor)
        if len(changes) >= self.gap_limit:
            await self._restart_from_head(f"{len(changes)} changes since serial {cursor}")
            return
        await self._mark(changes)
        newest = max([cursor, *(change[4] for change in changes)])
        if newest != cursor:
            await self.store.set_document(self.cursor_key, {"serial": newest})
        self.last_serial = newest

    async def _mark(self, changes: list[ChangelogEntry]) -> None:
        cached = set(self.mirror.files.cached_projects(self.mirror.name))
        changed = {canonicalize_name(change[0]) for change in changes}
        stale = sorted(changed & cached)
        if stale:
            await self.mirror.mark_stale(*stale)
            self.marked += len(stale)
            self.log.info(
                "changelog: marked {count} cached project(s) stale: {projects}",
                count=len(stale),
                projects=", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""),
            )

    async def _restart_from_head(self, why: str) -> None:
        """Mark every cached project stale and continue from the upstream's newest serial."""
        head = await self.upstream.changelog_last_serial()
        cached = self.mirror.files.cached_projects(self.mirror.name)
        if cached:
            await self.mirror.mark_stale(*cached)
            self.marked += len(cached)
        # The cursor goes last: a failure before it repeats this, never skips it.
        await self.store.set_document(self.cursor_key, {"serial": head})
        self.last_serial = head
        self.log.info(
            "changelog: {why}; marked all {count} cached project(s) stale, now at serial {serial}",
            why=why,
            count=len(cached),
            serial=head,
        )

    def status(self) -> dict[str, Any]:
        upstream_serial = self.upstream.health.highest_serial
        lag_serials = None
        if upstream_serial is not None and self.last_serial is not None:
            lag_serials = max(0, upstream_serial - self.last_serial)
        lag_seconds = None
        if self.last_poll_at is not None:
            lag_seconds = round(max(0.0, self.clock.seconds() - self.last_poll_at), 3)
        return {
            "interval": self.interval,
            "supported": self.supported,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "paused": self.paused,
            "last_serial": self.last_serial,
            "upstream_serial": upstream_serial,
            "lag_serials": lag_serials,
            "last_poll_at": iso_time(self.last_poll_at),
            "lag_seconds": lag_seconds,
            "last_tick_at": iso_time(self.last_tick_at),
            "last_error": self.last_error,
            "backoff_until": iso_time(self.backoff_until),
            "marked_stale": self.marked,
        }


class PollerService(TimerService):
    """The election loop; on stop the leader finishes its poll and resigns, so another
    takes over at once."""

    poller: ChangelogPoller

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()

        async def stop(_: object) -> None:
            await self.poller.stop()

        return stopped.addCallback(lambda r: Deferred.fromCoroutine(stop(r)))
