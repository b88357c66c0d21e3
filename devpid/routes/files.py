"""A distribution file, its metadata or provenance: from the cache, or joining its download.

A cached file is sent whole by ``FileSender`` or, for a single Range and for
HEAD, by twisted.web's ``File``, both from the descriptor opened when the
request was found to be a hit (and noted as a use, for eviction's LRU order):
a mirror file evicted at that moment is either still sent whole or, gone
before it was opened, a miss like any other. A file not cached yet is looked
up on its project's page (it must be there under this hash), then streamed to
the client from the shared download of the tee while that download fills the cache.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request

from devpid.common.stats import Stats
from devpid.files.sender import FileSender, Opened, OpenedFile, open_cached, read_whole
from devpid.files.store import FileStore, UnsafePath
from devpid.http.errors import HTTPError
from devpid.http.request import etag_matches, until_finished
from devpid.mirror.index import IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.mirror.tee import DownloadFailed, DownloadManager, FileSpec
from devpid.routes import labelled, mirror_named
from devpid.routes.stagefiles import StageFiles
from devpid.simple.model import (
    METADATA,
    PROVENANCE,
    Link,
    ProjectPage,
    dist_filename_of,
    project_of_filename,
)

FILE_CACHE_CONTROL = b"max-age=31536000, immutable"
#: A mirror file's answer says whether it came from the cache (``hit``) or
#: from the upstream through the tee (``miss``); ``devpid warm`` counts by it.
CACHE_HEADER = b"x-devpid-cache"

#: Downloads of one file a request may go through when each is evicted as soon as it
#: was committed (only possible with a very short --evict-grace).
MISS_ATTEMPTS = 3

#: One byte range (RFC 9110 14.1.2): ``first-last``, ``first-`` or ``-suffix``.
_ONE_RANGE = re.compile(rb"bytes[ \t]*=[ \t]*([0-9]{0,18})-([0-9]{0,18})[ \t]*")


def _single_range(header: bytes, size: int) -> bytes | None:
    """The one valid range of a ``Range`` header as twisted.web's ``File`` should see it.

    None when it is not exactly one well-formed range: the whole file is sent
    then (RFC 9110 lets a server ignore Range), so several, overlapping or
    malformed ranges can neither multiply the file nor reach ``File``'s
    edge cases. A suffix longer than the file is the whole file.
    """
    match = _ONE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if first and last and int(last) < int(first):
        return None
    if not first and int(last) >= size:
        return b"bytes=0-"
    return b"bytes=" + first + b"-" + last


def _upstream_spec(link: Link, side: str, path: Path) -> FileSpec | None:
    """What to fetch for the file (``side`` ""), its ``.metadata`` or its ``.provenance``;
    None when the page says there is no such file."""
    if side == METADATA:
        if link.core_metadata is False:
            return None
        return FileSpec(link.url + side, path, link.metadata_sha256, None)
    if side == PROVENANCE:
        if link.provenance is None:
            return None
        # PEP 740 gives neither a hash nor a size of it: nothing to verify it by.
        return FileSpec(link.provenance, path, None, None)
    return FileSpec(link.url, path, link.sha256, link.size)


def _content_type(filename: str) -> bytes:
    return b"application/json" if filename.endswith(PROVENANCE) else b"application/octet-stream"


def download_error(request: Request, code: int, reason: str) -> bytes:
    """A download that failed before the client got a byte: devpi's ``{"message"}`` JSON
    whatever ``Accept`` says (devpi-client reads it), on one line."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps({"message": " ".join(reason.split())}).encode() + b"\n"


