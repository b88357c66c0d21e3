"""The pages of a mirror index: kept in memory, in the serverdir and in the store.

A page's content is a file in the serverdir (it survives restarts and is
shared by the processes); what revalidating it needs (ETag, serial, when it
was fetched) is a document in the store; the most recently used pages are
also kept in memory, parsed, with their rendered forms (and the gzip form of
those, made on the first request that accepts it). This module reads and
writes those three; when a page is fresh enough is ``devpid.mirror.index``'s
business.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gzip
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.common.coalesce import Coalescer
from devpid.common.offload import Offload
from devpid.files.store import PROJECT_LIST, FileStore
from devpid.mirror.spool import Spooled, spool
from devpid.simple.model import Link, ProjectPage
from devpid.simple.namelist import NamesContent
from devpid.simple.parse import parse_stored_page
from devpid.simple.render import (
    LinkRenderer,
    project_page_pieces,
    render_project_list,
    render_project_page,
)
from devpid.store import StateStore, StoreUnavailable

#: Smaller bodies are sent as they are: gzip would save next to nothing.
GZIP_MIN_BYTES = 1024
#: Bodies at least this large are compressed in a thread, when there is one.
GZIP_OFFLOAD_BYTES = 1_000_000
#: A larger rendered body (the project list) is kept in memory only gzipped,
#: a tenth of its size or less; a client that does not accept gzip gets it
#: decompressed for its request.
KEEP_PLAIN_MAX = 4_000_000
#: Pages of this many links or more are rendered in a thread to files on disk
#: (``devpid.mirror.spool``), stored and read in a thread, and sent from those files.
LARGE_PAGE_LINKS = 4096
#: Page files at least this large are read in a thread.
LOAD_OFFLOAD_BYTES = 1_000_000


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give the memory freed by a large page's parsing or rendering back to the system.

    glibc keeps freed memory in its arenas (a thread's arena too) for reuse;
    after tens of MB of short-lived strings that is RSS held for good.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def gzip_etag(etag: bytes) -> bytes:
    """The ETag of the gzip form of the body tagged ``etag``: distinct, so caches never mix them."""
    return etag[:-1] + b'-gz"'


@attrs.define(eq=False)
class Rendered:
    """One rendering of a page: its body, ETag and, once a client asked for it, its gzip form.

    A large body is kept only gzipped (``KEEP_PLAIN_MAX``): ``plain`` is then None.
    A large page's body is on disk (``spool``), plain and gzipped: both are None.
    """

    plain: bytes | None
    etag: bytes
    size: int
    gzipped: bytes | None = None
    _compressing: Coalescer[bytes] = attrs.field(factory=Coalescer)
    #: The bodies in files, sent from there (a large page's).
    spool: Spooled | None = None

    @classmethod
    def spooled(cls, spooled: Spooled) -> Rendered:
        return cls(None, spooled.etag, spooled.plain.size, spool=spooled)

    @classmethod
    def of(cls, body: bytes) -> Rendered:
        etag = b'"' + hashlib.blake2b(body, digest_size=12).hexdigest().encode() + b'"'
        if len(body) <= KEEP_PLAIN_MAX:
            return cls(body, etag, len(body))
        # on the reactor, like the rendering itself, which takes longer
        return cls(None, etag, len(body), gzip.compress(body, 6, mtime=0))

    @property
    def body(self) -> bytes:
        if self.plain is not None:
            return self.plain
        if self.spool is not None:
            return self.spool.plain.read()
        assert self.gzipped is not None
        return gzip.decompress(self.gzipped)

    async def gzip(self, offload: Offload | None) -> bytes:
        """The body gzip-compressed; compressed once, however many clients ask at the same time."""
        if self.gzipped is not None:
            return self.gzipped
        if self.spool is not None:
            return self.spool.gzipped.read()
        return await self._compressing.run("gzip", lambda: self._compress(offload))

    async def _compress(self, offload: Offload | None) -> bytes:
        body = self.body
        if offload is None or len(body) < GZIP_OFFLOAD_BYTES:
            compressed = gzip.compress(body, 6, mtime=0)
        else:
            compressed = await offload(lambda: gzip.compress(body, 6, mtime=0))
        # kept here, not by the callers: they may all have gone (disconnected) by now
        self.gzipped = compressed
        if len(body) >= GZIP_OFFLOAD_BYTES:
            release_freed_memory()
        return compressed


@attrs.define(eq=False)
class CachedPage:
    """A project page (or the project list) with what is needed to revalidate it."""

    #: A project page, a (small) list of names, or a project list kept in files.
    content: ProjectPage | tuple[str, ...] | NamesContent
    etag: str | None
    serial: int | None
    fetched_at: float
    #: Until when a failed revalidation lets the stale page be served without retrying.
    retry_at: float = 0.0
    _renders: dict[tuple[str, LinkRenderer], Rendered] = attrs.field(factory=dict)
    _spooling: Coalescer[Rendered] = attrs.field(factory=Coalescer)

    def is_fresh(self, now: float, expiry: float, stale_mark: bool = False) -> bool:
        """Young enough and not marked stale, or in the back-off after a failed refresh."""
        young = now - self.fetched_at < expiry and not stale_mark
        return young or now < self.retry_at

    def rendered(
        self,
        media_type: str,
        urls: LinkRenderer,
        select: Callable[[Link], Link | None] | None = None,
    ) -> Rendered:
        """The page as ``media_type`` with ``urls``, its ETag and gzip form; computed once."""
        key = (media_type, urls)
        rendered = self._renders.get(key)
        if rendered is None:
            if isinstance(self.content, ProjectPage):
                body = render_project_page(self.content, media_type, urls, select)
            else:
                assert not isinstance(self.content, NamesContent)  # sent from its files
                body = render_project_list(self.content, media_type, urls)
            if len(self._renders) > 8:  # a few media types x outside URLs at most
                self._renders.clear()
            rendered = self._renders[key] = Rendered.of(body)
            if rendered.size >= GZIP_OFFLOAD_BYTES:
                del body  # it may be kept only gzipped now
                release_freed_memory()  # and what rendering built it from
        return rendered

    async def render(
        self,
        media_type: str,
        urls: LinkRenderer,
        select: Callable[[Link], Link | None] | None = None,
        offload: Offload | None = None,
        spool_dir: Path | None = None,
    ) -> Rendered:
        """``rendered``; a large page's in a thread, to files in ``spool_dir``, each
        rendering once however many clients ask for it at the same time."""
        key = (media_type, urls)
        rendered = self._renders.get(key)
        if rendered is not None:  # a cached page's hit: nothing else to look at
            return rendered
        page = self.content
        if (
            spool_dir is None
            or not isinstance(page, ProjectPage)
            or len(page.links) < LARGE_PAGE_LINKS
        ):
            return self.rendered(media_type, urls, select)

        async def work() -> Rendered:
            def write() -> Spooled:
                return spool(project_page_pieces(page, media_type, urls, select), spool_dir)

            spooled = write() if offload is None else await offload(write)
            release_freed_memory()  # the links decoded, the text encoded and compressed
            made = Rendered.spooled(spooled)
            if len(self._renders) > 8:
                self._renders.clear()
            self._renders[key] = made
            return made

        return await self._spooling.run(f"{media_type} {urls.prefix} {urls.index}", work)

    def meta(self) -> dict[str, Any]:
        return {"etag": self.etag, "serial": self.serial, "fetched_at": self.fetched_at}


@attrs.define
class PageCache:
    """One index's pages: the least recently used leave memory first, the serverdir keeps all."""

    index: str
    files: FileStore
    store: StateStore
    #: Project pages kept in memory.
    memory_pages: int
    _memory: OrderedDict[str, CachedPage] = attrs.field(factory=OrderedDict)
    #: Reads of one page file share one read.
    _loading: Coalescer[ProjectPage | None] = attrs.field(factory=Coalescer)
    log = Logger()

    def _document_key(self, project: str) -> str:
        return f"page:{self.index}:{project}"

    async def get(self, project: str, offload: Offload | None = None) -> CachedPage | None:
        """The cached page, fresh or not, from memory or the serverdir (a large page
        file read in a thread, with ``offload``)."""
        entry = self._memory.get(project)
        if entry is not None:
            self._memory.move_to_end(project)
            return entry
        if project != PROJECT_LIST:
            page = await self._loading.run(project, lambda: self._load(project, offload))
            entry = self._memory.get(project)  # another caller's read got there first
            if entry is not None or page is None:
                return entry
            return await self._with_meta(project, page)
        data = self.files.read_page(self.index, project)
        if data is None:
            return None
        try:
            meta = await self.store.get_document(self._document_key(project)) or {}
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

    async def _load(self, project: str, offload: Offload | None) -> ProjectPage | None:
        """The page file of ``project`` read link by link (either form it was written in);
        None when there is none, or it is damaged."""
        path = self.files.page_path(self.index, project)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return None

        def read() -> ProjectPage | None:
            try:
                with open(path, "rb") as f:
                    return parse_stored_page(f)
            except FileNotFoundError:
                return None
            except (KeyError, TypeError, ValueError, IndexError):
                self.log.warn("ignoring a damaged cached page for {project}", project=project)
                return None

        if offload is None or size < LOAD_OFFLOAD_BYTES:
            return read()
        page: ProjectPage | None = await offload(read)
        release_freed_memory()
        return page

    async def _with_meta(self, project: str, page: ProjectPage) -> CachedPage:
        try:
            meta = await self.store.get_document(self._document_key(project)) or {}
        except StoreUnavailable:
            meta = {}  # no ETag or age known: it revalidates (or is served stale)
        entry = self._memory.get(project)
        if entry is not None:  # saved meanwhile (a refetch): newer
            return entry
        entry = CachedPage(
            page, meta.get("etag"), meta.get("serial"), float(meta.get("fetched_at", 0.0))
        )
        self._remember(project, entry)
        return entry

    def _remember(self, project: str, entry: CachedPage) -> None:
        self._memory[project] = entry
        self._memory.move_to_end(project)
        while len(self._memory) > self.memory_pages:
            self._memory.popitem(last=False)

    async def put(self, project: str, entry: CachedPage, offload: Offload | None = None) -> None:
        """Keep a newly fetched page in the serverdir and in memory; a project page is
        written a link at a time (a large one in a thread, with ``offload``)."""
        self._remember(project, entry)
        try:
            if isinstance(entry.content, ProjectPage):
                page = entry.content

                def write() -> None:
                    self.files.write_page(self.index, project, page.json_chunks())

                if offload is None or len(page.links) < LARGE_PAGE_LINKS:
                    write()
                else:
                    await offload(write)
                    release_freed_memory()
            else:
                assert isinstance(entry.content, tuple)  # a NamesContent is in its file already
                self.files.write_page(self.index, project, {"names": list(entry.content)})
        except OSError as e:  # a full disk, say: the page is good, serve it from memory
            self.log.warn(
                "cannot save the page of {project}: {error}; serving it from memory",
                project=project,
                error=e.strerror or str(e),
            )

    async def put_meta(self, project: str, entry: CachedPage) -> None:
        """Record in the store when ``project`` was fetched or confirmed, and its ETag.

        Raises ``StoreUnavailable``: the caller decides what else then goes unsaid.
        """
        await self.store.set_document(self._document_key(project), entry.meta())

    async def delete(self, project: str) -> None:
        """Drop the page everywhere: the upstream no longer has the project."""
        self._memory.pop(project, None)
        self.files.delete_page(self.index, project)
        # without the page file, the document is never read
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete_document(self._document_key(project))

    def forget(self, project: str) -> None:
        """Drop the page from memory only; another process wrote a newer one."""
        self._memory.pop(project, None)

    def forget_all(self) -> None:
        """Drop every page from memory; they are read again from the serverdir and store."""
        self._memory.clear()
