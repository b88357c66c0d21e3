"""Reading a bundle once: every file hashed, and those the target needs copied into staging.

A bundle is a directory or an uncompressed tar (``open_bundle`` tells them apart). Either
is read in one pass: when ``wanted`` says the target lacks a file, the kernel copies it
under the same relative path into the staging directory (``copying.kernel_copy``: no trip
of the bytes through Python) and starts writing it back to disk; the hashing thread then
hashes **the staged copy** (what is verified is what will be placed, whatever happens to the
bundle's own file meanwhile), while the next file is being copied. A file the target has
is hashed where it is in the bundle. Nothing is fsynced here: the importer syncs the
staging file system once (``sync_file_system``), so a full disk fails before anything in
the serverdir changes. A tar is opened seekable: tarfile reads the members' headers, their
data are copied and hashed by offset; its manifest comes near the end, so nothing can be
compared before everything was read.

Nothing is followed or trusted while reading: a path that may not be in a bundle
(``format.path_problem``) is never opened or written, a symlink, hard link, device or FIFO
is never read, and a tar member named twice is read once. Each of these is a ``problem``
(one line); comparing what was read with the manifest is ``verify``'s job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

import attrs

from devpid.tools.bundle.copying import Hashes, kernel_copy, start_writeback
from devpid.tools.bundle.format import CHUNK, HEADER, MANIFEST, RECORDS, path_problem

#: Read in full whatever the target has: the bundle's own description of itself.
ALWAYS_STAGED = frozenset({HEADER, MANIFEST, RECORDS})
#: Where a tar member's or a directory's sub-directory may be.
_TOP_DIRECTORIES = ("files", "mirror")

Wanted = Callable[[str, int], bool]
Advance = Callable[[int], object]


class NotABundle(Exception):
    """``IN`` is neither a directory nor an uncompressed tar; the message is one line."""


@attrs.frozen
class Hashed:
    size: int
    sha256: str
    #: Whether a copy is in the staging directory.
    staged: bool


@attrs.define
class Received:
    """What one read of a bundle found."""

    #: Relative path -> size, sha256, staged; every regular file read.
    files: dict[str, Hashed] = attrs.field(factory=dict)
    #: What makes the bundle damaged before any comparison, one line each.
    problems: list[str] = attrs.field(factory=list)
    #: Bytes read.
    bytes_read: int = 0


def open_bundle(source: Path) -> BundleReader:
    """The reader for ``source``: a directory, or a file that is an uncompressed tar."""
    try:
        mode = os.stat(source).st_mode
    except OSError as e:
        raise NotABundle(f"cannot read {source}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        return DirectoryReader(source)
    if stat.S_ISREG(mode):
        return TarReader(source)
    raise NotABundle(f"{source} is neither a directory nor a tar file")


def _directory_problem(path: str) -> str | None:
    """Why a directory (a tar member, or one in a directory bundle) may not be in a bundle."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return "not a relative POSIX path"
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "has an empty, '.' or '..' segment"
    if segments[0] not in _TOP_DIRECTORIES:
        return "not part of a bundle"
    return None


def copy_hashing(
    stream: IO[bytes], target: Path | None, advance: Advance, expected_size: int | None = None
) -> tuple[int, str]:
    """Read ``stream`` to its end (at most ``expected_size`` bytes when given), hashing it and
    writing it to ``target`` (created, must not exist) when given (a sparse tar member,
    whose data only tarfile can put together). Not fsynced here (``sync_file_system``)."""
    digest = hashlib.sha256()
    size = 0
    fd = (
        None
        if target is None
        else os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    )
    try:
        while True:
            want = CHUNK if expected_size is None else min(CHUNK, expected_size - size)
            chunk = stream.read(want) if want else b""
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            if fd is not None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            advance(len(chunk))
    except BaseException:
        if fd is not None:
            os.close(fd)
            fd = None
            assert target is not None
            target.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return size, digest.hexdigest()


