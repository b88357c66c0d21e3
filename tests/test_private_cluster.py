"""Private data across several real ``twistd -n devpid`` processes on one serverdir.

A change acknowledged by one process is seen by the other's very next request
(each catches up with ``private.sqlite`` before answering); of two conflicting
changes at once exactly one wins and the other gets devpi's 409; and Redis
holds none of it: stopping Redis, or running without it, loses no user or
index and stops no change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.devpid_process import DevpidProcess, Response
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.upstream import UpstreamProcess
from tests.test_private_api import Api, body

pytestmark = pytest.mark.integration

#: Bounds every wait on a thread (each request has its own 30 s timeout too).
WAIT = 60.0


def start_two(serverdir: Path, upstream: str, *options: str) -> tuple[DevpidProcess, DevpidProcess]:
    first = DevpidProcess.start(serverdir, upstream, *options, name="a")
    try:
        second = DevpidProcess.start(serverdir, upstream, *options, name="b")
    except BaseException:
        first.stop()
        raise
    return first, second


def logged_in(devpid: DevpidProcess) -> Api:
    api = Api(devpid)
    api.login("root", "")
    return api


@pytest.fixture
def upstream_url(upstream: UpstreamProcess) -> str:
    return upstream.simple_url


@pytest.fixture
def redis_pair(
    tmp_path: Path, upstream_url: str, redis: RedisServer
) -> Iterator[tuple[DevpidProcess, DevpidProcess]]:
    first, second = start_two(tmp_path / "serverdir", upstream_url, "--redis", redis.url)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def plain_pair(tmp_path: Path, upstream_url: str) -> Iterator[tuple[DevpidProcess, DevpidProcess]]:
    first, second = start_two(tmp_path / "serverdir", upstream_url)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def read_your_writes(first: DevpidProcess, second: DevpidProcess, rounds: int) -> None:
    """A change through one process, then the other's very next request sees it."""
    apis = (logged_in(first), logged_in(second))
    for n in range(rounds):
        writer, reader = apis[n % 2], apis[(n + 1) % 2]
        created = writer.call("PUT", f"/root/seen{n}", {"title": f"t{n}"})
        assert created.status == 200, (n, created.status, created.body)
        serial = int(created.headers["x-devpi-serial"])
        seen = reader.call("GET", f"/root/seen{n}")
        assert seen.status == 200, (n, seen.status, seen.body)
        assert body(seen)["result"]["title"] == f"t{n}"
        assert int(seen.headers["x-devpi-serial"]) >= serial
    # a change of a user and a deletion travel the same way
    user = apis[0].call("PUT", "/dora", {"password": "pw", "email": "d1@example.com"})
    assert user.status == 201
    assert body(apis[1].call("GET", "/dora"))["result"]["email"] == "d1@example.com"
    deleted = apis[1].call("DELETE", "/root/seen0")
    assert deleted.status == 201, deleted.body
    assert apis[0].call("GET", "/root/seen0").status == 404


def at_once(calls: list[tuple[Api, str, str, Any]]) -> list[Response]:
    """Send the calls from their own threads, released together."""
    barrier = threading.Barrier(len(calls), timeout=WAIT)

    def send(api: Api, method: str, path: str, sent: Any) -> Response:
        barrier.wait()
        return api.call(method, path, sent)

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(send, *call) for call in calls]
        return [f.result(timeout=WAIT) for f in futures]


def test_a_change_on_one_is_seen_on_the_others_next_request(
    redis_pair: tuple[DevpidProcess, DevpidProcess],
) -> None:
    read_your_writes(*redis_pair, rounds=100)


def test_without_redis_two_processes_see_each_others_changes(
    plain_pair: tuple[DevpidProcess, DevpidProcess],
) -> None:
    read_your_writes(*plain_pair, rounds=40)


