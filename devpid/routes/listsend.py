"""Sending a project list kept in files: its rendering, plain or gzipped, from disk.

The root page of a mirror of 700,000 projects is ~40 MB of HTML (~5 MB
gzipped). It is rendered once per variant by a child process
(``devpid.mirror.projectlist``) and sent here from the file with
``FileSender``, so a warm GET costs a ``stat``, an ``open`` and the sending,
whatever the client accepts; ETags and 304s work as for any page.
"""

from __future__ import annotations

import os
from html import escape

from twisted.web.server import Request

from devpid.files.sender import FileSender, read_whole
from devpid.http.request import accepts_gzip, until_finished
from devpid.mirror.pages import GZIP_MIN_BYTES, CachedPage, gzip_etag
from devpid.mirror.projectlist import variant_key
from devpid.routes.pagesend import page_headers
from devpid.simple.namelist import NamesContent, RenderedFiles
from devpid.simple.render import LinkRenderer

#: Smaller bodies are read and answered as bytes.
INLINE_MAX = 64 * 1024


def links_base(urls: LinkRenderer) -> str:
    """What each project's link starts with, HTML-escaped (``render_project_list``'s)."""
    return escape(f"{urls.prefix}/{urls.index}/+simple/")


async def send_list(
    request: Request, entry: CachedPage, answer_type: str, urls: LinkRenderer
) -> bytes | None:
    """Answer with ``entry``'s list (a ``NamesContent``) as ``answer_type``."""
    content = entry.content
    assert isinstance(content, NamesContent)
    for attempt in (1, 2):
        files = await content.renderer.rendered(content, urls.index, answer_type, links_base(urls))
        try:
            return await _send(request, entry, files, answer_type)
        except FileNotFoundError:  # removed from the serverdir meanwhile: render it again
            if attempt == 2:
                raise
            content.renderer.forget(content.tag, variant_key(answer_type, links_base(urls)))
    return None


async def _send(
    request: Request, entry: CachedPage, files: RenderedFiles, answer_type: str
) -> bytes | None:
    compress = files.size >= GZIP_MIN_BYTES and accepts_gzip(request)
    etag = gzip_etag(files.etag) if compress else files.etag
    path = files.gzipped if compress else files.plain
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # before any header: it may be gone
    if page_headers(request, answer_type, entry.serial, files.etag, compress):
        os.close(fd)
        return b""
    size = os.fstat(fd).st_size
    request.setHeader(b"etag", etag)
    if compress:
        request.setHeader(b"content-encoding", b"gzip")
    request.setHeader(b"content-length", b"%d" % size)
    if size <= INLINE_MAX or request.method == b"HEAD":
        body = read_whole(fd)
        return body if request.method != b"HEAD" else b""
    finished = until_finished(request)
    FileSender(request, fd, size).start()
    await finished
    return None


__all__ = ["links_base", "send_list"]
