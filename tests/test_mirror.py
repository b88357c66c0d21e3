"""Freshness rules of the mirror index, in memory: StubTreq upstream, MemoryReactorClock."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from devpid.common.stats import Stats
from devpid.files import store as filestore
from devpid.files.store import FileStore
from devpid.mirror.index import (
    OFFLOAD_BYTES,
    CachedPage,
    IndexUnavailable,
    MirrorIndex,
    ProjectNotFound,
)
from devpid.mirror.upstream import UpstreamClient
from devpid.simple.model import ProjectPage
from devpid.store import StoreUnavailable
from devpid.store.embedded import EmbeddedStore

SHA = "a" * 64


def page_json(*filenames: str) -> bytes:
    files = [
        {"filename": f, "url": f"../../files/{f}", "hashes": {"sha256": SHA}} for f in filenames
    ]
    return json.dumps({"meta": {"api-version": "1.1"}, "name": "demo", "files": files}).encode()


@attrs.define
class FakeIndex(Resource):
    """An upstream whose answers the test sets, counting what it is asked."""

    isLeaf = True
    body: bytes = page_json("demo-1.0.tar.gz")
    status: int = 200
    etag: str = '"v1"'
    serial: int | None = 100
    requests: list[dict[str, Any]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render_GET(self, request: Request) -> bytes:
        inm = request.getHeader(b"if-none-match")
        self.requests.append({"path": request.path.decode(), "if_none_match": inm})
        if self.status != 200:
            request.setResponseCode(self.status)
            return b"nope"
        if inm is not None and inm.decode() == self.etag:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", b"application/vnd.pypi.simple.v1+json")
        request.setHeader(b"etag", self.etag.encode())
        if self.serial is not None:
            request.setHeader(b"x-pypi-last-serial", str(self.serial).encode())
        return self.body


@attrs.define
class World:
    index: FakeIndex
    stub: StubTreq
    clock: Clock
    mirror: MirrorIndex
    store: EmbeddedStore

    def get(self, project: str = "demo") -> CachedPage:
        return self.resolve(Deferred.fromCoroutine(self.mirror.project_page(project)))

    def resolve(self, d: Deferred[Any]) -> Any:
        self.stub.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "the request did not complete"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)


def make_world(tmp_path: Path, index: FakeIndex | None = None, **options: Any) -> World:
    index = index or FakeIndex()
    stub = StubTreq(index)
    clock = MemoryReactorClock()
    clock.advance(1_000_000)
    store = EmbeddedStore(tmp_path / "state.sqlite", clock)
    Deferred.fromCoroutine(store.open())
    files = FileStore(tmp_path)
    files.prepare()
    upstream = UpstreamClient("http://upstream.test/simple/", stub, clock, timeout=5)
    options.setdefault("cache_expiry", 1800)
    mirror = MirrorIndex("root/pypi", upstream, store, files, clock, Stats(), **options)
    return World(index, stub, clock, mirror, store)


@pytest.fixture
def world(tmp_path: Path) -> Generator[World]:
    yield make_world(tmp_path)


def filenames(entry: CachedPage) -> list[str]:
    assert isinstance(entry.content, ProjectPage)
    return [link.filename for link in entry.content.links]


def test_fresh_page_served_without_asking_upstream(world: World) -> None:
    first = world.get()
    assert filenames(first) == ["demo-1.0.tar.gz"]
    assert isinstance(first.content, ProjectPage)
    assert first.content.links[0].url == "http://upstream.test/files/demo-1.0.tar.gz"
    world.later(1799)
    assert world.get() is first
    assert len(world.index.requests) == 1
    assert world.mirror.stats.totals()["page_hits"] == 1


def test_expired_page_is_revalidated_with_its_etag(world: World) -> None:
    first = world.get()
    world.later(1801)
    again = world.get()
    assert again is first
    assert world.index.requests[-1]["if_none_match"] == b'"v1"'
    # The 304 made the page fresh again.
    world.later(1000)
    world.get()
    assert len(world.index.requests) == 2


def test_changed_page_replaces_the_cache(world: World) -> None:
    world.get()
    world.later(1801)
    world.index.body = page_json("demo-1.0.tar.gz", "demo-2.0.tar.gz")
    world.index.etag = '"v2"'
    world.index.serial = 101
    assert filenames(world.get()) == ["demo-1.0.tar.gz", "demo-2.0.tar.gz"]


def test_concurrent_refreshes_are_coalesced(world: World) -> None:
    waiting = [Deferred.fromCoroutine(world.mirror.project_page("demo")) for _ in range(10)]
    results = [world.resolve(d) for d in waiting]
    assert len(world.index.requests) == 1
    assert all(result is results[0] for result in results)


def test_cancelling_one_waiter_leaves_the_refresh_running(world: World) -> None:
    gone = Deferred.fromCoroutine(world.mirror.project_page("demo"))
    staying = Deferred.fromCoroutine(world.mirror.project_page("demo"))
    gone.cancel()
    gone.addErrback(lambda f: None)
    assert filenames(world.resolve(staying)) == ["demo-1.0.tar.gz"]
    assert len(world.index.requests) == 1


def test_lower_serial_keeps_the_cached_page(world: World) -> None:
    first = world.get()
    world.later(1801)
    world.index.body = page_json()
    world.index.etag = '"older-mirror"'
    world.index.serial = 99
    assert world.get() is first
    # Upstreams without the header are accepted as they are.
    world.later(1801)
    world.index.serial = None
    world.index.etag = '"no-serial"'
    assert filenames(world.get()) == []


def test_upstream_failure_serves_stale_then_backs_off(world: World) -> None:
    first = world.get()
    world.later(1801)
    world.index.status = 503
    assert world.get() is first
    asked = len(world.index.requests)
    world.later(world.mirror.error_backoff - 1)
    assert world.get() is first
    assert len(world.index.requests) == asked
    world.later(2)
    world.index.status = 200
    world.get()
    assert len(world.index.requests) == asked + 1
    assert world.mirror.upstream.health.last_error is not None


def test_nothing_cached_and_upstream_failing_is_unavailable(world: World) -> None:
    world.index.status = 500
    with pytest.raises(IndexUnavailable, match="500"):
        world.get()


def test_upstream_timeout_is_unavailable(tmp_path: Path) -> None:
    class Silent(FakeIndex):
        def render_GET(self, request: Request) -> int:
            from twisted.web.server import NOT_DONE_YET

            return NOT_DONE_YET  # type: ignore[no-any-return]

    world = make_world(tmp_path, Silent())
    d = Deferred.fromCoroutine(world.mirror.project_page("demo"))
    world.stub.flush()
    world.later(5.1)
    with pytest.raises(IndexUnavailable, match="timed out"):
        world.resolve(d)


def test_a_page_that_stalls_mid_body_times_out_and_drops_its_connection(tmp_path: Path) -> None:
    lost: list[Failure] = []

    class Stalling(FakeIndex):
        def render_GET(self, request: Request) -> int:
            request.setHeader(b"content-type", b"application/vnd.pypi.simple.v1+json")
            request.setHeader(b"content-length", b"1000")
            request.write(b'{"files": [')
            request.notifyFinish().addErrback(lost.append)
            return NOT_DONE_YET  # type: ignore[no-any-return]

    world = make_world(tmp_path, Stalling())
    d = Deferred.fromCoroutine(world.mirror.project_page("demo"))
    world.stub.flush()
    world.later(5.1)
    world.stub.flush()
    with pytest.raises(IndexUnavailable, match="timed out"):
        world.resolve(d)
    assert lost, "the stalled upstream connection was left open"


def test_a_page_that_cannot_be_saved_is_served_from_memory(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FileStore, "write_page", disk_full)
    assert filenames(world.get()) == ["demo-1.0.tar.gz"]
    assert world.mirror.files.read_page("root/pypi", "demo") is None
    assert filenames(world.get()) == ["demo-1.0.tar.gz"]  # fresh, from memory
    assert len(world.index.requests) == 1


def test_a_page_write_that_fails_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileStore(tmp_path)
    files.prepare()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(filestore.json, "dump", disk_full)
    with pytest.raises(OSError, match="No space"):
        files.write_page("root/pypi", "demo", {"name": "demo", "links": []})
    assert [p for p in tmp_path.rglob("*") if p.is_file() and "+pages" in p.parts] == []


def test_missing_projects_are_remembered_briefly(world: World) -> None:
    world.index.status = 404
    with pytest.raises(ProjectNotFound):
        world.get("ghost")
    with pytest.raises(ProjectNotFound):
        world.get("ghost")
    assert len(world.index.requests) == 1
    world.later(world.mirror.missing_ttl + 1)
    with pytest.raises(ProjectNotFound):
        world.get("ghost")
    assert len(world.index.requests) == 2


def test_malformed_page_is_an_upstream_error(world: World) -> None:
    world.index.body = b'{"files": [oops'
    with pytest.raises(IndexUnavailable, match="JSON"):
        world.get()


def test_cache_survives_a_restart(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.get()
    restarted = make_world(tmp_path, world.index)
    restarted.clock.advance(10)
    assert filenames(restarted.get()) == ["demo-1.0.tar.gz"]
    assert len(world.index.requests) == 1


def test_offline_never_asks_upstream(tmp_path: Path) -> None:
    make_world(tmp_path).get()
    offline = make_world(tmp_path, offline=True)
    offline.clock.advance(1_000_000)
    assert filenames(offline.get()) == ["demo-1.0.tar.gz"]
    with pytest.raises(ProjectNotFound, match="offline"):
        offline.get("other")
    assert offline.index.requests == []
    listing = offline.resolve(Deferred.fromCoroutine(offline.mirror.project_list()))
    assert listing.content == ("demo",)


def test_stale_mark_forces_revalidation_and_a_refetch_clears_it(world: World) -> None:
    first = world.get()
    world.resolve(Deferred.fromCoroutine(world.mirror.mark_stale("demo")))
    world.index.body = page_json("demo-1.0.tar.gz", "demo-2.0.tar.gz")
    world.index.etag = '"v2"'
    world.index.serial = 101
    refreshed = world.get()  # young, but marked: asked again
    assert refreshed is not first
    assert filenames(refreshed) == ["demo-1.0.tar.gz", "demo-2.0.tar.gz"]
    marks = world.resolve(Deferred.fromCoroutine(world.store.set_members("stale:root/pypi")))
    assert marks == set()
    world.get()
    assert len(world.index.requests) == 2


def test_stale_marks_survive_a_restart(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.get()
    world.resolve(Deferred.fromCoroutine(world.mirror.mark_stale("demo")))
    restarted = make_world(tmp_path, world.index)
    restarted.get()
    assert len(world.index.requests) == 2
    assert world.index.requests[-1]["if_none_match"] == b'"v1"'


def test_refresh_with_the_upstream_down_keeps_the_mark(world: World) -> None:
    first = world.get()
    world.index.status = 503
    assert world.resolve(Deferred.fromCoroutine(world.mirror.refresh("demo"))) is first
    world.index.status = 200
    world.later(world.mirror.error_backoff + 1)
    world.get()  # still marked, so asked again once the back-off is over
    assert len(world.index.requests) == 3


# -- other processes: invalidation messages, and a store that is away ----------


def test_a_stale_message_from_another_process_forces_revalidation(world: World) -> None:
    world.get()
    world.get()
    assert len(world.index.requests) == 1
    world.mirror.invalidated({"op": "stale", "index": "root/pypi", "projects": ["demo"]})
    world.get()
    assert len(world.index.requests) == 2
    # Messages for another index, or malformed ones, change nothing.
    world.mirror.invalidated({"op": "stale", "index": "root/other", "projects": ["demo"]})
    world.mirror.invalidated({"op": "stale", "index": "root/pypi", "projects": "demo"})
    world.get()
    assert len(world.index.requests) == 2


def test_a_fresh_message_drops_the_page_from_memory(world: World) -> None:
    first = world.get()
    world.mirror.invalidated({"op": "fresh", "index": "root/pypi", "projects": ["demo"]})
    again = world.get()
    assert again is not first  # read again from the serverdir, which the other process wrote
    assert filenames(again) == filenames(first)
    assert len(world.index.requests) == 1


@attrs.define
class StoreAway:
    """The state store while Redis is unreachable: every call fails at once."""

    inner: EmbeddedStore

    def __getattr__(self, name: str) -> Any:
        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("redis is unavailable: connection refused")

        return unavailable


def test_pages_are_served_and_refetched_while_the_store_is_away(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.get()
    world.mirror.store = StoreAway(world.store)  # type: ignore[assignment]
    world.mirror.forget_memory()  # as after a resubscription
    page = world.get()  # from the serverdir; with no known age it revalidates
    assert filenames(page) == ["demo-1.0.tar.gz"]
    assert len(world.index.requests) == 2
    refreshed = world.resolve(Deferred.fromCoroutine(world.mirror.refresh("demo")))
    assert filenames(refreshed) == ["demo-1.0.tar.gz"]
    assert len(world.index.requests) == 3


def test_a_large_page_is_parsed_through_offload_and_a_small_one_is_not(world: World) -> None:
    """A large page is parsed off the reactor (in a thread in production); here the
    test stands in for the thread and decides when the work runs."""
    pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def offload(work: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((work, d))
        return d

    world.mirror.offload = offload
    assert filenames(world.get()) == ["demo-1.0.tar.gz"]  # small: parsed at once
    assert pending == []
    many = [f"demo-{n}.0.tar.gz" for n in range(OFFLOAD_BYTES // 100)]
    world.index.body = page_json(*many)
    assert len(world.index.body) >= OFFLOAD_BYTES
    world.index.etag = '"v2"'
    world.later(1801)  # stale: the next request revalidates
    d = Deferred.fromCoroutine(world.mirror.project_page("demo"))
    world.stub.flush()
    assert not d.called and len(pending) == 1  # parsing elsewhere; nothing answered yet
    work, done = pending.pop()
    done.callback(work())
    world.stub.flush()
    assert not d.called and len(pending) == 1  # so is writing its page file
    work, done = pending.pop()
    done.callback(work())
    page = world.resolve(d)
    assert filenames(page) == many
