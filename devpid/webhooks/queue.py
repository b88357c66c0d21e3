"""The durable queue of deliveries: ``webhooks.sqlite`` in the serverdir.

Every process sharing the serverdir uses the same file. Three things make a
delivery happen once and in order:

- **Nothing is lost between commit and queue.** The queue remembers the last
  serial of the event log it has queued (``meta.last_serial``) in the same
  transaction as the deliveries it queued for the events up to there. Any
  process, at any time, queues what follows that serial: an event committed
  by a process that died before queueing it is queued by the next pass, and
  a pass that finds nothing new writes nothing (queueing is idempotent).
- **One sender at a time.** A process claims a delivery (``BEGIN IMMEDIATE``,
  then ``claimed_by`` and ``claimed_until``) before it sends it; nobody else
  claims it while that lease runs, and a dead claimer's lease runs out.
- **In serial order per URL.** Only the oldest pending delivery of each URL
  (``target``, the URL as configured) may be claimed: a URL that fails holds
  back its later deliveries, and only its own, until it answers or the first
  one is given up.

Deliveries are ``pending``, then ``delivered`` (a 2xx) or ``failed`` (still
failing ``retry_for`` seconds after it was queued). Finished rows are pruned
after a while; the counters of each kind live in ``meta`` and survive pruning.
``synchronous=FULL``: a queued delivery survives ``kill -9`` and power cuts.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

FILENAME = "webhooks.sqlite"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery TEXT NOT NULL UNIQUE,
    serial INTEGER NOT NULL,
    event TEXT NOT NULL,
    index_name TEXT NOT NULL,
    target TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    signature TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_at REAL NOT NULL,
    claimed_by TEXT,
    claimed_until REAL,
    last_error TEXT,
    done_at REAL,
    UNIQUE (serial, index_name, target));
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state, target, id);
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (state, done_at);
"""

#: The deliveries' states.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def delivery_id(server_uuid: str, serial: int, index: str, target: str) -> str:
    """``X-Devpid-Delivery``: the same for every attempt of one event to one URL, and for
    the same delivery queued again (so a receiver can tell a repeat from a new event)."""
    text = f"{server_uuid}\n{serial}\n{index}\n{target}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class QueueError(Exception):
    """The queue cannot be read or written; the message is one line."""


@attrs.frozen
class NewDelivery:
    """A delivery to queue: one webhook event for one URL of its index."""

    delivery: str
    serial: int
    event: str
    index: str
    #: The URL as configured (deliveries to one target go in order).
    target: str
    #: The URL to POST to (its placeholders replaced).
    url: str
    body: bytes
    signature: str | None


@attrs.frozen
class Claimed:
    """A delivery this process holds the lease of."""

    id: int
    delivery: str
    serial: int
    event: str
    index: str
    target: str
    url: str
    body: bytes
    signature: str | None
    attempts: int
    created: float


@attrs.frozen
class RetryPolicy:
    """Exponential back-off (1 s, 2 s, 4 s, ... up to ``backoff_max``) for ``retry_for``."""

    retry_for: float = 24 * 3600.0
    backoff_max: float = 300.0

    def next_attempt(self, attempts: int, created: float, now: float) -> float | None:
        """When to try again after ``attempts`` failed attempts; None: give up."""
        deadline = created + self.retry_for
        if now >= deadline:
            return None
        delay = min(self.backoff_max, 2.0 ** min(attempts - 1, 30))
        return min(now + delay, deadline)


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise QueueError(f"webhook queue {path}: {e}") from None


