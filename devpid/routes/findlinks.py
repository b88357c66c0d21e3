"""``/<user>/<index>/+findlinks``: every file an index can serve on one flat page.

devpi-findlinks' page, for ``pip install --no-index --find-links <url>`` and
for tools older than the simple API: one ``<a>`` per file, its hash in the
URL's fragment. The files are those of the index's resolution order, project
by project (names sorted), with the ``mirror_whitelist`` and a constrained
index's ``constraints`` applied as on its simple pages: the stages' own files
first, then each allowed mirror's. A mirror contributes the project pages
devpid holds (fetched before, kept in the serverdir), never asking the
upstream: the page lists what is here or one step away, not a whole public
index. Offline, a mirror's files count only once cached.

The page can be huge, so it is streamed: written project by project in
chunks, paced by the client (a push producer paused while its transport is
full), never held whole in memory.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from devpid.files.store import FileStore
from devpid.http.errors import HTTPError
from devpid.http.request import links_for
from devpid.mirror.index import MirrorIndex
from devpid.private.constraints import Constraints
from devpid.private.data import PrivateData
from devpid.private.resolve import resolution_order, resolve_project
from devpid.routes import labelled
from devpid.routes.stagepages import stage_links
from devpid.simple.model import Link, ProjectPage
from devpid.simple.render import LinkRenderer

#: Bytes gathered before one write: big enough for few writes, small enough to stay small.
CHUNK_BYTES = 64 * 1024
#: Projects looked at without writing before the reactor is given a turn.
PROJECTS_PER_TURN = 256


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


class ClientGone(Exception):
    """The client went away while the page was written."""


@implementer(IPushProducer)
class Valve:
    """Paces the writes of one response: paused while the client's transport is full."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._waiting: Deferred[None] | None = None
        self.paused = False
        self.stopped = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._gone)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self._wake()

    def _gone(self, _: Failure) -> None:
        self.stopProducing()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    async def write(self, data: bytes) -> None:
        """Write ``data``, then wait while the client is behind; ClientGone once it left."""
        if self.stopped:
            raise ClientGone()
        self._request.write(data)
        while self.paused and not self.stopped:
            self._waiting = Deferred()
            await self._waiting
        if self.stopped:
            raise ClientGone()

    def close(self) -> None:
        if self._request.channel is not None and self._request.producer is self:
            self._request.unregisterProducer()


def _fragment(link: Link) -> str:
    """``#sha256=…`` (else another hash the index knows), for pip to check the file."""
    if link.sha256:
        return f"#sha256={link.sha256}"
    for name, value in sorted(link.hashes.items()):
        return f"#{name}={value}"
    return ""


def render_link(link: Link, source: str, urls: LinkRenderer) -> str:
    """One line of the page: where the file comes from, and its anchor."""
    href = html.escape(urls.file_url(link) + _fragment(link))
    attributes = [f'href="{href}"']
    if link.requires_python:
        attributes.append(f'data-requires-python="{html.escape(link.requires_python)}"')
    if link.yanked:
        reason = link.yanked if isinstance(link.yanked, str) else ""
        attributes.append(f'data-yanked="{html.escape(reason)}"')
    return (
        f"{html.escape(source)} <a {' '.join(attributes)}>{html.escape(link.filename)}</a><br/>\n"
    )


def page_head(index: str) -> str:
    title = html.escape(f"{index}: every file it serves")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head><body><h1>{title}</h1>\n"
    )


PAGE_TAIL = "</body></html>\n"
NO_RELEASES = "<p>No releases.</p>\n"


