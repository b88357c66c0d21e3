"""Writing a bundle's files, as a directory or one tar, so that an interrupted export resumes.

Both writers take the files one by one (``write``), the kernel copying each while a
thread hashes it (``copying``), and end with ``finish(manifest, header)``. What makes a
rerun cheap is the **journal**: a line ``{"path", "size", "sha256"}`` appended after each
file is complete, made durable in batches (fsync of the data first, then a mark in the
journal, fsynced): after a killed export every line counts, after a machine's crash only
the durable ones (``_read_journal``), so a line trusted never names a file that is not
wholly on disk. A rerun asks the export which of the files already there it still wants
(``resume(decide)``): the same path with the same size and sha256 as the new snapshot
expects. The rest goes.

- **Directory.** Each file is written to ``<name>.partial`` and renamed; the journal is
  ``.export-journal.jsonl`` in the directory (its presence says "an export is being written
  here"). At the end: ``MANIFEST.jsonl``, then ``devpid-bundle.json.partial`` (fsynced), the
  journal removed, and the header renamed into place: the header's presence is the mark of a
  complete bundle.
- **Tar.** An uncompressed POSIX (pax) tar written as a stream to ``OUT.partial``, with its
  journal ``OUT.export-journal.jsonl`` beside it (each line also has the member's
  ``offset``). A rerun reads the members of the partial tar, keeps the complete ones that
  are still wanted, closes the gaps the others leave by moving the later members down (a
  forward copy inside the file; each moved member is journaled again once moved, under the
  journal's rule), truncates after the last one kept and appends the rest. At the end:
  ``MANIFEST.jsonl`` and ``devpid-bundle.json`` as the last members, the end-of-archive
  blocks, fsync, and the rename to ``OUT``: a file at ``OUT`` is a complete bundle.

A fresh export writes members in the order records, stage files, mirror files, manifest,
header; a resumed tar has the members it kept first (in their old order), then the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import attrs

from devpid.tools.bundle.copying import copy_hashing_source
from devpid.tools.bundle.format import CHUNK, HEADER, MANIFEST, BundleError, Header, ManifestEntry

JOURNAL = ".export-journal.jsonl"
PARTIAL = ".partial"
#: Journal lines are made durable after this many files or bytes.
BATCH_FILES = 64
BATCH_BYTES = 256 << 20
BATCH_SECONDS = 5.0
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE

#: ``decide(path, size, sha256)``: whether a file already written is still wanted as it is.
Decide = Callable[[str, int, str], bool]
#: Called with the number of bytes just copied.
Progress = Callable[[int], None]


class WriteError(Exception):
    """The bundle cannot be written; the message is one line."""


class BundleWriter(Protocol):
    out: Path

    def complete(self) -> Header | None: ...

    def start(self, force: bool) -> None: ...

    def resume(self, decide: Decide) -> list[ManifestEntry]: ...

    def write(self, path: str, source: Path, progress: Progress) -> ManifestEntry: ...

    def finish(self, manifest: bytes, header: bytes) -> None: ...

    def close(self) -> None: ...


def writer_for(out: Path) -> BundleWriter:
    """A tar writer when ``out`` ends in ``.tar``, else a directory writer."""
    return TarWriter(out) if out.name.endswith(".tar") else DirectoryWriter(out)


def _copy(source: Path, target: int, offset: int, progress: Progress) -> tuple[int, str]:
    """Copy ``source`` into ``target`` at ``offset`` (the kernel copies, a thread hashes;
    see ``copying``); its size and sha256.

    The hash is taken from the source while the kernel copies it, which is sound because a
    source here never changes: it is a pin, a hard link to a file devpid committed (devpid
    replaces and removes files by rename and unlink, never writes one in place), or the
    export's own ``records.jsonl``. Should it change anyway (cut or grown), the two reads
    see different sizes and the export stops; a stage file is also checked against its
    link's sha256.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        copied, hashed, sha256 = copy_hashing_source(fd, target, offset, progress)
    finally:
        os.close(fd)
    if copied != hashed:
        raise WriteError(f"{source} changed size while being copied")
    return copied, sha256


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def boot_id() -> str:
    """This boot of the machine: what tells a crashed process (its writes are in the page
    cache) from a crashed machine (only what was fsynced is there)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""  # unknown: only fsynced lines are trusted


def _read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's entries that name files wholly written.

    Lines are appended as files complete; in batches, once the files' data was fsynced, a
    line ``{"synced": N}`` says the first N entries are durable. Entries after that are
    trusted only when the machine was not restarted since (the same ``boot`` as the
    journal's first line): a killed export's writes are in the page cache, a crashed
    machine's may not be. A torn last line is ignored.
    """
    boot = None
    durable = 0
    entries: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if "boot" in entry and boot is None:
                    boot = entry["boot"]
                elif isinstance(entry.get("synced"), int):
                    durable = max(durable, entry["synced"])
                elif (
                    isinstance(entry.get("path"), str)
                    and isinstance(entry.get("size"), int)
                    and isinstance(entry.get("sha256"), str)
                ):
                    entries.append(entry)
    except FileNotFoundError:
        return []
    current = boot_id()
    return entries if current and boot == current else entries[:durable]


