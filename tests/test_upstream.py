"""The upstream timeout: connecting, response headers and silence, never a steady transfer.

In memory: a fake HTTP client hands out responses whose bodies the tests feed
chunk by chunk while a ``MemoryReactorClock`` moves on.
"""

from __future__ import annotations

import json
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from devpid.mirror.upstream import (
    MIN_PROGRESS,
    PageResponse,
    PageTooLarge,
    UpstreamClient,
    UpstreamError,
    read_body,
)
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess

TIMEOUT = 5.0
SIMPLE = "http://upstream.test/simple/"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@attrs.define
class FakeTransport:
    """What a body protocol sees of the connection: whether it was dropped."""

    stopped: bool = False

    def stopProducing(self) -> None:
        self.stopped = True


@attrs.define
class FakeResponse:
    code: int = 200
    headers: Headers = attrs.field(factory=lambda: Headers({"Content-Type": [JSON_TYPE]}))
    length: Any = None
    request: Any = None
    transport: FakeTransport = attrs.field(factory=FakeTransport)
    protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def end(self) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ResponseDone()))


@attrs.define
class FakeHTTP:
    """A treq client whose requests the test answers (or leaves unanswered)."""

    requests: list[tuple[str, str, Deferred[Any]]] = attrs.Factory(list)

    def _request(self, method: str, url: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.requests.append((method, url, d))
        return d

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        return self._request("GET", url)

    def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
        return self._request("POST", url)

    def answer(self, response: FakeResponse) -> None:
        self.requests[-1][2].callback(response)


@attrs.define
class World:
    clock: MemoryReactorClock
    http: FakeHTTP
    upstream: UpstreamClient

    def outcome(self, d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "not finished"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def pending(self, d: Deferred[Any]) -> bool:
        return not d.called


@pytest.fixture
def world() -> World:
    clock = MemoryReactorClock()
    http = FakeHTTP()
    return World(clock, http, UpstreamClient(SIMPLE, http, clock, TIMEOUT))


def fetch(world: World) -> Deferred[PageResponse]:
    return Deferred.fromCoroutine(world.upstream.fetch_page("demo"))


def test_a_steady_page_slower_than_the_timeout_in_all_succeeds(world: World) -> None:
    d = fetch(world)
    response = FakeResponse()
    world.clock.advance(TIMEOUT - 1)  # the headers take a while, within the timeout
    world.http.answer(response)
    chunk = b"x" * MIN_PROGRESS
    # Four times the timeout in all, never silent for as long as the timeout.
    for _ in range(5):
        world.clock.advance(TIMEOUT - 1)
        assert world.pending(d)
        response.send(chunk)
    response.end()
    page = world.outcome(d)
    assert page.body == chunk * 5
    assert world.clock.seconds() > 3 * TIMEOUT
    assert not response.transport.stopped
    assert world.clock.getDelayedCalls() == []  # no timer left behind


def test_no_response_headers_within_the_timeout_times_out(world: World) -> None:
    d = fetch(world)
    world.clock.advance(TIMEOUT)
    with pytest.raises(UpstreamError, match=r"^GET http://upstream.test/simple/demo/: timed out$"):
        world.outcome(d)
    assert world.http.requests[-1][2].called  # the request was cancelled
    assert world.upstream.health.last_error is not None


def test_silence_longer_than_the_timeout_fails_and_drops_the_connection(world: World) -> None:
    d = fetch(world)
    response = FakeResponse()
    world.http.answer(response)
    world.clock.advance(3)
    response.send(b"x" * MIN_PROGRESS)
    world.clock.advance(TIMEOUT - 0.1)
    assert world.pending(d)  # the timer started again with the last progress
    world.clock.advance(0.1)
    with pytest.raises(UpstreamError, match=r"the upstream sent nothing for 5s$"):
        world.outcome(d)
    assert response.transport.stopped
    response.end()  # what dropping it brings later changes nothing
    assert world.clock.getDelayedCalls() == []


def test_a_drip_fails_like_silence(world: World) -> None:
    d = fetch(world)
    response = FakeResponse()
    world.http.answer(response)
    for _ in range(int(TIMEOUT) - 1):
        response.send(b"x" * 100)  # 1 byte a second would do as well, only slower
        world.clock.advance(1)
    assert world.pending(d)
    response.send(b"x" * 100)
    world.clock.advance(1)
    with pytest.raises(UpstreamError, match=r"the upstream sent only 500 bytes in 5s$"):
        world.outcome(d)
    assert response.transport.stopped


def test_a_small_page_arriving_at_once_needs_no_progress(world: World) -> None:
    d = fetch(world)
    response = FakeResponse()
    world.http.answer(response)
    response.send(b"{}")
    response.end()
    assert world.outcome(d).body == b"{}"
    assert world.clock.getDelayedCalls() == []


def test_the_page_size_limit_still_holds() -> None:
    clock = MemoryReactorClock()
    announced = FakeResponse(length=11)
    with pytest.raises(PageTooLarge):
        read_body(announced, clock, TIMEOUT, limit=10)  # type: ignore[arg-type]
    response = FakeResponse()
    d = read_body(response, clock, TIMEOUT, limit=10)  # type: ignore[arg-type]
    response.send(b"x" * 6)
    response.send(b"x" * 6)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(PageTooLarge)
    assert response.transport.stopped
    assert clock.getDelayedCalls() == []


def test_cancelling_a_body_drops_the_connection_and_the_timer() -> None:
    clock = MemoryReactorClock()
    response = FakeResponse()
    d = read_body(response, clock, TIMEOUT)  # type: ignore[arg-type]
    d.addErrback(lambda _: None)
    d.cancel()
    assert response.transport.stopped
    assert clock.getDelayedCalls() == []


def xmlrpc_answer(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True).encode()


def test_a_steady_xmlrpc_answer_slower_than_the_timeout_succeeds(world: World) -> None:
    d = Deferred.fromCoroutine(world.upstream.changelog_last_serial())
    response = FakeResponse(headers=Headers({"Content-Type": ["text/xml"]}))
    world.http.answer(response)
    answer = xmlrpc_answer(1234).ljust(4 * MIN_PROGRESS)  # whitespace after the XML
    for start in range(0, len(answer), MIN_PROGRESS):
        world.clock.advance(TIMEOUT - 1)
        response.send(answer[start : start + MIN_PROGRESS])
    response.end()
    assert world.outcome(d) == 1234
    assert world.clock.seconds() > 3 * TIMEOUT


def test_a_silent_xmlrpc_answer_fails(world: World) -> None:
    d = Deferred.fromCoroutine(world.upstream.changelog_last_serial())
    response = FakeResponse(headers=Headers({"Content-Type": ["text/xml"]}))
    world.http.answer(response)
    world.clock.advance(TIMEOUT)
    with pytest.raises(UpstreamError, match=r"serial: timed out: .* nothing for 5s$"):
        world.outcome(d)
    assert response.transport.stopped


# -- one real process -----------------------------------------------------------


@pytest.mark.integration
def test_a_steady_project_list_slower_than_the_timeout_in_all_is_served(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    timeout = 1
    # About 40 kB at 10 kB/s: four timeouts in all, 10 kB in every one of them.
    upstream.control(page_padding=40_000, page_rate=10_000)
    with DevpidProcess.start(
        tmp_path / "serverdir",
        upstream.simple_url,
        "--upstream-timeout",
        str(timeout),
        "--changelog-interval",
        "0",
    ) as devpid:
        started = time.monotonic()
        answer = devpid.get("/root/pypi/+simple/", Accept=JSON_TYPE)
        took = time.monotonic() - started
        assert answer.status == 200, answer.body
        assert "devpid-demo-lib" in {p["name"] for p in json.loads(answer.body)["projects"]}
        assert took > 2 * timeout  # the transfer really outlasted the timeout
        assert "timed out" not in devpid.log_text()
