"""Several real ``twistd -n devpid`` processes on one serverdir and one real Redis.

They must behave as one cache: one upstream GET per file whichever process the
clients ask, a download finished by another process when its owner dies, one
changelog poller with failover, stale marks reaching every process's memory,
and no failed request for cached content while Redis goes away and comes back.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIG_FILE_SIZE
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.upstream import UpstreamProcess
from tests.test_streaming import BIG, file_path_of, raw_get

pytestmark = pytest.mark.integration

LIB_WHEEL = "devpid_demo_lib-1.0-py3-none-any.whl"
LOCK_TTL = "2"


def start_pair(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer, *options: str
) -> tuple[DevpidProcess, DevpidProcess]:
    serverdir = tmp_path / "serverdir"
    common = ("--redis", redis.url, "--lock-ttl", LOCK_TTL, "--upstream-timeout", "5", *options)
    first = DevpidProcess.start(serverdir, upstream.simple_url, *common, name="a")
    try:
        second = DevpidProcess.start(serverdir, upstream.simple_url, *common, name="b")
    except BaseException:
        first.stop()
        raise
    return first, second


@pytest.fixture
def pair(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer
) -> Iterator[tuple[DevpidProcess, DevpidProcess]]:
    first, second = start_pair(tmp_path, upstream, redis, "--changelog-interval", "0")
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def partial_files(serverdir: Path) -> list[Path]:
    return [p for p in serverdir.rglob("*.devpid-partial")]


def cached_file(serverdir: Path, filename: str) -> Path | None:
    found = list((serverdir / "+files").rglob(filename))
    return found[0] if found else None


def role_of(devpid: DevpidProcess) -> str | None:
    running = devpid.status()["downloads"]["in_flight"]
    return running[0]["role"] if running and running[0]["bytes"] > 0 else None


def test_twenty_cold_requests_across_two_processes_make_one_upstream_get(
    pair: tuple[DevpidProcess, DevpidProcess],
    upstream: UpstreamProcess,
    demo_repository: Repository,
) -> None:
    first, second = pair
    path = file_path_of(first, "devpid-demo-big", BIG)
    assert file_path_of(second, "devpid-demo-big", BIG) == path
    upstream.control(rate=BIG_FILE_SIZE)  # about a second: every request overlaps
    expected = demo_repository.sha256(BIG)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: raw_get(pair[i % 2], path), range(20)))
    for status, length, body in results:
        assert status == 200
        assert length == demo_repository.path(BIG).stat().st_size
        assert hashlib.sha256(body).hexdigest() == expected
    assert upstream.stats()["gets"][f"/files/{BIG}"] == 1
    stored = cached_file(first.serverdir, BIG)
    assert stored is not None
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == expected
    assert partial_files(first.serverdir) == []
    assert [p.status()["shared"]["uncoordinated_downloads"] for p in pair] == [0, 0]


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "refetched"])
def test_killing_the_owner_mid_transfer_lets_another_process_finish(
    tmp_path: Path,
    upstream: UpstreamProcess,
    redis: RedisServer,
    demo_repository: Repository,
    ranges: bool,
) -> None:
    first, second = start_pair(tmp_path, upstream, redis, "--changelog-interval", "0")
    try:
        path = file_path_of(first, "devpid-demo-big", BIG)
        file_path_of(second, "devpid-demo-big", BIG)
        upstream.control(rate=BIG_FILE_SIZE / 3, no_ranges=not ranges)  # about three seconds
        expected = demo_repository.sha256(BIG)
        results: dict[str, Any] = {}

        def fetch(name: str, devpid: DevpidProcess) -> None:
            results[name] = raw_get(devpid, path, timeout=60)

        owner_client = threading.Thread(target=fetch, args=("owner", first))
        owner_client.start()
        assert wait_for(lambda: role_of(first) == "owner"), first.log_text()[-3000:]
        followers = [
            threading.Thread(target=fetch, args=(f"follower-{i}", second)) for i in range(3)
        ]
        for thread in followers:
            thread.start()
        assert wait_for(lambda: role_of(second) == "follower"), second.log_text()[-3000:]
        first.kill()
        owner_client.join(30)
        for thread in followers:
            thread.join(60)
            assert not thread.is_alive()

        complete = 0
        for name in [f"follower-{i}" for i in range(3)]:
            status, length, body = results[name]
            assert status == 200 and length == demo_repository.path(BIG).stat().st_size
            if len(body) == length:
                # Never a complete body of wrong bytes.
                assert hashlib.sha256(body).hexdigest() == expected
                complete += 1
        stats = upstream.stats()
        if ranges:
            # The adopted bytes were kept and the rest asked for with a Range request.
            assert complete == 3, second.log_text()[-3000:]
            assert stats["ranges"].get(f"/files/{BIG}") == 1
        assert stats["gets"][f"/files/{BIG}"] == 2
        assert "taking over the download" in second.log_text()
        stored = wait_for(lambda: cached_file(second.serverdir, BIG))
        assert stored is not None, second.log_text()[-3000:]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == expected
        assert wait_for(lambda: partial_files(second.serverdir) == [], timeout=5)
        # And the file is served whole afterwards, from the cache.
        status, _, body = raw_get(second, path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == expected
        assert second.status()["shared"]["takeovers"] == 1
    finally:
        first.stop()
        second.stop()


def test_a_lock_lost_under_a_live_owner_costs_nothing(
    pair: tuple[DevpidProcess, DevpidProcess],
    upstream: UpstreamProcess,
    redis: RedisServer,
    demo_repository: Repository,
) -> None:
    """Redis forgets the download lock (a restart without persistence, a failover)
    while its owner still downloads: the follower that gets the lock finds the
    owner's file still flock-ed, so it follows on; one GET, every client whole."""
    first, second = pair
    path = file_path_of(first, "devpid-demo-big", BIG)
    file_path_of(second, "devpid-demo-big", BIG)
    upstream.control(rate=BIG_FILE_SIZE / 3)  # about three seconds
    expected = demo_repository.sha256(BIG)
    with ThreadPoolExecutor(4) as pool:
        owner_client = pool.submit(raw_get, first, path, timeout=60)
        assert wait_for(lambda: role_of(first) == "owner"), first.log_text()[-3000:]
        followers = [pool.submit(raw_get, second, path, timeout=60) for _ in range(3)]
        assert wait_for(lambda: role_of(second) == "follower"), second.log_text()[-3000:]
        locks = redis.command("KEYS", "*lock:download:*")
        assert isinstance(locks, list) and len(locks) == 1
        redis.command("DEL", *(str(key) for key in locks))
        results = [owner_client.result(), *(f.result() for f in followers)]
    size = demo_repository.path(BIG).stat().st_size
    for status, length, body in results:
        assert status == 200 and length == size and len(body) == size
        assert hashlib.sha256(body).hexdigest() == expected
    assert upstream.stats()["gets"][f"/files/{BIG}"] == 1
    assert second.status()["shared"]["takeovers"] == 0
    stored = cached_file(first.serverdir, BIG)
    assert stored is not None and hashlib.sha256(stored.read_bytes()).hexdigest() == expected
    assert wait_for(lambda: partial_files(first.serverdir) == [], timeout=5)


