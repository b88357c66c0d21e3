"""A stage index's simple pages: its own files merged with its bases' (spec 6.1-6.4).

A project's page walks the resolution order (breadth first, mirrors last) with
the ``mirror_whitelist`` applied: the stages' files first, then the allowed
mirrors' links, deduplicated by file name (the first stage wins). A project
no stage holds is simply its mirror's page, served as the mirror serves it.

Merged pages are cached per process and checked on every request against
what they were made from: the serial of the project's last change on each
stage (other workers' changes arrive through the event log before the
request is routed) and the very mirror pages used. A warm merged page costs
the resolution walk and a handful of comparisons.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.mirror.index import CachedPage, IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.mirror.pages import LARGE_PAGE_LINKS, release_freed_memory
from devpid.private.constraints import Constraints
from devpid.private.data import PrivateData
from devpid.private.releases import RELEASE, basename
from devpid.private.resolve import resolution_order, resolve_project
from devpid.simple.model import (
    Link,
    LinkTableBuilder,
    ProjectPage,
    record_filename,
    record_has_provenance,
    record_with_index,
)
from devpid.simple.namelist import NamesContent, Source

#: Merged pages (and project lists) kept per process.
MAX_CACHED = 2048


def stage_links(stage: str, versions: Mapping[str, Mapping[str, Any]]) -> list[Link]:
    """The release files of one stage's versions as simple-API links."""
    links = []
    for value in versions.values():
        requires_python = value.get("requires_python") or None
        yanked = value.get("yanked", False)
        for link in value.get("+links") or ():
            if link.get("rel") != RELEASE:
                continue
            path = str(link["entrypath"])
            core = link.get("core_metadata")
            links.append(
                Link(
                    filename=basename(path),
                    url=path,
                    hashes=dict(link.get("hashes") or {}),
                    size=link.get("size"),
                    requires_python=requires_python,
                    yanked=yanked if isinstance(yanked, bool | str) else bool(yanked),
                    core_metadata=dict(core) if isinstance(core, dict) else False,
                    upload_time=link.get("upload_time"),
                    index=stage,
                )
            )
    return links


@attrs.frozen
class PageSource:
    """Where a stage's page of one project comes from."""

    #: A page made here (the stages' files, and the mirrors' links after them).
    merged: CachedPage | None = None
    #: Else: the mirror whose page is served as it is.
    mirror: MirrorIndex | None = None


