"""The files of stage indexes on disk: uploads put in place, side files, copies, removal.

A stage's files live where a mirror's do (``+files/<user>/<index>/+f/<h3>/<h13>/<name>``),
so nginx serves both alike. An upload arrives as a temporary file under
``+files/+uploads/`` (``flock``-ed by its writer); ``place`` makes it durable
(fsync) and renames it to its final name *before* the transaction that links
it commits.

The ``flock`` of a final file is the protocol between the processes:

- whoever is about to link a file holds its ``flock`` from putting it in
  place (or finding the same file there) until its transaction committed;
- whoever removes a file that is not linked (after a transaction unlinked it,
  the start-up sweep, ``devpid fsck --repair``) takes the ``flock`` without
  waiting, asks the private data again whether the file is linked, and only
  then removes it.

So a file is never removed between being found and being linked, nor after
being linked again by another upload of the same bytes.

``place``, ``write_file`` and ``copy`` block on the disk (the routes run them
in a thread); ``remove`` asks the private data and runs on the reactor.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import time
from collections.abc import Callable, Container, Iterable, Mapping
from pathlib import Path

import attrs

from devpid.files.census import Tally
from devpid.files.store import (
    PARTIAL_SUFFIX,
    FileStore,
    UnsafePath,
    lock_for_writing,
)
from devpid.simple.model import METADATA, dist_filename_of

UPLOADS = "+uploads"
DOCS = "+docs"


def split_entrypath(path: str) -> tuple[str, str, str, str]:
    """``user/index/+f/h3/h13/name`` as ``(user/index, h3, h13, name)``; UnsafePath otherwise."""
    parts = path.split("/")
    if len(parts) != 6 or parts[2] != "+f":
        raise UnsafePath(f"not a file path: {path[:200]!r}")
    user, index, _f, h3, h13, name = parts
    return f"{user}/{index}", h3, h13, name


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file named ``path`` (not removed or replaced)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _renaming(partial: Path, final: Path) -> Callable[[], Tally]:
    """Renaming ``partial`` to ``final`` (replacing a side file, say), as ``Census.change``
    makes and counts it."""

    def rename() -> Tally:
        try:
            replaced = os.stat(final).st_size
        except FileNotFoundError:
            replaced = None
        os.rename(partial, final)
        size = os.stat(final).st_size
        if replaced is None:
            return Tally(files=1, bytes=size)
        return Tally(bytes=size - replaced)

    return rename


def _unlinking(path: Path, size: int | None = None) -> Callable[[], Tally | None]:
    """Removing a file (of ``size`` bytes; None: if it is there), as ``Census.change``
    makes and counts it."""

    def unlink() -> Tally | None:
        if size is None:
            try:
                removed = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return None
        else:
            os.unlink(path)
            removed = size
        return Tally(files=-1, bytes=-removed)

    return unlink


@attrs.define
class Unlinked:
    """What a sweep may remove: files (by entry path), and side files whose file is gone."""

    files: list[str] = attrs.field(factory=list)
    side_files: list[tuple[str, Path]] = attrs.field(factory=list)


class FileBusy(Exception):
    """Another request is putting the same file in place right now."""


#: How long ``_hold_existing`` looks again while someone holds the file's ``flock``: long
#: enough for a removal after a delete (a few system calls on the reactor), far shorter
#: than another upload's link (a transaction), which is refused instead.
BUSY_WAIT = 0.2
_BUSY_STEP = 0.005


def _hold_existing(path: Path) -> int | None:
    """The existing file at ``path``, open and ``flock``-ed; None when there is none.

    Never waits long (a thread waiting here could be the one its holder needs): while the
    ``flock`` is held it looks again for ``BUSY_WAIT`` seconds, since a removal holds it
    for an instant and then the file is gone; ``FileBusy`` when another request still
    holds it, about to link it.
    """
    busy_until = time.monotonic() + BUSY_WAIT
    changes = 0
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            locked = lock_for_writing(fd)
            if locked and _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if not locked:
            if time.monotonic() >= busy_until:
                raise FileBusy(f"{path.name} is being stored by another request")
            time.sleep(_BUSY_STEP)
            continue
        changes += 1  # removed or replaced meanwhile: look again
        if changes >= 3:
            raise FileBusy(f"{path.name} keeps changing")


#: A docs directory being unpacked (``.<sha16>.new-*``) younger than this is another
#: upload's, still at work; older, a crash's leftover.
UNPACKING_GRACE = 60.0


def _recently_changed(path: Path) -> bool:
    try:
        return time.time() - path.lstat().st_mtime < UNPACKING_GRACE
    except FileNotFoundError:
        return True  # gone meanwhile: nothing to remove


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class Placed:
    """An upload in its final place, still ``flock``-ed until ``release``."""

    path: Path
    fd: int | None
    #: False when an identical file was there already (nothing of ours was renamed).
    created: bool

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@attrs.define
class ReleaseFiles:
    store: FileStore
    #: Whether a file (by its path) is linked by a version now, caught up with every process.
    is_linked: Callable[[str], bool]
    _names: itertools.count[int] = attrs.field(factory=itertools.count)

    @property
    def uploads_root(self) -> Path:
        return self.store.files_root / UPLOADS

    @property
    def docs_root(self) -> Path:
        return self.store.serverdir / DOCS

    def create_upload_file(self) -> tuple[Path, int]:
        """A fresh temporary file for an upload's body (``StreamingForm``'s ``create_file``)."""
        self.uploads_root.mkdir(parents=True, exist_ok=True)
        return self.store.create_partial(self.uploads_root / f"upload-{next(self._names)}")

    def path_of(self, entrypath: str) -> Path:
        return self.store.file_path(*split_entrypath(entrypath))

    def place(self, partial: Path, fd: int, entrypath: str) -> Placed:
        """Make the upload durable and give it its final name, ``flock``-ed (blocking).

        The same file there already (the same name under the same hash) is
        kept, held, and the temporary one removed.
        """
        final = self.path_of(entrypath)
        os.fsync(fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        existing = _hold_existing(final)
        if existing is not None:
            os.close(fd)
            partial.unlink(missing_ok=True)
            return Placed(final, existing, created=False)
        self.store.census.change(final, _renaming(partial, final))
        _fsync_directory(final.parent)
        return Placed(final, fd, created=True)

    def write_file(self, entrypath: str, content: bytes, suffix: str = "") -> Placed:
        """A small file (a wheel's ``.metadata``, a tox result) written durably (blocking)."""
        final = self.path_of(entrypath)
        final = final.with_name(final.name + suffix)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial, fd = self.store.create_partial(final)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        return (
            self.place(partial, fd, entrypath)
            if not suffix
            else self._place_side(partial, fd, final)
        )

    def _place_side(self, partial: Path, fd: int, final: Path) -> Placed:
        os.fsync(fd)
        self.store.census.change(final, _renaming(partial, final))
        _fsync_directory(final.parent)
        return Placed(final, fd, created=True)

    def copy(self, source: str, target: str) -> Placed:
        """``source``'s file (and its ``.metadata``) under ``target`` too, for a push, held
        like an upload (blocking): a hard link where the file system allows, else a copy."""
        src, dst = self.path_of(source), self.path_of(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        existing = _hold_existing(dst)
        if existing is not None:
            return Placed(dst, existing, created=False)
        fd = self._copy_one(src, dst, hold=True)  # held first: the side file goes with it
        side = src.with_name(src.name + METADATA)
        if side.exists():
            self._copy_one(side, dst.with_name(dst.name + METADATA), hold=False)
        _fsync_directory(dst.parent)
        return Placed(dst, fd, created=True)

    def _copy_one(self, source: Path, target: Path, hold: bool) -> int | None:
        """Link (or copy) ``source`` to ``target`` through a temporary name; with ``hold``,
        the new file's descriptor, ``flock``-ed before it gets its name."""
        partial = self.store.partial_path(target)
        partial.unlink(missing_ok=True)
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
            with open(partial, "rb+") as copied:  # durable before it is linked
                os.fsync(copied.fileno())
        fd = None
        if hold:
            fd = os.open(partial, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self.store.census.change(target, _renaming(partial, target))
        return fd

    def remove(self, entrypaths: Iterable[str]) -> int:
        """Remove the files (with their side files) that no version links, unless someone
        is about to link them (holds their ``flock``); the number removed. On the reactor:
        ``is_linked`` catches up with the private data."""
        removed = 0
        for entrypath in entrypaths:
            try:
                path = self.path_of(entrypath)
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except (UnsafePath, OSError):
                continue
            try:
                if not lock_for_writing(fd) or self.is_linked(entrypath):
                    continue
                if not _same_file(fd, path):
                    continue
                size = os.fstat(fd).st_size
                # the side file first: gone with its file, never after another put it back
                side = path.with_name(path.name + METADATA)
                self.store.census.change(side, _unlinking(side))
                self.store.census.change(path, _unlinking(path, size))
            except OSError:
                continue
            finally:
                os.close(fd)
            removed += 1
        return removed

    def detach_stage(self, index: str) -> list[Path]:
        """Move a deleted stage's files and docs out of the layout; the directories moved,
        for the caller to remove off the reactor."""
        moved = self.store.detach_index(index, files_too=True)
        user, _, name = index.partition("/")
        docs = self.docs_root / user / name
        trash = docs.with_name(f".{name}.{self.store.identity.token}.deleted")
        try:
            docs.rename(trash)
            moved.append(trash)
        except OSError:
            pass
        return moved

    def sweep(self, stages: Iterable[str], linked: Container[str]) -> int:
        """Remove the files of ``stages`` that nothing links (an upload or a push a crash
        cut off before its transaction, a removal cut off after it); ``linked`` is a first
        guess, ``remove`` asks again. On the reactor; the number of files removed.

        devpid runs the two halves apart at start-up: ``unlinked_candidates`` (the walk)
        in a thread, ``remove_unlinked`` on the reactor."""
        return self.remove_unlinked(self.unlinked_candidates(stages, linked))

    def unlinked_candidates(self, stages: Iterable[str], linked: Container[str]) -> Unlinked:
        """The files of ``stages`` that ``linked`` does not name, and side files whose file
        is gone (blocking, reads only: safe in a thread while ``linked`` changes, since
        ``remove_unlinked`` asks the private data again)."""
        found = Unlinked()
        for index in stages:
            user, _, name = index.partition("/")
            root = self.store.files_root / user / name / "+f"
            for path in root.glob("*/*/*") if root.is_dir() else ():
                if path.name.endswith(PARTIAL_SUFFIX):
                    continue
                dist = dist_filename_of(path.name)
                entry = f"{index}/+f/{path.parent.parent.name}/{path.parent.name}/{dist}"
                if entry in linked:
                    continue
                if dist != path.name and not path.with_name(dist).exists():
                    found.side_files.append((entry, path))  # its file is gone
                    continue
                found.files.append(entry)
        return found

    def remove_unlinked(self, found: Unlinked) -> int:
        """Remove what ``unlinked_candidates`` found, if still linked by nothing (on the
        reactor: ``is_linked`` reads the private data); the number of files removed."""
        for entry, path in found.side_files:
            if not self.is_linked(entry):
                path.unlink(missing_ok=True)
        return self.remove(found.files)

    def prune_all_docs(self, index: str, keep_of: Callable[[str], Mapping[str, str]]) -> None:
        """``prune_docs`` for every project with unpacked docs on ``index`` (start-up)."""
        user, _, name = index.partition("/")
        root = self.docs_root / user / name
        for project in root.iterdir() if root.is_dir() else ():
            self.prune_docs(index, project.name, keep_of(project.name))

    def prune_docs(self, index: str, project: str, keep: Mapping[str, str]) -> None:
        """Remove the unpacked docs of ``project`` on ``index`` but those of ``keep``
        (version -> the sha256 of its current doc zip). Blocking."""
        user, _, name = index.partition("/")
        root = self.docs_root / user / name / project
        if not root.is_dir() or ".." in project or "/" in project:
            return
        for version_dir in root.iterdir():
            current = keep.get(version_dir.name)
            for unpacked in version_dir.iterdir() if version_dir.is_dir() else ():
                if unpacked.name.startswith(".") and _recently_changed(unpacked):
                    continue  # another upload's docs, still being unpacked
                if current is None or unpacked.name != current[:16]:
                    shutil.rmtree(unpacked, ignore_errors=True)
            with contextlib.suppress(OSError):
                version_dir.rmdir()  # only when empty
        with contextlib.suppress(OSError):
            root.rmdir()

    def docs_dir(self, index: str, project: str, version: str, sha256: str) -> Path:
        """Where the doc zip with ``sha256`` of a version is unpacked."""
        user, _, name = index.partition("/")
        path = self.docs_root / user / name / project / version / sha256[:16]
        resolved = path.resolve()
        if not resolved.is_relative_to(self.docs_root.resolve()) or ".." in path.parts:
            raise UnsafePath(f"{path} is outside the serverdir")
        return path
