"""Klein routes: parse the request, ask the index or the tee, render the answer.

devpi's URL space: ``/<user>/<index>/+simple/[<project>/]`` and
``/<user>/<index>/+f/<h3>/<h13>/<filename>``, plus ``/+status`` and ``/+metrics``.
No caching or I/O policy lives here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from klein import Klein
from packaging.utils import canonicalize_name
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request
from twisted.web.static import File
from werkzeug.exceptions import HTTPException

from devpid.common.stats import Stats
from devpid.files.sender import FileSender
from devpid.files.store import FileStore, UnsafePath
from devpid.mirror.index import CachedPage, IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.mirror.tee.download import DownloadFailed, DownloadManager, FileSpec
from devpid.ops.metrics import Metrics
from devpid.ops.status import StatusReport
from devpid.simple.model import Link, is_valid_project_name, project_of_filename
from devpid.simple.render import CONTENT_TYPES, LinkRenderer, NotAcceptable, negotiate

#: Keeps pip's and uv's HTTP caches from re-asking more than once a minute,
#: and lets them revalidate cheaply (ETag) after that.
PAGE_CACHE_CONTROL = b"max-age=60, public"
FILE_CACHE_CONTROL = b"max-age=31536000, immutable"
INSTALLER_AGENTS = (b"pip/", b"uv/", b"poetry/", b"pdm/", b"hatch/", b"twine/")


class HTTPError(Exception):
    """An answer other than 200, with a one-line reason for the body."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _is_installer(request: Request) -> bool:
    agent = request.getHeader(b"user-agent") or b""
    accept = request.getHeader(b"accept") or b""
    return any(token in agent for token in INSTALLER_AGENTS) or b"vnd.pypi.simple" in accept


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


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix(b"W/") for c in if_none_match.split(b",")]
    return etag in candidates or b"*" in candidates


def _until_finished(request: Request) -> Deferred[None]:
    """Fires when the response is complete or the client has gone.

    A route that streams awaits this, so Klein neither finishes the request
    early nor (when cancelled on disconnect) touches the shared download.
    """
    finished: Deferred[None] = Deferred()

    def done(_: object) -> None:
        if not finished.called:
            finished.callback(None)

    request.notifyFinish().addBoth(done)
    return finished


