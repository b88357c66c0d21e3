"""``/+metrics`` and the last minute of ``/+status``: route labels, the sliding window, the
Prometheus families, parsed with prometheus-client's own parsers; in memory and for real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from devpid.ops.metrics import Metrics
from devpid.ops.requests import LATENCY_BUCKETS
from devpid.ops.window import SlidingWindow
from devpid.store.redis import RedisStore
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository
from tests.test_poller import make_poll_world
from tests.test_status import App, report_for

JSON = "application/vnd.pypi.simple.v1+json"
APP_WHEEL = "devpid_demo_app-1.0-py3-none-any.whl"

#: The families docs/api.md documents, always present (without Redis and poller).
ALWAYS = {
    "devpid_http_requests",
    "devpid_http_response_bytes",
    "devpid_http_request_duration_seconds",
    "devpid_cache_hits",
    "devpid_cache_misses",
    "devpid_download_failures",
    "devpid_offline_misses",
    "devpid_cache_projects",
    "devpid_cache_files",
    "devpid_cache_bytes",
    "devpid_upstream_fetches",
    "devpid_upstream_received_bytes",
    "devpid_downloads_in_flight",
    "devpid_download_clients",
    "devpid_store_state",
    "devpid_store_up",
    "devpid_healthy",
    "devpid_health_warnings",
    "devpid_disk_free_bytes",
    "devpid_disk_total_bytes",
    "devpid_build_info",
    "devpid_process_cpu_seconds",
    "devpid_process_resident_memory_bytes",
    "devpid_process_open_fds",
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels, as the text parser reads it."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


# -- the sliding window -------------------------------------------------------


def test_window_rate_and_percentiles() -> None:
    clock = Clock()
    clock.advance(1000)
    window = SlidingWindow(clock)
    assert window.summary() == {
        "window_seconds": 60,
        "requests": 0,
        "per_second": 0.0,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
    }
    # 100 requests a second for 60 seconds: 1 ms to 100 ms, one of each per second.
    for _ in range(60):
        for ms in range(1, 101):
            window.record(ms / 1000)
        clock.advance(1)
    summary = window.summary()
    assert summary["requests"] == 5900  # the oldest second has just left the window
    assert summary["per_second"] == 100.0
    for p in (50, 90, 99):
        assert summary[f"p{p}_ms"] == pytest.approx(p, rel=0.05)


def test_window_forgets_what_is_older_than_a_minute() -> None:
    clock = Clock()
    window = SlidingWindow(clock)
    window.record(2.0)  # one slow request
    clock.advance(30)
    for _ in range(9):
        window.record(0.010)
    summary = window.summary()
    assert summary["requests"] == 10
    assert summary["per_second"] == pytest.approx(10 / 30, abs=0.001)
    assert summary["p99_ms"] == pytest.approx(2000, rel=0.05)
    assert summary["p50_ms"] == pytest.approx(10, rel=0.05)
    clock.advance(30)
    summary = window.summary()
    assert summary["requests"] == 9
    assert summary["p99_ms"] == pytest.approx(10, rel=0.05)
    clock.advance(60)
    assert window.summary()["requests"] == 0


def test_window_memory_is_bounded() -> None:
    clock = Clock()
    window = SlidingWindow(clock)
    for _ in range(1000):
        for ms in range(1, 200):
            window.record(ms / 1000)
        clock.advance(1)
    assert len(window._buckets) <= 60
    assert all(len(bucket.bins) <= 64 for bucket in window._buckets.values())
    clock.advance(-500)  # the wall clock stepped back: what lies "ahead" goes too
    window.record(0.001)
    assert list(window._buckets) == [500]


# -- the families, in memory ----------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    running = App.start(tmp_path / "serverdir")
    yield running
    running.stop()


def test_metrics_count_requests_by_route_and_status(app: App) -> None:
    assert app.get("/root/pypi").code == 200
    assert app.get("/root/pypi/").code == 200
    assert app.get("/root/nope/+simple/demo/").code == 404
    assert app.get("/root/pypi/+simple/-bad-/").code == 400
    assert app.get("/+status").code == 200
    answer = app.get("/+metrics")
    assert answer.code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.body.decode()
    assert set(families(text)) >= ALWAYS
    assert families(text)["devpid_http_request_duration_seconds"] == "histogram"
    assert families(text)["devpid_http_requests"] == "counter"
    found = samples(text)
    assert value(found, "devpid_http_requests_total", route="index", code="200") == 2
    assert value(found, "devpid_http_requests_total", route="project_page", code="404") == 1
    assert value(found, "devpid_http_requests_total", route="project_page", code="400") == 1
    assert value(found, "devpid_http_requests_total", route="status", code="200") == 1
    assert (
        "devpid_http_requests_total",
        frozenset({("route", "metrics"), ("code", "200")}),
    ) not in found
    duration = "devpid_http_request_duration_seconds"
    assert value(found, duration + "_count", route="project_page") == 2
    assert value(found, duration + "_bucket", route="project_page", le="+Inf") == 2
    buckets = [
        value(found, duration + "_bucket", route="index", le=str(float(b))) for b in LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] <= 2
    assert value(found, "devpid_http_response_bytes_total", route="index") > 0
    assert value(found, "devpid_store_state", state="embedded") == 1
    assert value(found, "devpid_store_state", state="down") == 0
    assert value(found, "devpid_store_up") == 1
    assert value(found, "devpid_healthy") == 1
    assert value(found, "devpid_downloads_in_flight", role="owner") == 0
    assert value(found, "devpid_cache_hits_total", kind="page") == 0
    assert value(found, "devpid_build_info", version="0.1.0") == 1
    assert value(found, "devpid_disk_free_bytes") > 0
    # The scrape itself is counted once it is answered.
    again = samples(app.get("/+metrics").body.decode())
    assert value(again, "devpid_http_requests_total", route="metrics", code="200") == 1
    # /+status and /+metrics are left out of the last minute.
    assert app.get("/+status").json()["last_minute"]["requests"] == 4


@pytest.mark.parametrize(
    ("path", "route", "code"),
    [
        ("/+status", "status", 200),
        ("/root/pypi", "index", 200),
        ("/root/pypi/", "index", 200),
        ("/root/pypi/+simple/-bad-/", "project_page", 400),
        # pip asks for links as the page spells them: "+" percent-encoded.
        ("/root/pypi/%2Bsimple/-bad-/", "project_page", 400),
        ("/root/pypi/%2bsimple/-bad-", "project_page", 400),
        ("/root/pypi/+f/abc/0123456789abc/not-a-dist", "file", 404),
        ("/root/pypi/%2Bf/abc/0123456789abc/not-a-dist", "file", 404),
        ("/root/nope/%2Bsimple/demo/", "project_page", 404),
        ("/root/pypi/+f/abc/x-1.0.tar.gz", "other", 404),
        ("/root/pypi/+simple/a/b/c", "other", 404),
        ("/+status/", "other", 404),
        ("/favicon.ico", "api", 404),  # GET /<user>: no such user
        ("/+status/../../secret.whl", "other", 404),
    ],
)
def test_route_labels_are_the_routers_decision(app: App, path: str, route: str, code: int) -> None:
    assert app.get(path).code == code
    found = samples(app.get("/+metrics").body.decode())
    assert value(found, "devpid_http_requests_total", route=route, code=str(code)) == 1


def test_metrics_in_openmetrics_when_asked(app: App) -> None:
    app.get("/root/pypi")
    answer = app.get("/+metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    names = {f.name for f in openmetrics_families(answer.body.decode())}
    assert {"devpid_http_requests", "devpid_http_request_duration_seconds"} <= names


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first, second = App.start(tmp_path / "a"), App.start(tmp_path / "b")
    try:
        for _ in range(3):
            first.get("/root/pypi")
        second.get("/root/pypi")
        counted = [
            value(
                samples(app.get("/+metrics").body.decode()),
                "devpid_http_requests_total",
                route="index",
                code="200",
            )
            for app in (first, second)
        ]
        assert counted == [3, 1]
    finally:
        first.stop()
        second.stop()


def test_poller_redis_and_health_families(tmp_path: Path) -> None:
    pw = make_poll_world(tmp_path)
    pw.tick()
    report = report_for(pw.world, poller=pw.poller)
    redis = RedisStore("redis://127.0.0.1:1/0", "devpid:", pw.world.clock)
    redis.state, redis.last_error, redis.last_error_at = "down", "connection refused", 0.0
    report.store = redis
    metrics = Metrics(report, pw.world.clock)
    pw.world.later(42)
    body, _ = metrics.render()
    found = samples(body.decode())
    assert value(found, "devpid_poller_is_leader") == 0  # ticked by hand, never elected
    assert value(found, "devpid_poller_lag_seconds") == 42
    assert value(found, "devpid_poller_marked_stale_total") == 2
    assert value(found, "devpid_poller_paused") == 0
    assert value(found, "devpid_store_state", state="down") == 1
    assert value(found, "devpid_store_up") == 0
    assert value(found, "devpid_healthy") == 1  # Redis down degrades, it does not stop serving
    assert value(found, "devpid_health_warnings") == 1
    assert value(found, "devpid_cache_misses_total", kind="page") == 2
    assert value(found, "devpid_upstream_fetches_total") >= 3
    files_root = pw.world.mirror.files.files_root
    files_root.rename(files_root.with_name("elsewhere"))
    assert value(samples(metrics.render()[0].decode()), "devpid_healthy") == 0


# -- a real process ---------------------------------------------------------------


@pytest.mark.integration
def test_metrics_of_a_real_process(devpid: DevpidProcess, demo_repository: Repository) -> None:
    page = devpid.get("/root/pypi/+simple/devpid-demo-app/", Accept=JSON)
    assert page.status == 200
    assert devpid.get("/root/pypi/+simple/devpid-demo-app/", Accept=JSON).status == 200
    url = json.loads(page.body)["files"][0]["url"]
    size = demo_repository.path(APP_WHEEL).stat().st_size
    assert len(devpid.get(url).body) == size  # from the upstream
    assert len(devpid.get(url).body) == size  # from the cache
    assert devpid.get("/root/pypi/+f/abc/0123456789abc/nothing-here-1.0.tar.gz").status == 404
    answer = devpid.get("/+metrics")
    assert answer.status == 200
    text = answer.body.decode()
    assert set(families(text)) >= ALWAYS
    found = samples(text)
    assert value(found, "devpid_http_requests_total", route="project_page", code="200") == 2
    assert value(found, "devpid_http_requests_total", route="file", code="200") == 2
    assert value(found, "devpid_http_requests_total", route="file", code="404") == 1
    assert value(found, "devpid_http_request_duration_seconds_count", route="file") == 3
    assert value(found, "devpid_http_response_bytes_total", route="file") >= 2 * size
    assert value(found, "devpid_cache_hits_total", kind="page") == 1
    assert value(found, "devpid_cache_misses_total", kind="page") == 2  # the 404 asked too
    assert value(found, "devpid_cache_hits_total", kind="file") == 1
    assert value(found, "devpid_cache_misses_total", kind="file") == 1
    assert value(found, "devpid_upstream_fetches_total") >= 2
    assert value(found, "devpid_upstream_received_bytes_total") >= size
    assert value(found, "devpid_cache_files") == 1
    assert value(found, "devpid_downloads_in_flight", role="owner") == 0
    assert value(found, "devpid_healthy") == 1
    assert value(found, "devpid_process_open_fds") > 0
    status = devpid.status()
    assert status["last_minute"]["requests"] == 5
    assert status["last_minute"]["p50_ms"] > 0
