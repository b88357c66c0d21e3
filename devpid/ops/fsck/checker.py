"""One fsck run over a serverdir: every file against its page, every page, and repair.

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

from devpid.files.store import (
    PARTIAL_SUFFIX,
    PROJECT_LIST,
    FileStore,
    UnsafePath,
    page_partial_in_use,
    probe_partial,
)
from devpid.ops.fsck.disk import OPEN_FLAGS, identity, remove_if_unchanged, walk
from devpid.ops.fsck.pages import Expectation, PageCache
from devpid.ops.fsck.private import check_private
from devpid.ops.fsck.report import Problem, Report, Severity
from devpid.simple.model import METADATA, PROVENANCE, project_of_filename


@attrs.define
class Checker:
    """One run over a serverdir: ``check()`` the files and pages, then read ``report``."""

    serverdir: Path
    repair: bool = False
    report: Report = attrs.field(init=False)
    _store: FileStore = attrs.field(init=False)
    _pages: PageCache = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.serverdir = self.serverdir.resolve()
        self._store = FileStore(self.serverdir)
        self._pages = PageCache(self._store)
        self.report = Report(self.serverdir, self.repair)

    def check(self) -> Report:
        self._check_files()
        self._check_pages()
        check_private(self.serverdir, self.report)
        return self.report

    # -- reporting -----------------------------------------------------------

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.serverdir).as_posix()

    def _problem(self, severity: Severity, kind: str, path: Path, detail: str) -> Problem:
        problem = Problem(severity, kind, self._rel(path), detail)
        self.report.problems.append(problem)
        return problem

    def _repaired(self, problem: Problem, remove: Callable[[], bool]) -> None:
        """Run ``remove()`` under --repair; it says whether the bad file is gone."""
        if not self.repair:
            return
        try:
            problem.repaired = remove()
        except OSError as e:
            problem.detail += f"; cannot remove it: {e.strerror}"
            return
        if not problem.repaired:
            problem.detail += "; not removed: it changed while being checked (run fsck again)"

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
        try:
            fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
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
            project = project_of_filename(filename)
            expected = self._expected(index, project, f"{h3}/{h13}/{filename}")
            try:
                wrong = self._verify(f, status, expected, h3 + h13, filename)
            except OSError as e:
                self._problem("error", "unreadable", path, f"cannot read it: {e.strerror}")
                return
        if wrong is None:
            return
        severity, kind, detail = wrong
        problem = self._problem(severity, kind, path, detail)
        if severity == "error":
            checked = identity(status)
            self._repaired(problem, lambda: remove_if_unchanged(path, checked))

    def _verify(
        self,
        f: io.FileIO,
        status: os.stat_result,
        expected: Expectation | None,
        path_hash: str,
        filename: str,
    ) -> tuple[Severity, str, str] | None:
        """What is wrong with one committed file, if anything; counts how it was checked."""
        counts = self.report.counts
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
            return "error", "corrupt", f"{status.st_size} bytes, its page says {expected.size}"
        if expected.algorithm is not None and expected.digest is not None:
            digest = hashlib.file_digest(f, expected.algorithm).hexdigest()
            if digest != expected.digest:
                return (
                    "error",
                    "corrupt",
                    f"{expected.algorithm} {digest}, its page says {expected.digest}",
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
