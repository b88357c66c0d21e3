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
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpid.common.coalesce import Coalescer
from devpid.common.stats import Stats
from devpid.files.store import PROJECT_LIST, FileStore
from devpid.mirror.upstream import PageResponse, UpstreamClient, UpstreamError
from devpid.simple.model import (
    Link,
    PageParseError,
    ProjectPage,
    parse_project_list,
    parse_project_page,
)
from devpid.simple.render import LinkRenderer, render_project_list, render_project_page
from devpid.store import StateStore, StoreUnavailable


class ProjectNotFound(Exception):
    """The upstream does not have the project (or devpid is offline without it)."""


class IndexUnavailable(Exception):
    """Nothing is cached and the upstream failed; the message is one line."""


#: Pages at least this large are parsed in a thread (a page of 200,000 links is
#: seconds of parsing, during which the reactor would answer nobody).
OFFLOAD_BYTES = 1_000_000


@attrs.define(eq=False)
class CachedPage:
    """A project page (or the project list) with what is needed to revalidate it."""

    content: ProjectPage | tuple[str, ...]
    etag: str | None
    serial: int | None
    fetched_at: float
    #: Until when a failed revalidation lets the stale page be served without retrying.
    retry_at: float = 0.0
    _renders: dict[tuple[str, LinkRenderer], tuple[bytes, bytes]] = attrs.field(factory=dict)

    def is_fresh(self, now: float, expiry: float, stale_mark: bool = False) -> bool:
        """Young enough and not marked stale, or in the back-off after a failed refresh."""
        young = now - self.fetched_at < expiry and not stale_mark
        return young or now < self.retry_at

    def render(
        self,
        media_type: str,
        urls: LinkRenderer,
        select: Callable[[Link], Link | None] | None = None,
    ) -> tuple[bytes, bytes]:
        """The page as ``media_type`` with ``urls``, and its ETag; both computed once."""
        key = (media_type, urls)
        rendered = self._renders.get(key)
        if rendered is None:
            if isinstance(self.content, ProjectPage):
                body = render_project_page(self.content, media_type, urls, select)
            else:
                body = render_project_list(self.content, media_type, urls)
            etag = b'"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode() + b'"'
            if len(self._renders) > 8:  # a few media types x outside URLs at most
                self._renders.clear()
            rendered = self._renders[key] = (body, etag)
        return rendered

    def meta(self) -> dict[str, Any]:
        return {"etag": self.etag, "serial": self.serial, "fetched_at": self.fetched_at}


