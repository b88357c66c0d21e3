"""Sending a committed file to one client: large reads, pushed as fast as it takes them.

``twisted.web.static.File`` handles Range and HEAD; for the common whole-file
GET this push producer moves several times more bytes per reactor turn.

Both send from a descriptor opened once, when the request is found to be a
hit (``open_cached``): a file evicted (unlinked) after that is still sent
whole, since the open descriptor keeps its bytes, and a file gone before it
is a miss, not an error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from twisted.web.static import File
from zope.interface import implementer

CHUNK = 128 * 1024


@implementer(IPushProducer)
class FileSender:
    def __init__(self, request: Request, fd: int, size: int) -> None:
        self.request = request
        self.fd: int | None = fd
        self.size = size
        self.offset = 0
        self.paused = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(lambda _: self._close())
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.fd is not None:
            data = os.pread(self.fd, min(CHUNK, self.size - self.offset), self.offset)
            if not data:
                self._close()
                self.request.unregisterProducer()
                self.request.finish()
                return
            self.offset += len(data)
            self.request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@attrs.frozen
class Opened:
    """A committed file opened for sending, with the one ``fstat`` taken of it."""

    fd: int
    stat: os.stat_result


def open_cached(path: Path) -> Opened | None:
    """``path`` opened for reading if it is a regular file; None when it is not there
    (never cached, or evicted a moment ago: a miss)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        return None
    return Opened(fd, found)


def read_whole(fd: int) -> bytes:
    """A small file's bytes from its descriptor, which is closed."""
    try:
        chunks = []
        while chunk := os.read(fd, CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class OpenedFile(File):
    """twisted.web's ``File`` (Range, HEAD, If-Modified-Since) over a descriptor already
    open: it never looks at the path again, so an eviction in between cannot turn the
    hit into a 404 or a 500. It owns the descriptor (closed by ``File`` once sent)."""

    def __init__(self, path: Path, opened: Opened) -> None:
        super().__init__(str(path), defaultType="application/octet-stream")
        self._opened: IO[bytes] = os.fdopen(opened.fd, "rb")
        self._statinfo = opened.stat
        # Files are served byte for byte: no Content-Encoding for .tar.gz.
        self.type = "application/octet-stream"
        self.encoding = None

    def restat(self, reraise: bool = True) -> None:
        """The descriptor's stat, taken once, stays: the path may be gone."""

    def openForReading(self) -> Any:
        return self._opened
