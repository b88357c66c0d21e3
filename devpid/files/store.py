"""The serverdir: its layout, temporary files, atomic commits, and crash clean-up.

Layout (see docs/serverdir.md)::

    <serverdir>/state.sqlite                      embedded state store
    <serverdir>/+pages/<user>/<index>/<project>.json   parsed project pages
    <serverdir>/+pages/<user>/<index>/+projects.json   the project list
    <serverdir>/+files/<user>/<index>/+f/<h3>/<h13>/<filename>   committed files
    ....../<filename>.<owner>.devpid-partial      a download in progress, by one process

Every path is built from validated components and checked to stay inside
the serverdir, so no request can name a file outside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.common.identity import ProcessIdentity, pid_alive, pid_of
from devpid.files.census import Census, Tally, WalkResult
from devpid.files.usage import UsageLog
from devpid.simple.model import FILENAME, HEX

PARTIAL_SUFFIX = ".devpid-partial"
#: Seconds after which a page's temporary file is a leftover whoever wrote it.
PAGE_PARTIAL_AGE = 60.0
#: The page file name that holds an index's project list.
PROJECT_LIST = "+projects"
_INDEX_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: Normalized project names (``packaging.utils.canonicalize_name``).
_PROJECT_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,199}\Z")


class UnsafePath(Exception):
    """A path component that could escape the serverdir or is not a valid name."""


def _check_component(value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(value) or value in (".", "..") or "\x00" in value:
        raise UnsafePath(f"invalid path component {value[:80]!r}")
    return value


@attrs.define
class CacheCounts:
    files: int = 0
    bytes: int = 0
    pages: int = 0


def partial_owner(path: Path | str) -> str | None:
    """The owner token in a temporary file's name (None if it has none)."""
    name = os.path.basename(path)
    if not name.endswith(PARTIAL_SUFFIX):
        return None
    stem = name[: -len(PARTIAL_SUFFIX)]
    _, dot, owner = stem.rpartition(".")
    return owner if dot and pid_of(owner) is not None else None


