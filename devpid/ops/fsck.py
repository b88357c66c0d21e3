"""``devpid fsck``: verify every cached file against what its page recorded.

What is checked (see docs/operations.md#checking-the-cache-devpid-fsck):

- a committed file listed by its project's cached page: its length against
  the page's size, and its content against the page's sha256 (when the page
  has none, against another hash the page gives; else by length only, else
  not at all);
- a ``.metadata`` file: its content against the link's core-metadata sha256;
- a file no cached page lists (an orphan, a warning): whether its sha256
  starts with the ``<h3><h13>`` of its path, which holds for every file the
  upstream gave a sha256 for;
- temporary files nobody writes any more, unexpected files, unreadable pages.

It reads the serverdir only, never the state store, so it runs beside live
devpid processes. ``--repair`` removes what it found bad, by the same rules
as devpid's own clean-up: a download's temporary file only while holding its
``flock``, any file only if it is still the one that was checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from twisted.python import usage

from devpid.config import DEFAULTS, ConfigError, read_ini
from devpid.files.store import (
    PARTIAL_SUFFIX,
    PROJECT_LIST,
    FileStore,
    UnsafePath,
    page_partial_in_use,
    probe_partial,
)
from devpid.simple.model import HEX, ProjectPage, project_of_filename

PROGRAM = "devpid fsck"
#: Exit statuses: nothing wrong is left; errors remain; bad usage or no serverdir.
EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
#: The hash checked when a link records several: devpid's own first, then the strongest.
HASH_PREFERENCE = (
    "sha256",
    "sha512",
    "sha384",
    "sha3_512",
    "sha3_384",
    "sha3_256",
    "blake2b",
    "blake2s",
    "sha3_224",
    "sha224",
    "sha1",
    "md5",
)
#: Never follow a symbolic link, never block on a FIFO put where a file should be.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK

Severity = Literal["error", "warning"]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@attrs.define
class Problem:
    """One thing fsck found; an ``error`` makes the exit status 1 unless it was repaired."""

    severity: Severity
    #: corrupt, unreadable, leftover, bad-page, orphan, unexpected or unchecked.
    kind: str
    #: Relative to the serverdir.
    path: str
    detail: str
    repaired: bool = False

    def line(self) -> str:
        done = " [removed]" if self.repaired else ""
        return f"{self.severity} {self.kind} {self.path}: {self.detail}{done}"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Counts:
    files: int = 0
    bytes: int = 0
    #: Files whose content matched a hash their page recorded.
    by_hash: int = 0
    #: Files checked by length only (their page gives a size and no hash).
    by_length: int = 0
    #: Listed files whose page gives neither hash nor size.
    not_verifiable: int = 0
    orphans: int = 0
    pages: int = 0
    #: Temporary files some live process is writing right now.
    in_progress: int = 0


@attrs.define
class Report:
    serverdir: Path
    repair: bool
    problems: list[Problem] = attrs.field(factory=list)
    counts: Counts = attrs.field(factory=Counts)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.errors if not p.repaired]

    @property
    def exit_status(self) -> int:
        return EXIT_PROBLEMS if self.unrepaired else EXIT_CLEAN

    def summary(self) -> str:
        c = self.counts
        checked = (
            f"{_n(c.files, 'file')} ({c.by_hash} verified by hash, {c.by_length} by length "
            f"only, {c.not_verifiable} not verifiable, {_n(c.orphans, 'orphan')}), "
            f"{_n(c.pages, 'page')}, {_n(c.in_progress, 'temporary file')} being written"
        )
        errors = len(self.errors)
        found = _n(errors, "error") if errors else "clean"
        if errors and self.repair:
            found += f" ({errors - len(self.unrepaired)} repaired)"
        return (
            f"{PROGRAM}: {self.serverdir}: {checked}: {found}, {_n(len(self.warnings), 'warning')}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "serverdir": str(self.serverdir),
            "repair": self.repair,
            "problems": [p.to_json() for p in self.problems],
            "counts": attrs.asdict(self.counts),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "unrepaired": len(self.unrepaired),
            "exit_status": self.exit_status,
        }


@attrs.frozen
class Expectation:
    """What a cached page records about one file: a hash (if any) and its length (if known)."""

    algorithm: str | None
    digest: str | None
    size: int | None


def _strongest(hashes: object) -> tuple[str | None, str | None]:
    if not isinstance(hashes, dict):
        return None, None
    for algorithm in HASH_PREFERENCE:
        digest = hashes.get(algorithm)
        if isinstance(digest, str) and HEX.match(digest):
            return algorithm, digest
    return None, None


def expectations(page: ProjectPage) -> dict[str, Expectation]:
    """``<h3>/<h13>/<filename>`` -> what the page says of it, for each file and its metadata."""
    found: dict[str, Expectation] = {}
    for link in page.links:
        size = link.size if type(link.size) is int and link.size >= 0 else None
        found.setdefault(link.relpath, Expectation(*_strongest(link.hashes), size))
        if link.core_metadata is not False:
            found.setdefault(
                link.relpath + ".metadata", Expectation(*_strongest(link.core_metadata), None)
            )
    return found


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


@attrs.define
class _LoadedPage:
    identity: tuple[int, int, int, int]
    #: None when the page cannot be used; ``problem`` says why.
    files: dict[str, Expectation] | None
    problem: str | None = None
    #: The problem is fsck's, not the page's (permissions, an I/O error).
    unreadable: bool = False


def load_page(path: Path, project: str) -> _LoadedPage | None:
    """A page file parsed as devpid would, or None if there is none (any more)."""
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | _OPEN_FLAGS)) as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                return _LoadedPage(_identity(status), None, "not a regular file")
            data = json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        try:
            identity = _identity(os.lstat(path))
        except OSError:
            identity = (0, 0, 0, 0)
        return _LoadedPage(identity, None, f"cannot read it: {e.strerror}", unreadable=True)
    except (ValueError, RecursionError) as e:
        return _LoadedPage(_identity(status), None, f"not JSON: {str(e)[:200]}")
    identity = _identity(status)
    if not isinstance(data, dict):
        return _LoadedPage(identity, None, "not a JSON object")
    if project == PROJECT_LIST:
        names = data.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return _LoadedPage(identity, None, "not a project list (no 'names' list)")
        return _LoadedPage(identity, {})
    try:
        return _LoadedPage(identity, expectations(ProjectPage.from_json(data)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return _LoadedPage(identity, None, f"not a project page ({type(e).__name__}: {e})"[:300])


def _walk(root: Path, parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every entry under ``root`` that is not a directory, in name order, never through links.

    Yields ``(parts, entry)``, or ``(parts, OSError)`` for a directory that cannot be listed.
    """
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as e:
        yield parts, e
        return
    for entry in entries:
        try:
            is_directory = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_directory = False
        if is_directory:
            yield from _walk(Path(entry.path), (*parts, entry.name))
        else:
            yield (*parts, entry.name), entry


