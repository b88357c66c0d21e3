"""One client of a download: reads the temporary file from its own offset, at its own pace.

A ``TeeReader`` is the valve between a download and one client's request: a
push producer registered on the request, paused and resumed by that client's
transport buffer. A client that goes away detaches; it never aborts the
download that fills the cache, and a slow one never slows it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

READ_CHUNK = 64 * 1024


class Source(Protocol):
    """What a reader needs of its download: how far it may read, and how the download ended."""

    releasable: int
    received: int
    state: str
    error: str | None
    error_status: int
    readers: set[TeeReader]

    @property
    def verified(self) -> bool: ...

    @property
    def over(self) -> bool: ...


@implementer(IPushProducer)
@attrs.define(eq=False)
class TeeReader:
    """One client's view of a download: reads the file from its offset, at its own pace."""

    download: Source
    request: Request
    fd: int | None
    #: The Content-Length the client was sent (None: none was).
    promised: int | None = None
    #: Answers with an error status and reason when the download fails before any byte.
    refuse: Callable[[int, str], None] | None = None
    offset: int = 0
    paused: bool = False
    done: bool = False

    def pump(self) -> None:
        if self.done or self.fd is None:
            return
        download = self.download
        while not self.paused and self.offset < download.releasable:
            size = min(READ_CHUNK, download.releasable - self.offset)
            data = os.pread(self.fd, size, self.offset)
            if not data:
                if download.over:  # the file is shorter than it said: never stall
                    self.cut_off()
                    return
                break
            self.offset += len(data)
            self.request.write(data)
            if self.done:
                return
        if download.state == "failed":
            self._failed()
        elif download.verified and self.offset >= download.received:
            self._complete()

    def _failed(self) -> None:
        """An error answer if the client has nothing yet, else a cut connection."""
        if self.offset or self.refuse is None:
            self.cut_off()
            return
        self._detach()
        self.request.unregisterProducer()
        download = self.download
        self.refuse(download.error_status, download.error or "the download failed")

    def _complete(self) -> None:
        self._detach()
        self.request.unregisterProducer()
        self.request.finish()

    def cut_off(self) -> None:
        """Abort the client's connection: a truncated transfer, never a complete 200."""
        self._detach()
        self.request.unregisterProducer()
        transport = getattr(self.request, "channel", None)
        transport = getattr(transport, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _detach(self) -> None:
        self.done = True
        self.download.readers.discard(self)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def client_gone(self, _: object) -> None:
        """The request finished or the client disconnected: let go of the download."""
        if not self.done:
            self._detach()

    # IPushProducer, driven by the client's transport buffer.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self.client_gone(None)


def settle_readers(readers: set[TeeReader], fd: int | None, total: int | None) -> None:
    """Point every client at the file being written or committed now (``fd``).

    A client that was already sent bytes of another file (one that failed,
    or a copy another process fetched) is cut off; one that had nothing
    yet reads the current file from its start. Needs the length: a client
    promised another ``total`` (its Content-Length is sent) is cut off too.
    """
    if fd is None:
        return
    current = os.fstat(fd)
    for reader in list(readers):
        if reader.fd is None:
            continue
        theirs = os.fstat(reader.fd)
        if (theirs.st_dev, theirs.st_ino) == (current.st_dev, current.st_ino):
            continue
        # It must not have had bytes of the other file, nor been promised
        # another length (its Content-Length is sent).
        if reader.offset or reader.promised not in (None, total):
            reader.cut_off()
            continue
        reader_fd = os.dup(fd)
        os.close(reader.fd)
        reader.fd = reader_fd
