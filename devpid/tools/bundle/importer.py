"""``devpid import``: a bundle verified, staged, put in place and committed, or refused.

The steps, each finished before the next starts:

1. **Stage.** ``<serverdir>/+tmp/import-<pid>-<nonce>/`` is made and ``flock``-ed (stale
   ones whose lock is free are removed first, ``staging.sweep``). The bundle is read once
   (``reader``): every file hashed; the files the target lacks copied into staging and
   fsynced. A full disk fails here, with nothing in the serverdir changed.
2. **Verify.** What was read against the manifest and header (``verify``), then the
   records (``verify_records``) against the bundle and the target, then the plan
   (``merge``): without ``--merge`` the target must be new, with it conflicts refuse the
   import unless ``--keep-existing``. Any problem: refused, the staging directory removed,
   the serverdir as it was (``ImportRefused``).
3. **Place.** Mirror files are hard-linked from staging into ``+files/`` (``link`` never
   replaces: a file already there is the same content, its size is checked), mirror pages
   into ``+pages/`` where the target has none; then each stage file the records link is
   linked into place *holding its ``flock``* (devpid.files.releases' protocol: whoever is
   about to link a file holds its flock from placing it until the transaction linking it
   committed), and every directory touched is fsynced.
4. **Commit.** The records are written through ``PrivateDatabase.write`` as one
   transaction (one event, ``import <n> records from <bundle>``), whose change function
   plans again against the newest records, so a devpid serving the target meanwhile is
   never overwritten; its workers see the import at their next request. Then the flocks
   are released and the staging directory removed.

Holding a flock costs a file descriptor: the soft limit is raised to the hard one when
there are many stage files; if still too few, the versions are committed in batches (one
transaction each, users, indexes and tokens in the first), so a crash between batches
leaves a part that a rerun completes.

``kill -9`` at any point leaves the target as it was or with the import committed, plus at
worst the staging directory (removed by the next import), mirror files and pages (a
cache), and placed stage files no version links (removed by devpid's start-up sweep and
``devpid fsck --repair``, which take their flock first).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import resource
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from tqdm import tqdm

from devpid.files.releases import FileBusy
from devpid.files.store import lock_for_writing
from devpid.private.database import PrivateDatabase, Transaction, file_paths
from devpid.private.indexconfig import MIRROR
from devpid.simple.model import METADATA
from devpid.tools.bundle import staging as staging_dirs
from devpid.tools.bundle.format import (
    MIRROR_FILES,
    MIRROR_PAGES,
    RECORD_KINDS,
    RECORDS,
    STAGE_FILES,
    stage_path,
)
from devpid.tools.bundle.merge import (
    Conflict,
    Plan,
    Record,
    TargetSnapshot,
    canonical,
    plan_import,
    read_target,
)
from devpid.tools.bundle.reader import (
    BundleReader,
    DirectoryReader,
    Received,
    open_bundle,
    sync_file_system,
)
from devpid.tools.bundle.verify import check_integrity
from devpid.tools.bundle.verify_records import check_records, read_records

WHO = "devpid import"
#: File descriptors kept free for everything but the held stage files.
FD_RESERVE = 64
#: Refusals list this many problems, then a count.
MAX_SHOWN = 200


class ImportRefused(Exception):
    """Nothing was imported: ``headline`` and the problems, one line each."""

    def __init__(self, headline: str, problems: list[str]) -> None:
        super().__init__(headline)
        self.headline = headline
        self.problems = problems


class ImportFailed(Exception):
    """The import stopped (a full disk, a busy file); nothing was committed. One line."""


class _Changed(Exception):
    """The target changed between the plan and the transaction into a refusal."""

    def __init__(self, refusal: ImportRefused) -> None:
        self.refusal = refusal


@attrs.define
class Summary:
    bundle: str
    serverdir: str
    records_added: int = 0
    records_same: int = 0
    conflicts: list[str] = attrs.field(factory=list)
    files_placed: int = 0
    files_present: int = 0
    pages_written: int = 0
    pages_kept: int = 0
    bytes_read: int = 0
    bytes_copied: int = 0
    transactions: int = 0
    warnings: list[str] = attrs.field(factory=list)

    @property
    def already_present(self) -> bool:
        return not (self.records_added or self.files_placed or self.pages_written)

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "serverdir": self.serverdir,
            "already_present": self.already_present,
            "records": {
                "added": self.records_added,
                "same": self.records_same,
                "conflicting": len(self.conflicts),
            },
            "conflicts": self.conflicts,
            "files": {"placed": self.files_placed, "present": self.files_present},
            "pages": {"written": self.pages_written, "kept": self.pages_kept},
            "bytes": {"read": self.bytes_read, "copied": self.bytes_copied},
            "transactions": self.transactions,
            "warnings": self.warnings,
        }


@attrs.frozen
class ImportOptions:
    source: Path
    serverdir: Path
    merge: bool = False
    keep_existing: bool = False
    from_devpi: bool = False
    progress: bool = False


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _hold_existing(path: Path) -> int | None:
    """The file at ``path`` open and ``flock``-ed (never waiting); None when there is none;
    ``FileBusy`` when another process holds it (about to link it)."""
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        if not lock_for_writing(fd):
            os.close(fd)
            raise FileBusy(f"{path.name} is being stored by another process")
        if _same_file(fd, path):
            return fd
        os.close(fd)
    raise FileBusy(f"{path.name} keeps changing")


@attrs.define
class _Placement:
    """The files put in place so far, the directories to fsync, the flocks held."""

    summary: Summary
    directories: set[Path] = attrs.field(factory=set)
    held: list[tuple[Path, int, bool]] = attrs.field(factory=list)

    def makedirs(self, directory: Path) -> None:
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for made in reversed(missing):
            with contextlib.suppress(FileExistsError):
                made.mkdir()
            self.directories.add(made.parent)

    def sync(self) -> None:
        for directory in sorted(self.directories, key=lambda p: -len(p.parts)):
            _fsync_directory(directory)
        self.directories.clear()

    def link(self, staged: Path, final: Path) -> bool:
        """``staged`` linked at ``final`` unless something is there; whether it was."""
        self.makedirs(final.parent)
        try:
            os.link(staged, final)
        except FileExistsError:
            return False
        self.directories.add(final.parent)
        return True

    def release(self) -> None:
        for _path, fd, _created in self.held:
            os.close(fd)
        self.held.clear()

    def undo(self) -> None:
        """Remove the stage files this import created and still holds (nothing links them)."""
        for path, fd, created in self.held:
            if created and _same_file(fd, path):
                with contextlib.suppress(OSError):
                    path.with_name(path.name + METADATA).unlink(missing_ok=True)
                    os.unlink(path)
        self.release()


@attrs.define
class Importer:
    options: ImportOptions
    summary: Summary = attrs.field(init=False)
    _stage: staging_dirs.Staging | None = None

    def __attrs_post_init__(self) -> None:
        self.summary = Summary(str(self.options.source), str(self.options.serverdir))

    @property
    def serverdir(self) -> Path:
        return self.options.serverdir

    @property
    def files_root(self) -> Path:
        return self.serverdir / "+files"

    @property
    def pages_root(self) -> Path:
        return self.serverdir / "+pages"

    def run(self) -> Summary:
        created = not self.serverdir.exists()
        self.serverdir.mkdir(parents=True, exist_ok=True)
        committed = False
        try:
            staging_dirs.sweep(self.serverdir)
            self._stage = staging_dirs.Staging.create(self.serverdir)
            committed = self._run(self._stage)
        except FileBusy as e:
            raise ImportFailed(f"{e}: nothing imported, run the import again") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ImportFailed(
                    f"no space left on the device of {self.serverdir}: nothing imported"
                ) from None
            raise
        finally:
            if self._stage is not None:
                self._stage.remove()
            if created and not committed:
                with contextlib.suppress(OSError):
                    self.serverdir.rmdir()  # only when empty: leave no trace
        return self.summary

    # -- stage and verify ------------------------------------------------------------

    def _reader(self, stage: staging_dirs.Staging) -> BundleReader:
        if not self.options.from_devpi:
            return open_bundle(self.options.source)
        from devpid.tools import devpi_export

        converted = stage.path / "converted"
        converted.mkdir()
        self.summary.warnings += devpi_export.convert(self.options.source, converted)
        # already ours, in staging: linked rather than copied again
        return DirectoryReader(converted, adopt=True)

    def _wanted(self, path: str, size: int) -> bool:
        """Whether the target lacks the bundle file at ``path`` (so it must be copied)."""
        if path.startswith(MIRROR_PAGES):
            return not (self.pages_root / path[len(MIRROR_PAGES) :]).exists()
        if path.startswith(MIRROR_FILES):
            final = self.files_root / path[len(MIRROR_FILES) :]
        elif path.startswith(STAGE_FILES):
            final = self.files_root / path[len(STAGE_FILES) :]
        else:
            return True
        try:
            return os.lstat(final).st_size != size
        except OSError:
            return True

    def _receive(self, stage: staging_dirs.Staging) -> Received:
        reader = self._reader(stage)
        with tqdm(
            total=reader.total_bytes(),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="verifying",
            disable=not self.options.progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            received = reader.read(stage.received, self._wanted, bar.update)
        sync_file_system(stage.path)  # the copies are durable before anything links them
        self.summary.bytes_read = received.bytes_read
        self.summary.bytes_copied = sum(
            h.size
            for p, h in received.files.items()
            if h.staged and p.startswith((STAGE_FILES, "mirror/"))
        )
        return received

    def _run(self, stage: staging_dirs.Staging) -> bool:
        received = self._receive(stage)
        integrity = check_integrity(received, stage.received)
        if not integrity.whole:
            raise ImportRefused("the bundle is damaged, nothing imported", integrity.problems)
        problems: list[str] = []
        records = read_records(stage.received / RECORDS, problems)
        target = read_target(self.serverdir)
        problems += check_records(records, integrity.manifest, target)
        if problems:
            raise ImportRefused("the bundle's records are wrong, nothing imported", problems)
        records.sort(key=lambda r: (RECORD_KINDS.index(r.kind), r.name))
        plan = self._plan(records, target.lookup, target.files().get, list(target.records), target)
        self.summary.records_same = len(plan.same)
        self._count_present(plan)
        self.summary.conflicts = [c.line() for c in plan.conflicts]
        placement = _Placement(self.summary)
        try:
            self._place_mirror(integrity.manifest, received, plan, target, stage, placement)
            return self._commit(records, plan, target, received, stage, placement)
        finally:
            placement.undo()

    def _plan(
        self,
        records: list[Record],
        lookup: Callable[[str, str], Mapping[str, Any] | None],
        linked_by: Callable[[str], str | None],
        target_keys: list[tuple[str, str]],
        target: TargetSnapshot,
    ) -> Plan:
        replaceable = frozenset(
            key
            for key in target.replaceable
            if canonical(lookup(*key)) == canonical(target.records[key])
        )
        merge = self.options.merge
        plan = plan_import(records, lookup, linked_by, target_keys, replaceable, merge)
        if plan.in_use:
            raise ImportRefused(
                f"{self.serverdir} is already in use ({len(plan.in_use)} records are not "
                "this bundle's): import into it with --merge",
                plan.in_use,
            )
        if plan.conflicts and not self.options.keep_existing:
            raise ImportRefused(
                f"{len(plan.conflicts)} records conflict with the target, nothing imported "
                "(--keep-existing imports the rest and keeps the target's)",
                [c.line() for c in plan.conflicts],
            )
        return plan

    def _count_present(self, plan: Plan) -> None:
        """The stage files of versions already the same in the target: already there."""
        for record in plan.same:
            for entrypath in file_paths(record.value) if record.kind == "version" else ():
                final = self.files_root / entrypath
                for path in (final, final.with_name(final.name + METADATA)):
                    self.summary.files_present += path.exists()

    # -- place -------------------------------------------------------------------------

    @staticmethod
    def _final_indexes(plan: Plan, target: TargetSnapshot) -> dict[str, Any]:
        """Every index configuration as the import leaves it."""
        final = {name: value for (kind, name), value in target.records.items() if kind == "index"}
        final.update({r.name: r.value for r in plan.added if r.kind == "index"})
        return final

    def _place_mirror(
        self,
        manifest: Mapping[str, Any],
        received: Received,
        plan: Plan,
        target: TargetSnapshot,
        stage: staging_dirs.Staging,
        placement: _Placement,
    ) -> None:
        mirror_paths = [p for p in manifest if p.startswith((MIRROR_FILES, MIRROR_PAGES))]
        indexes = self._final_indexes(plan, target)
        with tqdm(
            total=len(mirror_paths),
            unit="file",
            desc="placing",
            disable=not self.options.progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            for path in sorted(mirror_paths):  # files before pages: a page lists files
                parts = path.split("/")
                index = f"{parts[2]}/{parts[3]}"
                config = indexes.get(index)
                if not isinstance(config, Mapping) or config.get("type") != MIRROR:
                    self.summary.conflicts.append(
                        f"{path}: {index} is not a mirror in the target: not placed"
                    )
                    continue
                if path.startswith(MIRROR_FILES):
                    self._place_mirror_file(path, received, stage, placement)
                else:
                    self._place_page(path, received, stage, placement)
                bar.update(1)
        placement.sync()

    def _place_mirror_file(
        self, path: str, received: Received, stage: staging_dirs.Staging, placement: _Placement
    ) -> None:
        final = self.files_root / path[len(MIRROR_FILES) :]
        hashed = received.files[path]
        if hashed.staged and placement.link(stage.received / path, final):
            self.summary.files_placed += 1
            return
        try:
            size = os.lstat(final).st_size
        except FileNotFoundError:
            raise ImportFailed(
                f"{final} disappeared while importing (evicted?): run the import again"
            ) from None
        if size != hashed.size and hashed.staged:
            # the same name is the same content; another size is a damaged copy: ours is checked
            os.replace(stage.received / path, final)
            placement.directories.add(final.parent)
            self.summary.files_placed += 1
        else:
            self.summary.files_present += 1

    def _place_page(
        self, path: str, received: Received, stage: staging_dirs.Staging, placement: _Placement
    ) -> None:
        final = self.pages_root / path[len(MIRROR_PAGES) :]
        if received.files[path].staged and placement.link(stage.received / path, final):
            self.summary.pages_written += 1
        else:
            self.summary.pages_kept += 1

    def _hold_stage_file(
        self, entrypath: str, received: Received, stage: staging_dirs.Staging, placement: _Placement
    ) -> None:
        path = stage_path(entrypath)
        final = self.files_root / entrypath
        staged = stage.received / path
        hashed = received.files[path]
        if hashed.staged:
            fd = os.open(staged, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)  # held before it gets its name: nobody sweeps it
            if placement.link(staged, final):
                placement.held.append((final, fd, True))
                self.summary.files_placed += 1
                self._place_side_file(path, received, stage, placement)
                return
            os.close(fd)
        fd_existing = _hold_existing(final)
        if fd_existing is None:
            raise ImportFailed(f"{final} disappeared while importing: run the import again")
        placement.held.append((final, fd_existing, False))
        if os.fstat(fd_existing).st_size != hashed.size:
            raise ImportFailed(
                f"{final} is already there with another size: check it with devpid fsck"
            )
        self.summary.files_present += 1
        self._place_side_file(path, received, stage, placement)

    def _place_side_file(
        self, path: str, received: Received, stage: staging_dirs.Staging, placement: _Placement
    ) -> None:
        side = path + METADATA
        hashed = received.files.get(side)
        if hashed is None:
            return
        final = self.files_root / side[len(STAGE_FILES) :]
        if hashed.staged and placement.link(stage.received / side, final):
            self.summary.files_placed += 1
        else:
            self.summary.files_present += 1

    # -- commit --------------------------------------------------------------------------

    def _batches(self, added: list[Record]) -> Iterator[list[Record]]:
        """``added`` in batches whose stage files can all be held open at once."""
        needed = sum(len(file_paths(r.value)) for r in added if r.kind == "version")
        budget = _raise_fd_limit(needed + FD_RESERVE) - FD_RESERVE
        batch: list[Record] = []
        files = 0
        for record in added:
            count = len(file_paths(record.value)) if record.kind == "version" else 0
            if batch and files + count > budget:
                yield batch
                batch, files = [], 0
            batch.append(record)
            files += count
        if batch:
            yield batch

    def _commit(
        self,
        records: list[Record],
        plan: Plan,
        target: TargetSnapshot,
        received: Received,
        stage: staging_dirs.Staging,
        placement: _Placement,
    ) -> bool:
        if not plan.added:
            return False
        database = PrivateDatabase.in_serverdir(self.serverdir)
        database.open()
        try:
            batches = list(self._batches(plan.added))
            for number, batch in enumerate(batches, 1):
                for record in batch:
                    if record.kind == "version":
                        for entrypath in file_paths(record.value):
                            self._hold_stage_file(entrypath, received, stage, placement)
                placement.sync()
                what = f"import {len(batch)} records from {self.options.source.name}"
                if len(batches) > 1:
                    what += f" (part {number} of {len(batches)})"
                change = functools.partial(self._write, records=records, batch=batch, target=target)
                try:
                    written, _serial = database.write(what, WHO, change)
                except _Changed as e:
                    raise e.refusal from None
                self.summary.transactions += 1
                self.summary.records_added += written
                placement.release()
        finally:
            database.close()
        return True

    def _write(
        self, tx: Transaction, records: list[Record], batch: list[Record], target: TargetSnapshot
    ) -> int:
        keys = [(kind, name) for kind in RECORD_KINDS for name in tx.records.of(kind)]
        try:
            plan = self._plan(records, tx.get, tx.records.files.get, keys, target)
        except ImportRefused as e:
            raise _Changed(e) from None
        now = plan.written_keys
        written = 0
        for record in batch:
            if record.key in now:
                tx.put(record.kind, record.name, record.value)
                written += 1
        return written


def _raise_fd_limit(wanted: int) -> int:
    """The soft limit of open files, raised towards ``wanted`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and wanted > soft:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return int(soft)


def run_import(options: ImportOptions) -> Summary:
    """Import one bundle; ``ImportRefused`` / ``ImportFailed`` when nothing was imported."""
    return Importer(options).run()


__all__ = [
    "Conflict",
    "ImportFailed",
    "ImportOptions",
    "ImportRefused",
    "Summary",
    "run_import",
]
