"""One conformance suite for every state store: embedded (SQLite) and Redis.

The Redis half runs against its own ``redis-server`` on a free port (never a
shared one) and uses the real reactor through pytest-twisted; the embedded
store completes synchronously, so the same async tests drive both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.task import Clock, deferLater

from devpid.store import StateStore, StoreUnavailable
from devpid.store.embedded import EmbeddedStore
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.redis_server import INSTALL_HINT, RedisServer, redis_server_path
from tests.fixtures.upstream import UpstreamProcess

#: Short enough to wait out for real against Redis.
LOCK_TTL = 0.2


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if redis_server_path() is None:
        pytest.skip(INSTALL_HINT)
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


async def _real_sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await deferLater(reactor, seconds, lambda: None)


@attrs.define
class StoreUnderTest:
    store: StateStore
    #: Makes ``seconds`` pass for the store's lock expiry: a fake clock or a real wait.
    let_time_pass: Callable[[float], Awaitable[None]]


def _redis_store(server: RedisServer, prefix: str | None = None) -> StateStore:
    from devpid.store.redis import RedisStore

    # A fresh prefix per store: tests share one server without flushing it.
    prefix = prefix or f"test-{uuid.uuid4().hex[:8]}:"
    return RedisStore(server.url, prefix, Clock())


@pytest_twisted.async_yield_fixture(params=["embedded", "redis"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    store: StateStore
    if request.param == "embedded":
        clock = Clock()
        store = EmbeddedStore(tmp_path / "state.sqlite", clock)

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        let_time_pass = advance
    else:
        store = _redis_store(request.getfixturevalue("redis_server"))
        let_time_pass = _real_sleep
    await store.open()
    try:
        yield StoreUnderTest(store, let_time_pass)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_documents(subject: StoreUnderTest) -> None:
    store = subject.store
    assert await store.get_document("page:root/pypi:missing") is None
    await store.set_document("page:root/pypi:demo", {"etag": '"1"', "serial": 7, "n": None})
    assert await store.get_document("page:root/pypi:demo") == {
        "etag": '"1"',
        "serial": 7,
        "n": None,
    }
    await store.set_document("page:root/pypi:demo", {"etag": '"2"'})
    assert await store.get_document("page:root/pypi:demo") == {"etag": '"2"'}
    await store.delete_document("page:root/pypi:demo")
    assert await store.get_document("page:root/pypi:demo") is None
    await store.delete_document("page:root/pypi:demo")  # deleting a missing one is fine


@pytest_twisted.ensureDeferred
async def test_sets(subject: StoreUnderTest) -> None:
    store = subject.store
    assert await store.set_members("stale") == set()
    await store.add_to_set("stale", "a", "b", "123")
    await store.add_to_set("stale", "a")  # idempotent
    assert await store.set_members("stale") == {"a", "b", "123"}
    await store.remove_from_set("stale", "b", "not-there")
    await store.remove_from_set("stale", "b")
    assert await store.set_members("stale") == {"a", "123"}
    assert await store.set_members("other") == set()


@pytest_twisted.ensureDeferred
async def test_counters(subject: StoreUnderTest) -> None:
    store = subject.store
    assert await store.counters() == {}
    await store.increment({"requests": 2, "hits": 1})
    await store.increment({"requests": 3, "bytes": 1000})
    assert await store.counters() == {"requests": 5, "hits": 1, "bytes": 1000}


@pytest_twisted.ensureDeferred
async def test_locks(subject: StoreUnderTest) -> None:
    store = subject.store
    assert await store.acquire_lock("refresh", "one", LOCK_TTL)
    assert not await store.acquire_lock("refresh", "two", LOCK_TTL)
    assert await store.acquire_lock("refresh", "one", LOCK_TTL)  # same owner again
    await store.release_lock("refresh", "two")  # not the owner: nothing happens
    assert not await store.acquire_lock("refresh", "two", LOCK_TTL)
    assert await store.acquire_lock("other", "two", LOCK_TTL)  # locks are independent
    await store.release_lock("refresh", "one")
    assert await store.acquire_lock("refresh", "two", LOCK_TTL)


@pytest_twisted.ensureDeferred
async def test_expired_lock_goes_to_another_owner(subject: StoreUnderTest) -> None:
    store = subject.store
    assert await store.acquire_lock("refresh", "one", LOCK_TTL)
    await subject.let_time_pass(LOCK_TTL * 1.5)
    assert await store.acquire_lock("refresh", "two", LOCK_TTL)
    assert not await store.acquire_lock("refresh", "one", LOCK_TTL)


@pytest_twisted.ensureDeferred
async def test_reacquiring_refreshes_the_ttl(subject: StoreUnderTest) -> None:
    store = subject.store
    assert await store.acquire_lock("refresh", "one", LOCK_TTL)
    await subject.let_time_pass(LOCK_TTL * 0.6)
    assert await store.acquire_lock("refresh", "one", LOCK_TTL)
    await subject.let_time_pass(LOCK_TTL * 0.6)  # past the first TTL, within the second
    assert not await store.acquire_lock("refresh", "two", LOCK_TTL)


@pytest_twisted.ensureDeferred
async def test_a_full_disk_makes_the_embedded_store_unavailable_not_broken(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path / "state.sqlite", Clock())
    await store.open()
    try:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # as full as a full disk
        with pytest.raises(StoreUnavailable, match="full"):
            await store.set_document("page:root/pypi:demo", {"etag": "x" * 100_000})
        with pytest.raises(StoreUnavailable):
            await store.increment({"requests": 1} | {f"c{i}": i for i in range(5000)})
        assert await store.get_document("page:root/pypi:demo") is None  # reads still work
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_prefixes_isolate_deployments(redis_server: RedisServer) -> None:
    first, second = _redis_store(redis_server), _redis_store(redis_server)
    await first.open()
    await second.open()
    try:
        await first.set_document("page", {"from": "first"})
        await first.add_to_set("stale", "a")
        await first.increment({"requests": 1})
        assert await first.acquire_lock("refresh", "one", 5)

        assert await second.get_document("page") is None
        assert await second.set_members("stale") == set()
        assert await second.counters() == {}
        assert await second.acquire_lock("refresh", "two", 5)
        await second.set_document("page", {"from": "second"})
        assert await first.get_document("page") == {"from": "first"}
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_a_read_only_redis_is_unavailable_for_writes_not_a_crash(
    redis_server: RedisServer,
) -> None:
    """A replica whose primary is away answers READONLY: that is an outage, not a bug."""
    from devpid.store.redis import RedisStore

    store = _redis_store(redis_server)
    assert isinstance(store, RedisStore)
    await store.open()
    try:
        await store.set_document("page", {"v": 1})
        await store._pool.execute_command("REPLICAOF", "127.0.0.1", "1")
        try:
            with pytest.raises(StoreUnavailable, match="READONLY"):
                await store.set_document("page", {"v": 2})
            with pytest.raises(StoreUnavailable, match="READONLY"):  # from inside a script
                await store.acquire_lock("download:x", "me#1", 5)
            assert store.health()["state"] == "down"
            assert await store.get_document("page") == {"v": 1}  # reads still work
            assert store.health()["state"] == "up"
        finally:
            await store._pool.execute_command("REPLICAOF", "NO", "ONE")
        await store.set_document("page", {"v": 3})
    finally:
        await store.close()
    assert store.health()["state"] == "closed"  # closing on purpose is not an outage
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get_document("page")


@attrs.define
class _RefusingPool:
    """What RedisStore uses of txredisapi's pool, answering every command with one error."""

    reply: str
    _factory: Any = attrs.field(factory=lambda: type("Factory", (), {"size": 1})())

    def __getattr__(self, command: str) -> Any:
        import txredisapi
        from twisted.internet.defer import fail

        return lambda *args: fail(txredisapi.ResponseError(self.reply))


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Redis is loading the dataset in memory",
        "ERR Error running script (call to f_0c1d): @user_script:4: @user_script: 4: "
        "-READONLY You can't write against a read only replica.",
        "ERR Error running script (call to f_3f2a): @user_script:2: -OOM command not allowed",
    ],
)
@pytest_twisted.ensureDeferred
async def test_redis_replies_that_mean_an_outage_are_unavailable(reply: str) -> None:
    from devpid.store.redis import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", "devpid:", Clock(), state="up")
    store._pool = _RefusingPool(reply)
    with pytest.raises(StoreUnavailable):
        await store.acquire_lock("download:x", "me#1", 10)
    assert store.health()["state"] == "down"


