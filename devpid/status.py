"""``/+status``: one JSON document for ops, from what the other modules keep."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import attrs

from devpid import __version__
from devpid.filestore import FileStore
from devpid.stats import Stats
from devpid.store import StateStore
from devpid.tee import DownloadManager
from devpid.upstream import UpstreamHealth

if TYPE_CHECKING:
    from devpid.identity import ProcessIdentity
    from devpid.peers import SharedDownloads
    from devpid.poller import ChangelogPoller


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

    def report(self) -> dict[str, Any]:
        counters = self.stats.totals()
        health = self.upstream_health
        hits = counters["page_hits"] + counters["file_hits"]
        misses = counters["page_misses"] + counters["file_misses"]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "listen": self.listen,
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
            "requests": counters["requests"],
            "hits": hits,
            "misses": misses,
            "counters": counters,
            "bytes_served": counters["bytes_served"],
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
            "poller": None if self.poller is None else self.poller.status(),
        }

    def _store_health(self) -> dict[str, Any]:
        health = dict(self.store.health())
        if "last_error_at" in health:
            health["last_error_at"] = iso_time(health["last_error_at"])
        return health
