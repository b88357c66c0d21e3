"""``/+status``: the documented keys, the health rules, ``?check=1``; in memory and for real."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from devpid.mirror.tee import DownloadManager
from devpid.ops.health import GIB, DiskUsage
from devpid.ops.status import StatusReport
from devpid.service import ListenerService
from devpid.store.redis import RedisStore
from devpid.tap import makeService
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.upstream import UpstreamProcess
from tests.test_cluster import wait_for
from tests.test_mirror import World, make_world
from tests.test_poller import make_poll_world

#: Every key of the document, as docs/api.md lists them.
DOCUMENTED_KEYS = {
    "healthy",
    "reasons",
    "warnings",
    "version",
    "pid",
    "listen",
    "listening_on",
    "uptime",
    "serverdir",
    "process",
    "store",
    "store_health",
    "upstream",
    "cache",
    "disk",
    "requests",
    "hits",
    "misses",
    "counters",
    "bytes_served",
    "last_minute",
    "downloads",
    "shared",
    "poller",
    # devpi's keys, and the private data
    "versioninfo",
    "uuid",
    "serial",
    "last-commit-timestamp",
    "event-serial",
    "event-serial-timestamp",
    "event-serial-in-sync-at",
    "role",
    "private",
    "webhooks",
}


@attrs.frozen
class Answer:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class App:
    """The service ``twistd devpid`` runs, on a memory reactor: requests go in as bytes."""

    top: MultiService
    reactor: MemoryReactorClock
    serverdir: Path

    @classmethod
    def start(cls, serverdir: Path) -> App:
        reactor = MemoryReactorClock()
        options = {
            "serverdir": str(serverdir),
            "upstream": "http://localhost:9/simple/",
            "listen": "tcp:0:interface=127.0.0.1",
            "changelog-interval": "0",
        }
        top = makeService(options, reactor=reactor)
        top.startService()
        return cls(top, reactor, serverdir)

    def stop(self) -> None:
        stopped: Deferred[Any] | None = self.top.stopService()
        if stopped is not None:
            results: list[Any] = []
            stopped.addBoth(results.append)
            assert len(results) == 1, "the service did not stop"
            assert not isinstance(results[0], Failure), results[0]
            assert all(ok for ok, _ in results[0]), results[0]  # one per child service

    def get(self, path: str, method: str = "GET", **headers: str) -> Answer:
        """One HTTP/1.0 request through the real site; only for answers made at once."""
        site = next(s for s in self.top if isinstance(s, ListenerService)).site
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        lines = [
            f"{method} {path} HTTP/1.0",
            *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        ]
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        assert status.startswith("HTTP/1."), transport.value()
        found = dict(field.split(": ", 1) for field in fields)
        return Answer(int(status.split()[1]), {k.lower(): v for k, v in found.items()}, body)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    running = App.start(tmp_path / "serverdir")
    yield running
    running.stop()


def report_for(world: World, **options: Any) -> StatusReport:
    mirror = world.mirror
    downloads = DownloadManager(mirror.files, mirror.upstream, world.clock, 5, mirror.stats)
    return StatusReport(
        mirror.files,
        world.store,
        mirror.stats,
        downloads,
        mirror.upstream.simple_url,
        mirror.upstream.health,
        mirror.offline,
        "tcp:0",
        **options,
    )


# -- the document ------------------------------------------------------------


def test_status_has_the_documented_keys(app: App) -> None:
    for _ in range(3):
        app.get("/+status")
    assert app.get("/root/nope/+simple/demo/").code == 404
    answer = app.get("/+status")
    assert answer.code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    status = answer.json()
    assert set(status) == DOCUMENTED_KEYS
    assert status["healthy"] is True
    assert status["reasons"] == []
    assert isinstance(status["warnings"], list)
    assert status["listening_on"] == "0.0.0.0:0"  # what the memory reactor's port says
    disk = status["disk"]
    assert 0 < disk["free_bytes"] <= disk["total_bytes"]
    assert 0 <= disk["free_percent"] <= 100
    # Health checks are left out of the latency of real traffic.
    last_minute = status["last_minute"]
    assert last_minute["requests"] == 1
    assert last_minute["window_seconds"] == 60
    assert last_minute["p50_ms"] is not None and last_minute["p99_ms"] >= last_minute["p50_ms"]
    assert status["requests"] == 4  # every request before this one, /+status included


def test_check_is_200_when_healthy_and_503_with_reasons_when_not(app: App) -> None:
    healthy = app.get("/+status?check=1")
    assert healthy.code == 200 and healthy.json()["healthy"] is True
    shutil.rmtree(app.serverdir / "+files")
    sick = app.get("/+status?check=1")
    assert sick.code == 503
    assert app.get("/+status?check=1", method="HEAD").code == 503
    assert sick.headers["content-type"] == "application/json"
    status = sick.json()
    assert status["healthy"] is False
    assert status["reasons"] == [
        f"cannot write to {app.serverdir / '+files'}: it is missing or not writable"
    ]
    # Without ?check=1 the document is the same, with 200: monitoring reads it either way.
    plain = app.get("/+status")
    assert plain.code == 200 and plain.json()["reasons"] == status["reasons"]
    assert app.get("/+status?check=0").code == 200


def test_a_draining_process_is_unhealthy_and_closes_every_connection(app: App) -> None:
    site = next(s for s in app.top if isinstance(s, ListenerService)).site
    site.start_draining()  # what SIGTERM does first
    answer = app.get("/+status?check=1")
    assert answer.code == 503
    assert answer.headers["connection"] == "close"
    assert answer.json()["reasons"] == [
        "shutting down: finishing the running downloads, taking no new work"
    ]


# -- the health rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "total", "healthy", "warned"),
    [
        (GIB // 2, 100 * GIB, False, False),  # under 1 GiB and under 5 %
        (GIB // 2, 4 * GIB, True, False),  # under 1 GiB but 12.5 % of a small disk
        (2 * GIB, 100 * GIB, True, True),  # under 5 GiB and under 10 %
        (50 * GIB, 2000 * GIB, True, False),  # 2.5 % of a huge disk is plenty
        (30 * GIB, 100 * GIB, True, False),
    ],
)
def test_disk_thresholds(
    tmp_path: Path, free: int, total: int, healthy: bool, warned: bool
) -> None:
    report = report_for(make_world(tmp_path), disk_usage=lambda path: DiskUsage(free, total))
    health = report.health()
    assert health.healthy is healthy
    assert bool(health.reasons) is not healthy
    assert any(w.startswith("disk filling up") for w in health.warnings) is warned
    if not healthy:
        assert health.reasons[0].startswith("disk nearly full: 0.50 GiB (0.5%) free for ")


def test_a_disk_that_cannot_be_read_is_unhealthy(tmp_path: Path) -> None:
    def gone(path: Path) -> DiskUsage:
        raise FileNotFoundError(2, "No such file or directory")

    health = report_for(make_world(tmp_path), disk_usage=gone).health()
    assert health.reasons == (
        f"cannot tell the free space of {tmp_path}: No such file or directory",
    )


def test_redis_down_is_a_warning_and_closed_is_a_reason(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    redis = RedisStore("redis://:secret@127.0.0.1:1/0", "devpid:", world.clock)
    report = report_for(world)
    report.store = redis
    assert report.health().warnings == ("redis has not answered yet since start-up",)
    redis.state, redis.last_error, redis.last_error_at = "down", "connection refused", 0.0
    health = report.health()
    assert health.healthy  # every process shares that Redis; all of them still serve
    assert health.warnings == (
        "redis is down since 1970-01-01T00:00:00Z (connection refused): "
        "serving without coordination between processes",
    )
    redis.state = "closed"
    assert report.health().reasons == ("the state store is closed (shutting down)",)


def test_an_upstream_failure_warns_until_a_success(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    report = report_for(world)
    upstream = world.mirror.upstream.health
    upstream.failed("GET http://upstream.test/simple/demo/: timed out")
    health = report.health()
    assert health.healthy
    assert len(health.warnings) == 1
    assert health.warnings[0].startswith("upstream failing: the last request failed at ")
    assert "(GET http://upstream.test/simple/demo/: timed out)" in health.warnings[0]
    upstream.succeeded()
    assert report.health().warnings == ()
    upstream.failed("GET http://upstream.test/simple/demo/: timed out")
    report.offline = True  # offline, the upstream is not asked: nothing to warn about
    assert report.health().warnings == ()


def test_a_failing_or_lagging_poller_warns(tmp_path: Path) -> None:
    pw = make_poll_world(tmp_path)
    report = report_for(pw.world, poller=pw.poller)
    pw.tick()
    assert report.health().warnings == ()
    pw.world.later(3 * 60)
    assert report.health().warnings == ()
    pw.world.later(1)
    assert report.health().warnings == ("changelog poller behind: last poll 181s ago (every 60s)",)
    pw.upstream.mode = "500"
    pw.tick()
    warnings = report.health().warnings
    assert warnings[0].startswith("upstream failing: ")
    assert warnings[1] == (
        "changelog poller failing: POST http://upstream.test/pypi changelog_since_serial: "
        "upstream answered 500"
    )


# -- real processes ------------------------------------------------------------


@pytest.mark.integration
def test_a_real_process_reports_its_port_and_fails_its_check_without_a_serverdir(
    devpid: DevpidProcess,
) -> None:
    status = devpid.status()
    assert status["listening_on"] == devpid.url.removeprefix("http://")
    assert status["listen"] == "tcp:0:interface=127.0.0.1"
    assert devpid.get("/+status?check=1").status == 200
    shutil.rmtree(devpid.serverdir / "+pages")
    sick = devpid.get("/+status?check=1")
    assert sick.status == 503
    assert json.loads(sick.body)["reasons"] == [
        f"cannot write to {devpid.serverdir / '+pages'}: it is missing or not writable"
    ]


@pytest.mark.integration
def test_redis_stopped_leaves_a_real_process_healthy_with_a_warning(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer
) -> None:
    with DevpidProcess.start(
        tmp_path / "serverdir",
        upstream.simple_url,
        "--redis",
        redis.url,
        "--changelog-interval",
        "0",
    ) as devpid:
        assert devpid.get("/root/pypi/+simple/devpid-demo-app/").status == 200
        assert wait_for(lambda: devpid.status()["store_health"]["state"] == "up")
        redis.stop()
        assert wait_for(lambda: devpid.status()["store_health"]["state"] == "down")
        check = devpid.get("/+status?check=1")
        assert check.status == 200
        status = json.loads(check.body)
        assert status["healthy"] is True
        assert any(w.startswith("redis is down since ") for w in status["warnings"])
        assert devpid.get("/root/pypi/+simple/devpid-demo-app/").status == 200