@attrs.define(slots=False)
class DevpidRoutes:
    app = Klein()
    indexes: dict[str, MirrorIndex]
    downloads: DownloadManager
    files: FileStore
    stats: Stats
    status: StatusReport
    outside_url: str | None = None
    #: This app's Prometheus registry; without it /+metrics is 404.
    metrics: Metrics | None = None
    log = Logger()

    def resource(self) -> IResource:
        return self.app.resource()

    # -- helpers -------------------------------------------------------------

    def _index(self, user: str, index: str) -> MirrorIndex:
        mirror = self.indexes.get(f"{user}/{index}")
        if mirror is None:
            raise HTTPError(404, f"no index {user}/{index}")
        return mirror

    def _links(self, request: Request, mirror: MirrorIndex) -> LinkRenderer:
        prefix = _header(request, b"x-outside-url")
        if prefix is not None:
            try:
                parts = urlsplit(prefix.strip())
            except ValueError:  # e.g. an unclosed IPv6 bracket
                raise HTTPError(400, "X-Outside-URL must be an http(s) URL") from None
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or any(c in prefix for c in "\"'<> \t\r\n")
            ):
                raise HTTPError(400, "X-Outside-URL must be an http(s) URL")
            prefix = prefix.strip().rstrip("/")
        else:
            prefix = self.outside_url or ""
        return LinkRenderer(prefix, mirror.name)

    def _media_type(self, request: Request) -> str:
        fmt = request.args.get(b"format", [None])[0]
        try:
            return negotiate(
                _header(request, b"accept"), fmt.decode("latin-1") if fmt is not None else None
            )
        except NotAcceptable as e:
            raise HTTPError(406, str(e)) from None

    def _redirect(self, request: Request, mirror: MirrorIndex, subpath: str) -> bytes:
        """A 301 to ``subpath`` of the index, under the outside URL when there is one."""
        location = f"{self._links(request, mirror).prefix}/{mirror.name}/{subpath}"
        query = request.uri.partition(b"?")[2]
        target = location.encode("utf-8") + (b"?" + query if query else b"")
        request.setResponseCode(301)
        request.setHeader(b"location", target)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to " + target + b"\n"

    def _send_page(
        self,
        request: Request,
        entry: CachedPage,
        media_type: str,
        urls: LinkRenderer,
        select: Callable[[Link], Link | None] | None = None,
    ) -> bytes:
        body, etag = entry.render(media_type, urls, select)
        request.setHeader(b"content-type", CONTENT_TYPES[media_type].encode())
        request.setHeader(b"vary", b"Accept, X-Outside-URL")
        request.setHeader(b"cache-control", PAGE_CACHE_CONTROL)
        request.setHeader(b"etag", etag)
        if entry.serial is not None:
            request.setHeader(b"x-pypi-last-serial", str(entry.serial).encode())
        if _matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    # -- routes --------------------------------------------------------------

    @app.route("/+status", methods=["GET"])
    def status_json(self, request: Request) -> bytes:
        report = self.status.report()
        # ?check=1: for load balancers, 503 when this process cannot serve.
        if request.args.get(b"check", [b"0"])[0] not in (b"0", b"") and not report["healthy"]:
            request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(report, indent=1).encode("utf-8") + b"\n"

    @app.route("/+metrics", methods=["GET"])
    def metrics_text(self, request: Request) -> bytes:
        if self.metrics is None:
            raise HTTPError(404, "metrics are not enabled")
        body, content_type = self.metrics.render(_header(request, b"accept"))
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return body

    @app.route("/<user>/<index>", methods=["GET"], strict_slashes=False)
    def index_json(self, request: Request, user: str, index: str) -> bytes:
        mirror = self._index(user, index)
        request.setHeader(b"content-type", b"application/json")
        result = {
            "type": "mirror",
            "mirror_url": mirror.upstream.simple_url,
            "bases": [],
            "volatile": False,
        }
        return json.dumps({"type": "indexconfig", "result": result}).encode("utf-8")

    @app.route("/<user>/<index>/+simple/", methods=["GET"], strict_slashes=False)
    async def project_list(self, request: Request, user: str, index: str) -> bytes:
        mirror = self._index(user, index)
        if not request.path.endswith(b"/") and not _is_installer(request):
            return self._redirect(request, mirror, "+simple/")
        media_type = self._media_type(request)
        try:
            entry = await mirror.project_list()
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        except ProjectNotFound as e:
            raise HTTPError(502, f"the upstream has no project list: {e}") from None
        return self._send_page(request, entry, media_type, self._links(request, mirror))

    @app.route("/<user>/<index>/+simple/<project>/", methods=["GET"], strict_slashes=False)
    async def project_page(self, request: Request, user: str, index: str, project: str) -> bytes:
        mirror = self._index(user, index)
        if not is_valid_project_name(project):
            raise HTTPError(400, f"invalid project name {project[:100]!r}")
        normalized = canonicalize_name(project)
        trailing = request.path.endswith(b"/")
        if normalized != project or (not trailing and not _is_installer(request)):
            return self._redirect(request, mirror, f"+simple/{normalized}/")
        media_type = self._media_type(request)
        urls = self._links(request, mirror)
        try:
            entry = await mirror.project_page(normalized)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        select = self._cached_only(mirror) if mirror.offline else None
        return self._send_page(request, entry, media_type, urls, select)

    @app.route("/<user>/<index>/+simple/<project>/refresh", methods=["POST"])
    async def refresh(self, request: Request, user: str, index: str, project: str) -> bytes:
        """devpi's refresh: revalidate one project's page now, then show it."""
        mirror = self._index(user, index)
        if not is_valid_project_name(project):
            raise HTTPError(400, f"invalid project name {project[:100]!r}")
        normalized = canonicalize_name(project)
        if mirror.offline:
            raise HTTPError(409, "devpid is offline: nothing to refresh from")
        try:
            await mirror.refresh(normalized)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        location = f"{self._links(request, mirror).prefix}/{mirror.name}/+simple/{normalized}/"
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode("utf-8"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"refreshed; see " + location.encode("utf-8") + b"\n"

    def _cached_only(self, mirror: MirrorIndex) -> Callable[[Link], Link | None]:
        def select(link: Link) -> Link | None:
            """Offline, only cached files are links (and their metadata only if cached)."""
            h = link.storage_hash
            try:
                path = self.files.file_path(mirror.name, h[:3], h[3:16], link.filename)
            except UnsafePath:
                return None
            if not path.is_file():
                return None
            metadata = path.with_name(path.name + ".metadata")
            if link.core_metadata is not False and not metadata.is_file():
                return attrs.evolve(link, core_metadata=False)
            return link

        return select

    @app.route("/<user>/<index>/+f/<h3>/<h13>/<filename>", methods=["GET", "HEAD"])
    async def file(
        self, request: Request, user: str, index: str, h3: str, h13: str, filename: str
    ) -> Any:
        mirror = self._index(user, index)
        try:
            path = self.files.file_path(mirror.name, h3, h13, filename)
        except UnsafePath as e:
            raise HTTPError(400, str(e)) from None
        if path.is_file():
            self.stats.incr("file_hits")
            return await self._cached_file(request, path, h3 + h13)
        is_metadata = filename.endswith(".metadata")
        dist_filename = filename.removesuffix(".metadata")
        project = project_of_filename(dist_filename)
        if project is None:
            raise HTTPError(404, f"{filename} is not a distribution file name")
        try:
            link = await mirror.link_for(project, dist_filename, h3 + h13)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        if link is None or (is_metadata and link.core_metadata is False):
            raise HTTPError(404, f"{filename} is not on the index under this hash")
        if mirror.offline:
            raise HTTPError(404, f"{filename} is not cached and devpid is offline")
        if request.method == b"HEAD":
            request.setHeader(b"content-type", b"application/octet-stream")
            if link.size is not None and not is_metadata:
                request.setHeader(b"content-length", b"%d" % link.size)
            return b""
        spec = FileSpec(
            url=link.url + ".metadata" if is_metadata else link.url,
            final_path=path,
            sha256=link.metadata_sha256 if is_metadata else link.sha256,
            size=None if is_metadata else link.size,
        )
        self.stats.incr("file_misses")
        download, _started = self.downloads.download_for(spec)
        try:
            await download.wait_for_headers()
        except DownloadFailed as e:
            raise HTTPError(e.status, str(e)) from None
        if download.verified:
            return await self._cached_file(request, path, h3 + h13)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-accel-buffering", b"no")
        if download.total is not None:
            request.setHeader(b"content-length", str(download.total).encode())
        request.setHeader(b"cache-control", FILE_CACHE_CONTROL)
        request.setHeader(b"etag", f'"{h3}{h13}"'.encode())
        finished = _until_finished(request)
        download.attach(request, lambda code, reason: self._refuse(request, code, reason))
        await finished
        return None

    def _refuse(self, request: Request, code: int, reason: str) -> None:
        """A download failed before its first byte reached this client: a one-line error."""
        for name in (b"etag", b"x-accel-buffering", b"content-length"):
            request.responseHeaders.removeHeader(name)
        body = self._plain(request, code, reason)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def _cached_file(self, request: Request, path: Path, hash_prefix: str) -> Any:
        etag = f'"{hash_prefix}"'.encode()
        request.setHeader(b"etag", etag)
        request.setHeader(b"cache-control", FILE_CACHE_CONTROL)
        if _matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(304)
            return b""
        asked = request.getHeader(b"range")
        if asked is not None:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise HTTPError(404, f"{path.name} is no longer cached") from None
            single = _single_range(asked, size)
            if single is None:  # several ranges, or none that parses: the whole file
                request.requestHeaders.removeHeader(b"range")
            else:
                request.requestHeaders.setRawHeaders(b"range", [single])
        if request.method == b"GET" and not request.getHeader(b"range"):
            return await self._send_whole_file(request, path)
        resource = File(str(path), defaultType="application/octet-stream")
        # Files are served byte for byte: no Content-Encoding for .tar.gz.
        resource.type = "application/octet-stream"
        resource.encoding = None
        return resource

    async def _send_whole_file(self, request: Request, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise HTTPError(404, f"{path.name} is no longer cached") from None
        size = os.fstat(fd).st_size
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"last-modified", http.datetimeToString(os.fstat(fd).st_mtime))
        finished = _until_finished(request)
        FileSender(request, fd, size).start()
        await finished

    # -- errors --------------------------------------------------------------

    @app.handle_errors(HTTPError)  # type: ignore[arg-type]
    def http_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPError)
        return self._plain(request, error.code, error.reason)

    @app.handle_errors(HTTPException)  # type: ignore[arg-type]
    def werkzeug_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        code = error.code or 500
        if 300 <= code < 400:
            # Werkzeug's slash redirects; devpid's own redirects are explicit.
            return self._plain(request, 404, "not found")
        reason = {404: "not found", 405: "method not allowed"}.get(code, error.name.lower())
        return self._plain(request, code, reason)

    @app.handle_errors(Exception)  # type: ignore[arg-type]
    def unexpected_error(self, request: Request, failure: Failure) -> bytes:
        self.log.failure("unexpected error handling {uri}", failure, uri=request.uri)
        return self._plain(request, 500, "internal error (logged on the server)")

    def _plain(self, request: Request, code: int, reason: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        phrase = http.RESPONSES.get(code, b"Error").decode()
        line = " ".join(f"{code} {phrase}: {reason}".split())
        return line.encode("utf-8", errors="replace") + b"\n"