@attrs.define
class StagePages:
    data: PrivateData
    mirrors: Mapping[str, MirrorIndex]
    _cache: OrderedDict[tuple[str, str], tuple[tuple[Any, ...], CachedPage]] = attrs.field(
        factory=OrderedDict
    )
    log = Logger()

    def _remember(self, key: tuple[str, str], stamp: tuple[Any, ...], page: CachedPage) -> None:
        self._cache[key] = (stamp, page)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    def _cached(self, key: tuple[str, str], stamp: tuple[Any, ...]) -> CachedPage | None:
        found = self._cache.get(key)
        if found is None or not same_stamp(found[0], stamp):
            return None
        self._cache.move_to_end(key)
        return found[1]

    async def project_page(self, index: str, project: str) -> PageSource:
        """The page of ``project`` on the stage ``index``; ProjectNotFound if nothing has it.

        A constrained index's page is its bases' with the files its constraints allow.
        """
        constraints = self.data.constraints(index)
        if constraints is None or constraints.stamp(project) == UNCONSTRAINED:
            return await self._base_page(index, project)
        if not constraints.allows_project(project):
            raise ProjectNotFound(f"no project '{project}'")
        source = await self._base_page(index, project)
        entry, mirror_name = source.merged, None
        if entry is None:
            assert source.mirror is not None
            entry, mirror_name = await source.mirror.project_page(project), source.mirror.name
        stamp = (constraints.stamp(project), entry)
        key = (f"{index}/{CONSTRAINED_KEY}", project)
        page = self._cached(key, stamp)
        if page is None:
            page = await _off_the_reactor(
                self.mirrors,
                entry.content,
                lambda: constrained_page(entry, project, constraints, mirror_name),
            )
            self._remember(key, stamp, page)
        return PageSource(merged=page)

    async def _base_page(self, index: str, project: str) -> PageSource:
        """The page of ``project`` from the stages and mirrors of ``index``'s resolution."""
        resolution = resolve_project(
            index, project, self.data.stages(), self.data.has_private_project
        )
        private = [s for s in resolution.stages if s not in self.mirrors]
        holding = [s for s in private if self.data.has_private_project(s, project)]
        mirrors = [self.mirrors[s] for s in resolution.stages if s in self.mirrors]
        if not holding and len(mirrors) <= 1:
            if not mirrors:
                raise ProjectNotFound(f"The project {project} does not exist.")
            return PageSource(mirror=mirrors[0])
        entries: list[CachedPage | None] = []
        unavailable: IndexUnavailable | None = None
        for mirror in mirrors:
            try:
                entries.append(await mirror.project_page(project))
            except ProjectNotFound:
                entries.append(None)
            except IndexUnavailable as e:
                unavailable = unavailable or e
                # the stages' own files are here: serve them, without the mirror's
                self.log.warn(
                    "{index}: {project} without {mirror}: {error}",
                    index=index,
                    project=project,
                    mirror=mirror.name,
                    error=str(e),
                )
                entries.append(None)
        if not holding:
            # several mirrors (a base given as a URL, and root/pypi): one page as it is
            # served where only one has the project, else their links merged
            found = [m for m, e in zip(mirrors, entries, strict=True) if e is not None]
            if len(found) == 1:
                return PageSource(mirror=found[0])
            if not found:
                if unavailable is not None:
                    raise unavailable
                raise ProjectNotFound(f"The project {project} does not exist.")
        stamp = (
            resolution.stages,
            tuple(self.data.project_serial(s, project) for s in holding),
            *entries,
        )
        key = (index, project)
        page = self._cached(key, stamp)
        if page is None:
            page = await self._merge(project, holding, mirrors, entries)
            self._remember(key, stamp, page)
        return PageSource(merged=page)

    async def _merge(
        self,
        project: str,
        holding: list[str],
        mirrors: list[MirrorIndex],
        entries: list[CachedPage | None],
    ) -> CachedPage:
        own = [
            link
            for stage in holding
            for link in stage_links(stage, self.data.versions(stage, project))
        ]
        pages = [
            (mirror.name, entry.content)
            for mirror, entry in zip(mirrors, entries, strict=True)
            if entry is not None and isinstance(entry.content, ProjectPage)
        ]
        largest = max((page for _, page in pages), key=lambda page: len(page.links), default=None)
        return await _off_the_reactor(
            self.mirrors, largest, lambda: merged_page(project, own, pages)
        )

    async def project_list(self, index: str) -> CachedPage:
        """Every project name of the stage and its bases: the stages' names first (sorted),
        then each mirror's list in resolution order; behind ``*``, only the named ones.

        A mirror's list kept in files (``NamesContent``) is joined in files too: the
        answer is a ``NamesContent`` of the joined sources, rendered by a child process
        (never 700,000 names in a set here)."""
        constraints = self.data.constraints(index)
        entry = await self._base_list(index)
        if constraints is None or not constraints.only_listed:
            return entry
        key = (f"{index}/{CONSTRAINED_KEY}", "+projects")
        stamp = (tuple(sorted(constraints.rules)), entry)
        page = self._cached(key, stamp)
        if page is None:
            if isinstance(entry.content, NamesContent):
                only = frozenset(constraints.rules)
                content = entry.content
                tag = _join_tag(content.tag, "only", *sorted(only))
                page = CachedPage(attrs.evolve(content, tag=tag, only=only), None, None, 0.0)
            else:
                names = entry.content if isinstance(entry.content, tuple) else ()
                # the lists' names are normalised (parse_project_list, the stages' records)
                allowed = tuple(name for name in names if name in constraints.rules)
                page = CachedPage(allowed, None, None, 0.0)
            self._remember(key, stamp, page)
        return page

    async def _base_list(self, index: str) -> CachedPage:
        order = resolution_order(index, self.data.stages())
        private = [s for s in order if s not in self.mirrors]
        entries: list[CachedPage] = []
        failed: IndexUnavailable | None = None
        for mirror in (self.mirrors[s] for s in order if s in self.mirrors):
            try:
                entries.append(await mirror.project_list())
            except IndexUnavailable as e:  # another mirror's names are still worth serving
                failed = failed or e
        if failed is not None and not entries:
            raise failed
        stamp = (tuple(order), tuple(self.data.index_serial(s) for s in private), *entries)
        key = (index, "+projects")
        page = self._cached(key, stamp)
        if page is not None:
            return page
        names = sorted({name for stage in private for name in self.data.projects(stage)})
        in_files = [e.content for e in entries if isinstance(e.content, NamesContent)]
        if in_files:
            page = CachedPage(_joined(names, entries, in_files[0]), None, None, 0.0)
            self._remember(key, stamp, page)
            return page
        seen = set(names)
        for entry in entries:
            if isinstance(entry.content, tuple):
                more = [name for name in entry.content if name not in seen]
                seen.update(more)
                names += more
        page = CachedPage(tuple(names), None, None, 0.0)
        self._remember(key, stamp, page)
        return page


