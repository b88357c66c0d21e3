"""The changelog poller, in memory: StubTreq upstream with XML-RPC, MemoryReactorClock."""

from __future__ import annotations

import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from devpid.common.identity import ProcessIdentity
from devpid.mirror.poller import ChangelogPoller
from devpid.mirror.upstream import ChangelogUnsupported, RateLimited, UpstreamClient, UpstreamError
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess
from tests.test_mirror import FakeIndex, World, make_world

HEAD = 500


@attrs.define
class FakeUpstream(FakeIndex):
    """Pages as ``FakeIndex``, plus ``POST /pypi`` answering from ``changelog``."""

    changelog: list[list[Any]] = attrs.field(factory=list)
    #: "ok", "429", "missing" (404), "html", "fault", "500", "500-once", "hang"
    mode: str = "ok"
    retry_after: str | None = "30"
    calls: list[tuple[Any, ...]] = attrs.field(factory=list)
    hanging: list[Request] = attrs.field(factory=list)

    def render_POST(self, request: Request) -> bytes:
        assert request.path == b"/pypi"
        assert request.content is not None
        params, method = xmlrpc.client.loads(request.content.read())
        self.calls.append((method, *params))
        if self.mode == "429":
            request.setResponseCode(429)
            if self.retry_after is not None:
                request.setHeader(b"retry-after", self.retry_after.encode())
            return b"slow down"
        if self.mode == "hang":  # a changelog that takes its time to answer
            self.hanging.append(request)
            return NOT_DONE_YET
        if self.mode == "missing":
            request.setResponseCode(404)
            return b"not found"
        if self.mode == "500":
            request.setResponseCode(500)
            return b"down for maintenance"
        if self.mode == "500-once":
            self.mode = "ok"
            request.setResponseCode(500)
            return b"oops"
        if self.mode == "html":
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>Welcome</body></html>"
        if self.mode == "fault":
            return xmlrpc.client.dumps(xmlrpc.client.Fault(1, "no such method")).encode()
        if method == "changelog_last_serial":
            result: Any = max([HEAD, *(entry[4] for entry in self.changelog)])
        else:
            result = [entry for entry in self.changelog if entry[4] > params[0]]
        request.setHeader(b"content-type", b"text/xml")
        return xmlrpc.client.dumps((result,), methodresponse=True).encode()


@attrs.define
class PollWorld:
    world: World
    upstream: FakeUpstream
    poller: ChangelogPoller

    def tick(self) -> None:
        self.world.resolve(self.poller.tick())

    def stale(self) -> set[str]:
        marks = self.world.store.set_members("stale:root/pypi")
        result: set[str] = self.world.resolve(Deferred.fromCoroutine(marks))
        return result

    def cursor(self) -> Any:
        document = self.world.store.get_document("changelog:root/pypi")
        return self.world.resolve(Deferred.fromCoroutine(document))

    def set_cursor(self, serial: int) -> None:
        document = self.world.store.set_document("changelog:root/pypi", {"serial": serial})
        self.world.resolve(Deferred.fromCoroutine(document))

    def refetch(self, *projects: str) -> None:
        """Revalidate marked pages, which clears their marks."""
        for project in projects:
            self.world.get(project)


def new_poller(world: World, **options: Any) -> ChangelogPoller:
    mirror = world.mirror
    return ChangelogPoller(mirror, mirror.upstream, world.store, world.clock, 60.0, **options)


def make_poll_world(tmp_path: Path, cached: tuple[str, ...] = ("demo", "my-pkg")) -> PollWorld:
    upstream = FakeUpstream()
    world = make_world(tmp_path, upstream)
    for project in cached:
        world.get(project)
    return PollWorld(world, upstream, new_poller(world))


@pytest.fixture
def pw(tmp_path: Path) -> PollWorld:
    return make_poll_world(tmp_path)


def entry(name: str, serial: int) -> list[Any]:
    return [name, "2.0", 1_700_000_000, "new release", serial]


def test_first_start_sets_the_cursor_and_marks_everything_cached(pw: PollWorld) -> None:
    assert pw.stale() == set()
    pw.tick()
    assert pw.upstream.calls == [("changelog_last_serial",)]
    assert pw.cursor() == {"serial": HEAD}
    assert pw.stale() == {"demo", "my-pkg"}
    assert pw.poller.last_serial == HEAD
    assert pw.poller.status()["last_tick_at"] is not None


