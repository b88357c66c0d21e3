"""The private data's one home: ``private.sqlite`` in the serverdir, with its event log.

Users, indexes, tokens and versions are records (kind, name, JSON value). A
change is one SQLite transaction (``BEGIN IMMEDIATE``) that writes its records
and appends one event with the next serial; ``synchronous=FULL`` makes the
commit durable before it is acknowledged, so ``kill -9`` (or a power cut)
leaves the old state or the new one, never half.

Every process keeps the records of the small kinds in memory. Before each
request it asks SQLite whether another connection committed since
(``PRAGMA data_version``, a read of a shared-memory counter) and, if so,
applies the events it has not seen: read-your-writes across every worker
sharing the serverdir, without Redis. Writers are serialised by SQLite's write
lock; a change function always sees the newest state, so of two conflicting
changes one wins and the other is refused by the same checks as any other
request.

Calls run on the reactor thread: each is a handful of indexed row operations
and, for a write, one fsync of the WAL.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.logger import Logger

from devpid.private.events import KINDS, Change, Event

_log = Logger()

FILENAME = "private.sqlite"
#: How long a writer waits for another process's write to finish.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, serial INTEGER NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS events (
    serial INTEGER PRIMARY KEY, at REAL NOT NULL, who TEXT, what TEXT NOT NULL,
    changes TEXT NOT NULL);
"""

_Result = TypeVar("_Result")


class DatabaseError(Exception):
    """The private data cannot be read or written; the message is one line."""


def split_version_name(name: str) -> tuple[str, str, str]:
    """``user/index/project/version`` as ``(user/index, project, version)``."""
    user, index, project, version = name.split("/", 3)
    return f"{user}/{index}", project, version


def file_paths(value: Mapping[str, Any] | None) -> list[str]:
    """The paths (``user/index/+f/…``) of the files a version record links to."""
    if not value:
        return []
    return [link["entrypath"] for link in value.get("+links") or () if "entrypath" in link]


@attrs.define
class Records:
    """The private data in memory: ``kind -> name -> value``, as of ``serial``.

    Versions are also kept by index and project, with the serial that last
    changed each project (what a merged page's cache checks), and every file
    by its path: reading a project never scans other projects.
    """

    serial: int = -1
    by_kind: dict[str, dict[str, Mapping[str, Any]]] = attrs.field(
        factory=lambda: {kind: {} for kind in KINDS}
    )
    last_commit_at: float | None = None
    #: ``index -> project -> version -> value``.
    projects: dict[str, dict[str, dict[str, Mapping[str, Any]]]] = attrs.field(factory=dict)
    #: ``(index, project) -> serial`` of its last change.
    project_serials: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: ``file path -> version record name``.
    files: dict[str, str] = attrs.field(factory=dict)
    #: ``index -> serial`` of the last change to any of its versions.
    index_serials: dict[str, int] = attrs.field(factory=dict)

    def apply(self, change: Change, serial: int = -1) -> None:
        records = self.by_kind.setdefault(change.kind, {})
        old = records.get(change.name)
        if change.value is None:
            records.pop(change.name, None)
        else:
            records[change.name] = change.value
        if change.kind == "version":
            self._index_version(change.name, old, change.value, serial)

    def _index_version(
        self,
        name: str,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
        serial: int,
    ) -> None:
        index, project, version = split_version_name(name)
        for path in file_paths(old):
            if self.files.get(path) == name:
                del self.files[path]
        for path in file_paths(new):
            self.files[path] = name
        by_project = self.projects.setdefault(index, {})
        versions = by_project.setdefault(project, {})
        if new is None:
            versions.pop(version, None)
            if not versions:
                del by_project[project]
            if not by_project:
                del self.projects[index]
        else:
            versions[version] = new
        self.project_serials[(index, project)] = max(
            serial, self.project_serials.get((index, project), -1)
        )
        self.index_serials[index] = max(serial, self.index_serials.get(index, -1))

    def of(self, kind: str) -> dict[str, Mapping[str, Any]]:
        return self.by_kind.setdefault(kind, {})

    def versions(self, index: str, project: str) -> dict[str, Mapping[str, Any]]:
        return self.projects.get(index, {}).get(project, {})


