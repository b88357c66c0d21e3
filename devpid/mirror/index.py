"""The mirror index (``root/pypi``): freshness, coalesced refreshes, stale and offline fallback.

A project page is served from memory (or the serverdir after a restart) while
it is fresh. After ``cache_expiry`` seconds it is revalidated with a
conditional GET; concurrent revalidations of one page share one upstream
request. When the upstream fails, the stale page is served (and the upstream
is not asked again for ``error_backoff`` seconds); with nothing cached, the
caller gets ``IndexUnavailable`` and answers 502.

Several processes keep their own in-memory pages; a stale mark or a refetch
in one reaches the others as a ``publish()``ed message (``invalidated``). The
page files and the store are the shared truth; memory is only a cache of them.
With the store unreachable, pages are served from memory and the serverdir,
and what the store would have remembered (ETags, stale marks) is skipped.

This module is the policy; the pages are kept by ``devpid.mirror.pages``, the
stale marks and the messages by ``devpid.mirror.stale``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpid.common.coalesce import Coalescer
from devpid.common.stats import Stats
from devpid.files.store import PROJECT_LIST, FileStore
from devpid.mirror.listfetch import ListResponse
from devpid.mirror.listjobs import Jobs, inline_jobs
from devpid.mirror.pagefetch import SpooledPageResponse, fetch_project_page
from devpid.mirror.pages import CachedPage, PageCache, release_freed_memory
from devpid.mirror.projectlist import ListRenderer, ProjectList
from devpid.mirror.stale import Invalidation, StaleMarks
from devpid.mirror.upstream import PageResponse, UpstreamClient, UpstreamError
from devpid.simple.model import Link, ProjectPage
from devpid.simple.parse import PageParseError, parse_project_list, parse_project_page
from devpid.store import StateStore, StoreUnavailable

__all__ = ["OFFLOAD_BYTES", "CachedPage", "IndexUnavailable", "MirrorIndex", "ProjectNotFound"]


class ProjectNotFound(Exception):
    """The upstream does not have the project (or devpid is offline without it)."""


class IndexUnavailable(Exception):
    """Nothing is cached and the upstream failed; the message is one line."""


#: Pages at least this large are parsed in a thread (a page of 200,000 links is
#: seconds of parsing, during which the reactor would answer nobody).
OFFLOAD_BYTES = 1_000_000


def _store_for_the_parts(index: MirrorIndex, _: Any, store: StateStore) -> StateStore:
    """The pages and the stale marks use the index's store, also once replaced (tests do)."""
    index._pages.store = store
    index._stale.store = store
    index._list.store = store
    return store


def _jobs_for_the_list(index: MirrorIndex, _: Any, jobs: Jobs) -> Jobs:
    """The project list's jobs run where the index's do (a child process in the server)."""
    index._list.renderer.jobs = jobs
    return jobs


def _described(project: str) -> str:
    """A page as error texts name it: never the internal name of the project list."""
    return "the project list" if project == PROJECT_LIST else f"project {project!r}"


