"""``/+metrics``: Prometheus exposition of this process, rendered from one ``Snapshot``.

The site records each request in ``RequestMetrics`` (devpid.ops.requests);
everything else is read from the objects that keep it (counters, upstream
health, downloads, poller, store) into a snapshot when Prometheus scrapes.
Each app has its own ``CollectorRegistry``, never prometheus-client's global one.
Metric names and labels are documented in docs/api.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import attrs
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.internet.interfaces import IReactorTime

from devpid.common.gctune import GENERATIONS, GcPauses
from devpid.ops.requests import RequestMetrics
from devpid.ops.snapshot import Snapshot, Sources

STORE_STATES = ("embedded", "connecting", "up", "down", "closed")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


@attrs.define(eq=False)  # the registry keys collectors by identity
class DevpidCollector:
    """Builds every ``devpid_*`` family from one snapshot taken at scrape time."""

    sources: Sources
    requests: RequestMetrics
    #: The garbage collector's pauses (devpid.common.gctune), in a real process only.
    gc: GcPauses | None = None

    def describe(self) -> list[Metric]:
        return []  # names are not checked for clashes: this is the registry's only collector

    def collect(self) -> Iterator[Metric]:
        snapshot = self.sources.snapshot()
        yield from self._http()
        yield from self._cache(snapshot)
        yield from self._upstream(snapshot)
        yield from self._downloads(snapshot)
        yield from self._store(snapshot)
        yield from self._poller(snapshot)
        yield from self._health(snapshot)
        yield from self._replica()
        yield from self._webhooks()
        yield from self._gc()
        yield InfoMetricFamily(
            "devpid_build", "devpid's version", value={"version": snapshot.version}
        )

    def _http(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "devpid_http_requests",
            "HTTP requests answered, by route and status code",
            labels=["route", "code"],
        )
        for (route, code), count in sorted(self.requests.requests.items()):
            requests.add_metric([route, str(code)], count)
        yield requests
        sent = CounterMetricFamily(
            "devpid_http_response_bytes", "bytes sent in responses, by route", labels=["route"]
        )
        for route, size in sorted(self.requests.sent.items()):
            sent.add_metric([route], size)
        yield sent
        latency = HistogramMetricFamily(
            "devpid_http_request_duration_seconds",
            "time from a request's arrival until its response was complete, by route",
            labels=["route"],
        )
        for route, histogram in sorted(self.requests.latency.items()):
            latency.add_metric([route], histogram.cumulative(), histogram.total)
        yield latency

    def _cache(self, snapshot: Snapshot) -> Iterator[Metric]:
        # This process's own increments: summing over processes then gives the total.
        own = snapshot.own
        hits = CounterMetricFamily(
            "devpid_cache_hits", "requests answered from the cache", labels=["kind"]
        )
        misses = CounterMetricFamily(
            "devpid_cache_misses", "requests that needed the upstream", labels=["kind"]
        )
        for kind in ("page", "file"):
            hits.add_metric([kind], own[f"{kind}_hits"])
            misses.add_metric([kind], own[f"{kind}_misses"])
        yield hits
        yield misses
        yield _counter(
            "devpid_download_failures",
            "file downloads that failed (upstream error, hash or size mismatch)",
            own["download_failures"],
        )
        yield _counter(
            "devpid_offline_misses",
            "requests devpid could not answer offline: the page or file is not cached",
            own["offline_misses"],
        )
        counts = snapshot.cache
        yield _gauge("devpid_cache_projects", "project pages in the serverdir", counts.pages)
        yield _gauge("devpid_cache_files", "files in the serverdir", counts.files)
        yield _gauge("devpid_cache_bytes", "size of the files in the serverdir", counts.bytes)
        if snapshot.mirror_bytes is not None:
            yield _gauge(
                "devpid_cache_mirror_bytes",
                "size of the mirror indexes' cached files (what --cache-max-size bounds)",
                snapshot.mirror_bytes,
            )
        yield from self._eviction(snapshot)

    def _eviction(self, snapshot: Snapshot) -> Iterator[Metric]:
        eviction = snapshot.eviction
        if eviction is None:
            return
        yield _gauge("devpid_cache_max_bytes", "--cache-max-size, in bytes", eviction["max_bytes"])
        yield _counter(
            "devpid_eviction_runs", "eviction runs this process made (walks)", eviction["runs"]
        )
        yield _counter(
            "devpid_eviction_busy",
            "checks that found another process evicting (evict.lock held)",
            eviction["busy"],
        )
        yield _counter(
            "devpid_evicted_files", "mirror files this process evicted", eviction["files"]
        )
        yield _counter(
            "devpid_evicted_bytes", "bytes of mirror files this process evicted", eviction["bytes"]
        )
        last = eviction["last_run"]
        if last is not None:
            yield _gauge(
                "devpid_eviction_last_run_timestamp_seconds",
                "when this process's last eviction run started (Unix time)",
                last["timestamp"],
            )
            yield _gauge(
                "devpid_eviction_last_run_duration_seconds",
                "how long this process's last eviction run took",
                last["seconds"],
            )

    def _upstream(self, snapshot: Snapshot) -> Iterator[Metric]:
        health = snapshot.upstream
        yield _counter(
            "devpid_upstream_fetches", "upstream requests that got an answer", health.fetches
        )
        yield _counter(
            "devpid_upstream_received_bytes",
            "bytes received from the upstream (pages, files, changelog)",
            health.bytes_fetched,
        )
        if health.last_success is not None:
            yield _gauge(
                "devpid_upstream_last_success_timestamp_seconds",
                "when a page fetch last succeeded (Unix time)",
                health.last_success,
            )
        if health.last_error_at is not None:
            yield _gauge(
                "devpid_upstream_last_error_timestamp_seconds",
                "when an upstream request last failed (Unix time)",
                health.last_error_at,
            )

    def _downloads(self, snapshot: Snapshot) -> Iterator[Metric]:
        roles: Counter[str] = Counter()
        clients = 0
        for progress in snapshot.downloads:
            roles[progress["role"]] += 1
            clients += progress["clients"]
        in_flight = GaugeMetricFamily(
            "devpid_downloads_in_flight", "running file downloads, by role", labels=["role"]
        )
        for role in ("owner", "follower"):
            in_flight.add_metric([role], roles[role])
        yield in_flight
        yield _gauge("devpid_download_clients", "clients attached to running downloads", clients)
        peers = snapshot.peers
        if peers is not None:
            yield _counter(
                "devpid_shared_takeovers",
                "downloads taken over from a process that went away",
                peers.takeovers,
            )
            yield _counter(
                "devpid_shared_uncoordinated_downloads",
                "downloads started without the lock because Redis was unavailable",
                peers.uncoordinated,
            )
            yield _counter(
                "devpid_shared_lost_locks",
                "download locks found held by another process on renewal",
                peers.lost_locks,
            )

    def _store(self, snapshot: Snapshot) -> Iterator[Metric]:
        state = snapshot.store_health.get("state")
        states = GaugeMetricFamily(
            "devpid_store_state",
            "the state store's state (1 for the current one)",
            labels=["state"],
        )
        for name in STORE_STATES:
            states.add_metric([name], 1 if state == name else 0)
        yield states
        yield _gauge(
            "devpid_store_up",
            "1 if the state store answers (embedded, or Redis up)",
            1 if state in ("embedded", "up") else 0,
        )

    def _poller(self, snapshot: Snapshot) -> Iterator[Metric]:
        poller = snapshot.poller
        if poller is None:
            return
        yield _gauge(
            "devpid_poller_is_leader", "1 if this process polls", 1 if poller["is_leader"] else 0
        )
        yield _gauge(
            "devpid_poller_paused",
            "1 while nobody polls (Redis unavailable)",
            1 if poller["paused"] is not None else 0,
        )
        if poller["lag_seconds"] is not None:
            yield _gauge(
                "devpid_poller_lag_seconds",
                "seconds since the leader last polled the changelog",
                poller["lag_seconds"],
            )
        if poller["lag_serials"] is not None:
            yield _gauge(
                "devpid_poller_lag_serials",
                "highest upstream serial seen minus the changelog position",
                poller["lag_serials"],
            )
        yield _counter(
            "devpid_poller_marked_stale",
            "cached projects this process's poller marked stale",
            poller["marked_stale"],
        )

    def _replica(self) -> Iterator[Metric]:
        source = getattr(self.sources, "replica", None)
        part = source() if source is not None else None
        if part is None:
            return
        replica = part.fields["replica"]
        yield _gauge("devpid_replica_serial", "the serial applied here", replica["serial"])
        for key, text in (
            ("primary_serial", "the primary's serial when last heard from"),
            ("lag_events", "events the primary has and this replica has not"),
            ("lag_seconds", "seconds since this replica fell behind (0: current)"),
            ("seconds_since_contact", "seconds since the primary last answered"),
        ):
            if replica[key] is not None:
                yield _gauge(f"devpid_replica_{key}", text, replica[key])
        yield _gauge(
            "devpid_replica_following",
            "1 while the replica follows its primary (0: disconnected, resyncing, starting)",
            1 if replica["state"] == "following" else 0,
        )
        yield _gauge("devpid_replica_files_pending", "files to fetch", replica["files_pending"])
        yield _counter("devpid_replica_resyncs", "snapshots applied", replica["resyncs"])

    def _webhooks(self) -> Iterator[Metric]:
        source = getattr(self.sources, "webhooks", None)
        part = source() if source is not None else None
        if part is None or "pending" not in part.fields["webhooks"]:
            return
        hooks = part.fields["webhooks"]
        yield _gauge("devpid_webhooks_pending", "webhook deliveries queued", hooks["pending"])
        yield _gauge(
            "devpid_webhooks_in_flight", "webhook POSTs this process is sending", hooks["in_flight"]
        )
        results = CounterMetricFamily(
            "devpid_webhook_deliveries",
            "webhook deliveries by every process: delivered (2xx), failed (given up after "
            "--webhook-retry-for), attempt_failed (each failed POST, retries counted)",
            labels=["result"],
        )
        for result, key in (
            ("delivered", "delivered"),
            ("failed", "failed"),
            ("attempt_failed", "attempts_failed"),
        ):
            results.add_metric([result], hooks[key])
        yield results
        if hooks["oldest_pending_age"] is not None:
            yield _gauge(
                "devpid_webhooks_oldest_pending_seconds",
                "age of the oldest queued webhook delivery",
                hooks["oldest_pending_age"],
            )

    def _gc(self) -> Iterator[Metric]:
        if self.gc is None:
            return
        collections = CounterMetricFamily(
            "devpid_gc_collections",
            "garbage collections, by generation (2: full)",
            labels=["generation"],
        )
        paused = CounterMetricFamily(
            "devpid_gc_pause_seconds",
            "time the garbage collector held the process, by generation",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "devpid_gc_longest_pause_seconds",
            "the longest single collection so far, by generation",
            labels=["generation"],
        )
        for generation in GENERATIONS:
            label = [str(generation)]
            collections.add_metric(label, self.gc.counts[generation])
            paused.add_metric(label, self.gc.seconds[generation])
            longest.add_metric(label, self.gc.longest[generation])
        yield collections
        yield paused
        yield longest

    def _health(self, snapshot: Snapshot) -> Iterator[Metric]:
        disk = snapshot.disk
        health = snapshot.health
        yield _gauge(
            "devpid_healthy",
            "1 if this process can serve (see /+status)",
            1 if health.healthy else 0,
        )
        yield _gauge(
            "devpid_health_warnings", "warnings in /+status (degraded)", len(health.warnings)
        )
        if not isinstance(disk, str):
            yield _gauge(
                "devpid_disk_free_bytes",
                "bytes free on the serverdir's file system",
                disk.free,
            )
            yield _gauge(
                "devpid_disk_total_bytes", "size of the serverdir's file system", disk.total
            )


@attrs.define
class Metrics:
    """This app's registry: ``devpid_*`` from the live objects, ``devpid_process_*``."""

    sources: Sources
    clock: IReactorTime
    requests: RequestMetrics = attrs.field(init=False)
    registry: CollectorRegistry = attrs.field(init=False, factory=CollectorRegistry)
    _collector: DevpidCollector = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.requests = RequestMetrics.with_clock(self.clock)
        self._collector = DevpidCollector(self.sources, self.requests)
        self.registry.register(self._collector)
        ProcessCollector(namespace="devpid", registry=self.registry)

    @property
    def gc(self) -> GcPauses | None:
        """The garbage collector's pauses, shown as ``devpid_gc_*`` when set."""
        return self._collector.gc

    @gc.setter
    def gc(self, pauses: GcPauses | None) -> None:
        self._collector.gc = pauses

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type (OpenMetrics when asked for it)."""
        encoder, content_type = choose_encoder(accept or "")
        body: bytes = encoder(self.registry)
        return body, content_type
