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

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.mirror.index import CachedPage, IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.private.data import PrivateData
from devpid.private.releases import RELEASE, basename
from devpid.private.resolve import resolution_order, resolve_project
from devpid.simple.model import Link, ProjectPage

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
        """The page of ``project`` on the stage ``index``; ProjectNotFound if nothing has it."""
        resolution = resolve_project(
            index, project, self.data.stages(), self.data.has_private_project
        )
        private = [s for s in resolution.stages if s not in self.mirrors]
        holding = [s for s in private if self.data.has_private_project(s, project)]
        mirrors = [self.mirrors[s] for s in resolution.stages if s in self.mirrors]
        if not holding:
            if not mirrors:
                raise ProjectNotFound(f"The project {project} does not exist.")
            return PageSource(mirror=mirrors[0])
        entries: list[CachedPage | None] = []
        for mirror in mirrors:
            try:
                entries.append(await mirror.project_page(project))
            except ProjectNotFound:
                entries.append(None)
            except IndexUnavailable as e:
                # the stages' own files are here: serve them, without the mirror's
                self.log.warn(
                    "{index}: {project} without {mirror}: {error}",
                    index=index,
                    project=project,
                    mirror=mirror.name,
                    error=str(e),
                )
                entries.append(None)
        stamp = (
            resolution.stages,
            tuple(self.data.project_serial(s, project) for s in holding),
            *entries,
        )
        key = (index, project)
        page = self._cached(key, stamp)
        if page is None:
            page = self._merge(project, holding, mirrors, entries)
            self._remember(key, stamp, page)
        return PageSource(merged=page)

    def _merge(
        self,
        project: str,
        holding: list[str],
        mirrors: list[MirrorIndex],
        entries: list[CachedPage | None],
    ) -> CachedPage:
        links: list[Link] = []
        seen: set[str] = set()
        for stage in holding:
            for link in stage_links(stage, self.data.versions(stage, project)):
                if link.filename not in seen:
                    seen.add(link.filename)
                    links.append(link)
        for mirror, entry in zip(mirrors, entries, strict=True):
            content = entry.content if entry is not None else None
            if not isinstance(content, ProjectPage):
                continue
            for link in content.links:
                if link.filename not in seen:
                    seen.add(link.filename)
                    links.append(attrs.evolve(link, index=mirror.name))
        return CachedPage(ProjectPage(project, tuple(links)), None, None, 0.0)

    async def project_list(self, index: str) -> CachedPage:
        """Every project name of the stage and its bases: the stages' names first (sorted),
        then the first mirror's list."""
        order = resolution_order(index, self.data.stages())
        private = [s for s in order if s not in self.mirrors]
        mirror = next((self.mirrors[s] for s in order if s in self.mirrors), None)
        entry: CachedPage | None = None
        if mirror is not None:
            entry = await mirror.project_list()
        stamp = (tuple(order), tuple(self.data.index_serial(s) for s in private), entry)
        key = (index, "+projects")
        page = self._cached(key, stamp)
        if page is not None:
            return page
        names = sorted({name for stage in private for name in self.data.projects(stage)})
        if entry is not None and isinstance(entry.content, tuple):
            own = set(names)
            names += [name for name in entry.content if name not in own]
        page = CachedPage(tuple(names), None, None, 0.0)
        self._remember(key, stamp, page)
        return page


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
