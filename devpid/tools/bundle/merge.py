"""A bundle's records against the target's: added, the same, replaced, or in conflict.

The target's private data is read in one snapshot (``read_target``) through SQLite
without creating anything (``mode=rw``: an absent database stays absent, and the last
reader's close leaves no ``-wal``/``-shm`` behind), so a refused import leaves the
serverdir byte for byte as it was. The plan (``plan_import``) is made twice: on that
snapshot, to refuse early and say why, and again inside the one transaction that writes
the records (``lookup`` then reads the transaction), so a devpid serving the target
meanwhile cannot make the import overwrite what it just wrote.

Rules (docs/bundle-format.md, "Import rules"):

- a record the target lacks is added; an identical one is the same (nothing written);
- without ``--merge`` the target must be new: every record it has is either one of what
  ``devpid init`` or the first start made (serial 0, root with an empty password,
  root/pypi), which the bundle's replace, or identical to the bundle's (a rerun);
- with ``--merge`` a different record is a conflict; so is a version whose index would
  be a mirror, and one linking a file another version of the target links (one file, one
  version).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from devpid.auth.passwords import verify_password
from devpid.private.database import FILENAME, file_paths, split_version_name
from devpid.private.indexconfig import MIRROR
from devpid.private.init import ROOT, ROOT_PYPI

#: The one event ``devpid init`` and the first start write.
INITIALIZE = "initialize"
_BUSY_TIMEOUT_S = 10.0

Key = tuple[str, str]
Lookup = Callable[[str, str], Mapping[str, Any] | None]


@attrs.frozen
class Record:
    """One line of ``records.jsonl``."""

    kind: str
    name: str
    value: Mapping[str, Any]

    @property
    def key(self) -> Key:
        return (self.kind, self.name)


def canonical(value: object) -> str:
    """A JSON value as one comparable string: key order and tuple-vs-list do not matter."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@attrs.frozen
class TargetSnapshot:
    """The target's records in one read, and which of them the bundle's may replace."""

    records: Mapping[Key, Mapping[str, Any]] = attrs.field(factory=dict)
    serial: int = -1
    #: The records still exactly as ``devpid init`` made them (root's password empty).
    replaceable: frozenset[Key] = frozenset()

    def lookup(self, kind: str, name: str) -> Mapping[str, Any] | None:
        return self.records.get((kind, name))

    def files(self) -> dict[str, str]:
        """Every file a version links -> that version's name."""
        linked: dict[str, str] = {}
        for (kind, name), value in self.records.items():
            if kind == "version":
                for path in file_paths(value):
                    linked[path] = name
        return linked


def read_target(serverdir: Path) -> TargetSnapshot:
    """The target's private data as it is now (empty when it has none); ``sqlite3.Error``
    when it cannot be read."""
    path = serverdir / FILENAME
    if not path.is_file():
        return TargetSnapshot()
    uri = f"file:{quote(str(path.absolute()))}?mode=rw"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
    try:
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master")}
        if not {"records", "events"} <= tables:
            return TargetSnapshot()
        db.execute("BEGIN")  # one snapshot
        try:
            rows = db.execute("SELECT kind, name, value, serial FROM records").fetchall()
            events = db.execute(
                "SELECT serial, what FROM events ORDER BY serial DESC LIMIT 2"
            ).fetchall()
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()
    records = {(str(k), str(n)): json.loads(v) for k, n, v, _serial in rows}
    serial = int(events[0][0]) if events else -1
    first_is_init = bool(events) and int(events[-1][0]) == 0 and events[-1][1] == INITIALIZE
    untouched = {(str(k), str(n)) for k, n, _v, s in rows if s == 0} if first_is_init else set()
    replaceable = untouched & {("user", ROOT), ("index", ROOT_PYPI)}
    root = records.get(("user", ROOT))
    if ("user", ROOT) in replaceable:
        pwhash = root.get("pwhash") if isinstance(root, Mapping) else None
        if not isinstance(pwhash, str) or not verify_password(pwhash, ""):
            replaceable = set()  # someone chose root's password: not a fresh serverdir
    return TargetSnapshot(records, serial, frozenset(replaceable))


@attrs.frozen
class Conflict:
    kind: str
    name: str
    why: str

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.why}"


@attrs.define
class Plan:
    """What importing the bundle's records does to the target."""

    #: Written: absent from the target, or replacing what ``devpid init`` made.
    added: list[Record] = attrs.field(factory=list)
    same: list[Record] = attrs.field(factory=list)
    conflicts: list[Conflict] = attrs.field(factory=list)
    #: Without --merge: target records that are neither the bundle's nor init's (one line each).
    in_use: list[str] = attrs.field(factory=list)

    @property
    def written_keys(self) -> frozenset[Key]:
        return frozenset(r.key for r in self.added)


def plan_import(
    records: Iterable[Record],
    lookup: Lookup,
    linked_by: Callable[[str], str | None],
    target_keys: Iterable[Key],
    replaceable: frozenset[Key],
    merge: bool,
) -> Plan:
    """Sort the bundle's ``records`` against the target, read through ``lookup`` (a
    snapshot's, or a transaction's ``get``); ``linked_by`` names the target's version
    linking a file; ``target_keys`` is every record the target has."""
    plan = Plan()
    ours = {r.key: r for r in records}
    for record in ours.values():
        current = lookup(record.kind, record.name)
        if current is None:
            plan.added.append(record)
        elif canonical(current) == canonical(record.value):
            plan.same.append(record)
        elif record.key in replaceable:
            plan.added.append(record)
        else:
            plan.conflicts.append(Conflict(record.kind, record.name, "differs in the target"))
    if not merge:
        for key in sorted(target_keys):
            if key in replaceable:
                continue
            mine = ours.get(key)
            current = lookup(*key)
            if mine is None or canonical(mine.value) != canonical(current):
                plan.in_use.append(f"{key[0]} {key[1]}")
    written = {r.key: r for r in plan.added}
    _version_conflicts(plan, written, lookup, linked_by)
    return plan


def _version_conflicts(
    plan: Plan,
    written: dict[Key, Record],
    lookup: Lookup,
    linked_by: Callable[[str], str | None],
) -> None:
    """Versions that cannot be added even though the target lacks them: their index would be
    a mirror, or a file they link belongs to another version of the target."""
    kept: list[Record] = []
    for record in plan.added:
        if record.kind != "version":
            kept.append(record)
            continue
        index = split_version_name(record.name)[0]
        config = written[("index", index)].value if ("index", index) in written else None
        if config is None:
            config = lookup("index", index)
        if config is not None and config.get("type") == MIRROR:
            plan.conflicts.append(
                Conflict("version", record.name, f"its index {index} is a mirror in the target")
            )
            continue
        clash = next(
            (
                (path, other)
                for path in file_paths(record.value)
                if (other := linked_by(path)) is not None and other != record.name
            ),
            None,
        )
        if clash is not None:
            plan.conflicts.append(
                Conflict("version", record.name, f"{clash[0]} belongs to {clash[1]} in the target")
            )
            continue
        kept.append(record)
    plan.added = kept
