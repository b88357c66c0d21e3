"""The last hour of this process, one sample every 30 seconds, for ``/+status``'s charts.

``StatusHistory.sample`` reads the counters ``devpid.ops.snapshot.Sources``
keeps (requests by route and status, cache hits and misses, bytes served,
upstream latency, the cache's size) and keeps their rates over the interval
since the previous sample: rates come from differences of counters that only
grow, so nothing has to be told about each request. ``HistorySampler`` takes
the samples on a timer.

The history is per process: with several workers behind nginx each keeps its
own hour, of the requests it served itself, and a page shows the hour of
whichever worker answered. Hit rate and the rest come from this process's own
increments, not from the totals shared through Redis, so one process's chart
never counts another's traffic. The cache's size is the ``FileStore``'s count,
the same for every process sharing the serverdir. Memory is bounded: at most
``POINTS`` samples of a few numbers each.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from devpid.common.stats import Stats
from devpid.files.store import CacheCounts
from devpid.mirror.upstream import UpstreamHealth
from devpid.ops.requests import MONITORING_ROUTES

#: Seconds between samples.
SAMPLE_INTERVAL = 30.0
#: Seconds of history kept.
SPAN = 3600.0
#: Samples kept: an hour of them.
POINTS = int(SPAN // SAMPLE_INTERVAL)


class _Files(Protocol):
    @property
    def counts(self) -> CacheCounts: ...


class _Requests(Protocol):
    @property
    def requests(self) -> Counter[tuple[str, int]]: ...


class HistorySources(Protocol):
    """What is read of ``devpid.ops.snapshot.Sources`` (a ``StatusReport`` will do)."""

    @property
    def stats(self) -> Stats: ...
    @property
    def files(self) -> _Files: ...
    @property
    def upstream_health(self) -> UpstreamHealth: ...
    @property
    def requests(self) -> _Requests | None: ...


@attrs.frozen
class Sample:
    """One point of every chart. Rates are None when there is no interval to take them
    over (the first sample) or, for ratios, nothing to divide by."""

    at: float
    #: Requests per second, not counting ``/+status`` and ``/+metrics`` (monitors).
    requests_per_second: float | None
    #: Answers with a 5xx status per second, monitors' requests left out too.
    errors_per_second: float | None
    #: Cache hits in percent of hits and misses (pages and files), None without either.
    hit_rate: float | None
    #: Bytes this process sent to clients, per second.
    bytes_served_per_second: float | None
    #: Mean time to the response headers of the upstream GETs of the interval,
    #: in milliseconds; None when there was none.
    upstream_latency_ms: float | None
    #: The file cache's size.
    cache_bytes: float
    cache_files: float


#: The fields ``StatusHistory.points`` gives.
FIELDS = tuple(field.name for field in attrs.fields(Sample) if field.name != "at")


@attrs.frozen
class _Reading:
    """The counters at one moment: a sample is the difference of two readings."""

    at: float
    requests: int
    errors: int
    hits: int
    misses: int
    bytes_served: int
    latency_count: int
    latency_total: float


def _increase(now: float, before: float) -> float:
    """How much a counter grew; after a reset (it shrank) what it counted since."""
    return now - before if now >= before else now


def _read(sources: HistorySources, at: float) -> _Reading:
    own = sources.stats.flushed + sources.stats.pending
    metrics = sources.requests
    if metrics is None:  # no access log metrics: the site's own counter, errors unknown
        requests, errors = own["requests"], 0
    else:
        requests = errors = 0
        for (route, code), count in list(metrics.requests.items()):
            if route in MONITORING_ROUTES:
                continue
            requests += count
            if code >= 500:
                errors += count
    upstream = sources.upstream_health
    return _Reading(
        at=at,
        requests=requests,
        errors=errors,
        hits=own["page_hits"] + own["file_hits"],
        misses=own["page_misses"] + own["file_misses"],
        bytes_served=own["bytes_served"],
        latency_count=upstream.latency_count,
        latency_total=upstream.latency_total,
    )


def _sample(now: _Reading, before: _Reading | None, counts: CacheCounts) -> Sample:
    requests = errors = hit_rate = served = latency = None
    if before is not None and now.at > before.at:
        elapsed = now.at - before.at
        requests = _increase(now.requests, before.requests) / elapsed
        errors = _increase(now.errors, before.errors) / elapsed
        served = _increase(now.bytes_served, before.bytes_served) / elapsed
        hits = _increase(now.hits, before.hits)
        looked_up = hits + _increase(now.misses, before.misses)
        hit_rate = 100.0 * hits / looked_up if looked_up else None
        grew = now.latency_total >= before.latency_total
        if now.latency_count >= before.latency_count and grew:
            fetched = now.latency_count - before.latency_count
            took = now.latency_total - before.latency_total
        else:  # reset: everything counted is new
            fetched, took = now.latency_count, now.latency_total
        latency = 1000.0 * max(took, 0.0) / fetched if fetched else None
    return Sample(
        at=now.at,
        requests_per_second=requests,
        errors_per_second=errors,
        hit_rate=hit_rate,
        bytes_served_per_second=served,
        upstream_latency_ms=latency,
        cache_bytes=counts.bytes,
        cache_files=counts.files,
    )


@attrs.define
class StatusHistory:
    """The latest ``POINTS`` samples of this process, oldest first."""

    sources: HistorySources
    samples: deque[Sample] = attrs.field(factory=lambda: deque(maxlen=POINTS))
    _previous: _Reading | None = attrs.field(default=None, init=False)

    def sample(self, now: float) -> Sample:
        """Read the sources at clock time ``now`` and keep the rates since the last time."""
        reading = _read(self.sources, now)
        sample = _sample(reading, self._previous, self.sources.files.counts)
        self._previous = reading
        self.samples.append(sample)
        return sample

    def points(self, field: str) -> list[tuple[float, float | None]]:
        """(time, value) of one of ``FIELDS``, oldest first: what a chart draws."""
        if field not in FIELDS:
            raise ValueError(f"no such field in the history: {field!r}")
        return [(sample.at, getattr(sample, field)) for sample in list(self.samples)]

    def latest(self) -> Mapping[str, float | None]:
        """The newest sample's values by field (empty before the first sample)."""
        if not self.samples:
            return {}
        last = self.samples[-1]
        return {field: getattr(last, field) for field in FIELDS}


@attrs.define(slots=False)
class HistorySampler(Service):
    """Samples ``history`` every ``interval`` seconds of ``clock``, the first at start
    so that a page is never empty. A failing sample is logged, and the loop goes on."""

    history: StatusHistory
    clock: IReactorTime
    interval: float = SAMPLE_INTERVAL
    _loop: LoopingCall | None = attrs.field(default=None, init=False)
    log = Logger()

    def tick(self) -> None:
        try:
            self.history.sample(self.clock.seconds())
        except Exception:
            self.log.failure("sampling the status history failed")

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