@attrs.define
class MirrorIndex:
    """One mirror index: when a page is fresh enough, and what to serve when it is not."""

    name: str
    upstream: UpstreamClient
    store: StateStore = attrs.field(on_setattr=_store_for_the_parts)
    files: FileStore
    clock: IReactorTime
    stats: Stats
    cache_expiry: float
    offline: bool = False
    #: After a failed revalidation, serve stale pages this long before asking again.
    error_backoff: float = 30.0
    #: How long "the upstream has no such project" is remembered.
    missing_ttl: float = 60.0
    #: Project pages kept in memory (least recently used are dropped first).
    memory_pages: int = 2000
    #: Runs a function in a thread (``deferToThread``); None parses on the reactor.
    offload: Callable[[Callable[[], Any]], Deferred[Any]] | None = None
    #: Runs the project list's parsing and rendering (``devpid.mirror.listjobs``).
    jobs: Jobs = attrs.field(default=inline_jobs, on_setattr=_jobs_for_the_list)
    _missing: dict[str, float] = attrs.field(factory=dict)
    _refreshes: Coalescer[CachedPage] = attrs.field(factory=Coalescer)
    _pages: PageCache = attrs.field(init=False)
    _stale: StaleMarks = attrs.field(init=False)
    _list: ProjectList = attrs.field(init=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._pages = PageCache(self.name, self.files, self.store, self.memory_pages)
        self._stale = StaleMarks(self.name, self.store)
        renderer = ListRenderer(self.files, self.jobs)
        self._list = ProjectList(self.name, self.files, self.store, renderer)

    async def mark_stale(self, *projects: str) -> None:
        """The next request for each of ``projects`` revalidates it, whatever its age."""
        await self._stale.add(*projects)
        for project in projects:
            self._missing.pop(project, None)
        await self._stale.share(*projects)
        await self._tell_others("stale", projects)

    async def refresh(self, project: str) -> CachedPage:
        """Mark ``project`` stale and revalidate it now (devpi's ``refresh``)."""
        # marked in this process; the refetch below is what was asked for
        with contextlib.suppress(StoreUnavailable):
            await self.mark_stale(project)
        return await self._get(project)

    # -- other processes ---------------------------------------------------------

    async def _tell_others(self, what: str, projects: tuple[str, ...] | list[str]) -> None:
        message = Invalidation(what, self.name, list(projects)).message(self.files.identity.token)
        # the others revalidate on expiry, and forget everything on resubscribing
        with contextlib.suppress(StoreUnavailable):
            await self.store.publish(message)

    def invalidated(self, message: dict[str, Any]) -> None:
        """Another process marked pages stale (``op: stale``) or wrote new ones (``fresh``)."""
        invalidation = Invalidation.received(message, self.name)
        if invalidation is None:
            return
        for project in invalidation.projects:
            self._missing.pop(project, None)
            if invalidation.op == "stale":
                self._stale.heard_stale(project)
            elif invalidation.op == "fresh":
                self._pages.forget(project)
                if project == PROJECT_LIST:
                    self._list.forget()
                self._stale.discard_here(project)

    def forget_memory(self) -> None:
        """Drop what is kept in memory; it is read again from the serverdir and store."""
        self._pages.forget_all()
        self._list.forget()
        self._missing.clear()
        self._stale.forget()

    # -- reading -------------------------------------------------------------

    async def cached(self, project: str) -> CachedPage | None:
        """The cached page, fresh or not, from memory or the serverdir."""
        if project == PROJECT_LIST:
            return await self._list.cached()
        return await self._pages.get(project, self.offload)

    async def project_page(self, project: str) -> CachedPage:
        """The page to serve for a (normalized) project name."""
        return await self._get(project)

    async def project_list(self) -> CachedPage:
        if self.offline:
            names = tuple(self.files.cached_projects(self.name))
            return CachedPage(names, None, None, self.clock.seconds())
        return await self._get(PROJECT_LIST)

    async def _get(self, project: str) -> CachedPage:
        entry = await self.cached(project)
        now = self.clock.seconds()
        marked = await self._stale.has(project)
        if entry is not None and (self.offline or entry.is_fresh(now, self.cache_expiry, marked)):
            self.stats.incr("page_hits")
            return entry
        if entry is None:
            if self.offline:
                # What an air-gapped site should warm next: one line and one count per request.
                self.stats.incr("offline_misses")
                self.log.warn("offline miss: project {project} is not cached", project=project)
                raise ProjectNotFound(f"{_described(project)} is not cached and devpid is offline")
            if self._missing.get(project, 0.0) > now:
                raise ProjectNotFound(f"project {project!r} is not on the upstream index")
        self.stats.incr("page_misses")
        return await self._refreshes.run(project, lambda: self._revalidate(project, entry))

    async def link_for(self, project: str, filename: str, hash_prefix: str) -> Link | None:
        """The link a file URL refers to, from the cached page (fetched if never seen)."""
        entry = await self.cached(project)
        if entry is None:
            entry = await self.project_page(project)
        assert isinstance(entry.content, ProjectPage)
        return entry.content.link_for(filename, hash_prefix)

    # -- revalidating --------------------------------------------------------

    async def _revalidate(self, project: str, entry: CachedPage | None) -> CachedPage:
        target = None if project == PROJECT_LIST else project
        try:
            etag = entry.etag if entry else None
            if target is None:  # to a file: it may be 700,000 names
                response: PageResponse = await self._list.fetch(self.upstream, etag)
            else:
                # a large page's body goes to a file (``devpid.mirror.pagefetch``)
                response = await fetch_project_page(
                    self.upstream, target, etag, self.files.pages_root
                )
            if response.status == 304 and entry is not None:
                return await self._confirmed(project, entry)
            if response.status in (404, 410):
                return await self._gone(project, entry)
            if response.status != 200:
                raise UpstreamError(f"upstream answered {response.status} for {response.url}")
            fresh = await self._parsed(project, response)
        except (UpstreamError, PageParseError) as e:
            return self._stale_or_fail(project, entry, str(e))
        if (
            entry is not None
            and entry.serial is not None
            and fresh.serial is not None
            and fresh.serial < entry.serial
        ):
            self.log.warn(
                "upstream page for {project} has serial {new} < cached {old}; keeping the cache",
                project=project,
                new=fresh.serial,
                old=entry.serial,
            )
            if project == PROJECT_LIST:
                self._list.discard(fresh)
            return await self._confirmed(project, entry)
        await self._save(project, fresh)
        return fresh

    async def _parsed(self, project: str, response: PageResponse) -> CachedPage:
        """The page parsed; a large one in a thread, so the reactor keeps serving meanwhile
        (the project list in a child process, ``devpid.mirror.projectlist``)."""
        if isinstance(response, ListResponse):
            return await self._list.parsed(response, self.clock.seconds())
        size = response.size if isinstance(response, SpooledPageResponse) else len(response.body)
        try:
            if self.offload is None or size < OFFLOAD_BYTES:
                return self._parse(project, response)
            parsed: CachedPage = await self.offload(lambda: self._parse(project, response))
        finally:
            if isinstance(response, SpooledPageResponse):
                response.close()
        # Once the response body and the parser's garbage are gone (this request is
        # over), give their memory back: glibc would keep it in its arenas for good.
        self.clock.callLater(0, release_freed_memory)
        return parsed

    def _parse(self, project: str, response: PageResponse) -> CachedPage:
        content: ProjectPage | tuple[str, ...]
        if project == PROJECT_LIST:
            content = parse_project_list(response.body, response.content_type)
        else:
            body = response.body
            if isinstance(response, SpooledPageResponse) and response.file is not None:
                body = response.file  # type: ignore[assignment]
            content = parse_project_page(
                project, body, response.content_type, response.url, response.serial
            )
        return CachedPage(content, response.etag, response.serial, self.clock.seconds())

    async def _confirmed(self, project: str, entry: CachedPage) -> CachedPage:
        entry.fetched_at = self.clock.seconds()
        entry.retry_at = 0.0
        await self._remember_meta(project, entry)
        return entry

    async def _remember_meta(self, project: str, entry: CachedPage) -> None:
        """Record in the store that ``project`` was just fetched or confirmed, and say so."""
        try:
            await self._pages.put_meta(project, entry)
            await self._stale.clear(project)
        except StoreUnavailable:
            self._stale.discard_here(project)
            return
        await self._tell_others("fresh", [project])

    async def _gone(self, project: str, entry: CachedPage | None) -> CachedPage:
        """The upstream says 404 or 410. A page cached before is kept and served (devpi's
        rule: what was installable stays installable, and an upstream that loses a
        project by mistake takes nothing from the cache); else the project is missing."""
        if entry is not None:
            self.log.info(
                "upstream no longer has {project}; serving its last page", project=project
            )
            return await self._confirmed(project, entry)
        self._missing[project] = self.clock.seconds() + self.missing_ttl
        raise ProjectNotFound(f"project {project!r} is not on the upstream index")

    def _stale_or_fail(self, project: str, entry: CachedPage | None, reason: str) -> CachedPage:
        if entry is None:
            raise IndexUnavailable(
                f"upstream unavailable and {_described(project)} is not cached: {reason}"
            )
        self.log.warn("serving stale page for {project}: {reason}", project=project, reason=reason)
        entry.retry_at = self.clock.seconds() + self.error_backoff
        return entry

    async def _save(self, project: str, entry: CachedPage) -> None:
        if project == PROJECT_LIST:
            self._list.commit(entry)
        else:
            await self._pages.put(project, entry, self.offload)
        self._missing.pop(project, None)
        await self._remember_meta(project, entry)