def test_two_processes_share_one_port_with_reuseport(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer, demo_repository: Repository
) -> None:
    """``--listen reuseport:PORT``: the kernel spreads connections over both processes,
    and they still make one upstream GET per file."""
    port = _free_port()
    listen = ("--listen", f"reuseport:{port}:interface=127.0.0.1")
    first, second = start_pair(tmp_path, upstream, redis, "--changelog-interval", "0", *listen)
    try:
        assert first.url == second.url == f"http://127.0.0.1:{port}"
        # Each status request is a new connection: both processes answer some.
        answering = {first.status()["process"] for _ in range(40)}
        assert len(answering) == 2
        path = file_path_of(first, "devpid-demo-big", BIG)
        upstream.control(rate=BIG_FILE_SIZE)  # about a second: every request overlaps
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _: raw_get(first, path), range(10)))
        expected = demo_repository.sha256(BIG)
        assert all(hashlib.sha256(body).hexdigest() == expected for _, _, body in results)
        assert upstream.stats()["gets"][f"/files/{BIG}"] == 1
    finally:
        first.stop()
        second.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_poller_and_failover_when_the_leader_dies(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer
) -> None:
    first, second = start_pair(tmp_path, upstream, redis, "--changelog-interval", "1")
    try:
        processes = {first.status()["process"]: first, second.status()["process"]: second}

        def leaders() -> list[str]:
            return [p.status()["poller"]["leader"] for p in processes.values()]

        assert wait_for(lambda: len(set(leaders())) == 1 and leaders()[0] in processes)
        statuses = [p.status()["poller"] for p in processes.values()]
        assert sorted(s["is_leader"] for s in statuses) == [False, True]
        leader_token = leaders()[0]
        leader = processes.pop(leader_token)
        [(other_token, other)] = processes.items()
        assert wait_for(lambda: other.status()["poller"]["last_serial"] is not None)

        leader.kill()
        killed_at = time.monotonic()
        assert wait_for(lambda: other.status()["poller"]["is_leader"], timeout=15)
        failover = time.monotonic() - killed_at
        # The new leader polls: a changelog entry reaches its page.
        page = "/root/pypi/+simple/devpid-demo-lib/"
        assert LIB_WHEEL.encode() in other.get(page).body
        upstream.control(
            hide_files=[LIB_WHEEL],
            serial={"devpid-demo-lib": 1001},
            changelog=[["devpid-demo-lib", "1.0", int(time.time()), "remove file", 1001]],
        )
        assert wait_for(lambda: LIB_WHEEL.encode() not in other.get(page).body)
        status = other.status()["poller"]
        assert status["leader"] == other_token and status["last_serial"] == 1001
        print(f"poller failover took {failover:.2f}s with --changelog-interval 1")
    finally:
        first.stop()
        second.stop()


