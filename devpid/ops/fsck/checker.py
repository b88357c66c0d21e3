"""One fsck run over a serverdir: every file against its page (a stage's against its
links), every page, and repair; then the unpacked docs (devpid.ops.fsck.docs), the
tools' staging directories (devpid.ops.fsck.leftovers) and the private data
(devpid.ops.fsck.private), each on the same report.

The checks of files and of pages share the run's report, its page cache and its
repair rule, so they stay one class; what they read (pages) and how they touch
the disk (walking, removing) live beside it.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from devpid.files.releases import split_entrypath
from devpid.files.store import (
    PARTIAL_SUFFIX,
    PROJECT_LIST,
    FileStore,
    UnsafePath,
    lock_for_writing,
    page_partial_in_use,
    probe_partial,
)
from devpid.ops.fsck.disk import (
    OPEN_FLAGS,
    identity,
    open_for_reading,
    remove_if_unchanged,
    walk,
)
from devpid.ops.fsck.docs import check_docs
from devpid.ops.fsck.leftovers import check_leftovers
from devpid.ops.fsck.pages import Expectation, PageCache
from devpid.ops.fsck.private import check_private
from devpid.ops.fsck.report import NOT_REPAIRED_PRIVATE as _PRIVATE
from devpid.ops.fsck.report import Problem, Report, Severity
from devpid.ops.fsck.stages import StageLinks
from devpid.private.database import FILENAME
from devpid.simple.model import METADATA, PROVENANCE, project_of_filename

#: Leftover candidates held at once while the links are read again.
_BATCH = 256


@attrs.define
class Checker:
    """One run over a serverdir: ``check()`` the files and pages, then read ``report``."""

    serverdir: Path
    repair: bool = False
    report: Report = attrs.field(init=False)
    _store: FileStore = attrs.field(init=False)
    _pages: PageCache = attrs.field(init=False)
    #: The stage indexes and their links (devpid.ops.fsck.stages), read at the start.
    _links: StageLinks = attrs.field(init=False, factory=StageLinks)
    #: Entrypaths of the stage files found on disk.
    _seen: set[str] = attrs.field(init=False, factory=set)
    #: Stage files no link named in ``_links``: ``(path, entrypath)``, decided after the walk.
    _unlinked: list[tuple[Path, str]] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.serverdir = self.serverdir.resolve()
        self._store = FileStore(self.serverdir)
        self._pages = PageCache(self._store)
        self.report = Report(self.serverdir, self.repair)

    def check(self) -> Report:
        self._links = StageLinks.read(self.serverdir)
        self._check_files()
        self._check_stage_links()
        self._check_pages()
        check_docs(self.serverdir, self.report, self._links)
        check_leftovers(self.serverdir, self.report)
        check_private(self.serverdir, self.report)
        return self.report

    # -- reporting -----------------------------------------------------------

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.serverdir).as_posix()

    def _problem(self, severity: Severity, kind: str, path: Path, detail: str) -> Problem:
        return self.report.add(severity, kind, self._rel(path), detail)

    def _repaired(self, problem: Problem, remove: Callable[[], bool]) -> None:
        """Run ``remove()`` under --repair; it says whether the bad file is gone."""
        self.report.attempt_repair(problem, remove)

    # -- files ---------------------------------------------------------------

    def _regular_files(self, root: Path) -> Iterator[tuple[tuple[str, ...], Path]]:
        """``(parts, path)`` of every regular file under ``root``; the rest is reported."""
        if root.is_symlink():
            self._problem("warning", "unexpected", root, "a symbolic link: not followed")
            return
        for parts, entry in walk(root):
            path = root.joinpath(*parts)
            if isinstance(entry, OSError):
                self._problem("error", "unreadable", path, f"cannot list it: {entry.strerror}")
            elif entry.is_symlink():
                self._problem("warning", "unexpected", path, "a symbolic link: not followed")
            elif not entry.is_file(follow_symlinks=False):
                self._problem("warning", "unexpected", path, "not a regular file")
            else:
                yield parts, path

    def _check_files(self) -> None:
        for parts, path in self._regular_files(self._store.files_root):
            if parts[-1].endswith(PARTIAL_SUFFIX):
                self._check_download_partial(path)
            elif len(parts) == 6 and parts[2] == "+f":
                user, name, _f, h3, h13, filename = parts
                self._check_committed(path, f"{user}/{name}", h3, h13, filename)
            else:
                self._problem("warning", "unexpected", path, "not part of devpid's layout")

    def _check_download_partial(self, path: Path) -> None:
        try:
            written = probe_partial(path)
        except OSError as e:
            self._problem(
                "warning", "unchecked", path, f"cannot tell whether it is written: {e.strerror}"
            )
            return
        if written is None:
            return
        if written:
            self.report.counts.in_progress += 1
            return
        problem = self._problem(
            "error", "leftover", path, "a temporary file no process is writing (a crash's)"
        )
        # Removed is removed, whoever did it; "written" again means someone adopted it.
        self._repaired(problem, lambda: not probe_partial(path, remove=True))

    def _check_committed(self, path: Path, index: str, h3: str, h13: str, filename: str) -> None:
        try:
            self._store.file_path(index, h3, h13, filename)
        except UnsafePath:
            self._problem("warning", "unexpected", path, "not a name devpid would store")
            return
        relpath = f"{h3}/{h13}/{filename}"
        stage = index in self._links.stages
        if stage:
            entrypath = f"{index}/+f/{relpath}"
            self._seen.add(entrypath)
            if self._links.expected(entrypath) is None:
                self._unlinked.append((path, entrypath))
                return
        try:
            fd = open_for_reading(path)
        except FileNotFoundError:  # removed meanwhile: nothing to check
            return
        except OSError as e:
            self._problem("error", "unreadable", path, f"cannot open it: {e.strerror}")
            return
        with os.fdopen(fd, "rb", buffering=0) as f:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                self._problem("warning", "unexpected", path, "not a regular file")
                return
            self.report.counts.files += 1
            self.report.counts.bytes += status.st_size
            linked = self._links.expected(f"{index}/+f/{relpath}") if stage else None
            if linked is not None:
                expected: Expectation | None = linked.expectation
            else:
                expected = self._expected(index, project_of_filename(filename), relpath)
            try:
                wrong = self._verify(f, status, expected, h3 + h13, filename, stage)
            except OSError as e:
                self._problem("error", "unreadable", path, f"cannot read it: {e.strerror}")
                return
        if wrong is None:
            return
        severity, kind, detail = wrong
        if linked is not None:
            detail += f" (of {linked.version}; {_PRIVATE})"
        problem = self._problem(severity, kind, path, detail)
        if severity == "error" and linked is None:
            checked = identity(status)
            self._repaired(problem, lambda: remove_if_unchanged(path, checked))

    def _verify(
        self,
        f: io.FileIO,
        status: os.stat_result,
        expected: Expectation | None,
        path_hash: str,
        filename: str,
        stage: bool = False,
    ) -> tuple[Severity, str, str] | None:
        """What is wrong with one committed file, if anything; counts how it was checked."""
        counts = self.report.counts
        source = "its link" if stage else "its page"
        if expected is None:
            counts.orphans += 1
            if filename.endswith(METADATA):
                how = "its content cannot be verified (the hash in its path is its wheel's)"
            elif filename.endswith(PROVENANCE):
                how = "its content cannot be verified (the hash in its path is its file's)"
            elif hashlib.file_digest(f, "sha256").hexdigest().startswith(path_hash):
                how = "its sha256 matches the hash in its path"
            else:
                how = (
                    "its sha256 does not match the hash in its path: damaged, or stored under "
                    "its URL's hash (the upstream gave no sha256); cannot be verified"
                )
            return "warning", "orphan", f"no cached page lists it; {how}"
        if expected.size is not None and status.st_size != expected.size:
            return "error", "corrupt", f"{status.st_size} bytes, {source} says {expected.size}"
        if expected.algorithm is not None and expected.digest is not None:
            digest = hashlib.file_digest(f, expected.algorithm).hexdigest()
            if digest != expected.digest:
                return (
                    "error",
                    "corrupt",
                    f"{expected.algorithm} {digest}, {source} says {expected.digest}",
                )
            counts.by_hash += 1
        elif expected.size is not None:
            counts.by_length += 1
        else:
            counts.not_verifiable += 1
        return None

    def _expected(self, index: str, project: str | None, relpath: str) -> Expectation | None:
        """What the page of ``project`` says about ``relpath``, reading the page as needed."""
        return self._pages.expected(index, project, relpath)

    # -- stage indexes --------------------------------------------------------

    def _check_stage_links(self) -> None:
        """Decide the stage files no link named, then report linked files not on disk.

        A running devpid links a file after fsck read the links (the upload
        ``flock``-s it until then) and unlinks one before removing it, so both
        are decided on the links read again. A leftover is ``flock``-ed here
        while they are: one the uploader still holds is being linked, and one
        linked meanwhile is checked as linked.
        """
        unlinked, self._unlinked = self._unlinked, []
        if self._links.problem is not None:
            self._problem(
                "warning",
                "unchecked",
                self.serverdir / FILENAME,
                f"cannot read the stage indexes' links ({self._links.problem}): "
                "their files are checked as a mirror's",
            )
        missing = [path for path in self._links.files if path not in self._seen]
        if not unlinked and not missing:
            return
        for start in range(0, max(len(unlinked), 1), _BATCH):
            self._decide_unlinked(unlinked[start : start + _BATCH])
        for entrypath in missing:
            self._check_missing(entrypath)

    def _decide_unlinked(self, batch: list[tuple[Path, str]]) -> None:
        held: list[tuple[Path, str, int]] = []
        try:
            for path, entrypath in batch:
                fd = self._hold(path)
                if fd is not None:
                    held.append((path, entrypath, fd))
            self._links = StageLinks.read(self.serverdir)
            for path, entrypath, fd in held:
                if self._links.expected(entrypath) is None:
                    self._leftover(path, entrypath, fd)
        finally:
            for _path, _entrypath, fd in held:
                os.close(fd)  # releases the flock
        for path, entrypath, _fd in held:
            if self._links.expected(entrypath) is not None:
                self._check_committed(path, *split_entrypath(entrypath))

    def _hold(self, path: Path) -> int | None:
        """``path`` opened and ``flock``-ed, or None (gone, or its writer holds it)."""
        try:
            try:
                fd = os.open(path, os.O_WRONLY | OPEN_FLAGS)
            except PermissionError:  # not ours to write: flock works on a reading descriptor
                fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._problem("error", "unreadable", path, f"cannot open it: {e.strerror}")
            return None
        if not lock_for_writing(fd):
            os.close(fd)
            self.report.counts.in_progress += 1  # being linked right now
            return None
        return fd

    def _leftover(self, path: Path, entrypath: str, fd: int) -> None:
        index = split_entrypath(entrypath)[0]
        problem = self._problem(
            "error",
            "leftover",
            path,
            f"a file of stage {index} that no version links (an upload or push a crash cut off)",
        )

        def remove() -> bool:
            held, named = os.fstat(fd), os.lstat(path)
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                return False  # replaced meanwhile
            os.unlink(path)
            return True

        self._repaired(problem, remove)

    def _check_missing(self, entrypath: str) -> None:
        linked = self._links.expected(entrypath)
        if linked is None:  # unlinked since the first read
            return
        try:
            path = self._store.file_path(*split_entrypath(entrypath))
        except UnsafePath:
            self._problem(
                "error",
                "missing",
                self.serverdir / FILENAME,
                f"{linked.version} links {entrypath!r}, a path devpid would never store "
                f"({_PRIVATE})",
            )
            return
        if os.path.lexists(path):
            return  # appeared since the walk: the next run checks it
        self._problem(
            "error", "missing", path, f"linked by {linked.version} but not on disk ({_PRIVATE})"
        )

    # -- pages ---------------------------------------------------------------

    def _check_pages(self) -> None:
        for parts, path in self._regular_files(self._store.pages_root):
            if parts[-1].endswith(PARTIAL_SUFFIX):
                self._check_page_partial(path)
            elif len(parts) == 3 and parts[2].endswith(".json"):
                self._check_page(path, f"{parts[0]}/{parts[1]}", parts[2][: -len(".json")])
            else:
                self._problem("warning", "unexpected", path, "not part of devpid's layout")

    def _check_page_partial(self, path: Path) -> None:
        """A page's temporary file: written in one go, by a live process, a moment ago."""
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            return
        if page_partial_in_use(path, status.st_mtime):
            self.report.counts.in_progress += 1
            return
        problem = self._problem(
            "error", "leftover", path, "a page's temporary file its process left behind"
        )
        checked = identity(status)
        self._repaired(problem, lambda: remove_if_unchanged(path, checked))

    def _check_page(self, path: Path, index: str, project: str) -> None:
        if self._pages.page_path(index, project) is None:
            self._problem("warning", "unexpected", path, "not a page name devpid would write")
            return
        loaded = self._pages.current(path, index, project)
        if loaded is None:  # removed meanwhile
            return
        if project != PROJECT_LIST:
            self.report.counts.pages += 1
        if loaded.problem is None:
            return
        if loaded.unreadable:
            self._problem("error", "unreadable", path, loaded.problem)
            return
        problem = self._problem(
            "error", "bad-page", path, f"devpid cannot use it: {loaded.problem}"
        )
        checked = loaded.identity
        self._repaired(problem, lambda: remove_if_unchanged(path, checked))