@attrs.define
class FileRoutes:
    indexes: Mapping[str, MirrorIndex]
    downloads: DownloadManager
    files: FileStore
    stats: Stats
    #: Stage indexes' files; without it only mirrors have files.
    stages: StageFiles | None = None
    #: A replica's: streams a linked stage file not on disk yet from its primary.
    missing_stage_file: Callable[[Request, str], Awaitable[Any]] | None = None
    log = Logger()

    def register(self, app: Klein) -> None:
        path = "/<user>/<index>/+f/<h3>/<h13>/<filename>"
        app.route(path, methods=["GET", "HEAD"])(labelled("file", self.file))
        app.route(path, methods=["DELETE"])(labelled("api", self.delete))
        app.route(path, methods=["POST"])(labelled("api", self.post))
        app.route("/<user>/<index>/+e/<directory>/<filename>", methods=["GET", "HEAD"])(
            labelled("file", self.external_file)
        )

    def _stage(self, user: str, index: str) -> StageFiles | None:
        name = f"{user}/{index}"
        if name in self.indexes or self.stages is None or not self.stages.data.is_stage(name):
            return None
        return self.stages

    def _stage_only(self, user: str, index: str) -> StageFiles:
        stages = self._stage(user, index)
        if stages is None:
            raise HTTPError(404, f"no stage index {user}/{index}")
        return stages

    async def delete(
        self, request: Request, user: str, index: str, h3: str, h13: str, filename: str
    ) -> bytes:
        stages = self._stage_only(user, index)
        return await stages.delete(request, f"{user}/{index}", f"{h3}/{h13}/{filename}")

    async def post(
        self, request: Request, user: str, index: str, h3: str, h13: str, filename: str
    ) -> bytes:
        """A tox result for the release at this URL."""
        stages = self._stage_only(user, index)
        return await stages.post_toxresult(request, f"{user}/{index}", f"{h3}/{h13}/{filename}")

    async def external_file(
        self, request: Request, user: str, index: str, directory: str, filename: str
    ) -> Any:
        """A mirror's file whose link had no hash, at devpi's ``+e`` URL: found on its
        project's page by name and upstream directory, then served as any other."""
        mirror = mirror_named(self.indexes, user, index)
        project = project_of_filename(filename)
        if project is None:
            raise HTTPError(404, f"{filename} is not a distribution file name")
        try:
            entry = await mirror.project_page(project)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        page = entry.content
        links = page.links if isinstance(page, ProjectPage) else ()
        for link in links:
            if link.filename == filename and link.url_path == f"+e/{directory}/{filename}":
                h = link.storage_hash
                return await self.file(request, user, index, h[:3], h[3:16], filename)
        raise HTTPError(404, f"{filename} is not on the index under +e/{directory[:100]}")

    async def file(
        self, request: Request, user: str, index: str, h3: str, h13: str, filename: str
    ) -> Any:
        stages = self._stage(user, index)
        if stages is not None:
            found = stages.locate(request, f"{user}/{index}", f"{h3}/{h13}/{filename}")
            if isinstance(found, bytes):
                return found
            if self.missing_stage_file is None:
                return await self._cached(request, found, h3 + h13)
            opened = open_cached(found)  # one open: the file, or the replica's fetch of it
            if opened is None:
                entrypath = f"{user}/{index}/+f/{h3}/{h13}/{filename}"
                return await self.missing_stage_file(request, entrypath)
            return await self._cached(request, found, h3 + h13, opened)
        mirror = mirror_named(self.indexes, user, index)
        try:
            path = self.files.file_path(mirror.name, h3, h13, filename)
        except UnsafePath as e:
            raise HTTPError(400, str(e)) from None
        opened = open_cached(path)
        if opened is not None:
            self.stats.incr("file_hits")
            request.setHeader(CACHE_HEADER, b"hit")
            self.files.note_use(str(path))
            return await self._cached(request, path, h3 + h13, opened)
        dist_filename = dist_filename_of(filename)
        side = filename[len(dist_filename) :]
        project = project_of_filename(dist_filename)
        if project is None:
            raise HTTPError(404, f"{filename} is not a distribution file name")
        try:
            link = await mirror.link_for(project, dist_filename, h3 + h13)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        spec = _upstream_spec(link, side, path) if link is not None else None
        if link is None or spec is None:
            raise HTTPError(404, f"{filename} is not on the index under this hash")
        if mirror.offline:
            self.stats.incr("offline_misses")
            self.log.warn(
                "offline miss: {filename} (project {project}) is not cached",
                filename=filename,
                project=project,
            )
            raise HTTPError(404, f"{filename} is not cached and devpid is offline")
        if request.method == b"HEAD":
            request.setHeader(b"content-type", _content_type(filename))
            if link.size is not None and not side:
                request.setHeader(b"content-length", b"%d" % link.size)
            return b""
        self.stats.incr("file_misses")
        request.setHeader(CACHE_HEADER, b"miss")
        for _attempt in range(MISS_ATTEMPTS):
            download, _started = self.downloads.download_for(spec)
            try:
                await download.wait_for_headers()
            except DownloadFailed as e:
                return download_error(request, e.status, str(e))
            if not download.verified:
                break
            opened = open_cached(path)
            if opened is not None:
                return await self._cached(request, path, h3 + h13, opened)
            # Committed, then evicted before this request opened it: fetch it again.
        else:
            return download_error(
                request, 503, f"{filename} was evicted each time it was cached (--evict-grace)"
            )
        request.setHeader(b"content-type", _content_type(filename))
        request.setHeader(b"x-accel-buffering", b"no")
        if download.total is not None:
            request.setHeader(b"content-length", str(download.total).encode())
        request.setHeader(b"cache-control", FILE_CACHE_CONTROL)
        request.setHeader(b"etag", f'"{h3}{h13}"'.encode())
        finished = until_finished(request)
        download.attach(request, lambda code, reason: self._refuse(request, code, reason))
        await finished
        return None

    def _refuse(self, request: Request, code: int, reason: str) -> None:
        """A download failed before its first byte reached this client: a one-line error."""
        for name in (b"etag", b"x-accel-buffering", b"content-length", b"cache-control"):
            request.responseHeaders.removeHeader(name)
        body = download_error(request, code, reason)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def _cached(
        self, request: Request, path: Path, hash_prefix: str, opened: Opened | None = None
    ) -> Any:
        """A committed file, from ``opened`` when the caller opened it already."""
        if opened is None:
            opened = open_cached(path)
            if opened is None:
                raise HTTPError(404, f"{path.name} is no longer cached")
        if path.name.endswith(PROVENANCE):
            return self._cached_provenance(request, opened.fd, hash_prefix)
        return await self._cached_file(request, path, opened, hash_prefix)

    @staticmethod
    def _not_modified(request: Request, hash_prefix: str) -> bool:
        """Set a cached file's validators; whether the client's copy is current (a 304)."""
        etag = f'"{hash_prefix}"'.encode()
        request.setHeader(b"etag", etag)
        request.setHeader(b"cache-control", FILE_CACHE_CONTROL)
        if etag_matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(304)
            return True
        return False

    def _cached_provenance(self, request: Request, fd: int, hash_prefix: str) -> bytes:
        """A provenance file from disk, as JSON: a few KiB, sent whole (no Range)."""
        if self._not_modified(request, hash_prefix):
            os.close(fd)
            return b""
        body = read_whole(fd)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    async def _cached_file(
        self, request: Request, path: Path, opened: Opened, hash_prefix: str
    ) -> Any:
        """Sends ``opened``, or closes it."""
        handed_over = False
        try:
            if self._not_modified(request, hash_prefix):
                return b""
            asked = request.getHeader(b"range")
            if asked is not None:
                single = _single_range(asked, opened.stat.st_size)
                if single is None:  # several ranges, or none that parses: the whole file
                    request.requestHeaders.removeHeader(b"range")
                else:
                    request.requestHeaders.setRawHeaders(b"range", [single])
            if request.method == b"GET" and not request.getHeader(b"range"):
                handed_over = True
                return await self._send_whole_file(request, opened)
            resource = OpenedFile(path, opened)
            handed_over = True
            return resource
        finally:
            if not handed_over:
                os.close(opened.fd)

    async def _send_whole_file(self, request: Request, opened: Opened) -> None:
        fd, st = opened.fd, opened.stat
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % st.st_size)
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"last-modified", http.datetimeToString(st.st_mtime))
        finished = until_finished(request)
        FileSender(request, fd, st.st_size).start()
        await finished
