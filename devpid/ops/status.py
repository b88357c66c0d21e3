"""``/+status``: one JSON document for ops, rendered from one ``Snapshot``.

It answers three questions: is this process healthy (able to serve: a load
balancer should take it out otherwise), is it fresh (upstream and changelog
warnings), and is it fast (requests and latency over the last minute).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from devpid.common.clock import iso_time
from devpid.ops.snapshot import Snapshot, Sources


def render_status(snapshot: Snapshot) -> dict[str, Any]:
    """The ``/+status`` document; its keys are documented in docs/api.md."""
    counters = snapshot.counters
    upstream = snapshot.upstream
    disk = snapshot.disk
    verdict = snapshot.health
    peers = snapshot.peers
    store_health = dict(snapshot.store_health)
    if "last_error_at" in store_health:
        store_health["last_error_at"] = iso_time(store_health["last_error_at"])
    return {
        "healthy": verdict.healthy,
        "reasons": list(verdict.reasons),
        "warnings": list(verdict.warnings),
        "version": snapshot.version,
        "pid": snapshot.pid,
        "listen": snapshot.listen,
        "listening_on": snapshot.listening_on,
        "uptime": snapshot.uptime,
        "serverdir": str(snapshot.serverdir),
        "process": snapshot.process,
        "store": snapshot.store,
        "store_health": store_health,
        "upstream": {
            "url": snapshot.upstream_url,
            "offline": snapshot.offline,
            "last_success": iso_time(upstream.last_success),
            "last_error": upstream.last_error,
            "last_error_at": iso_time(upstream.last_error_at),
            "fetches": upstream.fetches,
            "bytes_fetched": upstream.bytes_fetched,
        },
        "cache": {
            # null until the start-up count is over (devpid.files.census)
            "counting": snapshot.counting,
            "projects": None if snapshot.counting else snapshot.cache.pages,
            "files": None if snapshot.counting else snapshot.cache.files,
            "bytes": None if snapshot.counting else snapshot.cache.bytes,
            "files_without_hash": counters["files_without_hash"],
            "mirror_bytes": snapshot.mirror_bytes,
            "max_bytes": None if snapshot.eviction is None else snapshot.eviction["max_bytes"],
            "eviction": snapshot.eviction,
        },
        "disk": None
        if isinstance(disk, str)
        else {
            "free_bytes": disk.free,
            "total_bytes": disk.total,
            "free_percent": round(disk.free_percent, 1),
        },
        "requests": counters["requests"],
        "hits": counters["page_hits"] + counters["file_hits"],
        "misses": counters["page_misses"] + counters["file_misses"],
        "counters": counters,
        "bytes_served": counters["bytes_served"],
        "last_minute": snapshot.last_minute,
        "downloads": {
            "in_flight": list(snapshot.downloads),
            "failed": counters["download_failures"],
        },
        "shared": None
        if peers is None
        else {
            "lock_ttl": peers.lock_ttl,
            "takeovers": peers.takeovers,
            "uncoordinated_downloads": peers.uncoordinated,
            "lost_locks": peers.lost_locks,
        },
        "poller": snapshot.poller,
    }


@attrs.define
class StatusReport(Sources):
    """The sources of ``/+status``, and its document."""

    #: devpi's keys (``versioninfo``, ``serial``, ``uuid``, ...) and devpid's
    #: ``private`` section, with their warnings; None without private data.
    private: Callable[[], PrivateStatus] | None = None
    #: A replica's ``role`` and ``replica`` section (None on a primary).
    replica: Callable[[], PrivateStatus | None] | None = None
    #: The ``webhooks`` section (None on a replica, which sends none).
    webhooks: Callable[[], PrivateStatus | None] | None = None

    def report(self) -> dict[str, Any]:
        document = render_status(self.snapshot())
        for source in (self.private, self.replica, self.webhooks):
            part = source() if source is not None else None
            if part is not None:
                document["warnings"].extend(part.warnings)
                document.update(part.fields)
        return document


@attrs.frozen
class PrivateStatus:
    fields: dict[str, Any]
    warnings: tuple[str, ...] = ()
