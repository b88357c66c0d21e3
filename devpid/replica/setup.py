"""Replication's parts for ``tap``: a primary's ``/+replica`` routes, or a replica's follower.

``tap.build_service`` calls ``for_primary`` (every devpid without
``--primary-url``: with ``--replication-secret-file`` it answers replicas, else
its ``/+replica`` routes are 404) or ``for_replica``; the ``Replication`` it gets
back is what the app, ``/+status`` and the service tree need of replication.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import treq.client
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.resource import IResource
from twisted.web.server import Request

from devpid.common.pool import QuietPool
from devpid.common.stats import Stats
from devpid.files.releases import ReleaseFiles
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.upstream import UpstreamClient
from devpid.ops.status import PrivateStatus
from devpid.private.data import PrivateData
from devpid.private.database import META_PRIMARY_UUID, DatabaseError, PrivateDatabase
from devpid.replica.client import PrimaryClient, SignedHTTP
from devpid.replica.feed import EventFeed, FeedService
from devpid.replica.files import ReplicaDownloads, ReplicaFiles
from devpid.replica.follower import Follower, FollowerService
from devpid.replica.readonly import ReadOnlyReplica
from devpid.replica.secret import ReplicationSecret, SecretError
from devpid.replica.state import (
    LOCK_FILE,
    STATUS_FILE,
    FollowerLease,
    ReplicaState,
    read_saved,
    status_of,
)
from devpid.routes.replica import ReplicaRoutes

_log = Logger()


class ReplicaSetupError(Exception):
    """Replication cannot start as configured; the message is one line."""


def load_secret(path: Path | None) -> ReplicationSecret | None:
    if path is None:
        return None
    try:
        return ReplicationSecret.from_file(path)
    except SecretError as e:
        raise ReplicaSetupError(str(e)) from None


def open_replica_data(path: Path, cache_expiry: int, primary_url: str) -> PrivateData:
    """A replica's private data: opened, marked read-only, never initialised (its
    first records are the primary's)."""
    database = PrivateDatabase(path)
    database.open()
    before = database.mark_replica(primary_url)
    if before is None:
        _log.info("this serverdir is a read-only replica of {url}", url=primary_url)
    elif before != primary_url:
        _log.warn(
            "this serverdir followed {old}; it follows {url} now", old=before, url=primary_url
        )
    return PrivateData(database, default_cache_expiry=cache_expiry)


def promote_if_replica(path: Path) -> None:
    """Without ``--primary-url``, a serverdir that was a replica becomes writable: the
    way to promote a replica when its primary is lost."""
    if not path.exists():
        return
    database = PrivateDatabase(path)
    try:
        database.connect()  # the mark only: the records are read by the caller's open
        before = database.mark_replica(None)
    except DatabaseError:
        return  # opened again, and reported, by the caller
    finally:
        database.close()
    if before is not None:
        _log.warn(
            "this serverdir was a read-only replica of {url}; started without --primary-url, "
            "it takes writes now (promoted)",
            url=before,
        )


@attrs.define
class Replication:
    """What the app and the service tree need of replication, primary or replica."""

    routes: ReplicaRoutes
    primary_url: str | None = None
    files: ReplicaFiles | None = None
    state: ReplicaState | None = None
    service: IService | None = None
    data: PrivateData | None = None
    wall_clock: Callable[[], float] | None = None
    _known_primary: tuple[int, str | None] = (-2, None)

    def wrap(self, resource: IResource) -> IResource:
        """The app's resource, refusing writes on a replica."""
        if self.primary_url is None:
            return resource
        return ReadOnlyReplica(resource, self.primary_url)

    @property
    def missing_stage_file(self) -> Callable[[Request, str], Awaitable[Any]] | None:
        """Streams a linked stage file not on disk yet from the primary (a replica's)."""
        return self.files.serve if self.files is not None else None

    def primary_uuid(self) -> str | None:
        """The primary's uuid on a replica (once heard from); None on a primary."""
        if self.data is None or self.primary_url is None:
            return None
        if self.state is not None and self.state.primary_uuid:
            return self.state.primary_uuid
        serial = self.data.serial  # read again only when the data moved
        if self._known_primary[0] != serial:
            self._known_primary = (serial, self.data.database.meta(META_PRIMARY_UUID))
        return self._known_primary[1]

    def status(self) -> PrivateStatus | None:
        """``role`` and the ``replica`` section of ``/+status`` (None on a primary)."""
        if self.primary_url is None or self.data is None or self.state is None:
            return None
        assert self.wall_clock is not None
        self.data.catch_up()
        following = isinstance(self.service, FollowerService) and self.service.lease.held
        saved = self.state.as_json() if following else read_saved(self.state.path)
        section = status_of(saved, self.primary_url, self.data.serial, self.wall_clock(), following)
        warnings: tuple[str, ...] = ()
        if section["state"] == "disconnected":
            warnings = (f"the replica is disconnected from its primary: {section['last_error']}",)
        return PrivateStatus({"role": "REPLICA", "replica": section}, warnings)


def for_primary(
    data: PrivateData,
    files: ReleaseFiles,
    clock: Any,
    offload: Callable[[Callable[[], Any]], Deferred[Any]],
    secret: ReplicationSecret | None,
) -> Replication:
    feed = EventFeed(data.database, clock)
    if secret is None:
        return Replication(ReplicaRoutes(data, files, feed, clock, offload, None))
    data.database.listeners.append(feed.heard)
    routes = ReplicaRoutes(data, files, feed, clock, offload, secret)
    return Replication(routes, service=FeedService(feed))


@attrs.frozen
class ReplicaParts:
    """What ``for_replica`` needs from ``tap``."""

    data: PrivateData
    release_files: ReleaseFiles
    stats: Stats
    peers: SharedDownloads | None
    clock: Any
    offload: Callable[[Callable[[], Any]], Deferred[Any]]
    timeout: float
    via: str
    #: Removes the stage files nothing links (after a resync).
    sweep: Callable[[], object]
    wall_clock: Callable[[], float] = time.time


def for_replica(parts: ReplicaParts, primary_url: str, secret: ReplicationSecret) -> Replication:
    clock = parts.clock
    pool = QuietPool(clock, persistent=True)
    pool.maxPersistentPerHost = 8
    agent = Agent(clock, connectTimeout=parts.timeout, pool=pool)
    http = SignedHTTP(treq.client.HTTPClient(agent), secret, clock)
    client = PrimaryClient(primary_url, http, clock)
    store = parts.release_files.store
    serverdir = store.serverdir
    state = ReplicaState(primary_url, serverdir / STATUS_FILE, parts.wall_clock)
    upstream = UpstreamClient(primary_url, http, clock, parts.timeout, via=parts.via)
    downloads = ReplicaDownloads(
        store, upstream, clock, parts.timeout, parts.stats, peers=parts.peers
    )
    files = ReplicaFiles(parts.data, parts.release_files, downloads, client, state)
    follower = Follower(parts.data, client, files, state, clock, sweep=parts.sweep)
    service = FollowerService(follower, FollowerLease(serverdir / LOCK_FILE), clock, pool)
    routes = ReplicaRoutes(
        parts.data, parts.release_files, EventFeed(parts.data.database, clock), clock, parts.offload
    )
    return Replication(
        routes,
        primary_url=primary_url,
        files=files,
        state=state,
        service=service,
        data=parts.data,
        wall_clock=parts.wall_clock,
    )
