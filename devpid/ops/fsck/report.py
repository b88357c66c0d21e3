"""What ``devpid fsck`` found: each problem, the counts, and the report as lines or JSON."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs

PROGRAM = "devpid fsck"
#: Exit statuses: nothing wrong is left; errors remain; bad usage or no serverdir.
EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

Severity = Literal["error", "warning"]

#: Why a stage's missing or damaged file (a release, a doc zip) is only reported.
NOT_REPAIRED_PRIVATE = "not repaired: private data has no other copy; restore it from a backup"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@attrs.define
class Problem:
    """One thing fsck found; an ``error`` makes the exit status 1 unless it was repaired.

    A ``warning`` may be repaired too (a stale docs directory, a tool's leftover
    staging directory): it never counts for the exit status either way.
    """

    severity: Severity
    #: corrupt, unreadable, leftover, missing, bad-page, bad-doczip, stale, orphan,
    #: unexpected, unchecked or private.
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
    #: Unpacked documentation directories checked against their doc zips.
    docs: int = 0
    #: Temporary files (and tools' staging directories, docs being unpacked) some live
    #: process is writing right now.
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

    def add(self, severity: Severity, kind: str, path: str, detail: str) -> Problem:
        """Record one problem (``path`` relative to the serverdir) and return it."""
        problem = Problem(severity, kind, path, detail)
        self.problems.append(problem)
        return problem

    def attempt_repair(self, problem: Problem, remove: Callable[[], bool]) -> None:
        """Under --repair, run ``remove()``; it says whether the bad thing is gone."""
        if not self.repair:
            return
        try:
            problem.repaired = remove()
        except OSError as e:
            problem.detail += f"; cannot remove it: {e.strerror or e}"
            return
        if not problem.repaired:
            problem.detail += "; not removed: it changed while being checked (run fsck again)"

    def summary(self) -> str:
        c = self.counts
        checked = (
            f"{_n(c.files, 'file')} ({c.by_hash} verified by hash, {c.by_length} by length "
            f"only, {c.not_verifiable} not verifiable, {_n(c.orphans, 'orphan')}), "
            f"{_n(c.pages, 'page')}, {c.docs} unpacked docs, "
            f"{_n(c.in_progress, 'temporary file')} being written"
        )
        errors = len(self.errors)
        found = _n(errors, "error") if errors else "clean"
        if errors and self.repair:
            found += f" ({errors - len(self.unrepaired)} repaired)"
        warned = _n(len(self.warnings), "warning")
        removed = sum(p.repaired for p in self.warnings)
        if removed:
            warned += f" ({removed} repaired)"
        return f"{PROGRAM}: {self.serverdir}: {checked}: {found}, {warned}"

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
