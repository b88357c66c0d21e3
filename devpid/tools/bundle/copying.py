"""Copying a bundle's bytes fast: the kernel moves them, a thread hashes them.

Every byte of a bundle is hashed (an export writes the manifest from it, an import verifies
it before anything changes), and sha256 is the slowest step: about 1.5 GB/s on one core
with SHA-NI, where the kernel copies from the page cache at several GB/s. So the copy and
the hashing run at once, on two cores, and neither takes the bytes through Python objects:

- **The copy** is the kernel's: ``copy_file_range(2)`` (a reflink where the file system
  shares extents, an in-kernel page copy elsewhere), else ``sendfile(2)`` (between file
  systems, where ``copy_file_range`` says ``EXDEV``), else ``pread``/``pwrite`` through one
  buffer. Offsets are explicit, so a tar's member is copied straight from or to its place.
- **The hash** is computed by one thread (``hash_range``) reading the bytes with ``preadv``
  into its own buffer (``HASH_CHUNK``); ``hashlib`` and ``os.preadv`` release the GIL on
  buffers this big. Memory stays bounded: a buffer for the thread (and one for the
  ``pwrite`` fallback), whatever the file's size.

What is hashed must be what was written. Each caller says which bytes it hashes and why
that is sound: the export hashes its pin while the kernel copies it (a pin is a hard link
to a committed file, which nobody writes in place); the import hashes its staged copy once
written (the bundle is the user's file, the staged copy is the import's own).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

#: Bytes copied per system call (progress is reported at this step).
COPY_CHUNK = 8 << 20
#: Bytes read and hashed at a time by the hashing thread.
HASH_CHUNK = 4 << 20

Progress = Callable[[int], object]

#: ``copy_file_range`` cannot copy between these two files: try ``sendfile``.
_NO_COPY_FILE_RANGE = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}
)
#: ``sendfile`` cannot either: copy through a buffer.
_NO_SENDFILE = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})

_local = threading.local()


def _buffer() -> memoryview:
    """This thread's hashing buffer, made once."""
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(HASH_CHUNK))
    return buffer


def hash_range(
    fd: int, offset: int, size: int | None, progress: Progress | None = None
) -> tuple[int, str]:
    """The size and sha256 of ``fd``'s bytes from ``offset``: ``size`` of them, or to the
    end of the file when None (fewer when the file ends first: the caller compares)."""
    digest = hashlib.sha256()
    buffer = _buffer()
    done = 0
    while size is None or done < size:
        want = HASH_CHUNK if size is None else min(HASH_CHUNK, size - done)
        n = os.preadv(fd, [buffer[:want]], offset + done)
        if not n:
            break
        digest.update(buffer[:n])
        done += n
        if progress is not None:
            progress(n)
    return done, digest.hexdigest()


def kernel_copy(
    source: int,
    source_offset: int,
    target: int,
    target_offset: int,
    size: int | None,
    progress: Progress | None = None,
) -> int:
    """Copy ``size`` bytes (to the source's end when None) from ``source`` at
    ``source_offset`` to ``target`` at ``target_offset``; the number copied (fewer when the
    source ends first). Errors of the target (``ENOSPC``...) are raised as they come."""
    done = 0
    method = _copy_file_range
    while size is None or done < size:
        want = COPY_CHUNK if size is None else min(COPY_CHUNK, size - done)
        try:
            n = method(source, source_offset + done, target, target_offset + done, want)
        except OSError as e:
            if method is _copy_file_range and e.errno in _NO_COPY_FILE_RANGE:
                method = _sendfile
                continue
            if method is _sendfile and e.errno in _NO_SENDFILE:
                method = _pread_pwrite
                continue
            raise
        if not n:
            break
        done += n
        if progress is not None:
            progress(n)
    return done


def _copy_file_range(source: int, at: int, target: int, to: int, count: int) -> int:
    return os.copy_file_range(source, target, count, at, to)


