"""The embedded state store: one SQLite file in the serverdir, no server needed.

SQLite calls are made on the reactor thread: each is a single indexed row
operation on a local file in WAL mode, which takes microseconds, far less than
handing it to a thread would cost.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from devpid.store import StoreUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sets (name TEXT NOT NULL, member TEXT NOT NULL,
                                 PRIMARY KEY (name, member));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
                                  expires REAL NOT NULL);
"""


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """A full disk (or an I/O error) makes a write fail as an absent Redis would:
    ``StoreUnavailable``, which callers degrade around."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise StoreUnavailable(f"the embedded store cannot write: {e}") from None


@attrs.define
class EmbeddedStore:
    path: Path
    clock: IReactorTime
    _db: sqlite3.Connection | None = None

    @property
    def description(self) -> str:
        return f"embedded (sqlite: {self.path})"

    def health(self) -> dict[str, Any]:
        return {"state": "embedded"}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the embedded store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def get_document(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM documents WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    async def set_document(self, key: str, document: dict[str, Any]) -> None:
        with _writing():
            self.db.execute(
                "INSERT OR REPLACE INTO documents (key, value) VALUES (?, ?)",
                (key, json.dumps(document, separators=(",", ":"))),
            )

    async def delete_document(self, key: str) -> None:
        with _writing():
            self.db.execute("DELETE FROM documents WHERE key = ?", (key,))

    async def add_to_set(self, name: str, *members: str) -> None:
        with _writing():
            self.db.executemany(
                "INSERT OR IGNORE INTO sets (name, member) VALUES (?, ?)",
                [(name, m) for m in members],
            )

    async def remove_from_set(self, name: str, *members: str) -> None:
        with _writing():
            self.db.executemany(
                "DELETE FROM sets WHERE name = ? AND member = ?", [(name, m) for m in members]
            )

    async def set_members(self, name: str) -> set[str]:
        rows = self.db.execute("SELECT member FROM sets WHERE name = ?", (name,))
        return {row[0] for row in rows}

    async def increment(self, counters: dict[str, int]) -> None:
        with _writing(), self.db:
            self.db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(counters.items()),
            )

    async def counters(self) -> dict[str, int]:
        return {name: value for name, value in self.db.execute("SELECT name, value FROM counters")}

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = self.clock.seconds()
        with _writing(), self.db:
            row = self.db.execute(
                "SELECT owner, expires FROM locks WHERE name = ?", (name,)
            ).fetchone()
            if row and row[0] != owner and row[1] > now:
                return False
            self.db.execute(
                "INSERT OR REPLACE INTO locks (name, owner, expires) VALUES (?, ?, ?)",
                (name, owner, now + ttl),
            )
        return True

    async def release_lock(self, name: str, owner: str) -> None:
        with _writing():
            self.db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))

    async def lock_owner(self, name: str) -> str | None:
        row = self.db.execute(
            "SELECT owner FROM locks WHERE name = ? AND expires > ?", (name, self.clock.seconds())
        ).fetchone()
        return row[0] if row else None

    async def publish(self, message: dict[str, Any]) -> None:
        """Nobody to tell: processes sharing a serverdir need --redis to hear each other."""
