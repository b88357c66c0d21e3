"""The only module that talks to the upstream index: pages, file streams, the changelog.

Pages are fetched whole (with a size cap) and conditionally (ETag); files are
opened unbuffered so the tee can stream them as they arrive. The changelog is
asked for over the upstream's XML-RPC endpoint (``/pypi`` at its origin).

``--upstream-timeout`` bounds connecting and the wait for response headers,
then every stretch of a body: a page (or XML-RPC answer) fails when that long
brings less than ``MIN_PROGRESS`` bytes, never because a steady transfer takes
longer in all.
"""

from __future__ import annotations

import statistics
import time
import xmlrpc.client
from collections import deque
from typing import Any
from urllib.parse import urljoin

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from devpid.simple.model import HTML_V1, JSON_V1, TEXT_HTML

#: Ask for JSON first: it is smaller and carries sizes and upload times.
PAGE_ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, {TEXT_HTML};q=0.1"
#: Pages larger than this are refused rather than held in memory.
MAX_PAGE_BYTES = 64 * 1024 * 1024
#: Fewer body bytes than this within the timeout is no progress: an upstream that
#: drips a byte at a time is cut off like a silent one; pages and files alike.
MIN_PROGRESS = 1024
#: Seconds to wait after a 429 that gives no (usable) Retry-After header.
DEFAULT_RETRY_AFTER = 60.0
USER_AGENT = "devpid/0.1 (twisted; treq)"
#: How many of the latest upstream latencies ``UpstreamHealth`` keeps for a median.
RECENT_LATENCIES = 100


class UpstreamError(Exception):
    """The upstream failed to answer usefully; the message is one line."""


class PageTooLarge(UpstreamError):
    pass


class UpstreamStalled(UpstreamError):
    """A body brought less than ``MIN_PROGRESS`` bytes within the timeout."""


class RateLimited(UpstreamError):
    """The upstream answered 429: ask again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChangelogUnsupported(UpstreamError):
    """The upstream has no XML-RPC changelog (404/405/501, not XML-RPC, or a Fault)."""


#: One changelog entry: (name, version, timestamp, action, serial).
ChangelogEntry = tuple[str, str, int, str, int]


@attrs.frozen
class PageResponse:
    status: int
    body: bytes
    content_type: str
    etag: str | None
    serial: int | None
    url: str


@attrs.define
class UpstreamHealth:
    """What /+status reports about the upstream."""

    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    fetches: int = 0
    bytes_fetched: int = 0
    #: The highest ``X-PyPI-Last-Serial`` seen on a page: how far the upstream has got.
    highest_serial: int | None = None
    #: GETs (pages and files) whose response headers arrived, and the seconds
    #: they took in all: a sampler takes the mean over an interval from the
    #: differences of the two (``devpid.ops.history``). Only ever grow.
    latency_count: int = 0
    latency_total: float = 0.0
    #: The latest few latencies (seconds), oldest first: bounded, for a median.
    recent_latencies: deque[float] = attrs.field(
        factory=lambda: deque(maxlen=RECENT_LATENCIES), eq=False
    )

    def record_latency(self, seconds: float) -> None:
        """One GET's time from sending the request to its response headers."""
        seconds = max(seconds, 0.0)
        self.latency_count += 1
        self.latency_total += seconds
        self.recent_latencies.append(seconds)

    def recent_latency_median(self) -> float | None:
        """The median (seconds) of the latest ``RECENT_LATENCIES`` GETs, None before any."""
        recent = list(self.recent_latencies)
        return statistics.median(recent) if recent else None

    def saw_serial(self, serial: int | None) -> None:
        if serial is not None and (self.highest_serial is None or serial > self.highest_serial):
            self.highest_serial = serial

    def succeeded(self) -> None:
        self.last_success = time.time()

    def failed(self, reason: str) -> None:
        self.last_error = reason
        self.last_error_at = time.time()