def _sendfile(source: int, at: int, target: int, to: int, count: int) -> int:
    os.lseek(target, to, os.SEEK_SET)  # sendfile writes at the target's position
    return os.sendfile(target, source, at, count)


def _pread_pwrite(source: int, at: int, target: int, to: int, count: int) -> int:
    buffer = _copy_buffer()
    n = os.preadv(source, [buffer[: min(count, len(buffer))]], at)
    written = 0
    while written < n:
        written += os.pwrite(target, buffer[written:n], to + written)
    return n


def _copy_buffer() -> memoryview:
    buffer: memoryview | None = getattr(_local, "copy_buffer", None)
    if buffer is None:
        buffer = _local.copy_buffer = memoryview(bytearray(HASH_CHUNK))
    return buffer


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now, without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the disk works while the copy goes on, so
    the one ``syncfs`` at the end, which is what makes the bytes durable, has less left to
    wait for. Only a hint: it guarantees nothing and its errors are ignored (the final sync
    reports write-back errors)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_hasher: ThreadPoolExecutor | None = None
_hasher_lock = threading.Lock()


def hashing_thread() -> ThreadPoolExecutor:
    """The one hashing thread, made once: jobs run one at a time, in the order submitted."""
    global _hasher
    with _hasher_lock:
        if _hasher is None:
            _hasher = ThreadPoolExecutor(1, thread_name_prefix="bundle-hash")
        return _hasher


def copy_hashing_source(
    source: int, target: int, target_offset: int, progress: Progress | None = None
) -> tuple[int, int, str]:
    """Copy all of ``source`` to ``target`` at ``target_offset`` while the hashing thread
    hashes ``source``: the bytes copied, the bytes hashed and their sha256.

    Only for a source nobody writes in place while it is copied: the two reads are two,
    and both see the same bytes only because the file does not change (the caller
    compares the two sizes, which differ when it was cut or grew).
    """
    hashing = hashing_thread().submit(hash_range, source, 0, None)
    try:
        copied = kernel_copy(source, 0, target, target_offset, None, progress)
    except BaseException:
        _wait_quietly(hashing)
        raise
    hashed, sha256 = hashing.result()
    return copied, hashed, sha256


def _wait_quietly(future: Future[Any]) -> None:
    """Wait for ``future`` (its fd must stay open until it is done), ignoring its error."""
    with contextlib.suppress(Exception):  # the caller raises its own error
        future.result()


class Hashes:
    """Hashing jobs submitted in order and run by the hashing thread while the caller goes
    on copying; at most ``limit`` bytes outstanding (so the page cache still holds them
    and few descriptors are open). Each job owns its fd and closes it."""

    def __init__(self, progress: Progress | None = None, limit: int = 256 << 20) -> None:
        self._progress = progress
        self._limit = limit
        self._outstanding: list[tuple[Future[tuple[int, str]], int]] = []
        self._bytes = 0

    def submit(self, fd: int, offset: int, size: int | None) -> Future[tuple[int, str]]:
        """Hash ``fd`` from ``offset`` (see ``hash_range``), then close it."""
        expected = size if size is not None else max(os.fstat(fd).st_size - offset, 0)
        while self._outstanding and self._bytes + expected > self._limit:
            oldest, its_bytes = self._outstanding.pop(0)
            self._bytes -= its_bytes
            _wait_quietly(oldest)  # its error is raised by whoever asks for its result
        future = hashing_thread().submit(self._job, fd, offset, size)
        self._outstanding.append((future, expected))
        self._bytes += expected
        return future

    def _job(self, fd: int, offset: int, size: int | None) -> tuple[int, str]:
        try:
            return hash_range(fd, offset, size, self._progress)
        finally:
            os.close(fd)

    def wait(self) -> None:
        """Wait for every job (their results or errors stay in their futures)."""
        for future, _size in self._outstanding:
            _wait_quietly(future)
        self._outstanding.clear()
        self._bytes = 0
