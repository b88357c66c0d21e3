"""What a warm did, as lines for a person or one JSON document for a program.

Every distribution file counts once, in one of three groups: **fetched** (devpid
answered ``X-Devpid-Cache: miss``: it came from the upstream now), **already there**
(``hit``, or no header at all: nginx or a private file served it from disk), and
**failed** (with the reason). A requirement that did not resolve for a target is a
failure too. Any failure makes the exit status 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2


@attrs.frozen
class FileResult:
    """One file's fate: ``via`` is ``pip`` (downloaded during resolution) or ``warm``."""

    filename: str
    url: str
    size: int
    cache: str | None
    error: str | None
    via: str

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return "failed"
        return "fetched" if self.cache == "miss" else "already"

    def to_json(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "url": self.url,
            "outcome": self.outcome,
            "cache": self.cache,
            "bytes": self.size,
            "via": self.via,
            "error": self.error,
        }


@attrs.frozen
class ResolutionFailure:
    """A requirement (None: the set as a whole) that pip could not resolve for a target."""

    target: str
    requirement: str | None
    origin: str | None
    reason: str

    def line(self) -> str:
        what = "the requirements together"
        if self.requirement is not None:
            what = f"{self.requirement} ({self.origin})" if self.origin else self.requirement
        return f"failed: {what} for {self.target}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "requirement": self.requirement,
            "origin": self.origin,
            "reason": self.reason,
        }


def human_bytes(count: int) -> str:
    """``12.3 MB``: decimal units, one decimal."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@attrs.frozen
class Summary:
    """The outcome of one ``devpid warm``."""

    index_url: str
    targets: tuple[str, ...]
    files: tuple[FileResult, ...]
    resolution_failures: tuple[ResolutionFailure, ...] = ()
    missing_sdists: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def _group(self, outcome: str) -> list[FileResult]:
        return [f for f in self.files if f.outcome == outcome]

    @property
    def fetched(self) -> list[FileResult]:
        return self._group("fetched")

    @property
    def already(self) -> list[FileResult]:
        return self._group("already")

    @property
    def failed(self) -> list[FileResult]:
        return self._group("failed")

    @property
    def exit_status(self) -> int:
        return EXIT_FAILURES if self.failed or self.resolution_failures else EXIT_OK

    def lines(self) -> list[str]:
        fetched, already = self.fetched, self.already
        failures = len(self.failed) + len(self.resolution_failures)
        out = [
            f"warmed {self.index_url} for {len(self.targets)} "
            f"target{'s' if len(self.targets) != 1 else ''}: {'; '.join(self.targets)}",
            f"fetched {len(fetched)} file{'s' if len(fetched) != 1 else ''} "
            f"({human_bytes(sum(f.size for f in fetched))}), "
            f"already there {len(already)} ({human_bytes(sum(f.size for f in already))}), "
            f"failed {failures}" + (f" in {self.seconds:.1f}s" if self.seconds else ""),
        ]
        out += [failure.line() for failure in self.resolution_failures]
        out += [f"failed: {f.filename}: {f.error}" for f in self.failed]
        out += [f"no sdist: {release}" for release in self.missing_sdists]
        out += [f"note: {note}" for note in self.notes]
        return out

    def to_json(self) -> dict[str, Any]:
        def group(files: Sequence[FileResult]) -> dict[str, int]:
            return {"files": len(files), "bytes": sum(f.size for f in files)}

        return {
            "index_url": self.index_url,
            "targets": list(self.targets),
            "fetched": group(self.fetched),
            "already": group(self.already),
            "failed": {"files": len(self.failed), "resolutions": len(self.resolution_failures)},
            "files": [f.to_json() for f in self.files],
            "resolution_failures": [f.to_json() for f in self.resolution_failures],
            "missing_sdists": list(self.missing_sdists),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
            "exit_status": self.exit_status,
        }
