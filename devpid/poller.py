"""The changelog poller: marks cached pages stale as soon as the upstream changes them.

Every ``interval`` seconds it asks the upstream's XML-RPC changelog what changed
since the serial it last saw (kept in the store as ``changelog:<index>``, so a
restart resumes without replaying) and marks the projects devpid has cached
stale; their next request revalidates them, whatever ``--cache-expiry`` says.
An upstream without a changelog is asked once; from then on ``--cache-expiry``
alone decides.
"""

from __future__ import annotations

from typing import Any

import attrs
from packaging.utils import canonicalize_name
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpid.mirror import MirrorIndex
from devpid.status import iso_time
from devpid.store import StateStore
from devpid.upstream import (
    ChangelogEntry,
    ChangelogUnsupported,
    RateLimited,
    UpstreamClient,
    describe_failure,
)

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
    log = Logger()

    @property
    def cursor_key(self) -> str:
        return f"changelog:{self.mirror.name}"

    def make_service(self) -> TimerService:
        service = TimerService(self.interval, self.tick)
        service.clock = self.clock
        return service

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
        except Exception as e:
            self.last_error = describe_failure(e)
            self.log.failure("changelog poll failed")
        else:
            self.last_error = None
            self.backoff_until = None

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
        return {
            "interval": self.interval,
            "supported": self.supported,
            "last_serial": self.last_serial,
            "last_tick_at": iso_time(self.last_tick_at),
            "last_error": self.last_error,
            "backoff_until": iso_time(self.backoff_until),
            "marked_stale": self.marked,
        }