@attrs.define
class MirrorIndex:
    name: str
    upstream: UpstreamClient
    store: StateStore
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
    offload: Callable[[Callable[[], CachedPage]], Deferred[CachedPage]] | None = None
    _pages: OrderedDict[str, CachedPage] = attrs.field(factory=OrderedDict)
    _missing: dict[str, float] = attrs.field(factory=dict)
    _refreshes: Coalescer[CachedPage] = attrs.field(factory=Coalescer)
    #: Projects marked stale (kept in the store's set, mirrored here for the hot path).
    _stale: set[str] | None = None
    log = Logger()

    def _store_key(self, project: str) -> str:
        return f"page:{self.name}:{project}"

    @property
    def _stale_set(self) -> str:
        return f"stale:{self.name}"

    async def _stale_marks(self) -> set[str]:
        if self._stale is None:
            try:
                self._stale = await self.store.set_members(self._stale_set)
            except StoreUnavailable:
                return set()  # unknown until the store is back
        return self._stale

    async def mark_stale(self, *projects: str) -> None:
        """The next request for each of ``projects`` revalidates it, whatever its age."""
        marks = await self._stale_marks()
        marks.update(projects)
        if self._stale is None:  # the store is away: remember the marks here at least
            self._stale = marks
        for project in projects:
            self._missing.pop(project, None)
        await self.store.add_to_set(self._stale_set, *projects)
        await self._tell_others("stale", projects)

    async def _clear_stale(self, project: str) -> None:
        marks = await self._stale_marks()
        if project in marks:
            marks.discard(project)
            await self.store.remove_from_set(self._stale_set, project)

    async def refresh(self, project: str) -> CachedPage:
        """Mark ``project`` stale and revalidate it now (devpi's ``refresh``)."""
        # marked in this process; the refetch below is what was asked for
        with contextlib.suppress(StoreUnavailable):
            await self.mark_stale(project)
        return await self._get(project)

    # -- other processes ---------------------------------------------------------

    async def _tell_others(self, what: str, projects: tuple[str, ...] | list[str]) -> None:
        message = {"op": what, "index": self.name, "projects": list(projects)}
        message["origin"] = self.files.identity.token
        # the others revalidate on expiry, and forget everything on resubscribing
        with contextlib.suppress(StoreUnavailable):
            await self.store.publish(message)

    def invalidated(self, message: dict[str, Any]) -> None:
        """Another process marked pages stale (``op: stale``) or wrote new ones (``fresh``)."""
        if message.get("index") != self.name:
            return
        projects = message.get("projects")
        if not isinstance(projects, list):
            return
        for project in projects:
            if not isinstance(project, str):
                continue
            self._missing.pop(project, None)
            if message.get("op") == "stale":
                if self._stale is not None:
                    self._stale.add(project)
            elif message.get("op") == "fresh":
                self._pages.pop(project, None)
                if self._stale is not None:
                    self._stale.discard(project)

    def forget_memory(self) -> None:
        """Drop what is kept in memory; it is read again from the serverdir and store."""
        self._pages.clear()
        self._missing.clear()
        self._stale = None

    # -- reading -------------------------------------------------------------

    async def cached(self, project: str) -> CachedPage | None:
        """The cached page, fresh or not, from memory or the serverdir."""
        entry = self._pages.get(project)
        if entry is not None:
            self._pages.move_to_end(project)
            return entry
        data = self.files.read_page(self.name, project)
        if data is None:
            return None
        try:
            meta = await self.store.get_document(self._store_key(project)) or {}
        except StoreUnavailable:
            meta = {}  # no ETag or age known: it revalidates (or is served stale)
        try:
            content: ProjectPage | tuple[str, ...]
            if project == PROJECT_LIST:
                content = tuple(data["names"])
            else:
                content = ProjectPage.from_json(data)
        except (KeyError, TypeError, ValueError):
            self.log.warn("ignoring a damaged cached page for {project}", project=project)
            return None
        entry = CachedPage(
            content, meta.get("etag"), meta.get("serial"), float(meta.get("fetched_at", 0.0))
        )
        self._remember(project, entry)
        return entry

    def _remember(self, project: str, entry: CachedPage) -> None:
        self._pages[project] = entry
        self._pages.move_to_end(project)
        while len(self._pages) > self.memory_pages:
            self._pages.popitem(last=False)

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
        marked = project in await self._stale_marks()
        if entry is not None and (self.offline or entry.is_fresh(now, self.cache_expiry, marked)):
            self.stats.incr("page_hits")
            return entry
        if entry is None:
            if self.offline:
                raise ProjectNotFound(f"project {project!r} is not cached and devpid is offline")
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
            response = await self.upstream.fetch_page(target, entry.etag if entry else None)
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
            return await self._confirmed(project, entry)
        await self._save(project, fresh)
        return fresh

    async def _parsed(self, project: str, response: PageResponse) -> CachedPage:
        """The page parsed; a large one in a thread, so the reactor keeps serving meanwhile."""
        if self.offload is None or len(response.body) < OFFLOAD_BYTES:
            return self._parse(project, response)
        return await self.offload(lambda: self._parse(project, response))

    def _parse(self, project: str, response: PageResponse) -> CachedPage:
        content: ProjectPage | tuple[str, ...]
        if project == PROJECT_LIST:
            content = parse_project_list(response.body, response.content_type)
        else:
            content = parse_project_page(
                project, response.body, response.content_type, response.url, response.serial
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
            await self.store.set_document(self._store_key(project), entry.meta())
            await self._clear_stale(project)
        except StoreUnavailable:
            if self._stale is not None:
                self._stale.discard(project)
            return
        await self._tell_others("fresh", [project])

    async def _gone(self, project: str, entry: CachedPage | None) -> CachedPage:
        self._missing[project] = self.clock.seconds() + self.missing_ttl
        if entry is not None:
            self.log.info("upstream no longer has {project}; dropping its page", project=project)
            self._pages.pop(project, None)
            self.files.delete_page(self.name, project)
            # without the page file, the document is never read
            with contextlib.suppress(StoreUnavailable):
                await self.store.delete_document(self._store_key(project))
            await self._tell_others("fresh", [project])
        raise ProjectNotFound(f"project {project!r} is not on the upstream index")

    def _stale_or_fail(self, project: str, entry: CachedPage | None, reason: str) -> CachedPage:
        if entry is None:
            raise IndexUnavailable(f"upstream unavailable and {project!r} is not cached: {reason}")
        self.log.warn("serving stale page for {project}: {reason}", project=project, reason=reason)
        entry.retry_at = self.clock.seconds() + self.error_backoff
        return entry

    async def _save(self, project: str, entry: CachedPage) -> None:
        if isinstance(entry.content, ProjectPage):
            data = entry.content.to_json()
        else:
            data = {"names": list(entry.content)}
        try:
            self.files.write_page(self.name, project, data)
        except OSError as e:  # a full disk, say: the page is good, serve it from memory
            self.log.warn(
                "cannot save the page of {project}: {error}; serving it from memory",
                project=project,
                error=e.strerror or str(e),
            )
        self._missing.pop(project, None)
        self._remember(project, entry)
        await self._remember_meta(project, entry)
