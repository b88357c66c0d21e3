"""The replica's loop: long-poll the primary, apply its events in order, resync when needed.

Each step asks the primary for the events after the local serial (waiting up
to ``WAIT`` seconds for new ones) and decides from the answer:

- the primary's uuid is not the one recorded, its serial is below ours, its
  event at our serial is not ours (a restored primary that went on past us),
  it lacks the events after ours, or we are more than ``RESYNC_BEHIND``
  events behind: **resync** — fetch a snapshot and replace every record and
  event in one transaction (``PrivateDatabase.replace_all``);
- otherwise apply the events (``apply_replicated``: one transaction, each
  event with the primary's serial, checked to be the next one while holding
  the write lock), then fetch the files they link and remove those they
  unlinked.

Whatever fails — the primary away, an answer that does not parse, an event
out of order — is logged once per kind, nothing of it is applied, and the
next step waits a back-off (``BACKOFF_FIRST`` doubling to ``BACKOFF_MAX``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from devpid.private.data import PrivateData
from devpid.private.database import (
    META_PRIMARY_UUID,
    DatabaseError,
    OutOfOrder,
    PrimaryChanged,
    file_paths,
)
from devpid.private.events import Event
from devpid.replica.client import FeedAnswer, PrimaryClient, PrimaryUnreachable
from devpid.replica.files import ReplicaFiles, wanted_of
from devpid.replica.state import FollowerLease, ReplicaState
from devpid.replica.wire import FeedError, parse_events, parse_snapshot

#: Seconds the primary may hold a long poll.
WAIT = 25.0
#: Events behind the primary beyond which a snapshot is fetched instead.
RESYNC_BEHIND = 10_000
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: Seconds between tries for the lease by a worker that does not follow.
LEASE_RETRY = 5.0


class NeedsResync(Exception):
    """The replica's data cannot continue the primary's history; the message says why."""


@attrs.define
class Follower:
    data: PrivateData
    client: PrimaryClient
    files: ReplicaFiles
    state: ReplicaState
    clock: IReactorTime
    #: Removes the files of stages no record links (after a resync).
    sweep: Callable[[], object] = lambda: None
    wait: float = WAIT
    #: Set when the service stops: what fails then is the stop, not the primary.
    stopping: bool = False
    _backoff: float = 0.0
    _last_problem: str = ""
    log = Logger()

    @property
    def database(self) -> Any:
        return self.data.database

    async def step(self) -> float:
        """One long poll and what follows it; the seconds to wait before the next."""
        try:
            serial = self.data.serial
            primary = self.database.meta(META_PRIMARY_UUID)
            mark = self.database.event_mark(serial) if serial >= 0 else None
            answer = await self.client.events(serial, self.wait, primary, mark)
            try:
                await self._take(answer)
            except NeedsResync as e:
                await self.resync(str(e))
        except CancelledError:
            raise
        except PrimaryUnreachable as e:
            if self.stopping:
                raise CancelledError() from None
            return self._problem(f"the primary is unreachable: {e}", disconnected=True)
        except (FeedError, OutOfOrder) as e:
            return self._problem(f"the primary's answer was not applied: {e}")
        except DatabaseError as e:
            return self._problem(f"cannot apply the primary's events: {e}")
        self._backoff = 0.0
        if self._last_problem:
            self.log.info("following the primary again at serial {serial}", serial=self.data.serial)
            self._last_problem = ""
        return 0.0

    def _problem(self, reason: str, disconnected: bool = False) -> float:
        if disconnected:
            self.state.failed(reason)
        else:
            self.state.last_error = reason
            self.state.save(force=True)
        if reason != self._last_problem:
            self.log.warn("{reason}; trying again with back-off", reason=reason)
            self._last_problem = reason
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, self._backoff * 2))
        return self._backoff

    async def _take(self, answer: FeedAnswer) -> None:
        database = self.database
        database.catch_up()
        serial = database.serial
        self.state.contact(answer.uuid, answer.serial, serial)
        recorded = database.meta(META_PRIMARY_UUID)
        if recorded is None and serial >= 0:
            raise NeedsResync("this serverdir holds private data that is not the primary's")
        if recorded is not None and recorded != answer.uuid:
            raise NeedsResync(
                f"the primary's uuid changed ({recorded} -> {answer.uuid}): restored or replaced"
            )
        if answer.serial < serial:
            raise NeedsResync(f"the primary's serial {answer.serial} is below ours ({serial})")
        if serial >= 0 and answer.since_mark != database.event_mark(serial):
            raise NeedsResync(f"the primary's event {serial} is not ours: its history differs")
        if answer.serial - serial > RESYNC_BEHIND:
            raise NeedsResync(f"{answer.serial - serial} events behind the primary")
        events = parse_events(answer.body)
        if events and events[0].serial > serial + 1:
            raise NeedsResync(f"the primary no longer has the events after {serial}")
        if events:
            try:
                self._apply(events, answer.uuid)
            except PrimaryChanged as e:
                raise NeedsResync(str(e)) from None
        self.files.retry_failed()

    def _apply(self, events: list[Event], primary_uuid: str) -> None:
        before = self.database.records.of("version")
        touched: set[str] = set()
        for event in events:
            for change in event.changes:
                if change.kind == "version":
                    touched.update(file_paths(before.get(change.name)))
                    touched.update(file_paths(change.value))
        applied = self.database.apply_replicated(events, primary_uuid)
        self.state.events_applied += len(applied)
        self.state.applied(self.database.serial)
        versions = self.database.records.of("version")
        for event in applied:
            for change in event.changes:
                if change.kind == "version":
                    self.files.want(wanted_of(versions.get(change.name)))
        unlinked = [path for path in touched if self.data.version_of_file(path) is None]
        if unlinked:
            self.files.removed(unlinked)

    async def resync(self, reason: str) -> None:
        """Replace every record and event with the primary's snapshot, in one transaction."""
        self.log.warn("resyncing from the primary's snapshot: {reason}", reason=reason)
        self.state.state = "resyncing"
        self.state.save(force=True)
        directory = self.database.path.parent
        fd, name = tempfile.mkstemp(prefix=".replica-snapshot-", dir=directory)
        os.close(fd)
        path = Path(name)
        try:
            await self.client.snapshot(path)
            with open(path, "rb") as lines:
                snapshot = parse_snapshot(lines)
        finally:
            path.unlink(missing_ok=True)
        self.database.replace_all(snapshot.records, snapshot.events, snapshot.uuid)
        self.state.resyncs += 1
        self.state.state = "following"
        self.state.contact(snapshot.uuid, snapshot.serial, self.database.serial)
        self.log.info(
            "resynced: {records} records and {events} events, serial {serial}",
            records=len(snapshot.records),
            events=len(snapshot.events),
            serial=snapshot.serial,
        )
        self.sweep()
        self.files.want_everything()