@attrs.define
class _Journal:
    """The journal file: a line per file as it completes, made durable in batches by a
    thread of its own (the disk writes back while the export goes on copying)."""

    path: Path
    clock: Callable[[], float] = time.monotonic
    fd: int = -1
    _entries: int = 0
    _pending: int = 0
    _pending_bytes: int = 0
    _since: float = 0.0
    _syncer: ThreadPoolExecutor | None = None
    _syncing: Future[None] | None = None

    def open(self, keep: list[dict[str, Any]]) -> None:
        """Rewrite the journal with ``keep`` only (atomically), and open it for appending."""
        fresh = self.path.with_name(self.path.name + PARTIAL)
        with open(fresh, "wb") as f:
            f.write(_line({"boot": boot_id()}))
            for entry in keep:
                f.write(_line(entry))
            f.write(_line({"synced": len(keep)}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(fresh, self.path)
        _fsync_directory(self.path.parent)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._entries = len(keep)
        self._since = self.clock()

    def add(self, entry: dict[str, Any], size: int) -> bool:
        """Append a line for a file just written; True when a durable batch is due."""
        _write_all(self.fd, _line(entry))
        self._entries += 1
        self._pending += 1
        self._pending_bytes += size
        return (
            self._pending >= BATCH_FILES
            or self._pending_bytes >= BATCH_BYTES
            or self.clock() - self._since >= BATCH_SECONDS
        )

    def commit(self, fds: list[int], owned: bool, wait: bool = False) -> None:
        """fsync ``fds`` (closing them when ``owned``), then mark every entry so far
        durable; in the background unless ``wait`` (after the previous batch is done)."""
        self.wait()
        count = self._entries
        if wait:
            self._sync(fds, owned, count)
        else:
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="export-sync")
            self._syncing = self._syncer.submit(self._sync, fds, owned, count)
        self._pending = 0
        self._pending_bytes = 0
        self._since = self.clock()

    def _sync(self, fds: list[int], owned: bool, count: int) -> None:
        for fd in fds:
            os.fsync(fd)
            if owned:
                os.close(fd)
        _write_all(self.fd, _line({"synced": count}))
        os.fsync(self.fd)

    def wait(self) -> None:
        """Wait for the batch being made durable (raising what it raised)."""
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            syncing.result()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.wait()
        if self._syncer is not None:
            self._syncer.shutdown()
            self._syncer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


# -- a directory -----------------------------------------------------------------------------


@attrs.define
class DirectoryWriter:
    out: Path
    _journal: _Journal = attrs.field(init=False)
    #: Files renamed into place whose data is not yet fsynced.
    _unsynced: list[int] = attrs.field(factory=list)
    _made: set[Path] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        self._journal = _Journal(self.out / JOURNAL)

    def complete(self) -> Header | None:
        if not self.out.is_dir():
            return None
        try:
            return Header.from_bytes((self.out / HEADER).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, BundleError) as e:
            raise WriteError(f"{self.out} has a {HEADER} that cannot be read: {e}") from None

    def start(self, force: bool) -> None:
        ours = (self.out / JOURNAL).exists() or (self.out / (HEADER + PARTIAL)).exists()
        if self.out.exists() and not self.out.is_dir():
            raise WriteError(f"{self.out} exists and is not a directory")
        if force and (self.out / HEADER).exists():
            (self.out / HEADER).unlink()  # no longer complete: what follows rewrites it
            ours = True
        if self.out.is_dir() and any(self.out.iterdir()) and not ours:
            raise WriteError(
                f"{self.out} is not empty and no export was writing it: choose another OUT"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / JOURNAL).exists():
            self._journal.open([])  # from now on the directory says it is ours

    def resume(self, decide: Decide) -> list[ManifestEntry]:
        listed: dict[str, dict[str, Any]] = {}
        for entry in _read_journal(self.out / JOURNAL):
            listed[entry["path"]] = entry
        kept: list[ManifestEntry] = []
        for path in sorted(self._walk()):
            relative = path.relative_to(self.out).as_posix()
            listing = listed.get(relative)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            sha256 = listing["sha256"] if listing and listing["size"] == size else None
            if sha256 is not None and decide(relative, size, sha256):
                kept.append(ManifestEntry(relative, size, sha256))
            else:
                path.unlink()
        self._prune_empty_directories()
        self._journal.close()
        self._journal.open([{"path": e.path, "size": e.size, "sha256": e.sha256} for e in kept])
        return kept

    def _walk(self) -> Iterator[Path]:
        for directory, dirs, names in os.walk(self.out):
            dirs.sort()
            for name in names:
                path = Path(directory) / name
                if path.parent == self.out and name in (JOURNAL, JOURNAL + PARTIAL):
                    continue
                yield path

    def _prune_empty_directories(self) -> None:
        for directory, _dirs, _names in sorted(os.walk(self.out), reverse=True):
            if Path(directory) != self.out:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)

    def _target(self, path: str) -> Path:
        target = self.out.joinpath(*path.split("/"))
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        return target

    def write(self, path: str, source: Path, progress: Progress) -> ManifestEntry:
        target = self._target(path)
        partial = target.with_name(target.name + PARTIAL)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size, sha256 = _copy(source, fd, 0, progress)
            os.rename(partial, target)
        except BaseException:
            os.close(fd)
            raise
        self._unsynced.append(fd)
        if self._journal.add({"path": path, "size": size, "sha256": sha256}, size):
            self._commit()
        return ManifestEntry(path, size, sha256)

    def _commit(self, wait: bool = False) -> None:
        fds, self._unsynced = self._unsynced, []
        self._journal.commit(fds, owned=True, wait=wait)

    def finish(self, manifest: bytes, header: bytes) -> None:
        self._commit(wait=True)
        self._write_small(MANIFEST, manifest)
        header_partial = self.out / (HEADER + PARTIAL)
        self._write_small(HEADER + PARTIAL, header)
        for directory in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
            _fsync_directory(directory)
        self._journal.remove()
        os.rename(header_partial, self.out / HEADER)
        _fsync_directory(self.out)

    def _write_small(self, name: str, data: bytes) -> None:
        target = self.out / name
        partial = target.with_name(target.name + PARTIAL)
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(partial, target)

    def close(self) -> None:
        """Make what was written so far resumable (on an error or an interruption)."""
        with contextlib.suppress(OSError):
            self._commit(wait=True)
        for fd in self._unsynced:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._unsynced.clear()
        self._journal.close()


