"""fsck of the private data: ``private.sqlite``'s records against its own event log.

The records table is what devpid serves; the event log is what replicas,
export and webhooks read. Every change writes both in one transaction, so
replaying the events must give exactly the records, the serials must run
from 0 without a gap, and every index must belong to a user that exists.

The file is opened read-only (never created: a serverdir without private
data is not an error) and read in one transaction, so a live devpid's
commits neither disturb the check nor are disturbed by it. Nothing is
repaired: the private data has no other copy to repair it from, so every
problem says to restore from a backup.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from devpid.ops.fsck.report import Problem, Report, Severity
from devpid.private.database import FILENAME
from devpid.private.events import KINDS, Event

#: The kind of every problem this module reports.
KIND = "private"
#: Each kind of record mismatch is listed this many times, then counted.
MAX_LISTED = 20
_NOT_REPAIRED = " (not repaired: restore from a backup)"
#: How long to wait for a writer's lock (a checkpoint) before giving up.
_BUSY_TIMEOUT_S = 10.0

Key = tuple[str, str]


def check_private(serverdir: Path, report: Report) -> None:
    """Add to ``report`` what is wrong with ``serverdir``'s private data, if it has any."""
    path = serverdir / FILENAME
    if not path.is_file():
        return
    PrivateCheck(path, report).run()


def open_read_only(path: Path) -> sqlite3.Connection:
    """``path`` through SQLite's read-only URI mode: never created or written.

    (SQLite may still create the ``-wal`` and ``-shm`` files beside it, as any reader does.)
    """
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_S)