def sync_file_system(directory: Path) -> None:
    """Make everything written on ``directory``'s file system durable: ``syncfs(2)`` (which
    reports write-back errors, ENOSPC among them), else ``sync(2)``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs is None:
            os.sync()
        elif _syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(directory))
    finally:
        os.close(fd)


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


class BundleReader:
    """One bundle, read once with ``read``."""

    source: Path

    def read(self, staged_root: Path, wanted: Wanted, advance: Advance) -> Received:
        raise NotImplementedError

    def total_bytes(self) -> int | None:
        """What reading it costs, for the progress bar (None when unknown)."""
        return None


def _stage_path(staged_root: Path, path: str) -> Path:
    target = staged_root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


@attrs.define
class DirectoryReader(BundleReader):
    """A bundle directory: walked without following links, copied (never linked: the bundle
    stays independent of the serverdir). With ``adopt`` (a bundle made in the staging
    directory itself, by the devpi converter) files are hard-linked, hashed and fsynced."""

    source: Path
    adopt: bool = False

    def _walk(self, received: Received) -> Iterator[tuple[str, int]]:
        """``(relative path, size)`` of every regular file allowed in a bundle, sorted."""
        found: list[tuple[str, int]] = []
        stack = [""]
        while stack:
            prefix = stack.pop()
            directory = self.source / prefix if prefix else self.source
            try:
                with os.scandir(directory) as listing:
                    entries = list(listing)
            except OSError as e:
                received.problems.append(f"{prefix or '.'}: cannot list it: {e.strerror}")
                continue
            for entry in entries:
                relative = f"{prefix}{entry.name}"
                status = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(status.st_mode):
                    received.problems.append(f"{relative}: a symbolic link")
                elif stat.S_ISDIR(status.st_mode):
                    why = _directory_problem(relative)
                    if why is not None:
                        received.problems.append(f"{relative}/: {why}")
                    else:
                        stack.append(relative + "/")
                elif not stat.S_ISREG(status.st_mode):
                    received.problems.append(f"{relative}: not a regular file")
                elif (why := path_problem(relative)) is not None:
                    received.problems.append(f"{relative}: {why}")
                else:
                    found.append((relative, status.st_size))
        return iter(sorted(found))

    def total_bytes(self) -> int | None:
        total = 0
        for directory, _dirs, names in os.walk(self.source):
            for name in names:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_size
                except OSError:
                    continue
        return total

    def read(self, staged_root: Path, wanted: Wanted, advance: Advance) -> Received:
        received = Received()
        hashes = Hashes(advance)
        pending: list[tuple[str, Future[tuple[int, str]], bool]] = []
        try:
            for relative, size in self._walk(received):
                stage = relative in ALWAYS_STAGED or wanted(relative, size)
                try:
                    fd = os.open(
                        self.source / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                    )
                except OSError as e:
                    received.problems.append(f"{relative}: cannot open it: {e.strerror}")
                    continue
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the walk
                        received.problems.append(f"{relative}: not a regular file")
                        continue
                    target = _stage_path(staged_root, relative) if stage else None
                    if self.adopt and target is not None:
                        os.link(self.source / relative, target)
                        target = None
                    if target is not None:
                        source, fd = fd, -1  # closed by the copy, whatever happens
                        fd = _copy_to_staging(source, 0, None, target)
                    # a staged file is hashed as staged (the import's own copy: what is
                    # verified is what will be placed), others as they are in the bundle
                    pending.append((relative, hashes.submit(fd, 0, None), stage))
                    fd = -1  # the hashing job closes it
                finally:
                    if fd >= 0:
                        os.close(fd)
        finally:
            hashes.wait()
        _collect(received, pending)
        return received


def _copy_to_staging(source: int, offset: int, size: int | None, target: Path) -> int:
    """Copy ``size`` bytes of ``source`` from ``offset`` (to its end when None) to
    ``target`` (created, must not exist) by the kernel; ``source`` is closed, and ``target``
    returned open for reading (to be hashed as staged). Not fsynced here: the caller syncs
    the whole staging file system once (``sync_file_system``). A source that ends early is
    a cut tar: ``tarfile.ReadError``, as tarfile itself says it."""
    try:
        out = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except BaseException:
        os.close(source)
        raise
    try:
        copied = kernel_copy(source, offset, out, 0, size)
        if size is not None and copied != size:
            raise tarfile.ReadError("unexpected end of data")
        start_writeback(out)
    except BaseException:
        os.close(out)
        target.unlink(missing_ok=True)
        raise
    finally:
        os.close(source)
    return out


def _collect(received: Received, pending: list[tuple[str, Future[tuple[int, str]], bool]]) -> None:
    """The hashing jobs' results, in the order the files were read."""
    for name, future, stage in pending:
        size, sha256 = future.result()
        received.files[name] = Hashed(size, sha256, stage)
        received.bytes_read += size


