"""A mirror's project list of any size: a names file in the serverdir, pages rendered to files.

The list (``+pages/<user>/<index>/+projects.json``) is a names file
(``devpid.simple.namelist``): sorted, normalised, one name a line. A worker
keeps only its header (tag, count) and the file's identity; each request
``stat``s the file, so a list another worker wrote is seen on the next request
(the page files are the shared truth). Its meta (ETag, serial, when fetched)
is the store's document, as for any page.

A refresh streams the upstream's body to a temporary file
(``devpid.mirror.listfetch``); a child process parses it into a new names file
and renders it (JSON, and HTML for each link prefix served so far) with its
gzip form; the worker then renames the names file into place. A garbled list
fails the child, and the old list stays.

Rendered pages are files under ``<serverdir>/+lists/<user>/<index>/``, named by
the list's tag and the variant (media type, link prefix), with a small
``.meta`` beside them (ETag, sizes): every worker finds them there, and sends
them with ``FileSender`` (``devpid.routes.listsend``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.common.coalesce import Coalescer
from devpid.files.store import PROJECT_LIST, FileStore
from devpid.mirror.listfetch import ListResponse, fetch_list
from devpid.mirror.listjobs import Jobs, inline_jobs
from devpid.mirror.pages import CachedPage
from devpid.mirror.upstream import UpstreamClient
from devpid.simple import namejob
from devpid.simple.model import JSON_V1
from devpid.simple.namelist import (
    NameListError,
    NamesContent,
    RenderedFiles,
    Source,
    read_header,
)
from devpid.simple.parse import PageParseError
from devpid.store import StateStore, StoreUnavailable

#: Renderings whose files this process remembers.
KNOWN_RENDERINGS = 64


def variant_key(media_type: str, base: str) -> str:
    """Names a rendering's variant: JSON (one for all), or HTML with its links' ``base``."""
    text = "json" if media_type == JSON_V1 else f"html\n{base}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _identity(status: os.stat_result) -> tuple[int, int, int]:
    return status.st_ino, status.st_mtime_ns, status.st_size


@attrs.define
class ListRenderer:
    """Renders project lists (a mirror's, or a stage's join) to files, once per variant."""

    files: FileStore
    jobs: Jobs = inline_jobs
    _known: OrderedDict[tuple[str, str], RenderedFiles] = attrs.field(factory=OrderedDict)
    #: Per index, the variants served so far: a new list is rendered in them at once.
    _variants: dict[str, dict[str, tuple[str, str]]] = attrs.field(factory=dict)
    _rendering: Coalescer[RenderedFiles] = attrs.field(factory=Coalescer)
    log = Logger()

    def directory(self, index: str) -> Path:
        user, _, name = index.partition("/")
        # the page path checks both parts of the name
        self.files.page_path(index, PROJECT_LIST)
        return self.files.serverdir / "+lists" / user / name

    def variants(self, index: str) -> list[dict[str, str]]:
        """The variants to render a new list of ``index`` in: JSON, and the HTML served."""
        known = dict(self._variants.get(index, {}))
        known.setdefault(variant_key(JSON_V1, ""), (JSON_V1, ""))
        return [{"key": k, "media": m, "base": b} for k, (m, b) in known.items()]

    def learn(self, tag: str, answer: dict[str, Any]) -> None:
        """Remember the renderings a job made."""
        for key, data in (answer.get("rendered") or {}).items():
            self._remember((tag, key), RenderedFiles.from_json(data))

    def _remember(self, key: tuple[str, str], files: RenderedFiles) -> None:
        self._known[key] = files
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_RENDERINGS:
            self._known.popitem(last=False)

    def forget(self, tag: str, key: str) -> None:
        """A rendering's files are gone (removed from the serverdir): render it again."""
        self._known.pop((tag, key), None)

    async def rendered(
        self, content: NamesContent, index: str, media_type: str, base: str
    ) -> RenderedFiles:
        """The list rendered as ``media_type`` (HTML links under ``base``); rendered by a
        child process the first time, then found in memory or the serverdir."""
        if media_type == JSON_V1:
            base = ""
        key = variant_key(media_type, base)
        self._variants.setdefault(index, {})[key] = (media_type, base)
        known = self._known.get((content.tag, key))
        if known is not None:
            self._known.move_to_end((content.tag, key))
            return known
        return await self._rendering.run(
            f"{index}\n{content.tag}\n{key}",
            lambda: self._render(content, index, media_type, base, key),
        )

    async def _render(
        self, content: NamesContent, index: str, media_type: str, base: str, key: str
    ) -> RenderedFiles:
        directory = self.directory(index)
        meta = namejob.meta_path(directory, content.tag, key)
        try:
            files = RenderedFiles.from_json(json.loads(meta.read_bytes()))
            if files.plain.exists() and files.gzipped.exists():
                self._remember((content.tag, key), files)
                return files
        except (OSError, ValueError, KeyError, TypeError):
            pass
        spec = {
            "job": "render",
            "tag": content.tag,
            "dir": str(directory),
            "sources": [s.to_json() for s in content.sources],
            "only": sorted(content.only) if content.only is not None else None,
            "variants": [{"key": key, "media": media_type, "base": base}],
        }
        answer = await self.jobs(spec)
        self.learn(content.tag, answer)
        self.log.info(
            "rendered the project list of {index} as {media}", index=index, media=media_type
        )
        return self._known[(content.tag, key)]