def lock_for_writing(fd: int) -> bool:
    """Take the exclusive ``flock`` that says "a live process writes this file"."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


#: Opening a temporary file to test its ``flock``: never through a link, never blocking.
_PROBE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK


def probe_partial(path: Path, remove: bool = False) -> bool | None:
    """Whether a download's temporary file is being written (its ``flock`` is held).

    With ``remove``, a file nobody writes is unlinked while the ``flock`` is
    held here, and only if it is still the file that was locked (its writer
    may have replaced it meanwhile): the rule of the start-up clean-up and of
    ``devpid fsck --repair``. None when it was gone already.
    """
    try:
        try:
            fd = os.open(path, os.O_WRONLY | _PROBE_FLAGS)
        except PermissionError:
            if remove:
                raise
            # Not ours to write: flock works on a read-only descriptor on local file systems.
            fd = os.open(path, os.O_RDONLY | _PROBE_FLAGS)
    except FileNotFoundError:
        return None
    try:
        if not lock_for_writing(fd):
            return True
        if remove:
            held, named = os.fstat(fd), os.lstat(path)
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                return True  # replaced meanwhile: someone is at work there
            os.unlink(path)
        return False
    finally:
        os.close(fd)  # releases the flock


def page_partial_in_use(path: Path | str, mtime: float) -> bool:
    """Whether a page's temporary file may still be written: its process runs and it is new.

    Pages are written in one go, so an older one, or one whose process is gone
    from this host, is a leftover.
    """
    owner = partial_owner(path)
    pid = pid_of(owner) if owner else None
    return pid is not None and pid_alive(pid) and time.time() - mtime <= PAGE_PARTIAL_AGE


def _remove_page_leftover(path: str) -> bool:
    if page_partial_in_use(path, os.stat(path).st_mtime):
        return False
    os.unlink(path)
    return True


def _index_of(relative: str) -> str | None:
    """``user/index`` of a path relative to ``+files/`` (None above an index's directory)."""
    parts = relative.split(os.sep, 2)
    if len(parts) < 2 or parts[0] in (".", ".."):
        return None
    return f"{parts[0]}/{parts[1]}"


@attrs.define
class FileStore:
    serverdir: Path
    #: Names this process's temporary files, so processes sharing a serverdir never clash.
    identity: ProcessIdentity = attrs.field(factory=ProcessIdentity)
    counts: CacheCounts = attrs.field(factory=CacheCounts)
    #: Bytes of committed files under each ``+files/<user>/<index>/``, counted at start-up
    #: and kept up to date for mirror indexes (commits here, evictions); what
    #: ``--cache-max-size`` is checked against between walks.
    index_bytes: dict[str, int] = attrs.field(factory=dict)
    #: Uses of cached files for eviction's LRU order; None when nothing is ever evicted.
    usage: UsageLog | None = None
    #: Called after each commit (the evictor: is the cache over its limit now?).
    grown: Callable[[], None] | None = None
    #: Counts the serverdir and keeps the counts right while it does (files.census).
    census: Census = attrs.field(init=False)
    _counted: bool = attrs.field(init=False, default=False)
    _when_counted: list[Callable[[], object]] = attrs.field(init=False, factory=list)
    #: The serverdir with its symlinks resolved, once: every path checked against it.
    _resolved_serverdir: Path | None = attrs.field(init=False, default=None)
    #: ``+files/`` and ``+pages/`` of the serverdir: made once (a cached page's hit uses one).
    files_root: Path = attrs.field(init=False)
    pages_root: Path = attrs.field(init=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self.files_root = self.serverdir / "+files"
        self.pages_root = self.serverdir / "+pages"
        self.census = Census(
            (self.files_root, self.pages_root),
            lambda path: probe_partial(path, remove=True) is False,
            _remove_page_leftover,
            PARTIAL_SUFFIX,
            self._add,
        )

    def prepare(self) -> None:
        """Create the layout, remove what a crash left behind, and count what is cached
        (blocking: the whole walk; devpid itself walks in a thread, see devpid.files.census).

        A download's temporary file goes unless some process holds its
        ``flock`` (it is being written, possibly by another process sharing
        the serverdir). A page's temporary file, written in one go, goes once
        its process has died or it is older than ``PAGE_PARTIAL_AGE``.
        """
        self.prepare_layout()
        self.census.begin()
        self.finish_count(self.census.walk())

    def prepare_layout(self) -> None:
        self.files_root.mkdir(parents=True, exist_ok=True)
        self.pages_root.mkdir(parents=True, exist_ok=True)

    @property
    def counted(self) -> bool:
        """Whether the counts are known (the start-up walk is over)."""
        return self._counted

    def when_counted(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the counts are known (now, if they are)."""
        if self._counted:
            callback()
        else:
            self._when_counted.append(callback)

    def finish_count(self, result: WalkResult) -> None:
        """The walk's result (with the changes made meanwhile) becomes the counts."""
        self.census.finish(result, self._install)
        for path, reason in result.problems:
            self.log.warn("cannot check {path} at start-up: {reason}", path=path, reason=reason)
        if result.removed:
            self.log.info("removed {count} partial files left by a crash", count=result.removed)
        self._counted = True
        callbacks, self._when_counted = self._when_counted, []
        for callback in callbacks:
            callback()

    def _install(self, totals: Tally) -> None:
        self.counts = CacheCounts(totals.files, totals.bytes, totals.pages)
        self.index_bytes = dict(totals.index_bytes)

    def _add(self, delta: Tally) -> None:
        self.counts.files += delta.files
        self.counts.bytes += delta.bytes
        self.counts.pages += delta.pages
        for index, size in delta.index_bytes.items():
            self.index_bytes[index] = self.index_bytes.get(index, 0) + size

    def _inside(self, path: Path) -> Path:
        if self._resolved_serverdir is None:  # an lstat per component: once, not per hit
            self._resolved_serverdir = self.serverdir.resolve()
        resolved = path.resolve()
        if not resolved.is_relative_to(self._resolved_serverdir):
            raise UnsafePath(f"{path} is outside the serverdir")
        return path

    def file_path(self, index: str, h3: str, h13: str, filename: str) -> Path:
        """Where the committed file ``+f/<h3>/<h13>/<filename>`` of ``index`` lives."""
        user, _, name = index.partition("/")
        _check_component(user, _INDEX_PART)
        _check_component(name, _INDEX_PART)
        if len(h3) != 3 or not 1 <= len(h13) <= 13 or not HEX.match(h3) or not HEX.match(h13):
            # (fewer than 13: an upstream's short digest, as devpi names it)
            raise UnsafePath("file hashes in the path must be 3 and 13 lowercase hex digits")
        _check_component(filename, FILENAME)
        return self._inside(self.files_root / user / name / "+f" / h3 / h13 / filename)

    def committed_file(self, index: str, storage_hash: str, filename: str) -> Path | None:
        """The committed file of ``index`` named by a link's hash and file name, if it is
        on disk; None if not, or if the names could not be a file here."""
        try:
            path = self.file_path(index, storage_hash[:3], storage_hash[3:16], filename)
        except UnsafePath:
            return None
        return path if path.is_file() else None

    def partial_path(self, final: Path) -> Path:
        """This process's temporary file for ``final``."""
        return final.with_name(f"{final.name}.{self.identity.token}{PARTIAL_SUFFIX}")

    def create_partial(self, final: Path) -> tuple[Path, int]:
        """A fresh temporary file beside ``final``, opened for writing and ``flock``-ed."""
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(final)
        for _attempt in range(3):
            partial.unlink(missing_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                # Another process's start-up sweep may have caught it between the calls.
                if lock_for_writing(fd) and os.fstat(fd).st_nlink:
                    return partial, fd
            except BaseException:  # no flock on this file system, say: nothing left behind
                os.close(fd)
                partial.unlink(missing_ok=True)
                raise
            os.close(fd)
        raise OSError(errno.EBUSY, "the temporary file keeps being removed")

    def adopt_partial(self, other: Path, final: Path) -> tuple[Path, int] | None:
        """Rename another process's temporary file for ``final`` to ours, open for appending.

        None when it is gone or its writer still holds it (a live process
        whose lock merely expired). Its readers keep reading: a rename keeps
        the inode.
        """
        try:
            fd = os.open(other, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return None
        partial = self.partial_path(final)
        try:
            if lock_for_writing(fd) and os.fstat(fd).st_nlink:
                os.rename(other, partial)
                return partial, fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def being_written(self, partial: Path) -> bool:
        """Whether a live process holds the ``flock`` of a temporary file."""
        return probe_partial(partial) is True

    def relative(self, final: Path) -> str:
        """``final`` relative to the files root: how processes name a file to each other."""
        return final.relative_to(self.files_root).as_posix()

    def commit(self, partial: Path, final: Path) -> None:
        """Atomically publish a verified download (a use of it, for eviction's order)."""

        def publish() -> Tally:
            os.rename(partial, final)
            return self.file_delta(final, 1, final.stat().st_size)

        self.census.change(final, publish)
        self.note_use(str(final))
        if self.grown is not None:
            self.grown()

    def note_use(self, path: str) -> None:
        """A cached file was served (or committed): noted in memory, see devpid.files.usage."""
        if self.usage is not None:
            self.usage.note(path, time.time())

    def mirror_bytes(self, mirrors: Iterable[str]) -> int:
        """The committed files of these (mirror) indexes, as counted between walks."""
        return sum(self.index_bytes.get(name, 0) for name in mirrors)

    def file_delta(self, final: Path, files: int, size: int) -> Tally:
        """What adding (``files`` 1) or removing (-1) the file ``final`` of ``size`` bytes
        changes in the counts."""
        delta = Tally()
        try:
            index = _index_of(os.path.relpath(final, self.files_root))
        except ValueError:
            index = None
        delta.add_file(index, size, files)
        return delta

    def discard(self, partial: Path) -> None:
        partial.unlink(missing_ok=True)

    def remove_file(self, final: Path) -> None:
        def remove() -> Tally | None:
            try:
                size = final.stat().st_size
                final.unlink()
            except FileNotFoundError:
                return None
            return self.file_delta(final, -1, -size)

        self.census.change(final, remove)

    # -- pages ---------------------------------------------------------------

    def page_path(self, index: str, project: str) -> Path:
        user, _, name = index.partition("/")
        _check_component(user, _INDEX_PART)
        _check_component(name, _INDEX_PART)
        if project != PROJECT_LIST:
            _check_component(project, _PROJECT_PART)
        return self._inside(self.pages_root / user / name / f"{project}.json")

    def read_page(self, index: str, project: str) -> dict[str, Any] | None:
        try:
            with open(self.page_path(index, project), "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            self.log.warn(
                "ignoring unreadable cached page {index}/{project}", index=index, project=project
            )
            return None
        return data if isinstance(data, dict) else None

    def write_page(self, index: str, project: str, data: dict[str, Any] | Iterable[str]) -> None:
        """Save a page: its document, or its JSON text in pieces (a large page's,
        ``ProjectPage.json_chunks``, written as it is made)."""
        path = self.page_path(index, project)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(path)

        def publish() -> Tally | None:
            new = not path.exists()
            os.replace(partial, path)
            return Tally(pages=1) if new and project != PROJECT_LIST else None

        try:
            with open(partial, "w", encoding="utf-8") as f:
                if isinstance(data, dict):
                    json.dump(data, f, separators=(",", ":"))
                else:
                    f.writelines(data)
            self.census.change(path, publish)
        except BaseException:  # a full disk: no half-written page left behind
            partial.unlink(missing_ok=True)
            raise

    def delete_page(self, index: str, project: str) -> None:
        path = self.page_path(index, project)

        def remove() -> Tally | None:
            try:
                path.unlink()
            except FileNotFoundError:
                return None
            return Tally(pages=-1) if project != PROJECT_LIST else None

        self.census.change(path, remove)

    def cached_projects(self, index: str) -> list[str]:
        user, _, name = index.partition("/")
        directory = self.pages_root / user / name
        if not directory.is_dir():
            return []
        return sorted(
            p.name[: -len(".json")]
            for p in directory.iterdir()
            if p.name.endswith(".json") and not p.name.startswith("+")
        )

    def detach_index(self, index: str, files_too: bool) -> list[Path]:
        """Move an index's pages (and, with ``files_too``, its files) out of the layout at
        once; the moved directories, for the caller to remove (off the reactor).

        Used when a mirror index is deleted (everything goes) or mirrors another
        upstream (its pages go: they are refetched; files are named by their hash).
        """
        user, _, name = index.partition("/")
        roots = [self.pages_root] + ([self.files_root] if files_too else [])
        moved = []
        for root in roots:
            directory = self._inside(root / user / name)
            trash = directory.with_name(f".{name}.{self.identity.token}.deleted")
            try:
                directory.rename(trash)
            except FileNotFoundError:
                continue
            except OSError as e:
                self.log.warn("cannot move {path} away: {error}", path=str(directory), error=e)
                continue
            moved.append(trash)
        return moved
