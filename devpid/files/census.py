"""The serverdir's count (files, bytes, pages) and crash clean-up, walked while devpid serves.

With 100,000 cached pages and tens of thousands of files, walking ``+files/``
and ``+pages/`` takes seconds; done before listening, it was most of the
start-up time. So ``FileStore`` starts this walk in a thread once the layout
exists, and devpid serves meanwhile. Until the walk ends the counts are not
known (``/+status`` says ``cache.counting``), and the evictor waits for them.

**Exact while files change.** Downloads commit, uploads land, pages are
written while the walk runs. Each such change goes through ``Census.change``,
which holds the census lock around the change itself, and the walk holds it
around each file it looks at. The walk goes through each directory's entries
in sorted order (files, then subdirectories), and publishes where it is; so a
change knows whether the walk has passed its path:

- passed: the walk counted the old state, so the change's delta is added to it;
- not yet: the path is marked, the walk skips it, and the end of the walk
  looks at it (counts it if it is there then).

**Clean-up.** A temporary file nobody holds (its ``flock``) is removed, as
before: a download's only when no process holds its ``flock`` (ours are
held, so a download that started meanwhile keeps its file), a page's when its
process is gone or it is older than a minute.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

#: One path component in the walk's order: files (0) before subdirectories (1).
_Key = tuple[tuple[int, str], ...]

FILES, PAGES = 0, 1


@attrs.define
class Tally:
    """What a walk (or the changes since) adds up to."""

    files: int = 0
    bytes: int = 0
    pages: int = 0
    #: Bytes under each ``+files/<user>/<index>/``.
    index_bytes: dict[str, int] = attrs.field(factory=dict)

    def add_file(self, index: str | None, size: int, count: int = 1) -> None:
        self.files += count
        self.bytes += size
        if index is not None:
            self.index_bytes[index] = self.index_bytes.get(index, 0) + size

    def merge(self, other: Tally) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.pages += other.pages
        for index, size in other.index_bytes.items():
            self.index_bytes[index] = self.index_bytes.get(index, 0) + size


def index_of(parts: tuple[str, ...]) -> str | None:
    """``user/index`` of a file's path components under ``+files/`` (None above an index)."""
    return f"{parts[0]}/{parts[1]}" if len(parts) > 2 else None


def is_page(name: str) -> bool:
    """A project page's file (the project list and temporary files are not pages)."""
    return name.endswith(".json") and not name.startswith("+")


@attrs.define
class WalkResult:
    tally: Tally
    removed: int
    #: ``(path, reason)`` of what could not be looked at.
    problems: list[tuple[str, str]]
    seconds: float
    #: The walk was stopped before its end (devpid is stopping): the tally is partial.
    interrupted: bool = False


