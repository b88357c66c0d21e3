"""``devpid export``: a serverdir, running or not, written as a bundle (docs/backup.md).

The steps, each in its own module:

1. ``snapshot``: every private record read in one SQLite read transaction (one serial),
   written to ``records.jsonl`` in a staging directory inside the serverdir; every stage
   file the records link pinned there by a hard link. A linked file already gone means a
   later change removed it: the snapshot is taken again (at most ``MAX_SNAPSHOTS`` times).
2. ``selection``: the mirror pages and files ``--mirror`` asks for, pinned the same way;
   those evicted or replaced meanwhile are skipped and counted.
3. ``writer``: a directory or a tar. What an interrupted export left is kept when it is
   still what this snapshot expects (same path, size and sha256), the rest is written from
   the pins, hashing as it goes, and the manifest and header come last.

The stage files are checked against their links while copied: a file whose sha256 or size
differs from its link is damage in the serverdir (``devpid fsck`` reports it), and the
export stops rather than write a bundle no import would accept.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs

from devpid import __version__
from devpid.tools.bundle.format import (
    RECORDS,
    Header,
    ManifestEntry,
    hash_file,
    manifest_bytes,
    path_problem,
)
from devpid.tools.bundle.selection import Selection, select
from devpid.tools.bundle.snapshot import (
    LinkedFile,
    Outdated,
    Snapshot,
    SnapshotError,
    Staging,
    read_snapshot,
)
from devpid.tools.bundle.writer import BundleWriter, WriteError, writer_for

#: How many snapshots an export takes before giving up on a serverdir that keeps changing.
MAX_SNAPSHOTS = 5


class ExportError(Exception):
    """The export cannot go on; the message is one line."""


class Progress:
    """What the export says while it runs (the CLI's progress bar; silent by default)."""

    def start(self, files: int, size: int) -> None:
        """The bundle will have ``files`` files of ``size`` bytes."""

    def advance(self, size: int) -> None:
        """``size`` more bytes copied."""

    def file_done(self, reused: bool, size: int) -> None:
        """One more file in the bundle (``reused``: left by an interrupted export)."""

    def note(self, message: str) -> None:
        """A line worth saying (a snapshot taken again, say)."""

    def close(self) -> None:
        pass


@attrs.frozen
class Planned:
    """A file of the bundle: where it comes from (a pin) and what it must be."""

    path: str
    pin: Path
    size: int
    #: Known when a link (or the snapshot itself) says it.
    sha256: str | None
    #: The first 16 hex digits of its sha256 when its path says them.
    sha256_prefix: str | None = None


@attrs.define
class Summary:
    out: Path
    kind: str
    mirror: str
    serial: int = -1
    records: int = 0
    files: int = 0
    bytes: int = 0
    written: int = 0
    reused: int = 0
    stage_files: int = 0
    mirror_files: int = 0
    mirror_pages: int = 0
    #: Mirror files or pages evicted or replaced before they could be pinned.
    mirror_skipped: int = 0
    snapshots: int = 0
    unmatched: list[str] = attrs.field(factory=list)
    unreadable: list[str] = attrs.field(factory=list)
    seconds: float = 0.0
    already_complete: bool = False

    def to_json(self) -> dict[str, object]:
        data = attrs.asdict(self)
        data["out"] = str(self.out)
        data["seconds"] = round(self.seconds, 3)
        return data

    def lines(self) -> list[str]:
        if self.already_complete:
            return [
                f"{self.out} is a complete bundle already (serial {self.serial}, "
                f"{self.files} files): nothing to do (--force writes it again)"
            ]
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines = [
            f"exported {self.records} records (serial {self.serial}) and {self.files} files, "
            f"{_size(self.bytes)}, to {self.out} in {self.seconds:.1f}s ({rate:.0f} MB/s)",
            f"  stage files {self.stage_files}, mirror pages {self.mirror_pages}, "
            f"mirror files {self.mirror_files} (--mirror {self.mirror})",
        ]
        if self.reused:
            lines.append(f"  resumed: {self.reused} files kept from the interrupted export")
        if self.mirror_skipped:
            lines.append(
                f"  {self.mirror_skipped} mirror files or pages skipped: evicted or replaced "
                "while exporting"
            )
        if self.snapshots > 1:
            lines.append(f"  the private data changed while pinning: {self.snapshots} snapshots")
        if self.unmatched:
            lines.append(
                f"  {len(self.unmatched)} requirements matched nothing cached: "
                + ", ".join(self.unmatched)
            )
        if self.unreadable:
            lines.append(
                f"  {len(self.unreadable)} lines of the requirements file ignored: "
                + ", ".join(self.unreadable)
            )
        return lines


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


def _mirror_kind(mode: str) -> str:
    return mode if mode in ("all", "none") else "requirements"


@attrs.define
class Exporter:
    serverdir: Path
    out: Path
    #: ``none``, ``all``, or the path of a requirements file.
    mirror: str = "none"
    force: bool = False
    progress: Progress = attrs.field(factory=Progress)
    clock: Callable[[], float] = time.monotonic

    def run(self) -> Summary:
        started = self.clock()
        writer = writer_for(self.out)
        summary = Summary(
            self.out, "tar" if self.out.name.endswith(".tar") else "directory", self.mirror
        )
        try:
            complete = writer.complete()
        except WriteError as e:
            raise ExportError(str(e)) from None
        if complete is not None and not self.force:
            summary.already_complete = True
            summary.serial = int(complete.source.get("serial", -1))
            summary.files = int(complete.counts.get("files", 0))
            summary.bytes = int(complete.counts.get("bytes", 0))
            summary.records = int(complete.counts.get("records", 0))
            return summary
        try:
            staging = Staging.create(self.serverdir)
        except OSError as e:
            raise ExportError(f"cannot create a staging directory in {self.serverdir}: {e}") from e
        try:
            self._export(staging, writer, summary)
        finally:
            writer.close()
            staging.remove()
            self.progress.close()
        summary.seconds = self.clock() - started
        return summary

    def _export(self, staging: Staging, writer: BundleWriter, summary: Summary) -> None:
        snapshot, pins = self._snapshot(staging, summary)
        selection = select(self.serverdir, snapshot.mirrors, self.mirror)
        summary.unmatched, summary.unreadable = selection.unmatched, selection.unreadable
        plan = self._plan(snapshot, pins, selection, staging, summary)
        by_path = {planned.path: planned for planned in plan}
        try:
            writer.start(self.force)
            kept = writer.resume(
                lambda path, size, sha256: _wanted(by_path.get(path), size, sha256)
            )
        except WriteError as e:
            raise ExportError(str(e)) from None
        except OSError as e:
            raise ExportError(_os_error(e, self.out)) from None
        done = {entry.path: entry for entry in kept}
        self.progress.start(len(plan), sum(p.size for p in plan))
        for entry in kept:
            self.progress.file_done(True, entry.size)
        entries = list(kept)
        for planned in plan:
            if planned.path in done:
                continue
            try:
                entry = writer.write(planned.path, planned.pin, self.progress.advance)
            except WriteError as e:
                raise ExportError(str(e)) from None
            except OSError as e:
                raise ExportError(_os_error(e, self.out)) from None
            _check(planned, entry, self.serverdir)
            staging.unpin(planned.pin)
            entries.append(entry)
            self.progress.file_done(False, 0)
        summary.reused = len(kept)
        summary.written = len(entries) - len(kept)
        summary.files = len(entries)
        summary.bytes = sum(e.size for e in entries)
        manifest = manifest_bytes(entries)
        header = Header(
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            devpid=__version__,
            source={
                "kind": "devpid",
                "version": __version__,
                "uuid": snapshot.uuid,
                "serial": snapshot.serial,
            },
            mirror=_mirror_kind(self.mirror),
            counts={
                "records": snapshot.records_count,
                "files": summary.files,
                "bytes": summary.bytes,
            },
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        )
        try:
            writer.finish(manifest, header.encoded())
        except OSError as e:
            raise ExportError(_os_error(e, self.out)) from None

    def _snapshot(self, staging: Staging, summary: Summary) -> tuple[Snapshot, dict[str, Path]]:
        """The records of one serial, and a pin of every file they link."""
        pins: dict[str, Path] = {}
        for attempt in range(1, MAX_SNAPSHOTS + 1):
            summary.snapshots = attempt
            records = staging.directory / f"records-{attempt}.jsonl"
            try:
                snapshot = read_snapshot(self.serverdir, records)
            except SnapshotError as e:
                raise ExportError(str(e)) from None
            summary.serial, summary.records = snapshot.serial, snapshot.records_count
            try:
                pins = self._pin_stage_files(staging, snapshot.stage_files, pins)
            except Outdated as e:
                self.progress.note(f"snapshot {snapshot.serial} outdated ({e}): taking another")
                continue
            return snapshot, pins
        raise ExportError(
            f"the private data changed under {MAX_SNAPSHOTS} snapshots in a row "
            "(files deleted while pinning): run the export again"
        )

    def _pin_stage_files(
        self, staging: Staging, files: list[LinkedFile], previous: dict[str, Path]
    ) -> dict[str, Path]:
        pins: dict[str, Path] = {}
        wanted = {f.path for f in files}
        for path, pin in previous.items():
            if path in wanted:
                pins[path] = pin  # the same path: the same bytes (the path has the hash)
            else:
                staging.unpin(pin)
        for linked in files:
            if linked.path in pins:
                continue
            try:
                pinned = staging.pin(self.serverdir / "+files" / linked.relative)
            except OSError as e:
                raise ExportError(f"cannot pin {linked.relative}: {e.strerror or e}") from None
            if pinned is None:
                if linked.required:
                    raise Outdated(linked.relative)
                continue
            pins[linked.path] = pinned
        return pins

    def _plan(
        self,
        snapshot: Snapshot,
        pins: dict[str, Path],
        selection: Selection,
        staging: Staging,
        summary: Summary,
    ) -> list[Planned]:
        plan = [
            Planned(RECORDS, snapshot.records_file, snapshot.records_size, snapshot.records_sha256)
        ]
        for linked in snapshot.stage_files:
            pin = pins.get(linked.path)
            if pin is None:
                continue
            problem = path_problem(linked.path)
            if problem is not None:
                raise ExportError(f"{linked.relative} cannot be in a bundle: {problem}")
            size = linked.size if linked.size is not None else pin.stat().st_size
            plan.append(Planned(linked.path, pin, size, linked.sha256))
        summary.stage_files = len(plan) - 1
        for item in selection.items:
            if path_problem(item.path) is not None:
                summary.mirror_skipped += 1  # a name no bundle may hold (fsck reports it)
                continue
            try:
                pin = staging.pin(item.source)
            except OSError as e:
                raise ExportError(f"cannot pin {item.source}: {e.strerror or e}") from None
            if pin is None:
                summary.mirror_skipped += 1
                continue
            plan.append(Planned(item.path, pin, pin.stat().st_size, None, item.sha256_prefix))
            if item.path.startswith("mirror/pages/"):
                summary.mirror_pages += 1
            else:
                summary.mirror_files += 1
        return plan


def _wanted(planned: Planned | None, size: int, sha256: str) -> bool:
    """Whether a file an interrupted export left is what ``planned`` would write."""
    if planned is None or planned.size != size:
        return False
    if planned.sha256 is not None:
        return planned.sha256 == sha256
    if planned.sha256_prefix is not None and sha256.startswith(planned.sha256_prefix):
        return True
    return hash_file(planned.pin) == (size, sha256)


def _check(planned: Planned, entry: ManifestEntry, serverdir: Path) -> None:
    if planned.sha256 is not None and entry.sha256 != planned.sha256:
        raise ExportError(
            f"{planned.path} in {serverdir} has sha256 {entry.sha256}, its link says "
            f"{planned.sha256}: the serverdir is damaged (see devpid fsck)"
        )
    if entry.size != planned.size:
        raise ExportError(
            f"{planned.path} in {serverdir} has {entry.size} bytes, its link says "
            f"{planned.size}: the serverdir is damaged (see devpid fsck)"
        )


def _os_error(error: OSError, out: Path) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"disk full while writing {out}: what was written is kept; free some space and "
            "run the same command again to resume"
        )
    where = f" {error.filename}" if error.filename else ""
    return f"cannot write {out}:{where} {error.strerror or error}"
