"""The primary's side of replication: waiting for events after a serial, and snapshots.

A replica's long poll waits here until the primary's serial passes the one it
asked after, or the poll's time is up. This process hears its own commits at
once (a database listener); another worker's commits reach it through
``catch_up``, which a timer calls every ``POLL_INTERVAL`` while anybody waits
(one ``PRAGMA data_version`` each time). Nothing runs while nobody waits.

``dump_snapshot`` writes every record and event of one read transaction, on a
connection of its own (it runs in a thread; the process's connection stays free
for requests), to a file the route then sends.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import IO
from urllib.parse import quote

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from devpid.private.database import PrivateDatabase
from devpid.private.events import Event
from devpid.replica.wire import snapshot_lines

#: Seconds between looks at the database while a replica waits (another worker's commits).
POLL_INTERVAL = 0.05
#: The longest a long poll may wait before it is answered with no events.
MAX_WAIT = 60.0
#: Events and (roughly) bytes of one feed answer: a replica far behind asks again.
MAX_EVENTS = 1000
MAX_BYTES = 8 << 20


@attrs.define
class EventFeed:
    database: PrivateDatabase
    clock: IReactorTime
    _waiters: list[Deferred[None]] = attrs.field(factory=list)
    _poll: LoopingCall | None = None
    #: Set at shutdown: long polls are answered at once, so they do not hold it up.
    stopped: bool = False
    log = Logger()

    def stop(self) -> None:
        self.stopped = True
        self.heard(None)

    def heard(self, event: Event | None) -> None:
        """A database listener: wake every waiter."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        self._stop_polling()

    async def wait_after(self, serial: int, timeout: float) -> None:
        """Return once the database is past ``serial``, or after ``timeout`` seconds."""
        self.database.catch_up()
        if self.database.serial > serial or timeout <= 0 or self.stopped:
            return
        waiter: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiters.append(waiter)
        timer = self.clock.callLater(timeout, self._time_up, waiter)
        self._start_polling()
        try:
            await waiter
        finally:
            if timer.active():
                timer.cancel()
            self._forget(waiter)

    def _time_up(self, waiter: Deferred[None]) -> None:
        self._forget(waiter)
        if not waiter.called:
            waiter.callback(None)

    def _forget(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not self._waiters:
            self._stop_polling()

    def _start_polling(self) -> None:
        if self._poll is None:
            self._poll = LoopingCall(self._look)
            self._poll.clock = self.clock
            self._poll.start(POLL_INTERVAL, now=False)

    def _stop_polling(self) -> None:
        if self._poll is not None and not self._waiters:
            poll, self._poll = self._poll, None
            if poll.running:
                poll.stop()

    def _look(self) -> None:
        try:
            self.database.catch_up()  # another worker's commit reaches ``heard``
        except Exception:
            self.log.failure("looking for new events for the replicas")

    def events_after(self, serial: int) -> list[Event]:
        """The events after ``serial`` one answer carries (at least one when there are any)."""
        events = self.database.events_since(serial, MAX_EVENTS)
        size = 0
        for count, event in enumerate(events):
            size += len(event.changes_json())
            if size > MAX_BYTES and count:
                return events[:count]
        return events


class FeedService(Service):
    """Answers the replicas' waiting long polls when the primary stops."""

    name = "replica-feed"

    def __init__(self, feed: EventFeed) -> None:
        self.feed = feed

    def stopService(self) -> None:
        super().stopService()
        self.feed.stop()


def dump_snapshot(path: Path, out: IO[bytes]) -> int:
    """Write every record and event of ``path`` (one read transaction) to ``out``;
    the serial it was taken at. Blocking: for a thread."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
    try:
        db.execute("BEGIN")
        row = db.execute("SELECT value FROM meta WHERE key = 'uuid'").fetchone()
        last = db.execute("SELECT MAX(serial) FROM events").fetchone()
        serial = -1 if last is None or last[0] is None else int(last[0])
        records = db.execute("SELECT kind, name, value, serial FROM records ORDER BY kind, name")
        events = (
            Event.from_row(tuple(r))
            for r in db.execute("SELECT serial, at, who, what, changes FROM events ORDER BY serial")
        )
        # two cursors of one connection, one transaction: one moment of the database
        records_list = records.fetchall()
        for line in snapshot_lines(str(row[0]), serial, records_list, events):
            out.write(line)
        db.execute("COMMIT")
    finally:
        db.close()
    out.flush()
    return serial