class FollowerService(Service):
    """Runs ``Follower.step`` over and over, in the one worker that holds the lease."""

    name = "replica-follower"
    log = Logger()

    def __init__(
        self, follower: Follower, lease: FollowerLease, clock: IReactorTime, pool: Any = None
    ) -> None:
        self.follower = follower
        self.lease = lease
        self.clock = clock
        #: The connection pool to the primary, closed at stop.
        self.pool = pool
        self._loop: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        try:
            while self.running and not self.lease.try_acquire():
                await deferLater(self.clock, LEASE_RETRY)
            if not self.running:
                return
            self.log.info(
                "following the primary {url} from serial {serial}",
                url=self.follower.state.primary_url,
                serial=self.follower.data.serial,
            )
            self.follower.files.want_everything()
            while self.running:
                delay = await self.follower.step()
                if delay and self.running:
                    await deferLater(self.clock, delay)
        except CancelledError:
            return
        except Exception:
            self.log.failure("the replica's follower stopped")

    def stopService(self) -> Any:
        super().stopService()
        self.follower.stopping = True
        if self._loop is not None:
            self._loop.cancel()
        self.lease.release()
        downloads = self.follower.files.downloads
        downloads.abort_all("the replica is stopping")
        drained = downloads.drain()
        if self.pool is not None:
            drained.addBoth(lambda _: self.pool.closeCachedConnections())
        return drained
