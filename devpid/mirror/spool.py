"""A large rendered page kept on disk, not in memory: its plain and gzip bodies.

The JSON rendering of a page of 200,000 files is ~100 MB (its gzip form a
fifth of that), and a page has a few renderings (JSON, HTML, per outside URL).
``spool`` writes one rendering, as the renderer yields its pieces, to two
unlinked temporary files (plain and gzip, compressed in the same pass) and
takes its ETag on the way; they are sent with ``FileSender`` from a duplicate
of their descriptor, so a rendering dropped while a client is still being
sent it stays readable until that send ends. Nothing is left on disk by a
crash: the files have no name (``O_TMPFILE``, else unlinked at once).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
import zlib
from collections.abc import Iterable
from pathlib import Path

import attrs

#: Text gathered before it is encoded, hashed, written and compressed.
BATCH_CHARS = 256 * 1024
#: gzip's level, as ``Rendered`` compresses smaller pages.
GZIP_LEVEL = 6


def anonymous_file(directory: Path) -> int:
    """A new file in ``directory`` without a name, open for reading and writing."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(directory, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:  # a file system without O_TMPFILE
            pass
    fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-")
    os.unlink(name)
    return fd


class SpooledBody:
    """A body in an anonymous file; each send gets its own descriptor (``open``)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        # closed once nobody holds the rendering; sends in progress have their own
        self._closer = weakref.finalize(self, os.close, fd)

    def open(self) -> int:
        """A descriptor of the body for one send (``FileSender`` closes it)."""
        return os.dup(self.fd)

    def read(self) -> bytes:
        """The whole body (for small uses: a test, a client that needs it in memory)."""
        parts = []
        offset = 0
        while offset < self.size:
            data = os.pread(self.fd, min(self.size - offset, 1 << 20), offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._closer()


@attrs.frozen
class Spooled:
    """One rendering on disk: its plain body, its gzip form and the plain body's ETag."""

    plain: SpooledBody
    gzipped: SpooledBody
    etag: bytes


def spool(pieces: Iterable[str], directory: Path) -> Spooled:
    """Write the text ``pieces`` (UTF-8) and their gzip form to anonymous files in
    ``directory``; blocking (a thread's work)."""
    plain_fd = anonymous_file(directory)
    try:
        gzip_fd = anonymous_file(directory)
    except BaseException:
        os.close(plain_fd)
        raise
    try:
        hasher = hashlib.blake2b(digest_size=12)
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip header
        sizes = [0, 0]

        def write(fd: int, data: bytes, which: int) -> None:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            sizes[which] += len(data)

        def flush(batch: list[str]) -> None:
            data = "".join(batch).encode("utf-8")
            hasher.update(data)
            write(plain_fd, data, 0)
            write(gzip_fd, compressor.compress(data), 1)

        batch: list[str] = []
        gathered = 0
        for piece in pieces:
            batch.append(piece)
            gathered += len(piece)
            if gathered >= BATCH_CHARS:
                flush(batch)
                batch, gathered = [], 0
        flush(batch)
        write(gzip_fd, compressor.flush(), 1)
    except BaseException:
        os.close(plain_fd)
        os.close(gzip_fd)
        raise
    etag = b'"' + hasher.hexdigest().encode() + b'"'
    return Spooled(SpooledBody(plain_fd, sizes[0]), SpooledBody(gzip_fd, sizes[1]), etag)
