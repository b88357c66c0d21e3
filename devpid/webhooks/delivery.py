"""One webhook POST: the body, its headers, a deadline, and what came of it.

A 2xx answer is a delivery; anything else (another status, a refused or
dropped connection, no answer within the timeout) is a failed attempt with a
one-line reason. The answer's body is read and thrown away, at most
``MAX_ANSWER_BYTES`` of it: a receiver that sends a lot, or slowly, is cut
off at the deadline like one that sends nothing, and never holds up anything
but its own delivery.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from devpid import __version__

#: The most of an answer's body that is read (its start goes into the error).
MAX_ANSWER_BYTES = 64 << 10
#: How much of a failed answer's body the error line quotes.
QUOTED_BYTES = 120
USER_AGENT = f"devpid-webhooks/{__version__}"


@attrs.frozen
class Outcome:
    ok: bool
    status: int | None = None
    #: One line: why the attempt failed ("" when it did not).
    error: str = ""


@attrs.frozen
class Request:
    """What to send: built from a queued delivery."""

    url: str
    body: bytes
    event: str
    delivery: str
    serial: int
    signature: str | None

    def target(self) -> tuple[str, str | None]:
        """The URL to connect to, without its user and password, and the
        ``Authorization`` header they make (HTTP Basic), if any: a Jenkins user's API
        token goes in the URL as ``http://user:apitoken@jenkins/...``."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url, None
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        bare = urlunsplit(parts._replace(netloc=hostport))
        return bare, "Basic " + base64.b64encode(pair).decode("ascii")

    def headers(self) -> dict[str, list[str]]:
        headers = {
            "Content-Type": ["application/json"],
            "User-Agent": [USER_AGENT],
            "X-Devpid-Event": [self.event],
            "X-Devpid-Delivery": [self.delivery],
            "X-Devpid-Serial": [str(self.serial)],
        }
        if self.signature is not None:
            headers["X-Devpid-Signature"] = [self.signature]
        authorization = self.target()[1]
        if authorization is not None:
            headers["Authorization"] = [authorization]
        return headers


class _Drain(Protocol):
    """Reads an answer's body up to a limit, keeping its start."""

    def __init__(self, finished: Deferred[bytes]) -> None:
        self.finished = finished
        self.start = b""
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if len(self.start) < QUOTED_BYTES:
            self.start += data[: QUOTED_BYTES - len(self.start)]
        self.size += len(data)
        if self.size > MAX_ANSWER_BYTES and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(CancelledError())) -> None:
        if not self.finished.called:
            # however it ended (complete, cut off, dropped), the status is what counts
            self.finished.callback(self.start)


def _drain(response: IResponse) -> Deferred[bytes]:
    protocol: _Drain

    def cancel(_: Deferred[bytes]) -> None:
        if protocol.transport is not None:
            protocol.transport.stopProducing()  # type: ignore[attr-defined]

    finished: Deferred[bytes] = Deferred(cancel)
    protocol = _Drain(finished)
    response.deliverBody(protocol)
    return finished


def one_line(text: str, limit: int = QUOTED_BYTES) -> str:
    """``text`` printable, on one line, at most ``limit`` characters."""
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    cleaned = " ".join(cleaned.split())
    return cleaned[:limit]


def describe(failure: Failure | BaseException, timeout: float) -> str:
    error = failure.value if isinstance(failure, Failure) else failure
    if isinstance(error, TimeoutError | CancelledError | ConnectingCancelledError):
        return f"no answer within {timeout:g}s"
    reasons = getattr(error, "reasons", None)
    if reasons:  # twisted.web._newclient wraps the real cause in a list
        return "; ".join(describe(r, timeout) for r in reasons)
    text = one_line(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@attrs.define
class Sender:
    """POSTs deliveries with a treq client, each within ``timeout`` seconds in all."""

    http: Any
    clock: IReactorTime
    timeout: float = 10.0

    async def send(self, request: Request) -> Outcome:
        exchange = Deferred.fromCoroutine(self._exchange(request))
        exchange.addTimeout(self.timeout, self.clock)
        try:
            return await exchange
        except Exception as e:
            return Outcome(False, None, describe(e, self.timeout))

    async def _exchange(self, request: Request) -> Outcome:
        url = request.target()[0]
        response: IResponse = await self.http.post(
            url, data=request.body, headers=request.headers(), unbuffered=True
        )
        start = await _drain(response)
        if 200 <= response.code < 300:
            return Outcome(True, response.code)
        quoted = one_line(start.decode("utf-8", "replace"))
        return Outcome(
            False, response.code, f"HTTP {response.code}" + (f": {quoted}" if quoted else "")
        )