@attrs.define
class Transaction:
    """What a change function sees: the current records, and the writes it makes."""

    records: Records
    who: str | None
    _writes: dict[tuple[str, str], Mapping[str, Any] | None] = attrs.field(factory=dict)

    def get(self, kind: str, name: str) -> Mapping[str, Any] | None:
        key = (kind, name)
        if key in self._writes:
            return self._writes[key]
        return self.records.of(kind).get(name)

    def names(self, kind: str) -> list[str]:
        """Every name of ``kind`` as this transaction would leave them."""
        present = set(self.records.of(kind))
        for (k, name), value in self._writes.items():
            if k != kind:
                continue
            if value is None:
                present.discard(name)
            else:
                present.add(name)
        return sorted(present)

    @property
    def serial(self) -> int:
        """The serial this transaction commits as, if it writes anything."""
        return self.records.serial + 1

    def versions(self, index: str, project: str) -> dict[str, Mapping[str, Any]]:
        """The version records of ``project`` on ``index``, as this transaction would leave them."""
        found = dict(self.records.versions(index, project))
        prefix = f"{index}/{project}/"
        for (kind, name), value in self._writes.items():
            if kind == "version" and name.startswith(prefix):
                version = name[len(prefix) :]
                if value is None:
                    found.pop(version, None)
                else:
                    found[version] = value
        return found

    def put(self, kind: str, name: str, value: Mapping[str, Any]) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        self._writes[(kind, name)] = dict(value)

    def delete(self, kind: str, name: str) -> None:
        if self.get(kind, name) is not None or (kind, name) in self._writes:
            self._writes[(kind, name)] = None

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(Change(k, n, v) for (k, n), v in self._writes.items())