@pytest_twisted.ensureDeferred
async def test_other_redis_error_replies_are_bugs_and_say_so() -> None:
    import txredisapi

    from devpid.store.redis import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", "devpid:", Clock(), state="up")
    store._pool = _RefusingPool("ERR unknown command 'FROB'")
    with pytest.raises(txredisapi.ResponseError):
        await store.get_document("x")
    assert store.health()["state"] == "up"


def test_redis_description_masks_the_password() -> None:
    from devpid.store.redis import RedisStore

    store = RedisStore("redis://:s3cret@127.0.0.1:6390/2", "devpid:", Clock())
    assert store.description == "redis (redis://:***@127.0.0.1:6390/2, prefix devpid:)"
    assert "s3cret" not in store.description


@pytest.mark.integration
def test_twistd_keeps_page_state_in_redis(
    tmp_path: Path, upstream: UpstreamProcess, redis_server: RedisServer
) -> None:
    with DevpidProcess.start(
        tmp_path / "serverdir", upstream.simple_url, "--redis", redis_server.url
    ) as devpid:
        assert devpid.get("/root/pypi/+simple/devpid-demo-app/").status == 200
        key = "devpid:doc:page:root/pypi:devpid-demo-app"
        assert key in (redis_server.command("KEYS", "devpid:*") or [])
        document = json.loads(str(redis_server.command("GET", key)))
        assert "fetched_at" in document
        assert devpid.status()["store"].startswith("redis (redis://127.0.0.1:")
    assert not (tmp_path / "serverdir" / "state.sqlite").exists()
