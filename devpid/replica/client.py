"""The replica's requests to its primary, each signed with the replication secret."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from devpid.mirror.upstream import describe_failure, read_body
from devpid.replica.secret import HEADER, ReplicationSecret
from devpid.replica.wire import PRIMARY_SERIAL, PRIMARY_UUID, SINCE_MARK, FeedError

#: Bytes one feed answer may take (the primary sends at most about 8 MiB).
MAX_FEED_BYTES = 256 << 20
#: Seconds beyond the long poll's own wait before its answer counts as lost.
ANSWER_GRACE = 15.0
#: Seconds the primary may take to start sending a snapshot (it dumps it first).
SNAPSHOT_WAIT = 300.0


class PrimaryUnreachable(Exception):
    """The primary did not answer, or not as a devpid primary does; the message is one line."""


@attrs.define
class SignedHTTP:
    """A treq client whose every GET carries the replication signature (the tee's
    ``http`` for the primary's files, and this module's)."""

    http: Any
    secret: ReplicationSecret = attrs.field(repr=False)
    clock: IReactorTime

    def get(self, url: str, headers: Any = None, **kwargs: Any) -> Deferred[IResponse]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        signed = {str(k): list(v) for k, v in dict(headers or {}).items()}
        signature = self.secret.sign(b"GET", target.encode("ascii"), self.clock.seconds())
        signed[HEADER.decode()] = [signature.decode("ascii")]
        result: Deferred[IResponse] = self.http.get(url, headers=signed, **kwargs)
        return result


@attrs.frozen
class FeedAnswer:
    uuid: str
    serial: int
    #: The primary's mark of the event the replica asked after ("" when it asked after -1,
    #: "none" when the primary has no such event).
    since_mark: str
    body: bytes


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("ascii", "replace") if values else None


def _node(response: IResponse) -> tuple[str, int]:
    uuid = _header(response, PRIMARY_UUID)
    serial = _header(response, PRIMARY_SERIAL)
    if not uuid or serial is None:
        raise FeedError("the answer lacks the primary's uuid and serial headers")
    try:
        return uuid, int(serial)
    except ValueError:
        raise FeedError(f"the primary's serial header is not a number: {serial[:40]!r}") from None


def refusal(status: int) -> str:
    """What a status other than 200 from ``/+replica/`` means, in one line."""
    if status == 403:
        return (
            "the primary refuses our signature: give both the same "
            "--replication-secret-file, and keep their clocks within 5 minutes"
        )
    if status == 404:
        return (
            "the primary has no replication endpoints "
            "(is it a devpid with --replication-secret-file?)"
        )
    return f"the primary answered {status}"


@attrs.define
class PrimaryClient:
    primary_url: str
    http: SignedHTTP
    clock: IReactorTime

    def url(self, path: str) -> str:
        return self.primary_url.rstrip("/") + "/+replica/" + path

    def file_url(self, entrypath: str) -> str:
        return self.url("files/" + quote(entrypath, safe="/+"))

    async def _get(self, url: str, wait: float) -> IResponse:
        request = self.http.get(url, unbuffered=True)
        request.addTimeout(wait, self.clock)
        try:
            response: IResponse = await request
        except CancelledError:
            raise  # stopping, not the primary's doing
        except Exception as e:
            raise PrimaryUnreachable(f"GET {url}: {describe_failure(e)}") from None
        if response.code != 200:
            response.deliverBody(Protocol())
            raise PrimaryUnreachable(f"GET {url}: {refusal(response.code)}")
        return response

    async def events(
        self, since: int, wait: float, primary: str | None = None, mark: str | None = None
    ) -> FeedAnswer:
        """The events after ``since``; ``primary`` (the uuid followed) and ``mark`` (of our
        event ``since``) let the primary answer at once when we cannot continue."""
        query = f"since={since}&timeout={wait:g}"
        if primary:
            query += f"&primary={quote(primary)}"
        if mark:
            query += f"&mark={quote(mark)}"
        url = self.url(f"events?{query}")
        response = await self._get(url, wait + ANSWER_GRACE)
        uuid, serial = _node(response)
        try:
            body = await read_body(response, self.clock, ANSWER_GRACE, MAX_FEED_BYTES)
        except CancelledError:
            raise
        except Exception as e:
            raise PrimaryUnreachable(f"GET {url}: {describe_failure(e)}") from None
        return FeedAnswer(uuid, serial, _header(response, SINCE_MARK) or "", body)

    async def snapshot(self, into: Path) -> None:
        """The primary's snapshot written to ``into``."""
        url = self.url("snapshot")
        response = await self._get(url, SNAPSHOT_WAIT)
        _node(response)
        done: Deferred[None] = Deferred()
        with open(into, "wb") as out:
            response.deliverBody(_ToFile(out, done, self.clock))
            try:
                await done
            except Exception as e:
                raise PrimaryUnreachable(f"GET {url}: {describe_failure(e)}") from None
            os.fsync(out.fileno())


class _ToFile(Protocol):
    """A body written to a file, given up on after ``STALL`` seconds without a byte."""

    STALL = 60.0

    def __init__(self, out: Any, done: Deferred[None], clock: IReactorTime) -> None:
        self.out = out
        self.done = done
        self.timer = clock.callLater(self.STALL, self._stalled)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.out.write(data)
        self.timer.reset(self.STALL)

    def _stalled(self) -> None:
        if not self.done.called:
            self.done.errback(FeedError(f"the snapshot stalled for {self.STALL:g}s"))
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        if self.timer.active():
            self.timer.cancel()
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(None)
        elif reason.check(PotentialDataLoss):
            self.done.errback(FeedError("the snapshot ended without its length"))
        else:
            self.done.errback(reason)