@attrs.define
class Census:
    """One count of the serverdir under ``roots`` (``+files/``, ``+pages/``), and the
    changes made while it runs."""

    roots: tuple[Path, Path]
    #: Removes a download's temporary file nobody writes (True if removed).
    remove_file_leftover: Callable[[Path], bool]
    #: Removes a page's temporary file whose writer is gone (True if removed).
    remove_page_leftover: Callable[[str], bool]
    partial_suffix: str
    #: Adds a change's delta to the counts in use (when no walk runs).
    add_live: Callable[[Tally], None]
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: Where the walk is: (root, key of the path it looks at, or has just looked at).
    _position: tuple[int, _Key] = (-1, ())
    #: Paths changed ahead of the walk: it skips them, its end looks at them.
    _ahead: set[str] = attrs.field(factory=set)
    #: The deltas of the changes behind the walk.
    _behind: Tally = attrs.field(factory=Tally)
    running: bool = False
    #: Set to stop a walk under way (devpid is stopping: a thread must not hold it up).
    stopping: bool = False

    # -- changes (any thread) ------------------------------------------------------

    def _key_of(self, path: str) -> tuple[int, _Key] | None:
        for number, root in enumerate(self.roots):
            relative = os.path.relpath(path, root)
            outside = relative == os.pardir or relative.startswith(os.pardir + os.sep)
            if relative != os.curdir and not outside:
                *directories, name = relative.split(os.sep)
                return number, (*((1, part) for part in directories), (0, name))
        return None

    def change(self, path: str | Path, mutate: Callable[[], Tally | None]) -> None:
        """Make a change to ``path`` (``mutate``, which says by how much it changed the
        counts) and count it: in the counts in use when no walk runs, else as the
        docstring above says."""
        with self._lock:
            delta = mutate()
            if delta is None:
                return
            if not self.running:
                self.add_live(delta)
                return
            key = self._key_of(str(path))
            if key is None or key <= self._position:
                self._behind.merge(delta)
            else:
                self._ahead.add(str(path))

    # -- the walk (in a thread) ----------------------------------------------------

    def begin(self) -> None:
        """Called on the reactor before the walk starts: changes are tracked from now."""
        with self._lock:
            self.running = True
            self._position = (-1, ())
            self._ahead = set()
            self._behind = Tally()

    def walk(self) -> WalkResult:
        """Count and clean both roots (blocking: in a thread)."""
        started = time.monotonic()
        tally = Tally()
        removed = 0
        problems: list[tuple[str, str]] = []
        for number, root in enumerate(self.roots):
            for directory, key, names in _sorted_walk(root, problems):
                if self.stopping:
                    return WalkResult(tally, removed, problems, 0.0, interrupted=True)
                for name in names:
                    path = os.path.join(directory, name)
                    try:
                        if name.endswith(self.partial_suffix):
                            removed += self._clean(number, path)
                            continue
                        with self._lock:
                            self._position = (number, (*key, (0, name)))
                            if path in self._ahead:
                                continue
                            if number == FILES:
                                size = os.stat(path).st_size
                                tally.add_file(index_of((*[k for _, k in key], name)), size)
                            elif is_page(name):
                                tally.pages += 1
                    except FileNotFoundError:  # another process committed or removed it
                        continue
                    except OSError as e:
                        problems.append((path, e.strerror or str(e)))
        with self._lock:
            self._position = (len(self.roots), ())
        return WalkResult(tally, removed, problems, time.monotonic() - started)

    def _clean(self, number: int, path: str) -> int:
        if number == FILES:
            return int(self.remove_file_leftover(Path(path)))
        return int(self.remove_page_leftover(path))

    # -- the end (on the reactor) --------------------------------------------------

    def finish(self, result: WalkResult, install: Callable[[Tally], None]) -> None:
        """The walk's count, plus the changes made meanwhile: the new counts, given to
        ``install`` (under the lock: no change is lost between)."""
        with self._lock:
            totals = result.tally
            totals.merge(self._behind)
            for path in sorted(self._ahead):
                key = self._key_of(path)
                if key is None:
                    continue
                number, parts = key
                try:
                    size = os.stat(path).st_size
                except OSError:
                    continue
                if number == FILES:
                    totals.add_file(index_of(tuple(part for _, part in parts)), size)
                elif is_page(parts[-1][1]):
                    totals.pages += 1
            install(totals)
            self.running = False
            self._ahead = set()
            self._behind = Tally()


def _sorted_walk(
    root: Path, problems: list[tuple[str, str]]
) -> Iterator[tuple[str, _Key, list[str]]]:
    """Each directory under ``root`` with its key and its files, both in sorted order:
    the order ``Census`` compares paths in. Links to directories are not followed."""
    stack: list[tuple[str, _Key]] = [(str(root), ())]
    while stack:
        directory, key = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = [(entry.name, _kind(entry)) for entry in entries]
        except FileNotFoundError:
            continue
        except OSError as e:
            problems.append((directory, e.strerror or str(e)))
            continue
        listed.sort()
        yield directory, key, [name for name, kind in listed if kind == _FILE]
        subdirectories = [name for name, kind in listed if kind == _DIRECTORY]
        for name in reversed(subdirectories):
            stack.append((os.path.join(directory, name), (*key, (1, name))))


_FILE, _DIRECTORY, _LINKED_DIRECTORY = 0, 1, 2


def _kind(entry: os.DirEntry[str]) -> int:
    """os.walk's rule: a link to a directory is a directory (not a file), not descended into."""
    try:
        if not entry.is_dir():
            return _FILE
        return _LINKED_DIRECTORY if entry.is_symlink() else _DIRECTORY
    except OSError:
        return _FILE