_MEMBER_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
}


@attrs.define
class TarReader(BundleReader):
    """An uncompressed tar, streamed once; members extracted only under their checked paths."""

    source: Path

    def total_bytes(self) -> int | None:
        return os.stat(self.source).st_size

    def read(self, staged_root: Path, wanted: Wanted, advance: Advance) -> Received:
        received = Received()
        seen: set[str] = set()
        hashes = Hashes(advance)
        pending: list[tuple[str, Future[tuple[int, str]], bool]] = []
        with open(self.source, "rb") as raw:
            try:
                # seekable: tarfile reads the headers, the members' data are copied and
                # hashed by offset (``_member``), never through tarfile's buffers
                tar = tarfile.open(fileobj=raw, mode="r:")  # noqa: SIM115
            except tarfile.TarError as e:
                raise NotABundle(f"{self.source} is not an uncompressed tar: {e}") from None
            try:
                with tar:
                    for member in tar:
                        self._member(
                            tar,
                            raw.fileno(),
                            member,
                            seen,
                            received,
                            staged_root,
                            wanted,
                            pending,
                            hashes,
                            advance,
                        )
            except tarfile.TarError as e:
                received.problems.append(f"{self.source.name}: cannot read the tar: {e}")
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                received.problems.append(f"{self.source.name}: cannot read the tar: {e}")
            finally:
                hashes.wait()
        _collect(received, pending)
        return received

    @staticmethod
    def _member(
        tar: tarfile.TarFile,
        raw: int,
        member: tarfile.TarInfo,
        seen: set[str],
        received: Received,
        staged_root: Path,
        wanted: Wanted,
        pending: list[tuple[str, Future[tuple[int, str]], bool]],
        hashes: Hashes,
        advance: Advance,
    ) -> None:
        name = member.name
        shown = name[:300]
        if name in seen:
            received.problems.append(f"{shown}: a member named twice in the tar")
            return
        seen.add(name)
        if member.isdir():
            why = _directory_problem(name.rstrip("/"))
            if why is not None:
                received.problems.append(f"{shown}/: {why}")
            return
        if not member.isreg():
            kind = _MEMBER_KINDS.get(member.type, f"a member of type {member.type!r}")
            received.problems.append(f"{shown}: {kind}")
            return
        why = path_problem(name)
        if why is not None:
            received.problems.append(f"{shown}: {why}")
            return
        stage = name in ALWAYS_STAGED or wanted(name, member.size)
        target = None
        if stage:
            try:
                target = _stage_path(staged_root, name)
            except (NotADirectoryError, FileExistsError):
                received.problems.append(f"{shown}: clashes with another member's path")
                return
        if member.issparse():  # its data are not one range of the tar: tarfile reads them
            stream = tar.extractfile(member)
            if stream is None:  # not reached for a regular member
                received.problems.append(f"{shown}: cannot be read")
                return
            size, sha256 = copy_hashing(stream, target, advance, member.size)
            done: Future[tuple[int, str]] = Future()
            done.set_result((size, sha256))
            pending.append((name, done, stage))
            return
        fd = os.dup(raw)  # the hashing job closes its own descriptor
        if target is None:
            pending.append((name, hashes.submit(fd, member.offset_data, member.size), stage))
        else:
            staged = _copy_to_staging(fd, member.offset_data, member.size, target)
            # hashed as staged: what is verified is the import's own copy, whatever
            # happens to the bundle's file meanwhile
            pending.append((name, hashes.submit(staged, 0, member.size), stage))