@attrs.define
class PrivateDatabase:
    """The serverdir's private data, and this process's copy of it."""

    path: Path
    wall_clock: Callable[[], float] = time.time
    records: Records = attrs.field(factory=Records)
    #: The node's uuid (``X-Devpi-Uuid``), made when the database is created.
    uuid: str = ""
    _db: sqlite3.Connection | None = None
    _data_version: int = -1
    #: Called with each event this process learns of (its own and others').
    listeners: list[Callable[[Event], None]] = attrs.field(factory=list)

    @classmethod
    def in_serverdir(cls, serverdir: Path) -> PrivateDatabase:
        return cls(serverdir / FILENAME)

    # -- opening -------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) and read every record into memory."""
        if self._db is not None:
            return
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='uuid'").fetchone()
            if row is None:
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('uuid', ?)",
                    (uuid.uuid4().hex,),
                )
                row = db.execute("SELECT value FROM meta WHERE key='uuid'").fetchone()
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open {self.path}: {e}") from None
        self._db = db
        self.uuid = str(row[0])
        self._load_all()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise DatabaseError(f"{self.path} is not open")
        return self._db

    def _load_all(self) -> None:
        records = Records()
        with self._reading():
            # one read transaction: the records and the last serial of one snapshot
            self.db.execute("BEGIN")
            try:
                self._data_version = self._current_data_version()
                rows = self.db.execute(
                    "SELECT kind, name, value, serial FROM records ORDER BY serial"
                ).fetchall()
                last = self.db.execute(
                    "SELECT serial, at FROM events ORDER BY serial DESC LIMIT 1"
                ).fetchone()
            finally:
                self.db.execute("COMMIT")
            for kind, name, value, serial in rows:
                records.apply(Change(kind, name, json.loads(value)), serial)
        if last is not None:
            records.serial, records.last_commit_at = int(last[0]), float(last[1])
        self.records = records

    def _current_data_version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def _reading(self) -> Any:
        return _translated_errors(self.path)

    # -- reading ---------------------------------------------------------------

    @property
    def serial(self) -> int:
        return self.records.serial

    def catch_up(self) -> bool:
        """Apply what other processes committed since we last looked; True if anything.

        Cheap when nothing changed: one ``PRAGMA data_version``.
        """
        with self._reading():
            version = self._current_data_version()
            if version == self._data_version:
                return False
            self._data_version = version
            return self._apply_new_events()

    def _apply_new_events(self) -> bool:
        rows = self.db.execute(
            "SELECT serial, at, who, what, changes FROM events WHERE serial > ? ORDER BY serial",
            (self.records.serial,),
        ).fetchall()
        for row in rows:
            event = Event.from_row(row)
            if event.serial != self.records.serial + 1:
                # a gap cannot happen with one database; if it does, read everything again
                self._load_all()
                return True
            self._apply(event)
        return bool(rows)

    def _apply(self, event: Event) -> None:
        for change in event.changes:
            self.records.apply(change, event.serial)
        self.records.serial = event.serial
        self.records.last_commit_at = event.at
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                # the change is committed and applied; what follows it must not undo that
                _log.failure("after event {serial} ({what})", serial=event.serial, what=event.what)

    def events_since(self, serial: int, limit: int = 1000) -> list[Event]:
        """Events after ``serial``, oldest first (for replicas, webhooks, export)."""
        with self._reading():
            rows = self.db.execute(
                "SELECT serial, at, who, what, changes FROM events WHERE serial > ? "
                "ORDER BY serial LIMIT ?",
                (serial, limit),
            ).fetchall()
        return [Event.from_row(row) for row in rows]

    def iter_events(self) -> Iterator[Event]:
        serial = -1
        while True:
            batch = self.events_since(serial)
            if not batch:
                return
            yield from batch
            serial = batch[-1].serial

    # -- writing ---------------------------------------------------------------

    def write(
        self, what: str, who: str | None, change: Callable[[Transaction], _Result]
    ) -> tuple[_Result, int]:
        """Run ``change`` as one transaction; its writes commit as the next serial.

        ``change`` sees the newest records (every process's). An exception from
        it rolls everything back and propagates. Returns its result and the
        serial the transaction left (unchanged when it wrote nothing).
        """
        with _translated_errors(self.path):
            self.db.execute("BEGIN IMMEDIATE")
        try:
            # holding the write lock: what others committed is all there is
            self._data_version = self._current_data_version()
            self._apply_new_events()
            transaction = Transaction(self.records, who)
            result = change(transaction)
            changes = transaction.changes
            if not changes:
                self.db.execute("ROLLBACK")
                return result, self.records.serial
            event = Event(self.records.serial + 1, self.wall_clock(), who, what, changes)
            self._commit(event)
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self._apply(event)
        return result, event.serial

    def _commit(self, event: Event) -> None:
        try:
            for c in event.changes:
                if c.value is None:
                    self.db.execute(
                        "DELETE FROM records WHERE kind = ? AND name = ?", (c.kind, c.name)
                    )
                else:
                    self.db.execute(
                        "INSERT OR REPLACE INTO records (kind, name, value, serial) "
                        "VALUES (?, ?, ?, ?)",
                        (c.kind, c.name, json.dumps(c.value), event.serial),
                    )
            self.db.execute(
                "INSERT INTO events (serial, at, who, what, changes) VALUES (?, ?, ?, ?, ?)",
                (event.serial, event.at, event.who, event.what, event.changes_json()),
            )
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot write {self.path}: {e}") from None
        # our own commit does not move our data_version; nothing to catch up on


class _translated_errors:
    """sqlite3's errors as one-line ``DatabaseError``s naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if isinstance(error, sqlite3.Error):
            raise DatabaseError(f"{self.path}: {error}") from None
