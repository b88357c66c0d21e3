"""The catalog: every index's projects, searched a slice at a time, kept up to date.

Private stages are read from the private data (again when a stage's serial
moves). A mirror's names come from what it has cached, never from the
upstream on the query path: its cached project list when there is one (the
name index is rebuilt in the background, through ``offload``, when a newer
list appears; the old one is served meanwhile); otherwise the names of the
projects cached on disk, while one background ``project_list()`` asks the
upstream for the whole list. A failing upstream is logged, never a failed
search.

A search runs on the reactor in steps (a chunk of names, a few hundred stage
projects) and gives the reactor back whenever ``slice_seconds`` have passed,
so other requests are served between the slices of a long search.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from devpid.common.coalesce import Coalescer
from devpid.common.offload import Offload
from devpid.files.store import PROJECT_LIST
from devpid.mirror.pages import CachedPage, release_freed_memory
from devpid.private.data import PrivateData
from devpid.search.names import NameIndex
from devpid.search.query import parse_query
from devpid.search.stages import (
    StageProject,
    fuzzy_eligible,
    fuzzy_score,
    match_project,
    stage_project,
)
from devpid.simple.namelist import NamesContent, joined

T = TypeVar("T")

#: Hits one search returns at most, whatever ``limit`` asks.
MAX_LIMIT = 500
#: Ties in score: better kinds first.
_KIND_ORDER = {"exact": 0, "prefix": 1, "substring": 2, "metadata": 3, "fuzzy": 4}
#: A name index built from a list in files works at most this long between the reactor's turns.
BUILD_SLICE_SECONDS = 0.002
#: Where a mirror's names came from.
PROJECT_LIST_SOURCE = "project list"
CACHED_PAGES_SOURCE = "cached pages"


@attrs.frozen
class Hit:
    """One project found on one index; ``score`` orders hits (higher first)."""

    index: str
    project: str
    kind: str
    score: float
    summary: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class SearchResult:
    """One page of hits; ``total`` counts every match found (fuzzy ones only when looked for)."""

    query: str
    hits: tuple[Hit, ...]
    total: int
    #: Seconds the search took, slices and the waits between them.
    took: float

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "hits": [h.to_json() for h in self.hits],
            "total": self.total,
            "took": round(self.took, 6),
        }


class PageFiles(Protocol):
    def page_path(self, index: str, project: str) -> Path: ...
    def cached_projects(self, index: str) -> list[str]: ...


class SearchableMirror(Protocol):
    """What the catalog uses of a ``MirrorIndex``."""

    @property
    def name(self) -> str: ...
    @property
    def files(self) -> PageFiles: ...
    async def cached(self, project: str) -> CachedPage | None: ...
    async def project_list(self) -> CachedPage: ...


@attrs.define
class Slicer:
    """Gives the reactor back once ``budget`` seconds of work have passed since the last time."""

    clock: IReactorTime
    budget: float
    timer: Callable[[], float] = time.monotonic
    #: How many times the reactor was given back.
    turns: int = 0
    _since: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        self._since = self.timer()

    async def checkpoint(self) -> None:
        if self.timer() - self._since >= self.budget:
            await deferLater(self.clock, 0, lambda: None)
            self.turns += 1
            self._since = self.timer()

    async def run(self, steps: Generator[None, None, T]) -> T:
        """Run a generator of steps to its return value, a checkpoint after each step."""
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                result: T = stop.value
                return result
            await self.checkpoint()


@attrs.define(eq=False)
class _MirrorNames:
    """One mirror's name index and where it came from."""

    mirror: SearchableMirror
    index: NameIndex | None = None
    source: str = ""
    #: What it was built from: never the names themselves, which would keep a
    #: project list's 700,000 strings alive after the page cache dropped them.
    fingerprint: tuple[object, ...] | None = None
    etag: str | None = None
    file_signature: tuple[int, int] | None = None
    built_at: float | None = None
    build_seconds: float | None = None
    checked_at: float = -math.inf
    fetching: bool = False
    fetch_after: float = -math.inf


@attrs.define(eq=False)
class _StageProjects:
    serial: int
    projects: tuple[StageProject, ...]
    built_at: float


