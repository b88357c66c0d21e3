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

A replica's database (``devpid.replica``) is written only by its follower:
``apply_replicated`` commits the primary's events with the primary's serials,
in order and never twice, and ``replace_all`` swaps every record and event for
a snapshot in one transaction. A replica's serverdir is marked in the ``meta``
table, and ``write`` refuses there. A snapshot moves the ``generation`` mark:
serials may go down then, so ``catch_up`` reads everything again when it sees
another generation instead of looking only for newer serials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.logger import Logger

from devpid.common.turns import ReactorTurns
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


class ReadOnlyReplica(DatabaseError):
    """A change was asked of a replica's private data: only its primary's events go there."""


class OutOfOrder(DatabaseError):
    """A replicated event is not the next one after the serial this database is at."""


class PrimaryChanged(DatabaseError):
    """Replicated events come from another primary than the one this replica followed."""


#: ``meta`` keys: the primary a replica follows (its URL, and its uuid once heard from),
#: and the generation of the records, moved by every ``replace_all``.
META_REPLICA_OF = "replica_of"
META_PRIMARY_UUID = "primary_uuid"
META_GENERATION = "generation"


def event_mark(serial: int, at: float, what: str) -> str:
    """What tells one history's event ``serial`` from another's: a replica compares its
    last event's mark with the primary's event of that serial (a restored primary that
    went on past the replica's serial has other events there)."""
    text = f"{serial}\n{at!r}\n{what}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def diff_records(old: Records, new: Records) -> tuple[Change, ...]:
    """The changes that take ``old`` to ``new`` (what listeners hear after a reset)."""
    changes = []
    for kind in KINDS:
        before, after = old.of(kind), new.of(kind)
        for name in sorted(set(before) | set(after)):
            value = after.get(name)
            if before.get(name) != value:
                changes.append(Change(kind, name, value))
    return tuple(changes)


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
    #: The ``generation`` the records in memory were read at.
    _generation: str = ""
    #: Called with each event this process learns of (its own and others').
    listeners: list[Callable[[Event], None]] = attrs.field(factory=list)
    #: The reactor's turns, when ``catch_up_in_this_turn`` may look once per turn.
    turns: ReactorTurns | None = None
    _looked_in_turn: int | None = None

    @classmethod
    def in_serverdir(cls, serverdir: Path) -> PrivateDatabase:
        return cls(serverdir / FILENAME)

    # -- opening -------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) and read every record into memory."""
        if self._db is not None:
            return
        self.connect()
        self._load_all()

    def connect(self) -> None:
        """Open (creating if needed) without reading the records: for what only needs
        the ``meta`` table (reading every record is most of the cost of ``open``)."""
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
        with self._reading():
            # one read transaction: the records and the last serial of one snapshot
            self.db.execute("BEGIN")
            try:
                self._read_all()
            finally:
                self.db.execute("COMMIT")

    def _read_all(self) -> None:
        """Every record into memory, in the transaction the caller holds."""
        records = Records()
        self._data_version = self._current_data_version()
        self._generation = self._meta(META_GENERATION) or ""
        rows = self.db.execute(
            "SELECT kind, name, value, serial FROM records ORDER BY serial"
        ).fetchall()
        last = self.db.execute(
            "SELECT serial, at FROM events ORDER BY serial DESC LIMIT 1"
        ).fetchone()
        # one parse of all the values: a third faster than one call per record
        values = json.loads("[" + ",".join(row[2] for row in rows) + "]")
        for (kind, name, _, serial), value in zip(rows, values, strict=True):
            records.apply(Change(kind, name, value), serial)
        if last is not None:
            records.serial, records.last_commit_at = int(last[0]), float(last[1])
        self.records = records

    def _reload(self, in_transaction: bool = False) -> None:
        """Read everything again (another generation), telling listeners what changed."""
        old = self.records
        if in_transaction:
            with self._reading():
                self._read_all()
        else:
            self._load_all()
        changes = diff_records(old, self.records)
        at = self.records.last_commit_at or self.wall_clock()
        self._notify(Event(self.records.serial, at, None, "resync", changes))

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

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
            # the generation and the events of one snapshot
            self.db.execute("BEGIN")
            try:
                reset, rows = self._read_new()
            finally:
                self.db.execute("COMMIT")
        if reset:
            self._reload()
            return True
        return self._apply_rows(rows)

    def catch_up_in_this_turn(self) -> bool:
        """``catch_up``, once per reactor turn (``devpid.common.turns`` says why that
        sees every commit a request of this turn can know of): what runs before each
        request. Anything else that must see a commit at once calls ``catch_up``."""
        turn = self.turns.count if self.turns is not None else None
        if turn is not None and turn == self._looked_in_turn:
            return False
        changed = self.catch_up()
        self._looked_in_turn = turn
        return changed

    def _read_new(self) -> tuple[bool, list[Any]]:
        """``(True, [])`` when the records were replaced (another generation), else the
        rows of the events after ours."""
        if (self._meta(META_GENERATION) or "") != self._generation:
            return True, []
        rows = self.db.execute(
            "SELECT serial, at, who, what, changes FROM events WHERE serial > ? ORDER BY serial",
            (self.records.serial,),
        ).fetchall()
        return False, rows

    def _catch_up_in_transaction(self) -> None:
        """Apply what others committed, holding the write lock: all there is."""
        self._data_version = self._current_data_version()
        reset, rows = self._read_new()
        if reset:
            self._reload(in_transaction=True)
        else:
            self._apply_rows(rows, in_transaction=True)

    def _apply_rows(self, rows: list[Any], in_transaction: bool = False) -> bool:
        for row in rows:
            event = Event.from_row(row)
            if event.serial != self.records.serial + 1:
                # a gap cannot happen with one database; if it does, read everything again
                self._reload(in_transaction)
                return True
            self._apply(event)
        return bool(rows)

    def _apply(self, event: Event) -> None:
        for change in event.changes:
            self.records.apply(change, event.serial)
        self.records.serial = event.serial
        self.records.last_commit_at = event.at
        self._notify(event)

    def _notify(self, event: Event) -> None:
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
            primary = self._meta(META_REPLICA_OF)
            if primary is not None:
                raise ReadOnlyReplica(
                    f"this serverdir is a read-only replica of {primary}; "
                    "send changes to the primary"
                )
            # holding the write lock: what others committed is all there is
            self._catch_up_in_transaction()
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
            self._write_rows(event)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot write {self.path}: {e}") from None
        # our own commit does not move our data_version; nothing to catch up on

    def _write_rows(self, event: Event) -> None:
        for c in event.changes:
            if c.value is None:
                self.db.execute("DELETE FROM records WHERE kind = ? AND name = ?", (c.kind, c.name))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO records (kind, name, value, serial) "
                    "VALUES (?, ?, ?, ?)",
                    (c.kind, c.name, json.dumps(c.value), event.serial),
                )
        self.db.execute(_INSERT_EVENT, _event_row(event))

    @contextlib.contextmanager
    def _replicating(self) -> Iterator[None]:
        """One write transaction of replication (``BEGIN IMMEDIATE``), rolled back on any
        exception, sqlite3's errors as ``DatabaseError``; the body commits it."""
        with _translated_errors(self.path):
            self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise DatabaseError(f"cannot write {self.path}: {e}") from None
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # -- replication -------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (None when unset), read now."""
        with self._reading():
            return self._meta(key)

    def mark_replica(self, primary_url: str | None) -> str | None:
        """Mark this serverdir a replica of ``primary_url`` (None: not a replica any more);
        the URL it was marked with before."""
        with _translated_errors(self.path):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                before = self._meta(META_REPLICA_OF)
                if primary_url is None:
                    self.db.execute(
                        "DELETE FROM meta WHERE key IN (?, ?)", (META_REPLICA_OF, META_PRIMARY_UUID)
                    )
                else:
                    self._set_meta(META_REPLICA_OF, primary_url)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return before

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def event_mark(self, serial: int) -> str | None:
        """The ``event_mark`` of the event ``serial`` here; None when there is none."""
        with self._reading():
            row = self.db.execute(
                "SELECT at, what FROM events WHERE serial = ?", (serial,)
            ).fetchone()
        return None if row is None else event_mark(serial, float(row[0]), str(row[1]))

    def apply_replicated(self, events: Sequence[Event], primary_uuid: str) -> list[Event]:
        """Commit the primary's ``events`` in one transaction, each with its own serial;
        the events applied (those this database had already are skipped: never twice).

        The serial check is made holding the write lock, against what is committed:
        an event that is not the next one raises ``OutOfOrder`` and nothing of the
        batch is written. Events of another primary than the one recorded raise
        ``PrimaryChanged``; on a database holding records from elsewhere (no primary
        recorded, yet not empty), ``PrimaryChanged`` too: it needs ``replace_all``.
        """
        applied: list[Event] = []
        with self._replicating():
            self._catch_up_in_transaction()
            recorded = self._meta(META_PRIMARY_UUID)
            if recorded is None and self.records.serial >= 0:
                raise PrimaryChanged("the replica holds private data of its own; resync needed")
            if recorded is not None and recorded != primary_uuid:
                raise PrimaryChanged(f"the primary's uuid was {recorded}, is now {primary_uuid}")
            expected = self.records.serial + 1
            for event in events:
                if event.serial < expected:
                    continue
                if event.serial != expected:
                    raise OutOfOrder(
                        f"event {event.serial} cannot follow serial {expected - 1}: "
                        f"{expected} is missing"
                    )
                self._write_rows(event)
                applied.append(event)
                expected += 1
            if not applied:
                self.db.execute("ROLLBACK")
                return []
            if recorded is None:
                self._set_meta(META_PRIMARY_UUID, primary_uuid)
            self.db.execute("COMMIT")
        for event in applied:
            self._apply(event)
        return applied

    def replace_all(
        self,
        records: Iterable[tuple[str, str, Mapping[str, Any], int]],
        events: Iterable[Event],
        primary_uuid: str,
    ) -> None:
        """Every record and event replaced by a primary's snapshot, in one transaction
        (readers see the old data or the new, never a mix), under a new generation."""
        with self._replicating():
            self.db.execute("DELETE FROM records")
            self.db.execute("DELETE FROM events")
            self.db.executemany(
                "INSERT INTO records (kind, name, value, serial) VALUES (?, ?, ?, ?)",
                ((kind, name, json.dumps(value), serial) for kind, name, value, serial in records),
            )
            self.db.executemany(_INSERT_EVENT, (_event_row(e) for e in events))
            self._set_meta(META_PRIMARY_UUID, primary_uuid)
            self._set_meta(META_GENERATION, uuid.uuid4().hex)
            self.db.execute("COMMIT")
        self._reload()


_INSERT_EVENT = "INSERT INTO events (serial, at, who, what, changes) VALUES (?, ?, ?, ?, ?)"


def _event_row(event: Event) -> tuple[Any, ...]:
    return (event.serial, event.at, event.who, event.what, event.changes_json())


class _translated_errors:
    """sqlite3's errors as one-line ``DatabaseError``s naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if isinstance(error, sqlite3.Error):
            raise DatabaseError(f"{self.path}: {error}") from None