@attrs.define
class ProjectList:
    """One mirror's project list: the names file, its meta, and refreshing it."""

    index: str
    files: FileStore
    store: StateStore
    renderer: ListRenderer
    _entry: CachedPage | None = None
    _identity: tuple[int, int, int] | None = None
    #: A parsed list not yet in place: its tag and temporary file.
    _pending: tuple[str, Path] | None = None
    _converting: Coalescer[None] = attrs.field(factory=Coalescer)
    log = Logger()

    @property
    def path(self) -> Path:
        return self.files.page_path(self.index, PROJECT_LIST)

    @property
    def _document_key(self) -> str:
        return f"page:{self.index}:{PROJECT_LIST}"

    def forget(self) -> None:
        """Read the file's header and the store's meta again on the next request."""
        self._entry = None
        self._identity = None

    async def cached(self) -> CachedPage | None:
        """The cached list, fresh or not; a ``stat`` when nothing changed."""
        path = self.path
        try:
            status = os.stat(path)
        except FileNotFoundError:
            self.forget()
            return None
        identity = _identity(status)
        if self._entry is not None and identity == self._identity:
            return self._entry
        header = read_header(path)
        if header is None:  # the older one-line form: rewritten once, by a child
            await self._converting.run("convert", lambda: self._convert(path))
            return await self.cached()
        try:
            meta = await self.store.get_document(self._document_key) or {}
        except StoreUnavailable:
            meta = {}
        content = NamesContent(
            header.tag,
            (Source(path=str(path), offset=header.offset),),
            self.renderer,
            count=header.count,
        )
        entry = CachedPage(
            content, meta.get("etag"), meta.get("serial"), float(meta.get("fetched_at", 0.0))
        )
        self._entry, self._identity = entry, identity
        return entry

    async def _convert(self, path: Path) -> None:
        partial = self.files.partial_path(path)
        spec = {"job": "parse", "input": str(path), "output": str(partial), "legacy": True}
        try:
            await self.renderer.jobs(spec)
            os.replace(partial, path)
        except (NameListError, OSError) as e:
            partial.unlink(missing_ok=True)
            self.log.warn("ignoring a damaged cached project list: {error}", error=str(e))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def fetch(self, upstream: UpstreamClient, etag: str | None) -> ListResponse:
        """The upstream's list, its body saved to a temporary file."""
        target = self.files.partial_path(self.path.with_name(PROJECT_LIST + ".upstream"))
        return await fetch_list(upstream, etag, target)

    async def parsed(self, response: ListResponse, now: float) -> CachedPage:
        """The fetched list parsed into a new names file (not yet in place) and rendered,
        by a child process; ``PageParseError`` when it is garbled."""
        assert response.path is not None
        output = self.files.partial_path(self.path)
        spec = {
            "job": "parse",
            "input": str(response.path),
            "content_type": response.content_type,
            "remove_input": True,
            "output": str(output),
            "dir": str(self.renderer.directory(self.index)),
            "variants": self.renderer.variants(self.index),
        }
        if self._entry is not None:
            assert isinstance(self._entry.content, NamesContent)
            spec["keep"] = [self._entry.content.tag]  # served until the new one is in place
        try:
            answer = await self.renderer.jobs(spec)
        except NameListError as e:
            output.unlink(missing_ok=True)
            raise PageParseError(str(e)) from None
        finally:
            response.path.unlink(missing_ok=True)
        tag = str(answer["tag"])
        self.renderer.learn(tag, answer)
        self._pending = (tag, output)
        # named by its place once committed: nothing reads it before (``commit``)
        content = NamesContent(
            tag,
            (Source(path=str(self.path), offset=int(answer["offset"])),),
            self.renderer,
            count=int(answer["count"]),
        )
        return CachedPage(content, response.etag, response.serial, now)

    def discard(self, entry: CachedPage) -> None:
        """A parsed list that will not be used (an older serial than the cached one)."""
        if self._pending is not None:
            self._pending[1].unlink(missing_ok=True)
            self._pending = None

    def commit(self, entry: CachedPage) -> None:
        """Put a parsed list in place: every worker serves it from its next request."""
        content = entry.content
        assert isinstance(content, NamesContent)
        pending, self._pending = self._pending, None
        assert pending is not None and pending[0] == content.tag
        path = self.path
        try:
            os.replace(pending[1], path)
            identity = _identity(os.stat(path))
        except OSError as e:
            pending[1].unlink(missing_ok=True)
            self.log.warn(
                "cannot save the project list of {index}: {error}",
                index=self.index,
                error=e.strerror or str(e),
            )
            return
        self._entry, self._identity = entry, identity


__all__ = ["ListRenderer", "ProjectList", "variant_key"]
