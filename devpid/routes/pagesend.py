"""Answering with a page: its headers and validators, and a large rendering sent from files.

Every simple page (a project's, a stage's merged one, a project list in
memory or in files) answers with the same headers and the same ETag rule:
``page_headers``. A page of 200,000 files renders to ~100 MB of JSON; it is
sent from the anonymous file its rendering was written to
(``devpid.mirror.spool``), as a cached distribution file is (``FileSender``),
so a warm GET costs a ``dup`` and the sending.
"""

from __future__ import annotations

from twisted.web.server import Request

from devpid.files.sender import FileSender
from devpid.http.request import etag_matches, until_finished
from devpid.mirror.pages import gzip_etag
from devpid.mirror.spool import Spooled
from devpid.simple.render import CONTENT_TYPES

#: Keeps pip's and uv's HTTP caches from re-asking more than once a minute,
#: and lets them revalidate cheaply (ETag) after that.
PAGE_CACHE_CONTROL = b"max-age=60, public"


def page_headers(
    request: Request, answer_type: str, serial: int | None, etag: bytes, compress: bool
) -> bool:
    """Set a page answer's headers; True when the client's copy is current, whichever
    encoding it was sent in (the 304 is then set, with the ETag that matched)."""
    request.setHeader(b"content-type", CONTENT_TYPES[answer_type].encode())
    request.setHeader(b"vary", b"Accept, Accept-Encoding, X-Outside-URL")
    request.setHeader(b"cache-control", PAGE_CACHE_CONTROL)
    if serial is not None:
        request.setHeader(b"x-pypi-last-serial", str(serial).encode())
    tags = (gzip_etag(etag), etag) if compress else (etag, gzip_etag(etag))
    if_none_match = request.getHeader(b"if-none-match")
    for tag in tags:
        if etag_matches(if_none_match, tag):
            request.setHeader(b"etag", tag)
            request.setResponseCode(304)
            return True
    return False


async def send_spooled(request: Request, spooled: Spooled, compress: bool) -> bytes | None:
    """Answer with the plain or gzip body; the other headers are set already."""
    body = spooled.gzipped if compress else spooled.plain
    request.setHeader(b"etag", gzip_etag(spooled.etag) if compress else spooled.etag)
    if compress:
        request.setHeader(b"content-encoding", b"gzip")
    request.setHeader(b"content-length", b"%d" % body.size)
    if request.method == b"HEAD":
        return b""
    finished = until_finished(request)
    FileSender(request, body.open(), body.size).start()
    await finished
    return None