def test_changes_mark_only_cached_projects_and_advance_the_cursor(pw: PollWorld) -> None:
    pw.set_cursor(HEAD)
    pw.upstream.changelog = [
        entry("My_Pkg", HEAD + 1),
        entry("uncached", HEAD + 3),
        entry("demo", HEAD - 5),  # already seen: not sent
    ]
    pw.tick()
    assert pw.upstream.calls == [("changelog_since_serial", HEAD)]
    assert pw.stale() == {"my-pkg"}
    assert pw.cursor() == {"serial": HEAD + 3}
    # The next tick asks from the new cursor; nothing new, nothing marked.
    pw.refetch("my-pkg")
    pw.tick()
    assert pw.upstream.calls[-1] == ("changelog_since_serial", HEAD + 3)
    assert pw.stale() == set()
    assert pw.cursor() == {"serial": HEAD + 3}


def test_a_restart_resumes_from_the_stored_cursor(pw: PollWorld) -> None:
    pw.set_cursor(HEAD)
    pw.upstream.changelog = [entry("demo", HEAD + 1)]
    pw.tick()
    pw.refetch("demo")
    assert pw.stale() == set()
    restarted = new_poller(pw.world)
    pw.world.resolve(restarted.tick())
    assert pw.upstream.calls == [
        ("changelog_since_serial", HEAD),
        ("changelog_since_serial", HEAD + 1),
    ]
    assert pw.stale() == set()
    assert restarted.last_serial == HEAD + 1


def test_a_gap_resets_the_cursor_and_marks_everything(tmp_path: Path) -> None:
    pw = make_poll_world(tmp_path)
    pw.poller = new_poller(pw.world, gap_limit=3)
    pw.set_cursor(100)
    pw.upstream.changelog = [entry(f"p{n}", 100 + n) for n in range(1, 4)]
    pw.tick()
    assert pw.upstream.calls == [("changelog_since_serial", 100), ("changelog_last_serial",)]
    assert pw.cursor() == {"serial": HEAD}
    assert pw.stale() == {"demo", "my-pkg"}


def test_rate_limited_backs_off_for_retry_after(pw: PollWorld) -> None:
    pw.set_cursor(HEAD)
    pw.upstream.mode = "429"
    pw.tick()
    assert pw.poller.backoff_until == pw.world.clock.seconds() + 30
    assert "429" in (pw.poller.last_error or "")
    pw.world.later(29)
    pw.tick()
    assert len(pw.upstream.calls) == 1
    pw.upstream.mode = "ok"
    pw.upstream.changelog = [entry("demo", HEAD + 1)]
    pw.world.later(2)
    pw.tick()
    assert len(pw.upstream.calls) == 2
    assert pw.poller.backoff_until is None
    assert pw.poller.last_error is None
    assert pw.stale() == {"demo"}


def test_unsupported_changelog_logs_once_and_stops_asking(
    pw: PollWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(ChangelogPoller, "log", Logger(observer=events.append))
    pw.upstream.mode = "missing"
    for _ in range(3):
        pw.tick()
        pw.world.later(60)
    assert len(pw.upstream.calls) == 1
    assert pw.poller.supported is False
    assert pw.poller.status()["supported"] is False
    texts = [e["log_format"] for e in events]
    assert sum("has no changelog" in t for t in texts) == 1
    assert pw.stale() == set()


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("missing", ChangelogUnsupported),
        ("html", ChangelogUnsupported),
        ("fault", ChangelogUnsupported),
        ("429", RateLimited),
        ("500-once", UpstreamError),
    ],
)
def test_upstream_changelog_errors_are_distinct(
    pw: PollWorld, mode: str, error: type[Exception]
) -> None:
    pw.upstream.mode = mode
    d = Deferred.fromCoroutine(pw.world.mirror.upstream.changelog_since_serial(1))
    with pytest.raises(error) as caught:
        pw.world.resolve(d)
    if error is UpstreamError:
        assert not isinstance(caught.value, ChangelogUnsupported | RateLimited)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 30


def test_rate_limited_without_retry_after_waits_a_minute(pw: PollWorld) -> None:
    pw.upstream.mode = "429"
    pw.upstream.retry_after = None
    d = Deferred.fromCoroutine(pw.world.mirror.upstream.changelog_last_serial())
    with pytest.raises(RateLimited) as caught:
        pw.world.resolve(d)
    assert caught.value.retry_after == 60