def _join_tag(*parts: str) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for part in parts:
        digest.update(part.encode() + b"\n")
    return digest.hexdigest()


def _joined(names: list[str], entries: list[CachedPage], first: NamesContent) -> NamesContent:
    """The stages' ``names`` then the mirrors' lists, as sources of one list in files."""
    sources = [Source(names=tuple(names))] if names else []
    parts = ["join", *names, ""]
    for entry in entries:
        if isinstance(entry.content, NamesContent):
            sources.extend(entry.content.sources)
            parts.append(entry.content.tag)
        elif isinstance(entry.content, tuple):
            sources.append(Source(names=entry.content))
            parts.extend([*entry.content, ""])
    return NamesContent(_join_tag(*parts), tuple(sources), first.renderer)


#: Where a constrained index's filtered pages are kept (``+`` is in no index name).
CONSTRAINED_KEY = "+constrained"
#: The stamp of a project its index's constraints leave as it is.
UNCONSTRAINED = (True, None)


def merged_page(project: str, own: list[Link], pages: list[tuple[str, ProjectPage]]) -> CachedPage:
    """The stages' links, then the mirrors' (each served from its mirror), the first of
    each file name kept. A mirror's page may have 200,000 links: they are copied packed,
    never all as objects at once."""
    links = LinkTableBuilder()
    seen: set[str] = set()
    for link in own:
        if link.filename not in seen:
            seen.add(link.filename)
            links.append(link)
    # Names already taken are found by their hashes (a set of ints is a third of a set of
    # the names); a hash seen before is checked against the names themselves.
    taken = {hash(name) for name in seen}
    for number, (mirror, page) in enumerate(pages):
        provenance = page.links.has_provenance
        for position, (record, key) in enumerate(
            zip(page.links.records(), page.links.name_hashes(), strict=True)
        ):
            filename = record_filename(record)
            if key in taken and _taken(filename, seen, pages[:number], page, position):
                continue
            taken.add(key)
            links.append_record(
                record_with_index(record, mirror),
                filename,
                provenance and record_has_provenance(record),
            )
    return CachedPage(ProjectPage(project, links.build()), None, None, 0.0)


def _taken(
    filename: str,
    own: set[str],
    earlier: list[tuple[str, ProjectPage]],
    page: ProjectPage,
    position: int,
) -> bool:
    """Whether ``filename`` came before: a stage's, an earlier mirror's, or earlier on
    its own page."""
    if filename in own or any(p.links.first_position(filename) is not None for _, p in earlier):
        return True
    first = page.links.first_position(filename)
    return first is not None and first < position


async def _off_the_reactor(
    mirrors: Mapping[str, MirrorIndex], source: object, work: Callable[[], CachedPage]
) -> CachedPage:
    """``work()`` made from ``source``, a mirror's page: in a thread (the mirrors') when the
    page is large (seconds of work for 200,000 links), else here and now."""
    offload = next((m.offload for m in mirrors.values() if m.offload is not None), None)
    if (
        offload is None
        or not isinstance(source, ProjectPage)
        or len(source.links) < LARGE_PAGE_LINKS
    ):
        return work()
    made: CachedPage = await offload(work)
    release_freed_memory()
    return made


def constrained_page(
    entry: CachedPage, project: str, constraints: Constraints, mirror: str | None
) -> CachedPage:
    """``entry``'s page with only the files ``constraints`` allow; the links of a mirror's
    page (``mirror``) keep pointing at that mirror."""
    page = entry.content
    assert isinstance(page, ProjectPage)
    links = (  # packed as they come: the page may have 200,000 links
        link if link.index is not None or mirror is None else attrs.evolve(link, index=mirror)
        for link in page.links
        if constraints.allows_file(project, link.filename)
    )
    kept = attrs.evolve(page, links=links, versions=None)
    return CachedPage(kept, None, entry.serial, 0.0)


def same_stamp(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """Equal stamps (what a kept answer was made from): equal values, and the very same
    mirror pages (objects: a refetched page is another)."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if isinstance(a, CachedPage) or isinstance(b, CachedPage):
            if a is not b:
                return False
        elif a != b:
            return False
    return True
