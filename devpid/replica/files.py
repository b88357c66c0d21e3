"""A replica's copies of the stage files: fetched after their events, removed after theirs.

The files an applied event links are fetched from the primary's
``/+replica/files/`` through the streaming tee (a ``DownloadManager`` of its
own, whose upstream is the primary): verified against the sha256 and size of
the version record, written to a temporary file and renamed into the stage
file layout, exactly where an upload to this serverdir would have put them. A
client asking for a file before it arrived joins that same download and is
streamed the bytes as they come; a file nobody asked for yet is fetched in the
background, a few at a time. What an event unlinked is removed from disk after
it was applied, by ``ReleaseFiles.remove`` (which asks the private data again).

A fetch that fails is tried again at the follower's next contact with the
primary; at start, every linked file missing on disk is fetched (a replica
killed mid-sync finishes what it had begun).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import Request

from devpid.files.releases import ReleaseFiles
from devpid.files.store import UnsafePath
from devpid.http.errors import HTTPError, plain_error
from devpid.http.request import until_finished
from devpid.mirror.tee import DownloadFailed, DownloadManager, FileSpec
from devpid.mirror.tee.download import Download
from devpid.private.data import PrivateData
from devpid.private.database import split_version_name
from devpid.replica.client import PrimaryClient
from devpid.replica.state import ReplicaState
from devpid.routes.files import FILE_CACHE_CONTROL
from devpid.simple.model import METADATA

#: Files fetched at once in the background.
CONCURRENCY = 4


@attrs.frozen
class Wanted:
    """A file a version links (or a wheel's ``.metadata``), with what checks it."""

    path: str
    sha256: str | None
    size: int | None


def wanted_of(value: Mapping[str, Any] | None) -> list[Wanted]:
    """The files of a version record: its links, and the ``.metadata`` beside wheels."""
    found = []
    for link in (value or {}).get("+links") or ():
        path = link.get("entrypath")
        if not isinstance(path, str):
            continue
        sha256 = (link.get("hashes") or {}).get("sha256")
        size = link.get("size")
        found.append(Wanted(path, sha256, size if isinstance(size, int) else None))
        core = link.get("core_metadata")
        if isinstance(core, dict):
            found.append(Wanted(path + METADATA, core.get("sha256"), None))
    return found


@attrs.define(eq=False)
class ReplicaDownloads(DownloadManager):
    """The tee's downloads from the primary, with a way to wait for one to end."""

    _ended: dict[int, list[Deferred[bool]]] = attrs.field(factory=dict)

    def _done(self, download: Download) -> None:
        super()._done(download)
        for waiter in self._ended.pop(id(download), []):
            waiter.callback(download.verified)

    def ended(self, download: Download) -> Deferred[bool]:
        """Fires with whether ``download`` verified and committed its file."""
        if download.over and download not in self.running.values():
            return defer.succeed(download.verified)
        waiter: Deferred[bool] = Deferred()
        self._ended.setdefault(id(download), []).append(waiter)
        return waiter


@attrs.define
class ReplicaFiles:
    data: PrivateData
    files: ReleaseFiles
    downloads: ReplicaDownloads
    client: PrimaryClient
    state: ReplicaState
    concurrency: int = CONCURRENCY
    _queue: dict[str, Wanted] = attrs.field(factory=dict)
    _failed: dict[str, Wanted] = attrs.field(factory=dict)
    _running: set[str] = attrs.field(factory=set)
    log = Logger()

    # -- where files go --------------------------------------------------------------

    def local_path(self, path: str) -> Path:
        dist = path.removesuffix(METADATA)
        located = self.files.path_of(dist)
        return located.with_name(located.name + path[len(dist) :])

    def linked(self, path: str) -> Wanted | None:
        """What checks the file at ``path``, if a version links it now."""
        dist = path.removesuffix(METADATA)
        for candidate in (path, dist):
            name = self.data.version_of_file(candidate)
            if name is None:
                continue
            index, project, version = split_version_name(name)
            for wanted in wanted_of(self.data.versions(index, project).get(version)):
                if wanted.path == path:
                    return wanted
        return None

    # -- fetching in the background -----------------------------------------------------

    def want(self, wanted: Iterable[Wanted]) -> None:
        """Fetch each of ``wanted`` not on disk yet."""
        for item in wanted:
            if item.path in self._queue or item.path in self._running:
                continue
            try:
                if self.local_path(item.path).exists():
                    continue
            except UnsafePath:
                self.log.warn("not fetching {path}: not a file path", path=item.path[:200])
                continue
            self._queue[item.path] = item
        self._pump()

    def want_everything(self) -> None:
        """Every linked file missing on disk (at start, and after a resync)."""
        for value in list(self.data.database.records.of("version").values()):
            self.want(wanted_of(value))

    def retry_failed(self) -> None:
        failed, self._failed = self._failed, {}
        self.want(failed.values())

    def _pump(self) -> None:
        while self._queue and len(self._running) < self.concurrency:
            path = next(iter(self._queue))
            item = self._queue.pop(path)
            self._running.add(path)
            Deferred.fromCoroutine(self._fetch(item))
        self.state.files_pending = len(self._queue) + len(self._running)

    async def _fetch(self, item: Wanted) -> None:
        try:
            self.data.catch_up()
            if self.linked(item.path) is None or self.local_path(item.path).exists():
                return
            download, _ = self.downloads.download_for(self._spec(item))
            if await self.downloads.ended(download):
                self.state.files_fetched += 1
                self.data.catch_up()
                if self.linked(item.path) is None:  # unlinked while it came
                    self.files.remove([item.path.removesuffix(METADATA)])
            else:
                self.state.file_failures += 1
                self._failed[item.path] = item
        except Exception:
            self.log.failure("fetching {path} from the primary", path=item.path)
            self._failed[item.path] = item
        finally:
            self._running.discard(item.path)
            self._pump()

    def _spec(self, item: Wanted) -> FileSpec:
        return FileSpec(
            self.client.file_url(item.path), self.local_path(item.path), item.sha256, item.size
        )

    def removed(self, paths: Iterable[str]) -> int:
        """Remove the files no version links any more (with their ``.metadata``)."""
        return self.files.remove(p for p in paths if not p.endswith(METADATA))

    # -- a client asking before the file arrived -------------------------------------

    async def serve(self, request: Request, path: str) -> Any:
        """Stream the file at ``path`` to ``request`` from the primary while it is
        written here (or joins the download already running)."""
        item = self.linked(path)
        if item is None:
            raise HTTPError(404, "no such file")
        if request.method == b"HEAD":
            request.setHeader(b"content-type", b"application/octet-stream")
            if item.size is not None:
                request.setHeader(b"content-length", b"%d" % item.size)
            return b""
        download, _ = self.downloads.download_for(self._spec(item))
        try:
            await download.wait_for_headers()
        except DownloadFailed as e:
            return plain_error(request, e.status, f"not replicated yet, and {e}")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-accel-buffering", b"no")
        if download.total is not None:
            request.setHeader(b"content-length", b"%d" % download.total)
        request.setHeader(b"cache-control", FILE_CACHE_CONTROL)
        if item.sha256:
            request.setHeader(b"etag", f'"{item.sha256[:16]}"'.encode())
        finished = until_finished(request)
        download.attach(request, lambda code, reason: self._refuse(request, code, reason))
        await finished
        return None

    @staticmethod
    def _refuse(request: Request, code: int, reason: str) -> None:
        for name in (b"etag", b"x-accel-buffering", b"content-length", b"cache-control"):
            request.responseHeaders.removeHeader(name)
        body = plain_error(request, code, reason)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