@attrs.define
class FindLinks:
    """The links of one index, project by project (no HTTP here)."""

    data: PrivateData
    mirrors: Mapping[str, MirrorIndex]
    files: FileStore

    def projects(self, index: str, constraints: Constraints | None) -> list[str]:
        """Every project of the stages along ``index``'s resolution order and of the pages
        its mirrors hold, sorted; those ``*`` hides left out."""
        names: set[str] = set()
        for stage in resolution_order(index, self.data.stages()):
            if stage in self.mirrors:
                names.update(self.files.cached_projects(stage))
            else:
                names.update(self.data.projects(stage))
        if constraints is not None:
            names = {name for name in names if constraints.allows_project(name)}
        return sorted(names)

    async def links(
        self, index: str, project: str, constraints: Constraints | None
    ) -> list[tuple[str, Link]]:
        """``(stage, link)`` of every file of ``project``, the first stage's of each name."""
        resolution = resolve_project(
            index, project, self.data.stages(), self.data.has_private_project
        )
        found: list[tuple[str, Link]] = []
        seen: set[str] = set()
        for stage in resolution.stages:
            mirror = self.mirrors.get(stage)
            if mirror is None:
                candidates: Iterable[Link] = stage_links(stage, self.data.versions(stage, project))
            else:
                candidates = await self._mirror_links(mirror, project)
            for link in candidates:
                if link.filename in seen:
                    continue
                if constraints is not None and not constraints.allows_file(project, link.filename):
                    continue
                seen.add(link.filename)
                found.append((stage, link))
        return found

    async def _mirror_links(self, mirror: MirrorIndex, project: str) -> list[Link]:
        """The links of the page ``mirror`` holds for ``project`` (none if it holds none)."""

        def read() -> ProjectPage | None:
            data = self.files.read_page(mirror.name, project)
            if data is None:
                return None
            try:
                return ProjectPage.from_json(data)
            except (KeyError, TypeError, ValueError):
                return None

        # A big page is parsed off the reactor, as the mirror parses it.
        page = await mirror.offload(read) if mirror.offload is not None else read()
        if page is None:
            return []
        links = [attrs.evolve(link, index=mirror.name) for link in page.links]
        if mirror.offline:
            links = [
                link
                for link in links
                if self.files.committed_file(mirror.name, link.storage_hash, link.filename)
            ]
        return links


@attrs.define
class FindLinksRoutes:
    data: PrivateData
    mirrors: Mapping[str, MirrorIndex]
    files: FileStore
    outside_url: str | None = None
    clock: IReactorTime = attrs.field(factory=_default_clock)
    chunk_bytes: int = CHUNK_BYTES
    log = Logger()

    def register(self, app: Klein) -> None:
        app.route("/<user>/<index>/+findlinks", methods=["GET"], strict_slashes=False)(
            labelled("api", self.findlinks)
        )

    async def findlinks(self, request: Request, user: str, index: str) -> bytes:
        name = f"{user}/{index}"
        config = self.data.index(name)
        if config is None:
            raise HTTPError(404, f"no index {name}")
        urls = links_for(request, self.outside_url, name)
        constraints = self.data.constraints(name)
        finder = FindLinks(self.data, self.mirrors, self.files)
        projects = finder.projects(name, constraints)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"HEAD":
            return b""
        valve = Valve(request)
        try:
            await self._stream(valve, finder, name, projects, constraints, urls)
        except ClientGone:
            self.log.info("{index}/+findlinks: the client left", index=name)
        finally:
            valve.close()
        return b""

    async def _stream(
        self,
        valve: Valve,
        finder: FindLinks,
        name: str,
        projects: list[str],
        constraints: Constraints | None,
        urls: LinkRenderer,
    ) -> None:
        chunk = Chunk(self.chunk_bytes, valve.write)
        await chunk.add(page_head(name))
        quiet = 0
        any_links = False
        for project in projects:
            writes = chunk.writes
            links = await finder.links(name, project, constraints)
            for stage, link in sorted(links, key=lambda found: found[1].filename):
                any_links = True
                await chunk.add(render_link(link, stage, urls))
            quiet = 0 if chunk.writes != writes else quiet + 1
            if quiet >= PROJECTS_PER_TURN:  # much looked at, nothing written: let others in
                quiet = 0
                await deferLater(self.clock, 0, lambda: None)
        await chunk.add(("" if any_links else NO_RELEASES) + PAGE_TAIL)
        await chunk.flush()


@attrs.define
class Chunk:
    """Text gathered up to ``size`` bytes, then written in one go."""

    size: int
    write: Callable[[bytes], Any]
    _parts: list[bytes] = attrs.field(factory=list)
    _length: int = 0
    #: How many writes so far (each may have given the reactor a turn).
    writes: int = 0

    async def add(self, text: str) -> None:
        data = text.encode("utf-8")
        self._parts.append(data)
        self._length += len(data)
        if self._length >= self.size:
            await self.flush()

    async def flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._length = 0
        self.writes += 1
        await self.write(data)
