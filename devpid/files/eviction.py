"""Choosing and removing the least recently used mirror files: one eviction run.

Blocking code, run in a thread by the evictor (devpid.files.evictor) and in
the foreground by ``devpid gc``; the two exclude each other, and the
processes sharing a serverdir exclude each other, through an exclusive
``flock`` on ``<serverdir>/evict.lock`` taken without waiting
(``EvictionLock``): the kernel drops it when its holder exits or is killed.

**What counts.** Only the committed files of mirror indexes, under
``+files/<user>/<index>/+f/<h3>/<h13>/``, whichever indexes the caller names
as mirrors (from the private data). A stage's files are never walked, so
they neither count nor go; nor do pages, temporary files
(``.devpid-partial``) or anything that is not a regular file.

**The unit** is one ``<h13>`` directory: a distribution file and its side
files (``.metadata``, ``.provenance``), which go together. Its size is
theirs together, its last use the newest of their atimes and mtimes: atime
is the last use (devpid.files.usage), mtime the download's last write, so a
file just committed is as recent as a file just used.

**The choice** (``choose``, pure): nothing while the total is within the
limit; else units oldest first until the total is down to the low
watermark (``CacheLimit.target``), skipping a unit used within the grace
period (by its times, or by this process's uses not flushed yet), one with
a temporary file beside it (being downloaded), and one whose file could not
be read.

**The removal** looks at each file again just before unlinking it: gone,
replaced (another inode), or used since the walk, and its unit is left.
Side files go first, the distribution last. A client reading a file as it
goes keeps reading it (the open descriptor keeps its bytes); the next
request for it is a miss and fetches it again. Every step is one
``unlink``: a run killed at any point leaves files that are whole, and the
next run carries on. Empty directories stay (removing one could race a
download creating its temporary file there).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import attrs

from devpid.files.store import PARTIAL_SUFFIX
from devpid.simple.model import dist_filename_of

#: The lock file in the serverdir: held by whoever evicts right now.
LOCK_NAME = "evict.lock"
#: Eviction stops at this fraction of the limit, so it does not run at every commit.
LOW_WATERMARK = 0.9
#: Seconds after its last use or download during which a file never goes (by default).
DEFAULT_GRACE = 600.0


@attrs.frozen
class CacheLimit:
    max_bytes: int
    grace: float = DEFAULT_GRACE

    @property
    def target(self) -> int:
        """What a run brings the cache down to."""
        return int(self.max_bytes * LOW_WATERMARK)


@attrs.frozen
class CachedFile:
    path: Path
    size: int
    #: ``max(atime, mtime)``: the last use or write.
    last_use: float
    #: ``(st_dev, st_ino)`` at the walk: a file replaced since is not this one.
    identity: tuple[int, int]


@attrs.frozen
class Unit:
    """One ``<h13>`` directory of a mirror: a file and its side files, evicted together."""

    index: str
    directory: Path
    files: tuple[CachedFile, ...]
    #: A temporary file is beside them (a download in progress), or one could not be read.
    busy: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def last_use(self) -> float:
        return max((f.last_use for f in self.files), default=0.0)


@attrs.frozen
class Scan:
    units: tuple[Unit, ...]
    #: Committed bytes per mirror index.
    index_bytes: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.index_bytes.values())


def _entries(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            yield from entries
    except (FileNotFoundError, NotADirectoryError):
        return


def _subdirectories(directory: Path) -> Iterator[Path]:
    for entry in _entries(directory):
        if entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def scan(files_root: Path, mirrors: Iterable[str]) -> Scan:
    """Every committed file of the mirror indexes, grouped in units (a walk: blocking)."""
    units: list[Unit] = []
    index_bytes: dict[str, int] = {}
    for index in sorted(set(mirrors)):
        user, _, name = index.partition("/")
        index_bytes[index] = 0
        for h3 in _subdirectories(files_root / user / name / "+f"):
            for h13 in _subdirectories(h3):
                unit = _unit(index, h13)
                if unit is not None:
                    units.append(unit)
                    index_bytes[index] += unit.size
    return Scan(tuple(units), index_bytes)


def _unit(index: str, directory: Path) -> Unit | None:
    files: list[CachedFile] = []
    busy = False
    for entry in _entries(directory):
        if entry.name.endswith(PARTIAL_SUFFIX):
            busy = True
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            busy = True  # cannot tell its use: leave the unit alone
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        files.append(
            CachedFile(
                Path(entry.path),
                st.st_size,
                max(st.st_atime, st.st_mtime),
                (st.st_dev, st.st_ino),
            )
        )
    if not files:
        return None
    return Unit(index, directory, tuple(sorted(files, key=lambda f: f.path.name)), busy)


def _unflushed_use(unit: Unit, last_noted: Callable[[str], float | None]) -> float:
    uses = (last_noted(str(f.path)) for f in unit.files)
    return max((use for use in uses if use is not None), default=0.0)


@attrs.frozen
class Choice:
    #: The units to evict, oldest first.
    units: list[Unit]
    #: Units passed over on the way to the target: used within the grace period, or busy.
    protected: int = 0


def choose(
    units: Sequence[Unit],
    total: int,
    limit: CacheLimit,
    now: float,
    last_noted: Callable[[str], float | None] = lambda path: None,
) -> Choice:
    """The units to evict, oldest first: none within the limit, else down to its target.

    ``last_noted`` gives this process's uses not yet written to the atimes.
    """
    if total <= limit.max_bytes:
        return Choice([])
    cutoff = now - limit.grace
    chosen = []
    protected = 0
    for unit in sorted(units, key=lambda u: (u.last_use, str(u.directory))):
        if total <= limit.target:
            break
        if unit.busy or unit.last_use > cutoff or _unflushed_use(unit, last_noted) > cutoff:
            protected += 1
            continue
        chosen.append(unit)
        total -= unit.size
    return Choice(chosen, protected)


@attrs.frozen
class Removed:
    """One file an eviction removed (or, dry, would remove)."""

    path: Path
    size: int
    last_use: float


@attrs.define
class RunReport:
    """What one run found and did; the evictor's status and ``devpid gc``'s output."""

    started_at: float
    limit: CacheLimit
    bytes_before: int = 0
    bytes_after: int = 0
    files: int = 0
    bytes: int = 0
    #: Units chosen but left: used, replaced or busy since the walk.
    kept: int = 0
    #: Units passed over when choosing: used within the grace period, or busy.
    protected: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    removed: list[Removed] = attrs.field(factory=list)
    index_bytes: dict[str, int] = attrs.field(factory=dict)
    #: Why the run stopped before the end, if it did.
    interrupted: str | None = None


def _still_evictable(unit: Unit, cutoff: float, last_noted: Callable[[str], float | None]) -> bool:
    """Whether every file of the unit is still the one walked, unused since, and no
    download started beside them."""
    if any(e.name.endswith(PARTIAL_SUFFIX) for e in _entries(unit.directory)):
        return False
    for cached in unit.files:
        try:
            st = os.lstat(cached.path)
        except FileNotFoundError:
            continue  # gone already (another run, a repair): nothing to do for it
        if (st.st_dev, st.st_ino) != cached.identity:
            return False
        if max(st.st_atime, st.st_mtime) > cutoff:
            return False
    return _unflushed_use(unit, last_noted) <= cutoff


def _removal_order(unit: Unit) -> list[CachedFile]:
    """Side files first, the distribution last: a half-evicted unit is a file without
    its metadata, which is fetched again on demand like any miss."""
    return sorted(unit.files, key=lambda f: dist_filename_of(f.path.name) == f.path.name)


def evict(
    files_root: Path,
    mirrors: Iterable[str],
    limit: CacheLimit,
    *,
    now: Callable[[], float] = time.time,
    last_noted: Callable[[str], float | None] = lambda path: None,
    dry_run: bool = False,
    stopping: Callable[[], bool] = lambda: False,
    removed: Callable[[Removed], None] = lambda item: None,
) -> RunReport:
    """One run: walk, choose, remove (or, ``dry_run``, only list). Blocking.

    The caller holds the ``EvictionLock`` (``devpid gc --dry-run`` need not).
    ``removed`` hears of each file as it goes; ``stopping`` ends the run early.
    """
    started = now()
    clock = time.monotonic()
    report = RunReport(started, limit, dry_run=dry_run)
    found = scan(files_root, mirrors)
    report.bytes_before = found.total
    report.index_bytes = dict(found.index_bytes)
    choice = choose(found.units, found.total, limit, started, last_noted)
    report.protected = choice.protected
    cutoff = started - limit.grace
    for unit in choice.units:
        if stopping():
            report.interrupted = "stopping"
            break
        if not dry_run and not _still_evictable(unit, cutoff, last_noted):
            report.kept += 1
            continue
        for cached in _removal_order(unit):
            if not dry_run:
                try:
                    os.unlink(cached.path)
                except FileNotFoundError:
                    continue
            item = Removed(cached.path, cached.size, cached.last_use)
            report.removed.append(item)
            report.files += 1
            report.bytes += cached.size
            report.index_bytes[unit.index] -= cached.size
            removed(item)
    report.bytes_after = report.bytes_before - report.bytes
    report.seconds = time.monotonic() - clock
    return report


class EvictionBusy(Exception):
    """Another process (a devpid, or ``devpid gc``) is evicting in this serverdir."""


@attrs.define
class EvictionLock:
    """The exclusive, non-blocking ``flock`` on ``<serverdir>/evict.lock``.

    The file is created once (mode 0644) and never removed: removing it while
    another process holds it would let a third lock a new file beside it.
    """

    serverdir: Path
    _fd: int | None = None

    @property
    def path(self) -> Path:
        return self.serverdir / LOCK_NAME

    def acquire(self) -> None:
        """Take the lock or raise ``EvictionBusy`` at once (OSError: cannot open it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise EvictionBusy(f"{self.path} is held: another process is evicting") from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> EvictionLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
