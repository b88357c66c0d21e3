"""Sending a large page's rendering from its files (``devpid.mirror.spool``).

A page of 200,000 files renders to ~100 MB of JSON; it is sent from the
anonymous file its rendering was written to, as a cached distribution file
is (``FileSender``), so a warm GET costs a ``dup`` and the sending.
"""

from __future__ import annotations

from twisted.web.server import Request

from devpid.files.sender import FileSender
from devpid.http.request import until_finished
from devpid.mirror.pages import gzip_etag
from devpid.mirror.spool import Spooled


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
