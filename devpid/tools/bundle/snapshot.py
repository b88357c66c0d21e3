"""The export's consistent snapshot of a live serverdir: its records, and its files pinned.

A running devpid keeps changing the serverdir while an export reads it. The export reads
**every private record in one SQLite read transaction** (``private.sqlite`` opened
read-only, as ``devpid fsck`` does): the records of one serial, whatever commits meanwhile.
They are written at once to ``records.jsonl`` in the staging directory, and only what the
files need is kept in memory (each linked file's entrypath, sha256 and size).

Then every file the snapshot names is **pinned**: hard-linked into the staging directory
``<serverdir>/+tmp/export-<pid>-<nonce>/``. A pinned file stays whole whatever devpid does
later (it removes files by unlinking their name, and never writes a committed file in place),
so the copy made from the pins is the snapshot's, however long it takes.

devpid links a stage's file only after it is in place and removes it only after the
transaction that unlinked it committed. So a linked file that cannot be found (``ENOENT``)
was deleted after the snapshot: the snapshot is outdated, and the export takes a new one
(``Outdated``). Mirror files are a cache that may be evicted or replaced at any time: one
that is gone is skipped and counted.

The staging directory holds an exclusive ``flock`` on its ``.lock`` for as long as its
export runs; an export that finds another's directory with a free lock (its export died)
removes it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from devpid.ops.fsck.leftovers import LOCK, TMP
from devpid.ops.fsck.private import open_read_only
from devpid.ops.fsck.stages import link_sha256
from devpid.private.database import FILENAME
from devpid.private.indexconfig import MIRROR
from devpid.simple.model import METADATA, PROVENANCE
from devpid.tools.bundle.format import RECORD_KINDS, record_line, stage_path

STAGING_PREFIX = "export-"
#: Seconds a hidden staging directory without its lock may be one being made.
_BEING_MADE = 60.0


class SnapshotError(Exception):
    """The serverdir cannot be read as a snapshot; the message is one line."""


class Outdated(Exception):
    """A file the snapshot links is gone: a later change removed it."""

    def __init__(self, entrypath: str) -> None:
        super().__init__(f"{entrypath} was removed after the snapshot")
        self.entrypath = entrypath


@attrs.frozen
class LinkedFile:
    """A file of a stage the snapshot links, as the bundle will hold it."""

    #: Its path in the bundle (``files/<entrypath>``).
    path: str
    #: Its path under ``+files/``.
    relative: str
    #: What its link says (None when the link says nothing, e.g. a side file's size).
    sha256: str | None
    size: int | None
    #: True when the link requires it; a side file beside it may also be absent.
    required: bool


@attrs.define
class Snapshot:
    """The private data of one serial: ``records.jsonl`` (a file) and the files it links."""

    serial: int
    uuid: str
    records_file: Path
    records_count: int
    records_sha256: str
    records_size: int
    stage_files: list[LinkedFile]
    #: ``user/index`` of every mirror index.
    mirrors: list[str]
    stages: list[str]


def _linked_files(value: Mapping[str, Any]) -> Iterator[LinkedFile]:
    """The files (and possible side files) one version record links."""
    links = value.get("+links")
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, Mapping) or not isinstance(link.get("entrypath"), str):
            continue
        entrypath = link["entrypath"]
        size = link.get("size")
        yield LinkedFile(
            stage_path(entrypath),
            entrypath,
            link_sha256(link.get("hashes")),
            size if type(size) is int and size >= 0 else None,
            required=True,
        )
        core = link.get("core_metadata")
        if isinstance(core, Mapping):
            yield LinkedFile(
                stage_path(entrypath + METADATA),
                entrypath + METADATA,
                link_sha256(core),
                None,
                required=True,
            )
        else:
            for suffix in (METADATA, PROVENANCE):
                yield LinkedFile(
                    stage_path(entrypath + suffix), entrypath + suffix, None, None, required=False
                )


def read_snapshot(serverdir: Path, records_file: Path) -> Snapshot:
    """Read every record of ``serverdir``'s private data in one read transaction, writing
    them to ``records_file`` as the bundle's ``records.jsonl``."""
    path = serverdir / FILENAME
    if not path.is_file():
        raise SnapshotError(f"no private data ({FILENAME}) in {serverdir}: not a serverdir")
    try:
        db = open_read_only(path)
    except sqlite3.Error as e:
        raise SnapshotError(f"cannot open {path}: {e}") from None
    try:
        db.execute("BEGIN")  # one snapshot for every read below
        snapshot = _read(db, records_file)
        db.execute("ROLLBACK")
    except sqlite3.Error as e:
        raise SnapshotError(f"cannot read {path}: {e}") from None
    finally:
        db.close()
    return snapshot