def describe_failure(failure: Failure | BaseException) -> str:
    error = failure.value if isinstance(failure, Failure) else failure
    if isinstance(error, TimeoutError | CancelledError | ConnectingCancelledError):
        return "timed out"
    if isinstance(error, UpstreamError):
        return str(error)
    reasons = getattr(error, "reasons", None)
    if reasons:  # twisted.web._newclient wraps the real cause in a list
        return "; ".join(describe_failure(r) for r in reasons)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class PageBody(Protocol):
    """Collects a response body, refusing one larger than ``limit`` or one that stalls.

    Each ``timeout`` seconds must bring ``MIN_PROGRESS`` bytes (or the end of the
    body): otherwise the connection is dropped, as a stalled upstream must not
    keep it open, and the body fails.
    """

    def __init__(self, limit: int, clock: IReactorTime, timeout: float) -> None:
        #: The body, or why not; cancelling it abandons the body.
        self.finished: Deferred[Any] = Deferred(lambda _: self.abandon())
        self.limit = limit
        self.timeout = timeout
        self.parts: list[bytes] = []
        self.size = 0
        #: ``size`` when the current window of ``timeout`` seconds began.
        self.window_start = 0
        self.idle_timer: IDelayedCall | None = clock.callLater(timeout, self._idle)

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.fail(PageTooLarge(f"page larger than {self.limit} bytes"))
            return
        self.parts.append(data)
        if self.size - self.window_start >= MIN_PROGRESS and self.idle_timer is not None:
            self.window_start = self.size
            self.idle_timer.reset(self.timeout)

    def _idle(self) -> None:
        self.idle_timer = None
        got = self.size - self.window_start
        if got:
            reason = f"timed out: the upstream sent only {got} bytes in {self.timeout:g}s"
        else:
            reason = f"timed out: the upstream sent nothing for {self.timeout:g}s"
        self.fail(UpstreamStalled(reason))

    def fail(self, error: Exception) -> None:
        """Give up on the body: stop the timer, drop the connection, fail ``finished``."""
        self.stop_timer()
        if not self.finished.called:
            self.finished.errback(error)  # first: dropping may end the body at once
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def abandon(self) -> None:
        """Given up on from outside (``finished`` cancelled): drop the connection too, or
        a stalled upstream keeps it open."""
        self.stop_timer()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def stop_timer(self) -> None:
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        self.stop_timer()
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def read_body(
    response: IResponse, clock: IReactorTime, timeout: float, limit: int = MAX_PAGE_BYTES
) -> Deferred[bytes]:
    """The whole body of ``response``, within ``limit`` bytes and the progress rule."""
    if (
        response.length is not None
        and isinstance(response.length, int)
        and (response.length > limit)
    ):
        response.deliverBody(Protocol())  # drain nothing; the connection is dropped
        raise PageTooLarge(f"page of {response.length} bytes is larger than {limit}")
    body = PageBody(limit, clock, timeout)
    response.deliverBody(body)
    return body.finished


def response_header(response: IResponse, name: str) -> str | None:
    """The last value of a response's header ``name``, if any."""
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


def _retry_after(response: IResponse) -> float:
    value = response_header(response, "Retry-After")
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER
    except ValueError:  # an HTTP date: not worth parsing, wait the default
        return DEFAULT_RETRY_AFTER
    return seconds if seconds >= 0 else DEFAULT_RETRY_AFTER


def last_serial(response: IResponse) -> int | None:
    """``X-PyPI-Last-Serial`` of a response, when it is a number."""
    value = response_header(response, "X-PyPI-Last-Serial")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@attrs.define
