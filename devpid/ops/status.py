"""``/+status``: one JSON document for ops, from what the other modules keep.

It answers three questions: is this process healthy (able to serve: a load
balancer should take it out otherwise), is it fresh (upstream and changelog
warnings), and is it fast (requests and latency over the last minute).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from devpid import __version__
from devpid.common.stats import Stats
from devpid.files.store import FileStore
from devpid.mirror.tee.download import DownloadManager
from devpid.mirror.upstream import UpstreamHealth
from devpid.store import StateStore

if TYPE_CHECKING:
    from devpid.common.identity import ProcessIdentity
    from devpid.mirror.poller import ChangelogPoller
    from devpid.mirror.tee.peers import SharedDownloads
    from devpid.ops.metrics import RequestMetrics


GIB = 1024**3
#: Unhealthy when the serverdir's file system has less than both free: it can
#: no longer cache what clients ask for (5 % of a large disk is still plenty).
MIN_FREE_BYTES = 1 * GIB
MIN_FREE_PERCENT = 5.0
#: A warning when it has less than both free.
LOW_FREE_BYTES = 5 * GIB
LOW_FREE_PERCENT = 10.0
#: A warning when the last changelog poll is older than this many intervals.
POLLER_LAG_INTERVALS = 3


@attrs.frozen
class DiskUsage:
    free: int
    total: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


def statvfs_usage(path: Path) -> DiskUsage:
    """Bytes free (for an unprivileged user) and in all on the file system of ``path``."""
    st = os.statvfs(path)
    return DiskUsage(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


@attrs.frozen
class Health:
    """``healthy``: this process can serve (``reasons`` says why not); ``warnings``:
    it serves, degraded or soon in trouble."""

    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.reasons


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


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def iso_time(timestamp: float | None) -> str | None:
    """A Unix timestamp as ISO 8601 UTC, for JSON status documents."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@attrs.define