@attrs.define
class SearchCatalog:
    """Search over every index: ``await search(query)``; ``status()`` for ``/+status``."""

    data: PrivateData | None
    mirrors: Mapping[str, SearchableMirror]
    offload: Offload
    clock: IReactorTime
    #: Work at most this long before giving the reactor back.
    slice_seconds: float = 0.005
    #: Look for a newer project list (or more cached pages) at most this often.
    recheck_seconds: float = 5.0
    #: After a failed ``project_list()``, wait this long before asking again.
    fetch_retry_seconds: float = 300.0
    timer: Callable[[], float] = time.monotonic
    _mirror_names: dict[str, _MirrorNames] = attrs.field(factory=dict)
    _stages: dict[str, _StageProjects] = attrs.field(factory=dict)
    _checks: Coalescer[None] = attrs.field(factory=Coalescer)
    log = Logger()

    async def search(
        self,
        query: str,
        *,
        limit: int = 50,
        offset: int = 0,
        readable: Callable[[str], bool] | None = None,
    ) -> SearchResult:
        """The hits ``offset:offset+limit`` of ``query``; raises ``QueryError`` for a bad query.

        ``readable(index)`` False leaves that index out (one the asker may not read,
        under ``acl_pkg_read``): before counting, so totals and pages stay right.
        """
        started = self.timer()
        parsed = parse_query(query)

        def accepts(index: str) -> bool:
            return parsed.accepts_index(index) and (readable is None or readable(index))

        limit = max(0, min(limit, MAX_LIMIT))
        offset = max(0, offset)
        want = offset + limit
        slicer = Slicer(self.clock, self.slice_seconds, self.timer)
        hits: list[tuple[Hit, int]] = []  # (hit, 0 for a stage, 1 for a mirror)
        total = 0
        stages: dict[str, tuple[StageProject, ...]] = {}
        for name in self._stage_names():
            if accepts(name):
                stages[name] = await self._stage_projects(name, slicer)
        unmatched: dict[str, list[StageProject]] = {}
        for name, projects in stages.items():
            missed = unmatched[name] = []
            for i, project in enumerate(projects):
                found = match_project(parsed, project)
                if found is None:
                    missed.append(project)
                else:
                    total += 1
                    hit = Hit(name, project.name, found[0], found[1], project.summary)
                    hits.append((attrs.evolve(hit, version=project.version), 0))
                if i % 256 == 255:
                    await slicer.checkpoint()
        mirrors: dict[str, NameIndex] = {}
        if parsed.names_only:
            for name, mirror in sorted(self.mirrors.items()):
                if not accepts(name):
                    continue
                index = await self._mirror_index(name, mirror)
                if index is None:
                    continue
                mirrors[name] = index
                matches = await slicer.run(index.matches(parsed, want))
                total += matches.total
                hits.extend((Hit(name, m.name, m.kind, m.score), 1) for m in matches.hits)
        if total < want and fuzzy_eligible(parsed):
            forms = [t.name_form for t in parsed.terms]

            def already(name: str) -> bool:
                return all(f in name for f in forms)

            for name, missed in unmatched.items():
                for project in missed:
                    score = fuzzy_score(parsed, project)
                    if score is not None:
                        total += 1
                        hit = Hit(name, project.name, "fuzzy", score, project.summary)
                        hits.append((attrs.evolve(hit, version=project.version), 0))
                await slicer.checkpoint()
            for name, index in mirrors.items():
                matches = await slicer.run(index.fuzzy(parsed.joined, want, already))
                total += matches.total
                hits.extend((Hit(name, m.name, m.kind, m.score), 1) for m in matches.hits)
        hits.sort(
            key=lambda h: (-h[0].score, _KIND_ORDER[h[0].kind], h[1], h[0].index, h[0].project)
        )
        page = tuple(h for h, _ in hits[offset:want])
        return SearchResult(query, page, total, self.timer() - started)

    def status(self) -> dict[str, Any]:
        """Per index: how many names or projects are searched, built when and how fast."""
        result: dict[str, Any] = {}
        for name, stage in sorted(self._stages.items()):
            result[name] = {
                "type": "stage",
                "names": len(stage.projects),
                "built_at": stage.built_at,
                "build_seconds": None,
                "source": "private data",
            }
        for name, state in sorted(self._mirror_names.items()):
            result[name] = {
                "type": "mirror",
                "names": state.index.size if state.index is not None else 0,
                "built_at": state.built_at,
                "build_seconds": state.build_seconds,
                "source": state.source or None,
            }
        return result

    # -- stages --------------------------------------------------------------------

    def _stage_names(self) -> list[str]:
        if self.data is None:
            return []
        names = sorted(n for n, c in self.data.indexes().items() if c.get("type") != "mirror")
        for gone in set(self._stages) - set(names):
            del self._stages[gone]
        return names

    async def _stage_projects(self, index: str, slicer: Slicer) -> tuple[StageProject, ...]:
        assert self.data is not None
        serial = self.data.index_serial(index)
        known = self._stages.get(index)
        if known is not None and known.serial == serial:
            return known.projects
        projects = []
        for i, project in enumerate(self.data.projects(index)):
            projects.append(stage_project(project, self.data.versions(index, project)))
            if i % 128 == 127:
                await slicer.checkpoint()
        built = _StageProjects(serial, tuple(projects), self.clock.seconds())
        self._stages[index] = built
        return built.projects

    # -- mirrors -------------------------------------------------------------------

    async def _mirror_index(self, name: str, mirror: SearchableMirror) -> NameIndex | None:
        """The mirror's name index as it is now; a check for newer names started when due.

        Only the first search of a mirror waits (for its cached names, read and
        indexed in a thread); later ones get the index there is.
        """
        for gone in set(self._mirror_names) - set(self.mirrors):
            del self._mirror_names[gone]
        state = self._mirror_names.get(name)
        if state is None or state.mirror is not mirror:
            state = self._mirror_names[name] = _MirrorNames(mirror)
        now = self.clock.seconds()
        due = now - state.checked_at >= self.recheck_seconds
        if due or (state.index is None and self._checks.running(name)):
            if due:
                state.checked_at = now
            checked = state
            waiter = self._checks.run(name, lambda: self._check(checked))
            if state.index is None:
                await waiter
            else:
                waiter.addErrback(self._failed, name)
        return state.index

    def _failed(self, failure: Failure, index: str) -> None:
        self.log.failure("search: checking the names of {index} failed", failure, index=index)

    async def _check(self, state: _MirrorNames) -> None:
        """Rebuild the index if the cached project list changed; without one, fetch it."""
        try:
            await self._check_names(state)
        except Exception:
            self.log.failure(
                "search: checking the names of {index} failed", index=state.mirror.name
            )

    async def _check_names(self, state: _MirrorNames) -> None:
        mirror = state.mirror
        signature = _file_signature(mirror)
        if (
            state.index is not None
            and state.source == PROJECT_LIST_SOURCE
            and signature is not None
            and signature == state.file_signature
        ):
            return  # the list's file is unchanged: no need to read it again
        try:
            page = await mirror.cached(PROJECT_LIST)
        except Exception as e:
            self.log.warn(
                "search: cannot read the cached project list of {index}: {error}",
                index=mirror.name,
                error=e,
            )
            page = None
        if page is not None and isinstance(page.content, NamesContent):
            if state.source == PROJECT_LIST_SOURCE and _tagged(page.content) == state.fingerprint:
                state.file_signature = signature
                return
            await self._build_from_files(state, page.content, page.etag)
            state.file_signature = signature
            return
        if page is not None and isinstance(page.content, tuple):
            same = _fingerprint(page.content, PROJECT_LIST_SOURCE) == state.fingerprint or (
                page.etag is not None and page.etag == state.etag
            )
            if state.source == PROJECT_LIST_SOURCE and same:
                state.file_signature = signature
                return
            await self._build(state, page.content, PROJECT_LIST_SOURCE, page.etag)
            state.file_signature = signature
            return
        if state.source == PROJECT_LIST_SOURCE:
            return  # keep serving the list there was
        self._start_fetch(state)
        names = tuple(await self.offload(lambda: mirror.files.cached_projects(mirror.name)))
        if (
            state.source != PROJECT_LIST_SOURCE
            and _fingerprint(names, CACHED_PAGES_SOURCE) != state.fingerprint
        ):
            await self._build(state, names, CACHED_PAGES_SOURCE, None)

    def _start_fetch(self, state: _MirrorNames) -> None:
        """One background ``project_list()`` at a time, none for a while after a failure."""
        if state.fetching or self.clock.seconds() < state.fetch_after:
            return
        state.fetching = True
        Deferred.fromCoroutine(self._fetch(state)).addErrback(self._failed, state.mirror.name)

    async def _fetch(self, state: _MirrorNames) -> None:
        mirror = state.mirror
        try:
            page = await mirror.project_list()
        except Exception as e:
            self.log.warn(
                "search: cannot get the project list of {index}: {error}",
                index=mirror.name,
                error=e,
            )
            state.fetch_after = self.clock.seconds() + self.fetch_retry_seconds
            return
        finally:
            state.fetching = False
        if isinstance(page.content, NamesContent):
            await self._build_from_files(state, page.content, page.etag)
            state.file_signature = _file_signature(mirror)
        elif isinstance(page.content, tuple):
            await self._build(state, page.content, PROJECT_LIST_SOURCE, page.etag)
            state.file_signature = _file_signature(mirror)

    async def _build_from_files(
        self, state: _MirrorNames, content: NamesContent, etag: str | None
    ) -> None:
        """The index of a list kept in files, built on the reactor a block of names at a
        time (a thread would hold the GIL, and the reactor, for the whole build).

        Meanwhile the old index answers without its fuzzy part: two whole indexes of
        700,000 names at once would raise the worker's peak RSS by a third."""
        started = self.timer()
        if state.index is not None:
            state.index = attrs.evolve(state.index, by_length=())
        # background work: it gives the reactor back after every block or two
        slicer = Slicer(self.clock, min(self.slice_seconds, BUILD_SLICE_SECONDS), self.timer)
        index = await slicer.run(NameIndex.building(joined(content.sources, content.only)))
        # the blocks' transient strings are garbage by now: give their memory back
        self.clock.callLater(0, release_freed_memory)
        self._built(state, index, PROJECT_LIST_SOURCE, _tagged(content), etag, started)

    def _built(
        self,
        state: _MirrorNames,
        index: NameIndex,
        source: str,
        fingerprint: tuple[object, ...],
        etag: str | None,
        started: float,
    ) -> None:
        """A mirror's new name index is in place: what it was built from, and when."""
        state.index = index
        state.source = source
        state.fingerprint = fingerprint
        state.etag = etag
        state.built_at = self.clock.seconds()
        state.build_seconds = self.timer() - started
        self.log.info(
            "search: indexed {count} names of {index} from its {source} in {seconds:.3f}s",
            count=index.size,
            index=state.mirror.name,
            source=source,
            seconds=state.build_seconds,
        )

    async def _build(
        self, state: _MirrorNames, names: tuple[str, ...], source: str, etag: str | None
    ) -> None:
        started = self.timer()
        index: NameIndex = await self.offload(lambda: NameIndex.build(names))
        self._built(state, index, source, _fingerprint(names, source), etag, started)
        if index.size >= 100_000:
            # the names' transient copies (a set, a sorted list) are garbage by now
            self.clock.callLater(0, release_freed_memory)


def _tagged(content: NamesContent) -> tuple[object, ...]:
    return PROJECT_LIST_SOURCE, "tag", content.tag


def _fingerprint(names: tuple[str, ...], source: str) -> tuple[object, ...]:
    """Tells one list of names from another without keeping it.

    A project list is the same while it is the same object (the page cache keeps
    it); the cached pages' names are listed afresh each time, so they are hashed.
    """
    if source == PROJECT_LIST_SOURCE:
        return source, id(names), len(names)
    return source, len(names), hash(names)


def _file_signature(mirror: SearchableMirror) -> tuple[int, int] | None:
    """When and how big the project list's page file is; None without one."""
    try:
        stat = os.stat(mirror.files.page_path(mirror.name, PROJECT_LIST))
    except Exception:  # no file, no serverdir, an index name the layout refuses
        return None
    return stat.st_mtime_ns, stat.st_size


__all__ = ["MAX_LIMIT", "Hit", "SearchCatalog", "SearchResult", "SearchableMirror", "Slicer"]