def _remove_if_unchanged(path: Path, checked: tuple[int, int, int, int]) -> bool:
    """Unlink ``path`` if it is still the very file that was checked (gone counts as done)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return True
    if _identity(now) != checked:
        return False
    os.unlink(path)
    return True


@attrs.define
class Checker:
    """One run over a serverdir: ``check()`` the files and pages, then read ``report``."""

    serverdir: Path
    repair: bool = False
    report: Report = attrs.field(init=False)
    _store: FileStore = attrs.field(init=False)
    #: Pages read so far, by (index, project).
    _pages: dict[tuple[str, str], _LoadedPage | None] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.serverdir = self.serverdir.resolve()
        self._store = FileStore(self.serverdir)
        self.report = Report(self.serverdir, self.repair)

    def check(self) -> Report:
        self._check_files()
        self._check_pages()
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
        for parts, entry in _walk(root):
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
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
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
            checked = _identity(status)
            self._repaired(problem, lambda: _remove_if_unchanged(path, checked))

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
            if filename.endswith(".metadata"):
                how = "its content cannot be verified (the hash in its path is its wheel's)"
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
        if project is None:
            return None
        key = (index, project)
        path = self._page_path(index, project)
        if path is None:
            return None
        if key in self._pages:
            loaded = self._pages[key]
            if loaded is not None and loaded.files is not None and relpath in loaded.files:
                return loaded.files[relpath]
            # Not there: read it again if it changed (a running devpid fetched a newer one).
            if self._stat(path) == (loaded.identity if loaded else None):
                return None
        loaded = self._pages[key] = load_page(path, project)
        if loaded is None or loaded.files is None:
            return None
        return loaded.files.get(relpath)

    def _page_path(self, index: str, project: str) -> Path | None:
        try:
            return self._store.page_path(index, project)
        except UnsafePath:
            return None

    @staticmethod
    def _stat(path: Path) -> tuple[int, int, int, int] | None:
        try:
            return _identity(os.lstat(path))
        except OSError:
            return None

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
        checked = _identity(status)
        self._repaired(problem, lambda: _remove_if_unchanged(path, checked))

    def _check_page(self, path: Path, index: str, project: str) -> None:
        if self._page_path(index, project) is None:
            self._problem("warning", "unexpected", path, "not a page name devpid would write")
            return
        key = (index, project)
        loaded = self._pages.get(key)
        if loaded is None or self._stat(path) != loaded.identity:
            loaded = load_page(path, project)
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
        self._repaired(problem, lambda: _remove_if_unchanged(path, checked))


def check(serverdir: Path, repair: bool = False) -> Report:
    """Check (and with ``repair``, repair) one serverdir."""
    return Checker(serverdir, repair).check()


# -- the command -----------------------------------------------------------------------


class Options(usage.Options):
    synopsis = "Usage: devpid fsck [--serverdir DIR | --config FILE] [--repair] [--json]"
    longdesc = (
        "Verify every cached file against the sha256 and length its cached page "
        "recorded; report leftover temporary files, unreadable pages, orphans and "
        "unexpected files. Safe while devpid runs. Exit status: 0 when nothing is wrong "
        "(or everything wrong was repaired), 1 when errors remain, 2 for bad usage."
    )
    optParameters = [
        ["serverdir", None, None, "the serverdir to check [default: the config's, or ~/.devpid]"],
        ["config", "c", None, "read the serverdir from this INI file, as devpid does"],
    ]
    optFlags = [
        ["repair", None, "remove bad files and leftovers, so that they are fetched again"],
        ["json", None, "print one JSON document instead of lines"],
    ]

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")


def serverdir_from(options: usage.Options) -> Path:
    raw = options["serverdir"]
    if raw is None and options["config"] is not None:
        raw = read_ini(options["config"]).get("serverdir")
    if raw is None:
        raw = DEFAULTS["serverdir"][0]
    serverdir = Path(os.path.expanduser(str(raw))).absolute()
    if not serverdir.is_dir():
        raise ConfigError(f"no serverdir at {serverdir}")
    return serverdir


def main(argv: Sequence[str]) -> int:
    """Run ``devpid fsck``; the exit status."""
    options = Options()
    try:
        options.parseOptions(list(argv))
        serverdir = serverdir_from(options)
    except usage.UsageError as e:
        print(f"{PROGRAM}: error: {e} (see: {PROGRAM} --help)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"{PROGRAM}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    report = check(serverdir, repair=bool(options["repair"]))
    if options["json"]:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for problem in report.problems:
            print(problem.line())
        print(report.summary())
    return report.exit_status