@attrs.define
class PrivateCheck:
    """One read of ``private.sqlite``; ``run()`` adds its problems to ``report``."""

    path: Path
    report: Report
    _listed: dict[str, int] = attrs.field(factory=dict)

    def _problem(self, severity: Severity, detail: str, group: str | None = None) -> None:
        """Report one problem; of a ``group``, only the first MAX_LISTED, then a count."""
        if group is not None:
            seen = self._listed.get(group, 0) + 1
            self._listed[group] = seen
            if seen > MAX_LISTED:
                return
        line = f"private data: {detail}"
        if severity == "error":
            line += _NOT_REPAIRED
        self.report.problems.append(Problem(severity, KIND, FILENAME, line))

    def _more(self) -> None:
        for group, seen in self._listed.items():
            if seen > MAX_LISTED:
                self._problem("warning", f"{seen - MAX_LISTED} more {group} not listed")

    def run(self) -> None:
        try:
            db = open_read_only(self.path)
        except sqlite3.Error as e:
            self._problem("error", f"cannot open it: {e}")
            return
        try:
            db.execute("BEGIN")  # one snapshot for every read below
            self._check(db)
            db.execute("ROLLBACK")
        except sqlite3.Error as e:
            self._problem("error", f"cannot read it: {e}")
        finally:
            db.close()
        self._more()

    def _check(self, db: sqlite3.Connection) -> None:
        integrity = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            for message in integrity:
                self._problem("error", f"integrity check: {message}", "integrity messages")
            return
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master")}
        missing = sorted({"meta", "records", "events"} - tables)
        if missing:
            self._problem("error", f"no table {', '.join(missing)}")
            return
        replayed, written_at, last = self._replay(db)
        if replayed is None:
            return
        records, serials = self._records(db, last)
        self._compare(replayed, written_at, records, serials)
        self._check_references(records)

    # -- the event log ---------------------------------------------------------------

    def _events(self, db: sqlite3.Connection) -> Iterator[tuple[int, Event | str]]:
        """``(serial, event)``, or ``(serial, why it cannot be read)``, in serial order."""
        rows = db.execute("SELECT serial, at, who, what, changes FROM events ORDER BY serial")
        for row in rows:
            try:
                yield int(row[0]), Event.from_row(tuple(row))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                yield int(row[0]), f"{type(e).__name__}: {e}"

    def _replay(self, db: sqlite3.Connection) -> tuple[dict[Key, Any] | None, dict[Key, int], int]:
        """The records the events give, the serial that last wrote each, the last serial.

        None instead of the records when an event cannot be read: comparing with a
        replay that skipped a change would only add confusing mismatches.
        """
        replayed: dict[Key, Any] = {}
        written_at: dict[Key, int] = {}
        expected = 0
        readable = True
        last = -1
        for serial, event in self._events(db):
            if serial != expected:
                if serial > expected:
                    gap = f"{expected}" if serial == expected + 1 else f"{expected}-{serial - 1}"
                    detail = f"event serials jump from {expected - 1} to {serial}: {gap} missing"
                else:
                    detail = f"event serial {serial} where {expected} was expected"
                self._problem("error", detail, "serial gaps")
            expected = serial + 1
            last = serial
            if isinstance(event, str):
                self._problem("error", f"event {serial} cannot be read: {event}", "bad events")
                readable = False
                continue
            for change in event.changes:
                key = (change.kind, change.name)
                if change.value is None:
                    replayed.pop(key, None)
                else:
                    replayed[key] = _canonical(change.value)
                written_at[key] = serial
        return (replayed if readable else None), written_at, last

    # -- the records -----------------------------------------------------------------

    def _records(
        self, db: sqlite3.Connection, last: int
    ) -> tuple[dict[Key, Any], dict[Key, object]]:
        """Each record's value (as JSON reads it) and the serial it is marked with."""
        records: dict[Key, Any] = {}
        serials: dict[Key, object] = {}
        for kind, name, value, serial in db.execute(
            "SELECT kind, name, value, serial FROM records ORDER BY kind, name"
        ):
            key = (str(kind), str(name))
            where = f"record {kind} {name!r}"
            if kind not in KINDS:
                self._problem("warning", f"{where}: unknown kind", "unknown kinds")
            try:
                records[key] = _canonical(json.loads(value))
            except (TypeError, ValueError) as e:
                self._problem("error", f"{where}: not JSON: {e}", "bad records")
                records[key] = _UNREADABLE
            if not isinstance(serial, int) or serial > last:
                self._problem(
                    "error",
                    f"{where}: serial {serial} is after the last event's ({last})",
                    "records from the future",
                )
            serials[key] = serial
        return records, serials

    def _compare(
        self,
        replayed: dict[Key, Any],
        written_at: dict[Key, int],
        stored: dict[Key, Any],
        serials: dict[Key, object],
    ) -> None:
        for key in sorted(set(replayed) | set(stored)):
            kind, name = key
            where = f"record {kind} {name!r}"
            if key not in stored:
                self._problem(
                    "error",
                    f"{where}: written by event {written_at[key]} but absent from the records",
                    "record mismatches",
                )
            elif key not in replayed:
                self._problem(
                    "error",
                    f"{where}: in the records but no event leaves it there",
                    "record mismatches",
                )
            elif stored[key] is _UNREADABLE:
                continue  # already reported
            elif stored[key] != replayed[key]:
                self._problem(
                    "error",
                    f"{where}: differs from what event {written_at[key]} wrote",
                    "record mismatches",
                )
            else:
                serial = serials.get(key)
                if serial != written_at[key]:
                    self._problem(
                        "warning",
                        f"{where}: marked serial {serial}, last written by event {written_at[key]}",
                        "serial marks",
                    )

    def _check_references(self, records: Mapping[Key, Any]) -> None:
        users = {name for kind, name in records if kind == "user"}
        indexes = {name: value for (kind, name), value in records.items() if kind == "index"}
        for name, config in sorted(indexes.items()):
            owner, slash, _ = name.partition("/")
            if not slash or owner not in users:
                self._problem(
                    "error", f"index {name!r}: its owner {owner!r} is no user", "orphan indexes"
                )
            if not isinstance(config, Mapping) or config.get("type") == "mirror":
                continue
            bases = config.get("bases", ())
            for base in bases if isinstance(bases, list) else ():
                if base not in indexes:
                    self._problem(
                        "warning", f"index {name!r}: its base {base!r} is no index", "lost bases"
                    )
        for (kind, name), value in sorted(records.items()):
            if kind == "token" and isinstance(value, Mapping) and value.get("user") not in users:
                self._problem(
                    "warning",
                    f"token {name!r}: its user {value.get('user')!r} is no user",
                    "orphan tokens",
                )
            elif kind == "version" and name.rsplit("/", 2)[0] not in indexes:
                self._problem(
                    "warning", f"version {name!r}: its index is no index", "orphan versions"
                )


class _Unreadable:
    """A record whose value is not JSON (reported once, never compared)."""


_UNREADABLE = _Unreadable()


def _canonical(value: object) -> Any:
    """A JSON value as JSON sees it: key order and tuple-vs-list do not matter."""
    return json.loads(json.dumps(value, sort_keys=True))