def test_a_failing_tick_does_not_stop_the_timer(pw: PollWorld) -> None:
    pw.set_cursor(HEAD)
    pw.upstream.mode = "500-once"
    service = pw.poller.make_service()
    assert service.clock is pw.world.clock
    service.startService()  # ticks at once: the 500
    pw.world.stub.flush()
    assert pw.poller.last_error is not None and "500" in pw.poller.last_error
    pw.upstream.changelog = [entry("demo", HEAD + 1)]
    for _ in range(3):
        pw.world.clock.advance(60)
        pw.world.stub.flush()
    assert len(pw.upstream.calls) == 4
    assert pw.poller.last_error is None
    assert pw.stale() == {"demo"}
    assert pw.cursor() == {"serial": HEAD + 1}
    service.stopService()


# -- one real process: only it proves the timer is wired into twistd -----------

LIB_WHEEL = "devpid_demo_lib-1.0-py3-none-any.whl"


def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_a_changelog_entry_refreshes_a_young_page(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    options = ("--changelog-interval", "1", "--cache-expiry", "3600")
    with DevpidProcess.start(tmp_path / "sd", upstream.simple_url, *options) as devpid:
        assert wait_for(lambda: devpid.status()["poller"]["last_serial"] is not None)
        page = "/root/pypi/+simple/devpid-demo-lib/"
        first = devpid.get(page)
        assert first.status == 200
        assert LIB_WHEEL.encode() in first.body
        upstream.control(
            hide_files=[LIB_WHEEL],
            serial={"devpid-demo-lib": 1001},
            changelog=[["devpid-demo-lib", "1.0", int(time.time()), "remove file", 1001]],
        )
        changed = wait_for(lambda: LIB_WHEEL.encode() not in devpid.get(page).body)
        assert changed, devpid.log_text()[-2000:]
        poller = devpid.status()["poller"]
        assert poller["supported"] is True
        assert poller["last_serial"] == 1001
        assert poller["last_error"] is None


def test_one_process_polls_and_a_slow_poll_keeps_the_lead(pw: PollWorld) -> None:
    pw.set_cursor(HEAD)
    pw.upstream.mode = "hang"
    # An upstream timeout longer than the test, so the poll really is still running.
    patient = UpstreamClient("http://upstream.test/simple/", pw.world.stub, pw.world.clock, 1000)
    first, second = (
        ChangelogPoller(
            pw.world.mirror, patient, pw.world.store, pw.world.clock, 60.0, identity=identity
        )
        for identity in (ProcessIdentity(nonce="a0a0a0"), ProcessIdentity(nonce="b0b0b0"))
    )

    def step(poller: ChangelogPoller) -> None:
        pw.world.resolve(poller.step())  # the election never waits for the poll

    step(first)
    step(second)
    assert first.is_leader and not second.is_leader
    assert second.leader == first.identity.token
    assert len(pw.upstream.calls) == 1
    for _ in range(7):  # the poll outlasts two leases; the leader keeps its lock
        pw.world.later(first.election_interval)
        step(first)
        step(second)
        assert first.is_leader and not second.is_leader
    assert len(pw.upstream.calls) == 1  # and starts no second poll meanwhile
    # The leader dies (no more steps): within a lease plus a step the other polls.
    pw.upstream.mode = "ok"
    for _ in range(4):
        pw.world.later(second.election_interval)
        step(second)
    assert second.is_leader and second.leader == second.identity.token
    assert pw.upstream.calls[-1] == ("changelog_since_serial", HEAD)
    assert len(pw.upstream.calls) == 2


def test_a_failing_upstream_is_one_warning_not_a_traceback_per_tick(
    pw: PollWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(ChangelogPoller, "log", Logger(observer=events.append))
    pw.set_cursor(HEAD)
    pw.upstream.mode = "500"
    for _ in range(3):
        pw.tick()
        pw.world.later(60)
    assert len(pw.upstream.calls) == 3  # it keeps asking
    assert "500" in (pw.poller.last_error or "")
    assert not any("log_failure" in e for e in events)
    warnings = [e for e in events if e["log_format"].startswith("changelog poll failed")]
    assert len(warnings) == 1  # said once while the reason stays the same
