"""The status history: a sample every 30 s, an hour kept, rates from counter differences;
and the upstream latency it charts, recorded by ``UpstreamClient``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from devpid.common.stats import Stats
from devpid.files.store import CacheCounts
from devpid.mirror.upstream import RECENT_LATENCIES, UpstreamClient, UpstreamHealth
from devpid.ops.history import (
    FIELDS,
    POINTS,
    SAMPLE_INTERVAL,
    HistorySampler,
    StatusHistory,
)
from tests.test_upstream import SIMPLE, TIMEOUT, FakeHTTP, FakeResponse


@attrs.define
class FakeFiles:
    counts: CacheCounts = attrs.field(factory=CacheCounts)


@attrs.define
class FakeRequests:
    requests: Counter[tuple[str, int]] = attrs.field(factory=Counter)


@attrs.define
class FakeSources:
    stats: Stats = attrs.field(factory=Stats)
    files: FakeFiles = attrs.field(factory=FakeFiles)
    upstream_health: UpstreamHealth = attrs.field(factory=UpstreamHealth)
    requests: FakeRequests | None = attrs.field(factory=FakeRequests)


@attrs.define
class Setup:
    clock: Clock
    sources: FakeSources
    history: StatusHistory
    sampler: HistorySampler


@pytest.fixture
def setup() -> Setup:
    clock = Clock()
    clock.advance(1000)
    sources = FakeSources()
    history = StatusHistory(sources)
    return Setup(clock, sources, history, HistorySampler(history, clock))


def test_the_first_sample_is_taken_at_start_then_one_every_30_seconds(setup: Setup) -> None:
    setup.sources.files.counts.bytes = 12345
    setup.sampler.startService()
    assert [at for at, _ in setup.history.points("cache_bytes")] == [1000.0]
    assert setup.history.points("cache_bytes") == [(1000.0, 12345)]
    # No interval yet: no rates, rather than made-up zeros.
    assert setup.history.points("requests_per_second") == [(1000.0, None)]
    setup.clock.pump([SAMPLE_INTERVAL] * 3)
    assert [at for at, _ in setup.history.points("cache_bytes")] == [1000, 1030, 1060, 1090]
    setup.sampler.stopService()
    setup.clock.pump([SAMPLE_INTERVAL] * 3)
    assert len(setup.history.samples) == 4
    assert setup.clock.getDelayedCalls() == []


def test_an_hour_is_kept_and_no_more(setup: Setup) -> None:
    assert POINTS == 120
    setup.sampler.startService()
    setup.clock.pump([SAMPLE_INTERVAL] * 300)
    points = setup.history.points("cache_files")
    assert len(points) == POINTS
    assert points[-1][0] == 1000 + 300 * SAMPLE_INTERVAL
    assert points[0][0] == points[-1][0] - (POINTS - 1) * SAMPLE_INTERVAL
    setup.sampler.stopService()


def test_rates_come_from_the_differences_of_the_counters(setup: Setup) -> None:
    sources = setup.sources
    requests = sources.requests
    assert requests is not None
    requests.requests["project_page", 200] = 500  # before the first sample: not a rate
    sources.stats.incr("page_hits", 40)
    setup.sampler.startService()
    requests.requests["project_page", 200] += 60
    requests.requests["file", 200] += 27
    requests.requests["file", 502] += 3
    requests.requests["status", 200] += 1000  # monitors do not count
    requests.requests["metrics", 503] += 1000
    sources.stats.incr("page_hits", 6)
    sources.stats.incr("file_hits", 3)
    sources.stats.take_pending()  # flushed or not, it is this process's increments
    sources.stats.incr("file_misses", 1)
    sources.stats.incr("bytes_served", 3000)
    sources.stats.base["page_misses"] = 10**6  # other processes' totals do not count
    setup.clock.advance(SAMPLE_INTERVAL)
    latest = setup.history.latest()
    assert latest["requests_per_second"] == pytest.approx(90 / 30)
    assert latest["errors_per_second"] == pytest.approx(3 / 30)
    assert latest["hit_rate"] == pytest.approx(90.0)
    assert latest["bytes_served_per_second"] == pytest.approx(100.0)
    setup.clock.advance(SAMPLE_INTERVAL)
    quiet = setup.history.latest()
    assert quiet["requests_per_second"] == 0
    assert quiet["hit_rate"] is None  # nothing looked up: no rate, not 0 %
    setup.sampler.stopService()


def test_a_counter_reset_gives_no_negative_rates(setup: Setup) -> None:
    requests = setup.sources.requests
    assert requests is not None
    requests.requests["file", 200] = 900
    setup.sources.upstream_health.record_latency(10.0)
    setup.sampler.startService()
    requests.requests.clear()
    requests.requests["file", 200] = 30  # counted since the reset
    setup.sources.upstream_health = UpstreamHealth()
    setup.sources.upstream_health.record_latency(0.2)
    setup.clock.advance(SAMPLE_INTERVAL)
    latest = setup.history.latest()
    assert latest["requests_per_second"] == pytest.approx(1.0)
    assert latest["upstream_latency_ms"] == pytest.approx(200.0)
    for field in FIELDS:
        assert all(value is None or value >= 0 for _, value in setup.history.points(field))
    setup.sampler.stopService()


def test_upstream_latency_is_the_mean_of_the_interval_and_none_without_requests(
    setup: Setup,
) -> None:
    health = setup.sources.upstream_health
    health.record_latency(5.0)  # before the first sample
    setup.sampler.startService()
    health.record_latency(0.1)
    health.record_latency(0.3)
    setup.clock.advance(SAMPLE_INTERVAL)
    assert setup.history.latest()["upstream_latency_ms"] == pytest.approx(200.0)
    setup.clock.advance(SAMPLE_INTERVAL)
    assert setup.history.latest()["upstream_latency_ms"] is None
    assert [v for _, v in setup.history.points("upstream_latency_ms")] == [
        None,
        pytest.approx(200.0),
        None,
    ]
    setup.sampler.stopService()


def test_without_request_metrics_the_sites_counter_is_used(setup: Setup) -> None:
    setup.sources.requests = None
    setup.sampler.startService()
    setup.sources.stats.incr("requests", 15)
    setup.clock.advance(SAMPLE_INTERVAL)
    assert setup.history.latest()["requests_per_second"] == pytest.approx(0.5)
    setup.sampler.stopService()


def test_a_failing_sample_is_logged_and_the_loop_goes_on(setup: Setup) -> None:
    events: list[dict[str, Any]] = []
    setup.sampler.log = Logger(observer=events.append)  # type: ignore[arg-type]
    setup.sampler.startService()
    broken = setup.sources.files
    setup.sources.files = None  # type: ignore[assignment]
    setup.clock.advance(SAMPLE_INTERVAL)
    assert len(setup.history.samples) == 1
    assert [e["log_format"] for e in events] == ["sampling the status history failed"]
    assert "log_failure" in events[0]
    setup.sources.files = broken
    setup.clock.advance(SAMPLE_INTERVAL)
    assert len(setup.history.samples) == 2
    setup.sampler.stopService()


def test_points_refuses_an_unknown_field(setup: Setup) -> None:
    with pytest.raises(ValueError, match="no such field"):
        setup.history.points("at")
    assert setup.history.latest() == {}


# -- the upstream latency, as UpstreamClient records it ------------------------


def test_page_and_file_gets_record_the_time_to_the_response_headers() -> None:
    clock = MemoryReactorClock()
    http = FakeHTTP()
    client = UpstreamClient(SIMPLE, http, clock, TIMEOUT)
    page: Deferred[Any] = Deferred.fromCoroutine(client.fetch_page("demo"))
    clock.advance(0.25)
    response = FakeResponse()
    http.answer(response)
    clock.advance(3)  # the body's time is not latency
    response.send(b"{}")
    response.end()
    assert page.called
    opened: Deferred[Any] = Deferred.fromCoroutine(client.open_file(SIMPLE + "demo.whl"))
    clock.advance(0.75)
    http.answer(FakeResponse())
    assert opened.called
    failed: Deferred[Any] = Deferred.fromCoroutine(client.fetch_page("gone"))
    clock.advance(TIMEOUT)  # a timeout is an error, not a latency
    failed.addErrback(lambda _: None)
    health = client.health
    assert health.latency_count == 2
    assert health.latency_total == pytest.approx(1.0)
    assert list(health.recent_latencies) == [pytest.approx(0.25), pytest.approx(0.75)]
    assert health.recent_latency_median() == pytest.approx(0.5)


def test_the_recent_latencies_are_bounded() -> None:
    health = UpstreamHealth()
    assert health.recent_latency_median() is None
    for i in range(RECENT_LATENCIES * 3):
        health.record_latency(float(i))
    assert len(health.recent_latencies) == RECENT_LATENCIES
    assert health.recent_latencies[-1] == RECENT_LATENCIES * 3 - 1
    assert health.latency_count == RECENT_LATENCIES * 3