class UpstreamClient:
    simple_url: str
    #: A treq ``HTTPClient`` (or ``treq.testing.StubTreq`` in tests).
    http: Any
    clock: IReactorTime
    timeout: float
    #: Sent in a ``Via`` header, so a devpid that is its own upstream notices.
    via: str = "1.1 devpid"
    health: UpstreamHealth = attrs.field(factory=UpstreamHealth)
    log = Logger()

    def project_url(self, project: str) -> str:
        return urljoin(self.simple_url, f"{project}/")

    async def fetch_page(self, project: str | None, etag: str | None = None) -> PageResponse:
        """GET a project page (or the project list for None), conditionally on ``etag``."""
        url = self.simple_url if project is None else self.project_url(project)
        headers = {"Accept": [PAGE_ACCEPT], "User-Agent": [USER_AGENT], "Via": [self.via]}
        if etag:
            headers["If-None-Match"] = [etag]
        started = self.clock.seconds()
        try:
            page = await self._get_page(url, headers)
        except Exception as e:
            raise self.fetch_failed(url, e) from None
        self.fetched(url, page.status, len(page.body), page.serial, started)
        return page

    def fetch_failed(self, url: str, error: Exception) -> UpstreamError:
        """A page GET that failed (connection, timeout, body): kept in ``health`` and
        logged; the one-line error to raise."""
        reason = f"GET {url}: {describe_failure(error)}"
        self.health.failed(reason)
        self.log.warn("upstream {reason}", reason=reason)
        return UpstreamError(reason)

    def fetched(self, url: str, status: int, size: int, serial: int | None, started: float) -> None:
        """A page GET answered: kept in ``health`` and logged. Raises ``UpstreamError``
        for an error status other than 404 and 410 (which say the project is gone)."""
        self.health.fetches += 1
        self.health.bytes_fetched += size
        if status >= 400 and status not in (404, 410):
            reason = f"GET {url}: upstream answered {status}"
            self.health.failed(reason)
            self.log.warn("upstream {reason}", reason=reason)
            raise UpstreamError(reason)
        self.health.succeeded()
        self.health.saw_serial(serial)
        self.log.info(
            "upstream GET {url} -> {status} {size} bytes in {seconds:.3f}s serial={serial}",
            url=url,
            status=status,
            size=size,
            seconds=self.clock.seconds() - started,
            serial=serial,
        )

    async def open_page(self, project: str | None, etag: str | None = None) -> IResponse:
        """Start a page GET as ``fetch_page`` would; the caller reads (streams) the body
        and keeps ``health`` (the project list goes to a file: ``devpid.mirror.listfetch``)."""
        url = self.simple_url if project is None else self.project_url(project)
        headers = {"Accept": [PAGE_ACCEPT], "User-Agent": [USER_AGENT], "Via": [self.via]}
        if etag:
            headers["If-None-Match"] = [etag]
        return await self._get(url, headers)

    async def _get_page(self, url: str, headers: dict[str, list[str]]) -> PageResponse:
        response = await self._get(url, headers)
        if response.code == 200:
            body = await read_body(response, self.clock, self.timeout)
        else:
            body = b""
            response.deliverBody(Protocol())
        return PageResponse(
            status=response.code,
            body=body,
            content_type=response_header(response, "Content-Type") or "",
            etag=response_header(response, "ETag"),
            serial=last_serial(response),
            url=str(response.request.absoluteURI.decode("utf-8"))
            if hasattr(response, "request") and response.request is not None
            else url,
        )

    async def _answer(self, request: Deferred[IResponse]) -> IResponse:
        """The response to ``request`` once its headers are in, within the timeout
        (which covers connecting); the caller then reads the body at its own pace."""
        request.addTimeout(self.timeout, self.clock)
        response: IResponse = await request
        return response

    async def _get(self, url: str, headers: dict[str, list[str]]) -> IResponse:
        """GET ``url`` until its response headers are in; ``health`` records how long
        that took (the upstream's latency, whatever the body's size), failures not."""
        started = self.clock.seconds()
        response = await self._answer(self.http.get(url, headers=headers, unbuffered=True))
        self.health.record_latency(self.clock.seconds() - started)
        return response

    async def open_file(self, url: str, offset: int = 0) -> IResponse:
        """Start a file GET (from ``offset`` on, with a Range request); the caller
        streams the body with ``deliverBody``."""
        headers = {"User-Agent": [USER_AGENT], "Via": [self.via]}
        if offset:
            headers["Range"] = [f"bytes={offset}-"]
        try:
            response = await self._get(url, headers)
        except Exception as e:
            reason = f"GET {url}: {describe_failure(e)}"
            self.health.failed(reason)
            raise UpstreamError(reason) from None
        self.health.fetches += 1
        return response

    # -- the changelog (XML-RPC) ----------------------------------------------

    @property
    def xmlrpc_url(self) -> str:
        return urljoin(self.simple_url, "/pypi")

    async def changelog_last_serial(self) -> int:
        """The serial of the upstream's newest change."""
        result = await self._xmlrpc("changelog_last_serial")
        if not isinstance(result, int) or isinstance(result, bool):
            raise ChangelogUnsupported(
                f"POST {self.xmlrpc_url}: changelog_last_serial answered {result!r}"
            )
        return result

    async def changelog_since_serial(self, serial: int) -> list[ChangelogEntry]:
        """Every change after ``serial``: (name, version, timestamp, action, serial)."""
        result = await self._xmlrpc("changelog_since_serial", serial)
        try:
            return [
                (str(name), str(version), int(timestamp), str(action), int(change))
                for name, version, timestamp, action, change in result
            ]
        except (TypeError, ValueError):
            raise ChangelogUnsupported(
                f"POST {self.xmlrpc_url}: changelog_since_serial answered something else"
            ) from None

    async def _xmlrpc(self, method: str, *args: Any) -> Any:
        url = self.xmlrpc_url
        body = xmlrpc.client.dumps(args, method).encode("utf-8")
        headers = {
            "Content-Type": ["text/xml"],
            "User-Agent": [USER_AGENT],
            "Via": [self.via],
        }
        try:
            code, content_type, retry_after, answer = await self._post(url, body, headers)
        except Exception as e:
            reason = f"POST {url} {method}: {describe_failure(e)}"
            self.health.failed(reason)
            raise UpstreamError(reason) from None
        self.health.fetches += 1
        self.health.bytes_fetched += len(answer)
        if code == 429:
            raise RateLimited(f"POST {url} {method}: upstream answered 429", retry_after)
        if code in (404, 405, 501):
            raise ChangelogUnsupported(f"POST {url} {method}: upstream answered {code}")
        if code != 200:
            reason = f"POST {url} {method}: upstream answered {code}"
            self.health.failed(reason)
            raise UpstreamError(reason)
        if "html" in content_type.lower():
            raise ChangelogUnsupported(f"POST {url} {method}: upstream answered HTML")
        try:
            params, _ = xmlrpc.client.loads(answer, use_builtin_types=True)
        except xmlrpc.client.Fault as fault:
            raise ChangelogUnsupported(
                f"POST {url} {method}: fault {fault.faultCode}: {fault.faultString}"
            ) from None
        except Exception:  # expat or unmarshalling errors: not an XML-RPC answer
            raise ChangelogUnsupported(f"POST {url} {method}: not an XML-RPC answer") from None
        if len(params) != 1:
            raise ChangelogUnsupported(f"POST {url} {method}: not an XML-RPC answer")
        return params[0]

    async def _post(
        self, url: str, body: bytes, headers: dict[str, list[str]]
    ) -> tuple[int, str, float, bytes]:
        response = await self._answer(
            self.http.post(url, data=body, headers=headers, unbuffered=True)
        )
        answer = await read_body(response, self.clock, self.timeout)
        return (
            response.code,
            response_header(response, "Content-Type") or "",
            _retry_after(response),
            answer,
        )