@attrs.define
class WebhookQueue:
    path: Path
    _db: sqlite3.Connection | None = None

    @classmethod
    def in_serverdir(cls, serverdir: Path) -> WebhookQueue:
        return cls(serverdir / FILENAME)

    def open(self, start_serial: int) -> None:
        """Open (creating if needed); a new queue starts after ``start_serial``: the events
        before it were never anyone's to deliver."""
        if self._db is not None:
            return
        with _translated(self.path):
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('last_serial', ?)",
                (str(start_serial),),
            )
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError(f"webhook queue {self.path} is not open")
        return self._db

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        db = self.db
        with _translated(self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _count(self, key: str, by: int = 1) -> None:
        self._set_meta(key, str(int(self._meta(key) or 0) + by))

    # -- queueing ---------------------------------------------------------------

    def last_serial(self) -> int:
        with _translated(self.path):
            return int(self._meta("last_serial") or -1)

    def enqueue(self, read: Callable[[int], tuple[Iterable[NewDelivery], int]], now: float) -> int:
        """Queue what follows the last queued serial, in one transaction.

        ``read(last_serial)`` gives the deliveries of the events after it and the
        serial it read up to. Returns how many deliveries were queued.
        """
        queued = 0
        with self._writing() as db:
            last = int(self._meta("last_serial") or -1)
            deliveries, upto = read(last)
            for d in deliveries:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery, serial, event, index_name, "
                    "target, url, body, signature, created, next_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.delivery,
                        d.serial,
                        d.event,
                        d.index,
                        d.target,
                        d.url,
                        d.body,
                        d.signature,
                        now,
                        now,
                    ),
                )
                queued += cursor.rowcount
            if upto > last:
                self._set_meta("last_serial", str(upto))
        return queued

    def restart_at(self, serial: int) -> None:
        """Queue from ``serial`` on (the event log went back: a restored backup)."""
        with self._writing():
            self._set_meta("last_serial", str(serial))

    # -- claiming and finishing -------------------------------------------------------

    def claim(self, owner: str, now: float, lease: float, limit: int) -> list[Claimed]:
        """Up to ``limit`` deliveries due now, each the oldest pending one of its URL and
        claimed by nobody (or by a lease that ran out), now ``owner``'s until
        ``now + lease``."""
        if limit <= 0:
            return []
        with self._writing() as db:
            rows = db.execute(
                "SELECT d.id, d.delivery, d.serial, d.event, d.index_name, d.target, d.url, "
                "d.body, d.signature, d.attempts, d.created FROM deliveries d "
                "JOIN (SELECT MIN(id) AS id FROM deliveries WHERE state = 'pending' "
                "GROUP BY target) head ON d.id = head.id "
                "WHERE d.next_at <= ? AND (d.claimed_until IS NULL OR d.claimed_until <= ?) "
                "ORDER BY d.id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE deliveries SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                    (owner, now + lease, row[0]),
                )
        return [
            Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), r[8], r[9], r[10])
            for r in rows
        ]

    def _holding(self, db: sqlite3.Connection, claimed: Claimed, owner: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM deliveries WHERE id = ? AND state = 'pending' AND claimed_by = ?",
            (claimed.id, owner),
        ).fetchone()
        return row is not None

    def delivered(self, claimed: Claimed, owner: str, now: float) -> bool:
        """Mark ``claimed`` delivered; False if it was no longer ``owner``'s."""
        with self._writing() as db:
            if not self._holding(db, claimed, owner):
                return False
            db.execute(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, "
                "claimed_by = NULL, claimed_until = NULL, done_at = ? WHERE id = ?",
                (now, claimed.id),
            )
            self._count("delivered")
            self._set_meta("last_delivered_at", repr(now))
        return True

    def attempt_failed(
        self, claimed: Claimed, owner: str, now: float, error: str, policy: RetryPolicy
    ) -> str | None:
        """Record a failed attempt: retried later, or ``failed`` once ``policy`` gives up.
        The state it is left in (None if it was no longer ``owner``'s)."""
        attempts = claimed.attempts + 1
        retry_at = policy.next_attempt(attempts, claimed.created, now)
        with self._writing() as db:
            if not self._holding(db, claimed, owner):
                return None
            if retry_at is None:
                db.execute(
                    "UPDATE deliveries SET state = 'failed', attempts = ?, last_error = ?, "
                    "claimed_by = NULL, claimed_until = NULL, done_at = ? WHERE id = ?",
                    (attempts, error, now, claimed.id),
                )
                self._count("failed")
            else:
                db.execute(
                    "UPDATE deliveries SET attempts = ?, last_error = ?, next_at = ?, "
                    "claimed_by = NULL, claimed_until = NULL WHERE id = ?",
                    (attempts, error, retry_at, claimed.id),
                )
            self._count("attempts_failed")
            last_error = {"at": now, "url": claimed.target, "error": error}
            self._set_meta("last_error", json.dumps(last_error))
        return FAILED if retry_at is None else PENDING

    def release(self, claimed: Claimed, owner: str) -> bool:
        """Give the lease of ``claimed`` back unsent (this process is stopping): any
        process may claim it at once."""
        with self._writing() as db:
            if not self._holding(db, claimed, owner):
                return False
            db.execute(
                "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL WHERE id = ?",
                (claimed.id,),
            )
        return True

    def cancel(self, claimed: Claimed, owner: str, now: float, reason: str) -> bool:
        """Give ``claimed`` up without sending it (its URL left the index): ``failed``."""
        with self._writing() as db:
            if not self._holding(db, claimed, owner):
                return False
            db.execute(
                "UPDATE deliveries SET state = 'failed', last_error = ?, claimed_by = NULL, "
                "claimed_until = NULL, done_at = ? WHERE id = ?",
                (reason, now, claimed.id),
            )
            self._count("failed")
        return True

    # -- reading -------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The counts ``/+status`` shows: a COUNT on the state index and ``meta``'s counters."""
        with _translated(self.path):
            pending = self.db.execute(
                "SELECT COUNT(*), MIN(created) FROM deliveries WHERE state = 'pending'"
            ).fetchone()
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        last_error = json.loads(meta["last_error"]) if "last_error" in meta else None
        delivered_at = meta.get("last_delivered_at")
        return {
            "pending": int(pending[0]),
            "oldest_pending_at": pending[1],
            "delivered": int(meta.get("delivered", 0)),
            "failed": int(meta.get("failed", 0)),
            "attempts_failed": int(meta.get("attempts_failed", 0)),
            "last_serial": int(meta.get("last_serial", -1)),
            "last_delivered_at": None if delivered_at is None else float(delivered_at),
            "last_error": last_error,
        }

    def deliveries(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every row (oldest first), for tests and ``fsck``-like looks."""
        query = (
            "SELECT id, delivery, serial, event, index_name, target, url, state, attempts, "
            "last_error FROM deliveries"
        )
        args: tuple[Any, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            args = (state,)
        names = (
            "id",
            "delivery",
            "serial",
            "event",
            "index",
            "target",
            "url",
            "state",
            "attempts",
            "last_error",
        )
        with _translated(self.path):
            rows = self.db.execute(query + " ORDER BY id", args).fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def prune(self, before: float) -> int:
        """Drop finished deliveries done before ``before``; how many went."""
        with self._writing() as db:
            cursor = db.execute(
                "DELETE FROM deliveries WHERE state IN ('delivered', 'failed') AND done_at < ?",
                (before,),
            )
        return int(cursor.rowcount)