def _read(db: sqlite3.Connection, records_file: Path) -> Snapshot:
    row = db.execute("SELECT max(serial) FROM events").fetchone()
    serial = int(row[0]) if row and row[0] is not None else -1
    row = db.execute("SELECT value FROM meta WHERE key='uuid'").fetchone()
    uuid = str(row[0]) if row else ""
    digest = hashlib.sha256()
    count = size = 0
    files: dict[str, LinkedFile] = {}
    mirrors: list[str] = []
    stages: list[str] = []
    with open(records_file, "wb") as out:
        for kind in RECORD_KINDS:
            rows = db.execute(
                "SELECT name, value FROM records WHERE kind = ? ORDER BY name", (kind,)
            )
            for name, raw in rows:
                value = json.loads(raw)
                line = record_line(kind, str(name), value)
                out.write(line)
                digest.update(line)
                count += 1
                size += len(line)
                if kind == "index" and isinstance(value, Mapping):
                    (mirrors if value.get("type") == MIRROR else stages).append(str(name))
                elif kind == "version" and isinstance(value, Mapping):
                    for linked in _linked_files(value):
                        files.setdefault(linked.path, linked)
        out.flush()
    stage_set = set(stages)
    on_stages = [f for f in files.values() if _index_of(f) in stage_set]
    return Snapshot(
        serial,
        uuid,
        records_file,
        count,
        digest.hexdigest(),
        size,
        sorted(on_stages, key=lambda f: f.path),
        sorted(mirrors),
        sorted(stages),
    )


def _index_of(linked: LinkedFile) -> str:
    user, index, _rest = linked.relative.split("/", 2)
    return f"{user}/{index}"


# -- the staging directory -------------------------------------------------------------------


@attrs.define
class Staging:
    """``<serverdir>/+tmp/export-<pid>-<nonce>/``: this export's pins, held by a ``flock``."""

    serverdir: Path
    directory: Path
    _lock_fd: int
    _pins: int = 0
    #: Whether hard links work here (else pins are copies).
    links: bool = True

    @classmethod
    def create(cls, serverdir: Path) -> Staging:
        root = serverdir / TMP
        root.mkdir(exist_ok=True)
        remove_stale(root)
        name = f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        # made under a hidden name and locked before it gets its own: never seen unlocked
        hidden = root / f".{name}"
        hidden.mkdir()
        fd = os.open(hidden / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        (hidden / "pins").mkdir()
        directory = root / name
        hidden.rename(directory)
        return cls(serverdir, directory, fd)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        os.close(self._lock_fd)

    def new_pin(self) -> Path:
        self._pins += 1
        return self.directory / "pins" / str(self._pins)

    def pin(self, source: Path) -> Path | None:
        """A hard link to ``source`` in the staging directory; None when it is gone."""
        target = self.new_pin()
        if self.links:
            try:
                os.link(source, target, follow_symlinks=False)
                return target
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                self.links = False  # no hard links on this file system: copies then
        try:
            shutil.copyfile(source, target, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return target

    def unpin(self, pin: Path) -> None:
        pin.unlink(missing_ok=True)


def remove_stale(root: Path) -> int:
    """Remove the staging directories under ``root`` whose export is gone (their lock is
    free); the number removed."""
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        hidden = entry.name.startswith(".")
        if not entry.name.lstrip(".").startswith(STAGING_PREFIX):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        directory = Path(entry.path)
        try:
            fd = os.open(directory / LOCK, os.O_RDWR)
        except FileNotFoundError:
            # died before its lock existed (or while removing itself); one being made
            # right now (hidden, without its lock for an instant) is left alone a while
            if not hidden or time.time() - entry.stat().st_mtime > _BEING_MADE:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a running export's
        shutil.rmtree(directory, ignore_errors=True)
        os.close(fd)
        removed += 1
    return removed