class StatusReport:
    files: FileStore
    store: StateStore
    stats: Stats
    downloads: DownloadManager
    upstream_url: str
    upstream_health: UpstreamHealth
    offline: bool
    listen: str
    started_at: float = attrs.field(factory=time.time)
    #: The changelog poller, when one runs (not offline, --changelog-interval > 0).
    poller: ChangelogPoller | None = None
    #: Processes sharing the serverdir and store (with Redis), or None.
    peers: SharedDownloads | None = None
    identity: ProcessIdentity | None = None
    #: The listener service: its ``port`` (an ``IListeningPort``, once listening)
    #: gives the address it got.
    listener: Any = None
    #: What the site records of each request, for ``last_minute``.
    requests: RequestMetrics | None = None
    #: Free space of the serverdir's file system.
    disk_usage: Callable[[Path], DiskUsage] = statvfs_usage

    def listening_on(self) -> str | None:
        port = getattr(self.listener, "port", None)
        return None if port is None else format_address(port.getHost())

    def disk(self) -> DiskUsage | str:
        """The serverdir's disk usage, or why it is unknown."""
        try:
            return self.disk_usage(self.files.serverdir)
        except OSError as e:
            return e.strerror or str(e)

    def health(
        self, disk: DiskUsage | str | None = None, poller: dict[str, Any] | None = None
    ) -> Health:
        """Whether this process can serve, and what degrades it (see docs/api.md)."""
        reasons: list[str] = []
        warnings: list[str] = []
        serverdir = self.files.serverdir
        for root in (self.files.files_root, self.files.pages_root):
            if not os.access(root, os.W_OK | os.X_OK):
                reasons.append(f"cannot write to {root}: it is missing or not writable")
        disk = self.disk() if disk is None else disk
        if isinstance(disk, str):
            reasons.append(f"cannot tell the free space of {serverdir}: {disk}")
        elif disk.free < MIN_FREE_BYTES and disk.free_percent < MIN_FREE_PERCENT:
            reasons.append(
                f"disk nearly full: {_size(disk.free)} ({disk.free_percent:.1f}%) free "
                f"for {serverdir}"
            )
        elif disk.free < LOW_FREE_BYTES and disk.free_percent < LOW_FREE_PERCENT:
            warnings.append(
                f"disk filling up: {_size(disk.free)} ({disk.free_percent:.1f}%) free "
                f"for {serverdir}"
            )
        if getattr(getattr(self.listener, "site", None), "draining", False):
            reasons.append("shutting down: finishing the running downloads, taking no new work")
        store = self.store.health()
        if store["state"] == "closed":
            reasons.append("the state store is closed (shutting down)")
        elif store["state"] == "down":
            warnings.append(
                f"redis is down since {iso_time(store.get('last_error_at'))} "
                f"({store.get('last_error')}): serving without coordination between processes"
            )
        elif store["state"] == "connecting":
            warnings.append("redis has not answered yet since start-up")
        upstream = self.upstream_health
        if (
            not self.offline
            and upstream.last_error_at is not None
            and (upstream.last_success is None or upstream.last_error_at > upstream.last_success)
        ):
            warnings.append(
                f"upstream failing: the last request failed at {iso_time(upstream.last_error_at)} "
                f"({upstream.last_error}) and none succeeded since; cached pages are served stale"
            )
        if self.poller is not None:
            poller = self.poller.status() if poller is None else poller
            lag = poller["lag_seconds"]
            if poller["paused"] is not None:
                warnings.append(f"changelog poller paused: {poller['paused']}")
            elif poller["last_error"] is not None:
                warnings.append(f"changelog poller failing: {poller['last_error']}")
            elif (
                poller["supported"]
                and lag is not None
                and lag > POLLER_LAG_INTERVALS * poller["interval"]
            ):
                warnings.append(
                    f"changelog poller behind: last poll {lag:.0f}s ago "
                    f"(every {poller['interval']:g}s)"
                )
        return Health(tuple(reasons), tuple(warnings))

    def report(self) -> dict[str, Any]:
        counters = self.stats.totals()
        health = self.upstream_health
        hits = counters["page_hits"] + counters["file_hits"]
        misses = counters["page_misses"] + counters["file_misses"]
        disk = self.disk()
        poller = None if self.poller is None else self.poller.status()
        verdict = self.health(disk, poller)
        return {
            "healthy": verdict.healthy,
            "reasons": list(verdict.reasons),
            "warnings": list(verdict.warnings),
            "version": __version__,
            "pid": os.getpid(),
            "listen": self.listen,
            "listening_on": self.listening_on(),
            "uptime": round(time.time() - self.started_at, 3),
            "serverdir": str(self.files.serverdir),
            "process": None if self.identity is None else self.identity.token,
            "store": self.store.description,
            "store_health": self._store_health(),
            "upstream": {
                "url": self.upstream_url,
                "offline": self.offline,
                "last_success": iso_time(health.last_success),
                "last_error": health.last_error,
                "last_error_at": iso_time(health.last_error_at),
                "fetches": health.fetches,
                "bytes_fetched": health.bytes_fetched,
            },
            "cache": {
                "projects": self.files.counts.pages,
                "files": self.files.counts.files,
                "bytes": self.files.counts.bytes,
                "files_without_hash": counters["files_without_hash"],
            },
            "disk": None
            if isinstance(disk, str)
            else {
                "free_bytes": disk.free,
                "total_bytes": disk.total,
                "free_percent": round(disk.free_percent, 1),
            },
            "requests": counters["requests"],
            "hits": hits,
            "misses": misses,
            "counters": counters,
            "bytes_served": counters["bytes_served"],
            "last_minute": None if self.requests is None else self.requests.window.summary(),
            "downloads": {
                "in_flight": [d.progress() for d in self.downloads.running.values()],
                "failed": counters["download_failures"],
            },
            "shared": None
            if self.peers is None
            else {
                "lock_ttl": self.peers.lock_ttl,
                "takeovers": self.peers.takeovers,
                "uncoordinated_downloads": self.peers.uncoordinated,
                "lost_locks": self.peers.lost_locks,
            },
            "poller": poller,
        }

    def _store_health(self) -> dict[str, Any]:
        health = dict(self.store.health())
        if "last_error_at" in health:
            health["last_error_at"] = iso_time(health["last_error_at"])
        return health