def test_a_change_seen_by_one_process_reaches_the_others_memory(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer
) -> None:
    first, second = start_pair(
        tmp_path, upstream, redis, "--changelog-interval", "1", "--cache-expiry", "3600"
    )
    try:
        page = "/root/pypi/+simple/devpid-demo-lib/"
        for devpid in (first, second):  # both hold the page in memory now
            assert wait_for(lambda d=devpid: d.status()["poller"]["last_serial"] is not None)
            assert LIB_WHEEL.encode() in devpid.get(page).body
        upstream.control(
            hide_files=[LIB_WHEEL],
            serial={"devpid-demo-lib": 1001},
            changelog=[["devpid-demo-lib", "1.0", int(time.time()), "remove file", 1001]],
        )
        for devpid in (first, second):
            fresh = wait_for(lambda d=devpid: LIB_WHEEL.encode() not in d.get(page).body)
            assert fresh, devpid.log_text()[-3000:]
        # A manual refresh through one process reaches the other as well.
        upstream.control(serial={"devpid-demo-lib": 1002})
        response = first.get(page.removesuffix("/") + "/refresh", method="POST")
        assert response.status == 200  # the redirect to the page was followed
        assert LIB_WHEEL.encode() in response.body
        assert wait_for(lambda: LIB_WHEEL.encode() in second.get(page).body, timeout=5)
    finally:
        first.stop()
        second.stop()


def test_redis_going_away_fails_no_request_for_cached_content(
    pair: tuple[DevpidProcess, DevpidProcess],
    upstream: UpstreamProcess,
    redis: RedisServer,
    demo_repository: Repository,
) -> None:
    first, second = pair
    page = "/root/pypi/+simple/devpid-demo-lib/"
    lib_path = file_path_of(first, "devpid-demo-lib", LIB_WHEEL)
    expected = demo_repository.sha256(LIB_WHEEL)
    for devpid in pair:
        assert devpid.get(page).status == 200
        assert raw_get(devpid, lib_path)[0] == 200
    failures: list[str] = []
    done = threading.Event()
    counted = [0]

    def hammer() -> None:
        while not done.is_set():
            for devpid in pair:
                try:
                    status, _, body = raw_get(devpid, lib_path, timeout=10)
                    if status != 200 or hashlib.sha256(body).hexdigest() != expected:
                        failures.append(f"file: {status}")
                    response = devpid.get(page)
                    if response.status != 200 or LIB_WHEEL.encode() not in response.body:
                        failures.append(f"page: {response.status}")
                except OSError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                counted[0] += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.5)
        redis.stop()
        assert wait_for(lambda: first.status()["store_health"]["state"] == "down", timeout=10)
        time.sleep(1)
        # Cold fetches still work without Redis (each process on its own).
        status, _, body = raw_get(second, file_path_of(second, "devpid-demo-app", _app(second)))
        assert status == 200 and body
        redis.restart()
        for devpid in pair:
            assert wait_for(lambda d=devpid: d.status()["store_health"]["state"] == "up"), (
                devpid.log_text()[-3000:]
            )
        time.sleep(0.5)
    finally:
        done.set()
        thread.join(30)
    assert counted[0] > 10
    assert failures == []
    for devpid in pair:
        text = devpid.log_text()
        assert "Traceback" not in text, text[-3000:]
    assert "is unavailable" in first.log_text()
    assert "reachable again" in first.log_text()


def _app(devpid: DevpidProcess) -> str:
    import json

    page = json.loads(
        devpid.get(
            "/root/pypi/+simple/devpid-demo-app/", Accept="application/vnd.pypi.simple.v1+json"
        ).body
    )
    return str(page["files"][0]["filename"])
