"""Sending a committed file to one client: large reads, pushed as fast as it takes them.

``twisted.web.static.File`` handles Range and HEAD; for the common whole-file
GET ``FileSender`` moves several times more bytes per reactor turn. On a plain
TCP connection it hands the body to the kernel with ``os.sendfile`` (no copy
through Python, no 128 KiB writes queued in the transport); elsewhere (TLS,
HTTP/2, a test's ``StringTransport``, a kernel or file system without sendfile)
it reads and writes chunks through twisted.web.

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
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from twisted.web.static import File
from zope.interface import implementer

CHUNK = 128 * 1024
#: Files up to this size go with their headers in one read and one write: a
#: sendfile would cost a reactor turn more (the headers must be flushed first).
SENDFILE_MIN = CHUNK
#: Bytes one connection may sendfile in one reactor turn before the others get
#: theirs (nginx's ``sendfile_max_chunk`` is 2m for the same reason).
TURN_BYTES = 2 * 1024 * 1024


def sendfile_transport(request: Request) -> tcp.Connection | None:
    """The request's TCP transport if its body may go by ``os.sendfile``, else None.

    Only for a GET whose ``Content-Length`` is set, over a plain
    ``twisted.internet.tcp`` connection (not TLS, not HTTP/2, whose streams are
    not sockets of their own) whose write buffer this module knows
    how to look at: ``abstract.FileDescriptor``'s ``dataBuffer``/``offset``/
    ``_tempDataLen``, and ``producerPaused``, which makes its ``doWrite`` resume
    the producer once everything buffered is on the socket.
    """
    if not hasattr(os, "sendfile") or request.isSecure() or request.method != b"GET":
        return None
    # The body must go out byte for byte: a length, so no chunks to frame; no encoder.
    if not request.responseHeaders.hasHeader(b"content-length") or getattr(
        request, "_encoder", None
    ):
        return None
    transport = getattr(request.channel, "transport", None)
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if not all(
        hasattr(transport, name)
        for name in ("dataBuffer", "offset", "_tempDataLen", "producerPaused", "producer")
    ):
        return None
    return transport


def _buffered(transport: tcp.Connection) -> bool:
    """Whether the transport still holds bytes it has not handed to the socket."""
    return bool(len(transport.dataBuffer) - transport.offset or transport._tempDataLen)


@implementer(IPushProducer)
class FileSender:
    """A whole file as a response body, respecting the transport's flow control.

    With ``os.sendfile`` the kernel copies from the page cache to the socket,
    which twisted.web's transport never sees. So that no bytes interleave, the
    socket is only written to while the transport has nothing buffered: the
    headers (twisted.web writes them on the first ``request.write``) and any
    earlier pipelined response are flushed first. When the socket is full
    (EAGAIN), or this connection had its share of a reactor turn, the sender
    waits the way a full write buffer waits: the transport's producer (the
    HTTP channel) is paused and the transport registered for writing (its own
    registration with the reactor, no second one for the same descriptor);
    once writable, its ``doWrite`` finds its buffer empty and resumes the
    channel, which resumes this producer. A sendfile error other than EAGAIN
    (ENOSYS, EINVAL, or a peer gone: EPIPE, ECONNRESET) hands the rest to the
    read-and-write path, where the transport handles a lost connection as it
    always does. ``request.sentLength`` counts the bytes either way (the access
    log and the metrics read it).

    The idle timer needs nothing: twisted.web's channel turns it off while a
    request is answered and back on in ``requestDone``.
    """

    def __init__(self, request: Request, fd: int, size: int) -> None:
        self.request = request
        self.fd: int | None = fd
        self.size = size
        self.offset = 0
        self.paused = False
        #: Where the body goes by sendfile; None: read and written in chunks.
        self.transport: tcp.Connection | None = None

    def start(self) -> None:
        """Send the response (its headers set, ``Content-Length`` among them)."""
        if self.size > SENDFILE_MIN:
            self.transport = sendfile_transport(self.request)
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(lambda _: self._close())
        if self.transport is None:
            self.resumeProducing()
            return
        self.request.write(b"")  # the status line and headers, into the transport's buffer
        self._wait_until_writable()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.transport is not None:
            self._sendfile(self.transport)
        else:
            self._push()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self._close()

    def _push(self) -> None:
        """Read and write chunks until the transport's buffer is full (it pauses us)."""
        while not self.paused and self.fd is not None:
            data = os.pread(self.fd, min(CHUNK, self.size - self.offset), self.offset)
            if not data:
                self._done()
                return
            self.offset += len(data)
            self.request.write(data)

    def _sendfile(self, transport: tcp.Connection) -> None:
        budget = TURN_BYTES
        socket = transport.fileno()
        while not self.paused and self.fd is not None:
            if self.offset >= self.size:
                self._done()
                return
            if budget <= 0 or _buffered(transport):
                self._wait_until_writable()
                return
            count = min(self.size - self.offset, budget)
            try:
                sent = os.sendfile(socket, self.fd, self.offset, count)
            except BlockingIOError:
                self._wait_until_writable()
                return
            except OSError:
                self.transport = None
                self._push()
                return
            if not sent:  # shorter than its stat said: as the read path does
                self._done()
                return
            self.offset += sent
            budget -= sent
            self.request.sentLength += sent
            if sent < count and self.offset < self.size:
                # The socket is full: the next try would only say EAGAIN.
                self._wait_until_writable()
                return

    def _wait_until_writable(self) -> None:
        """Be resumed once the transport's buffer is empty and its socket writable."""
        transport = self.transport
        assert transport is not None
        channel: Any = transport.producer  # the HTTP channel
        if channel is None:  # nothing would resume us: the transport's writes, then
            self.transport = None
            self._push()
            return
        self.paused = True
        transport.producerPaused = True
        channel.pauseProducing()
        transport.startWriting()

    def _done(self) -> None:
        self._close()
        self.request.unregisterProducer()
        self.request.finish()

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