def test_conflicting_changes_at_once_one_wins_the_other_gets_409(
    redis_pair: tuple[DevpidProcess, DevpidProcess],
) -> None:
    first, second = (logged_in(p) for p in redis_pair)
    for n in range(20):
        user = f"/carol{n}"
        answers = at_once(
            [
                (first, "PUT", user, {"password": "a", "email": "first@example.com"}),
                (second, "PUT", user, {"password": "b", "email": "second@example.com"}),
            ]
        )
        statuses = sorted(a.status for a in answers)
        assert statuses == [201, 409], (n, [(a.status, a.body) for a in answers])
        winner = "first" if answers[0].status == 201 else "second"
        for api in (first, second):
            got = body(api.call("GET", user))["result"]["email"]
            assert got == f"{winner}@example.com"
        index = f"{user}/dev"
        answers = at_once(
            [
                (first, "PUT", index, {"title": "first"}),
                (second, "PUT", index, {"title": "second"}),
            ]
        )
        statuses = sorted(a.status for a in answers)
        assert statuses == [200, 409], (n, [(a.status, a.body) for a in answers])
        winner = "first" if answers[0].status == 200 else "second"
        loser = answers[1] if winner == "first" else answers[0]
        assert body(loser)["message"] == f"index '{index[1:]}' exists"
        for api in (first, second):
            assert body(api.call("GET", index))["result"]["title"] == winner


def test_many_concurrent_changes_through_both_processes_all_land(
    redis_pair: tuple[DevpidProcess, DevpidProcess],
) -> None:
    apis = [logged_in(p) for p in redis_pair]
    calls = [(apis[n % 2], "PUT", f"/root/many{n}", {"title": str(n)}) for n in range(40)]
    answers = at_once(calls)
    assert [a.status for a in answers] == [200] * 40, [a.body for a in answers if a.status != 200]
    serials = sorted(int(a.headers["x-devpi-serial"]) for a in answers)
    assert len(set(serials)) == 40  # one event each, none shared
    for api in apis:
        listed = body(api.call("GET", "/root"))["result"]["indexes"]
        assert {f"many{n}" for n in range(40)} <= set(listed)


def test_private_data_never_depends_on_redis(
    tmp_path: Path, upstream_url: str, redis: RedisServer
) -> None:
    serverdir = tmp_path / "serverdir"
    options = ("--redis", redis.url)
    first, second = start_two(serverdir, upstream_url, *options)
    try:
        a, b = logged_in(first), logged_in(second)
        assert a.call("PUT", "/erin", {"password": "pw"}).status == 201
        assert b.call("PUT", "/root/before", {"title": "before"}).status == 200

        redis.stop()
        for api in (a, b):
            assert api.call("GET", "/erin").status == 200
            assert body(api.call("GET", "/root/before"))["result"]["title"] == "before"
        assert a.call("PUT", "/root/during-a", {"title": "a"}).status == 200
        assert b.call("GET", "/root/during-a").status == 200
        assert b.call("PUT", "/root/during-b", {"title": "b"}).status == 200
        assert a.call("GET", "/root/during-b").status == 200
        assert a.call("PATCH", "/root/before", ["title=patched"]).status == 200
        assert body(b.call("GET", "/root/before"))["result"]["title"] == "patched"
        assert b.call("PUT", "/frank", {"password": "pw"}).status == 201
        assert Api(first).login("frank", "pw")
    finally:
        first.stop()
        second.stop()

    # restarted while Redis is still down, then again with a new, empty Redis:
    # whatever Redis held is gone, the private data is not
    for restart_redis in (False, True):
        if restart_redis:
            redis.restart()
        first, second = start_two(serverdir, upstream_url, *options)
        try:
            for devpid in (first, second):
                api = Api(devpid)
                for path in ("/erin", "/frank", "/root/during-a", "/root/during-b"):
                    assert api.call("GET", path).status == 200, (devpid.url, path)
                assert body(api.call("GET", "/root/before"))["result"]["title"] == "patched"
                assert api.login("frank", "pw")
        finally:
            first.stop()
            second.stop()
