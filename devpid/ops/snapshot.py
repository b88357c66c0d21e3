"""One look at this process, gathered once for each ``/+status`` or ``/+metrics``.

``Sources`` holds the objects that keep the state (counters, upstream health,
downloads, peers, the poller, the stores); ``snapshot()`` reads them all at
once into a ``Snapshot``, which ``status`` renders as JSON and ``metrics`` as
Prometheus families: both show the same values and neither imports the other.
What is read of the tee and the poller is a ``Protocol``: ops reads the other
areas, it does not depend on how they work.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from devpid import __version__
from devpid.common.identity import ProcessIdentity
from devpid.common.stats import Stats
from devpid.files.store import CacheCounts, FileStore
from devpid.mirror.upstream import UpstreamHealth
from devpid.ops.health import DiskUsage, Health, judge, statvfs_usage
from devpid.ops.requests import RequestMetrics
from devpid.store import StateStore


class RunningDownload(Protocol):
    def progress(self) -> dict[str, Any]: ...


class Downloads(Protocol):
    """The tee's ``DownloadManager``, as read here."""

    @property
    def running(self) -> Mapping[Any, RunningDownload]: ...


class Peers(Protocol):
    """The tee's ``SharedDownloads``, as read here."""

    @property
    def lock_ttl(self) -> float: ...
    @property
    def takeovers(self) -> int: ...
    @property
    def uncoordinated(self) -> int: ...
    @property
    def lost_locks(self) -> int: ...


class Eviction(Protocol):
    """The ``EvictionService`` (devpid.files.evictor), as read here."""

    def status(self) -> dict[str, Any]: ...


class Poller(Protocol):
    """The ``ChangelogPoller``, as read here."""

    def status(self) -> dict[str, Any]: ...


@attrs.frozen
class PeerCounts:
    lock_ttl: float
    takeovers: int
    uncoordinated: int
    lost_locks: int


def format_address(address: object) -> str:
    """A listening address as ``host:port`` (``[host]:port`` for IPv6, a UNIX socket's path)."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress) and address.name is not None:
        name = address.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


@attrs.frozen
class Snapshot:
    """Values only, copied from the sources: rendering cannot see them move."""

    version: str
    pid: int
    listen: str
    listening_on: str | None
    uptime: float
    serverdir: Path
    #: This process's identity token, when it has one.
    process: str | None
    store: str
    store_health: dict[str, Any]
    upstream_url: str
    offline: bool
    upstream: UpstreamHealth
    cache: CacheCounts
    #: Every process's counters (with Redis), then this process's own increments.
    counters: dict[str, int]
    own: Counter[str]
    disk: DiskUsage | str
    #: The last minute of requests (``SlidingWindow.summary``), when the site records them.
    last_minute: dict[str, Any] | None
    downloads: tuple[dict[str, Any], ...]
    peers: PeerCounts | None
    #: The changelog poller's status, when one runs.
    poller: dict[str, Any] | None
    health: Health
    #: The mirror indexes' cached files, in bytes (None when the mirrors are not known).
    mirror_bytes: int | None = None
    #: The evictor's status, with --cache-max-size.
    eviction: dict[str, Any] | None = None
    #: The serverdir is still being counted at start-up: ``cache`` is not known yet.
    counting: bool = False


@attrs.define
class Sources:
    """The objects that keep what ``/+status`` and ``/+metrics`` show."""

    files: FileStore
    store: StateStore
    stats: Stats
    downloads: Downloads
    upstream_url: str
    upstream_health: UpstreamHealth
    offline: bool
    listen: str
    started_at: float = attrs.field(factory=time.time)
    #: The changelog poller, when one runs (not offline, --changelog-interval > 0).
    poller: Poller | None = None
    #: Processes sharing the serverdir and store (with Redis), or None.
    peers: Peers | None = None
    identity: ProcessIdentity | None = None
    #: The listener service: its ``port`` (an ``IListeningPort``, once listening)
    #: gives the address it got.
    listener: Any = None
    #: What the site records of each request, for ``last_minute``.
    requests: RequestMetrics | None = None
    #: Free space of the serverdir's file system.
    disk_usage: Callable[[Path], DiskUsage] = statvfs_usage
    #: The mirror indexes now: the mirror cache's size is theirs.
    mirrors: Callable[[], Iterable[str]] | None = None
    #: The evictor, with --cache-max-size.
    eviction: Eviction | None = None

    def listening_on(self) -> str | None:
        port = getattr(self.listener, "port", None)
        return None if port is None else format_address(port.getHost())

    def disk(self) -> DiskUsage | str:
        """The serverdir's disk usage, or why it is unknown."""
        try:
            return self.disk_usage(self.files.serverdir)
        except OSError as e:
            return e.strerror or str(e)

    def health(self) -> Health:
        """Whether this process can serve, and what degrades it (see docs/api.md)."""
        poller = None if self.poller is None else self.poller.status()
        return self._judge(self.disk(), self.store.health(), poller)

    def _judge(
        self, disk: DiskUsage | str, store: dict[str, Any], poller: dict[str, Any] | None
    ) -> Health:
        return judge(
            roots=(self.files.files_root, self.files.pages_root),
            serverdir=self.files.serverdir,
            disk=disk,
            draining=getattr(getattr(self.listener, "site", None), "draining", False),
            store=store,
            upstream=self.upstream_health,
            offline=self.offline,
            poller=poller,
        )

    def snapshot(self) -> Snapshot:
        disk = self.disk()
        store_health = dict(self.store.health())
        poller = None if self.poller is None else self.poller.status()
        peers = self.peers
        return Snapshot(
            version=__version__,
            pid=os.getpid(),
            listen=self.listen,
            listening_on=self.listening_on(),
            uptime=round(time.time() - self.started_at, 3),
            serverdir=self.files.serverdir,
            process=None if self.identity is None else self.identity.token,
            store=self.store.description,
            store_health=store_health,
            upstream_url=self.upstream_url,
            offline=self.offline,
            upstream=attrs.evolve(self.upstream_health),
            cache=attrs.evolve(self.files.counts),
            counters=self.stats.totals(),
            own=self.stats.flushed + self.stats.pending,
            disk=disk,
            last_minute=None if self.requests is None else self.requests.window.summary(),
            downloads=tuple(d.progress() for d in list(self.downloads.running.values())),
            peers=None
            if peers is None
            else PeerCounts(peers.lock_ttl, peers.takeovers, peers.uncoordinated, peers.lost_locks),
            poller=poller,
            health=self._judge(disk, store_health, poller),
            mirror_bytes=None
            if self.mirrors is None or not self.files.counted
            else self.files.mirror_bytes(self.mirrors()),
            eviction=None if self.eviction is None else self.eviction.status(),
            counting=not self.files.counted,
        )