# -- a tar -----------------------------------------------------------------------------------


@attrs.frozen
class _Member:
    name: str
    offset: int
    data_offset: int
    size: int

    @property
    def end(self) -> int:
        return self.data_offset + _padded(self.size)


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _members(path: Path) -> Iterator[_Member]:
    """The complete members of a (possibly cut) tar, in order: regular files only; reading
    stops at the first member that is cut or unreadable."""
    length = path.stat().st_size
    try:
        archive = tarfile.open(path, "r:")  # noqa: SIM115 (closed below; may not open)
    except (tarfile.TarError, OSError):
        return
    with archive:
        while True:
            try:
                info = archive.next()
            except (tarfile.TarError, OSError):
                return
            if info is None or not info.isreg():
                return
            member = _Member(info.name, info.offset, info.offset_data, info.size)
            if member.end > length:
                return
            yield member


@attrs.define
class TarWriter:
    out: Path
    _fd: int = -1
    _position: int = 0
    _journal: _Journal = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._journal = _Journal(self.out.with_name(self.out.name + ".export-journal.jsonl"))

    @property
    def partial(self) -> Path:
        return self.out.with_name(self.out.name + PARTIAL)

    def complete(self) -> Header | None:
        if not self.out.exists():
            return None
        if not self.out.is_file():
            raise WriteError(f"{self.out} exists and is not a file")
        header = None
        try:
            with tarfile.open(self.out, "r:") as archive:
                for info in archive:
                    if info.name == HEADER and info.isreg():
                        extracted = archive.extractfile(info)
                        header = Header.from_bytes(extracted.read() if extracted else b"")
        except (tarfile.TarError, OSError, BundleError) as e:
            raise WriteError(f"{self.out} exists and is not a devpid bundle: {e}") from None
        if header is None:
            raise WriteError(f"{self.out} exists and is not a devpid bundle (no {HEADER})")
        return header

    def start(self, force: bool) -> None:
        if not self.out.parent.is_dir():
            raise WriteError(f"no directory {self.out.parent} to write {self.out.name} in")
        flags = os.O_RDWR | os.O_CREAT
        self._fd = os.open(self.partial, flags, 0o644)
        if not self._journal.path.exists():
            os.ftruncate(self._fd, 0)  # a partial tar without its journal: start again
            self._journal.open([])

    def resume(self, decide: Decide) -> list[ManifestEntry]:
        journaled = {
            (e["path"], e.get("offset"), e["size"]): e["sha256"]
            for e in _read_journal(self._journal.path)
        }
        kept: list[tuple[_Member, str]] = []
        for member in _members(self.partial):
            if member.name in (MANIFEST, HEADER):
                continue
            sha256 = journaled.get((member.name, member.offset, member.size))
            if sha256 is None:
                sha256 = self._hash_member(member)
            if decide(member.name, member.size, sha256):
                kept.append((member, sha256))
        self._journal.close()
        # the members that stay where they are keep their lines; the moved ones get theirs
        # once they are durable in their new place
        position = 0
        staying: list[dict[str, Any]] = []
        for member, sha256 in kept:
            if member.offset != position:
                break
            staying.append(_tar_entry(member.name, member.size, sha256, member.offset))
            position = member.end
        self._journal.open(staying)
        for member, sha256 in kept[len(staying) :]:
            self._move(member, position)
            moved_size = member.end - member.offset
            entry = _tar_entry(member.name, member.size, sha256, position)
            position += moved_size
            if self._journal.add(entry, moved_size):
                self._commit()
        self._commit()
        os.ftruncate(self._fd, position)
        self._position = position
        return [ManifestEntry(m.name, m.size, sha) for m, sha in kept]

    def _hash_member(self, member: _Member) -> str:
        digest = hashlib.sha256()
        remaining = member.size
        offset = member.data_offset
        while remaining:
            chunk = os.pread(self._fd, min(CHUNK, remaining), offset)
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def _move(self, member: _Member, to: int) -> None:
        """Copy the member's blocks (header and data) down to ``to`` (< its offset)."""
        source, end = member.offset, member.end
        while source < end:
            chunk = os.pread(self._fd, min(CHUNK, end - source), source)
            if not chunk:
                raise WriteError(f"{self.partial} changed while being resumed")
            os.pwrite(self._fd, chunk, to)
            source += len(chunk)
            to += len(chunk)

    def _commit(self, wait: bool = False) -> None:
        self._journal.commit([self._fd], owned=False, wait=wait)

    def _header(self, path: str, size: int, mtime: float) -> bytes:
        info = tarfile.TarInfo(path)
        info.size = size
        info.mtime = int(mtime)
        info.mode = 0o644
        info.type = tarfile.REGTYPE
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def write(self, path: str, source: Path, progress: Progress) -> ManifestEntry:
        status = source.stat()
        start = self._position
        header = self._header(path, status.st_size, status.st_mtime)
        os.pwrite(self._fd, header, start)
        position = start + len(header)
        size, sha256 = _copy(source, self._fd, position, progress)
        position += size
        if size != status.st_size:
            raise WriteError(f"{source} changed size while being copied")
        padding = _padded(size) - size
        if padding:
            os.pwrite(self._fd, bytes(padding), position)
            position += padding
        self._position = position
        if self._journal.add(_tar_entry(path, size, sha256, start), size):
            self._commit()
        return ManifestEntry(path, size, sha256)

    def _write_bytes(self, path: str, data: bytes) -> None:
        header = self._header(path, len(data), time.time())
        padding = bytes(_padded(len(data)) - len(data))
        os.pwrite(self._fd, header + data + padding, self._position)
        self._position += len(header) + len(data) + len(padding)

    def finish(self, manifest: bytes, header: bytes) -> None:
        self._journal.wait()
        self._write_bytes(MANIFEST, manifest)
        self._write_bytes(HEADER, header)
        end = self._position + 2 * _BLOCK
        end = -(-end // _RECORD) * _RECORD
        os.pwrite(self._fd, bytes(end - self._position), self._position)
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.rename(self.partial, self.out)
        _fsync_directory(self.out.parent)
        self._journal.remove()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._commit(wait=True)
            self._journal.close()
            os.close(self._fd)
            self._fd = -1
        self._journal.close()

    def discard_stale_journal(self) -> None:
        """After a crash between the final rename and the journal's removal."""
        if not self.partial.exists():
            self._journal.path.unlink(missing_ok=True)


def _tar_entry(path: str, size: int, sha256: str, offset: int) -> dict[str, Any]:
    return {"path": path, "size": size, "sha256": sha256, "offset": offset}


__all__ = ["BundleWriter", "DirectoryWriter", "TarWriter", "WriteError", "shutil", "writer_for"]
