"""The upstream end of a download: taking the response body, and giving up on a stalled one."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from devpid.mirror.upstream import MIN_PROGRESS


class UpstreamBody(Protocol):
    """Hands each chunk of the upstream's response body, then its end, to the download."""

    def __init__(
        self, on_chunk: Callable[[bytes], None], on_end: Callable[[Failure], None]
    ) -> None:
        self.on_chunk = on_chunk
        self.on_end = on_end

    def dataReceived(self, data: bytes) -> None:
        self.on_chunk(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        self.on_end(reason)

    def stop(self) -> None:
        """Read no more of the body: its connection is closed."""
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class Discard(Protocol):
    """Takes a response body that is no longer wanted, and closes its connection."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


@attrs.define
class IdleWatch:
    """Calls ``on_idle`` when ``timeout`` seconds bring fewer than ``MIN_PROGRESS`` bytes."""

    clock: IReactorTime
    timeout: float
    on_idle: Callable[[], None]
    #: The bytes received when the current window began.
    window_start: int = 0
    _timer: IDelayedCall | None = None

    def start(self, received: int) -> None:
        """The upstream has ``timeout`` seconds from now to send ``MIN_PROGRESS`` bytes."""
        self.window_start = received
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
        else:
            self._timer = self.clock.callLater(self.timeout, self._idle)

    def progress(self, received: int) -> None:
        """``received`` bytes so far: a new window if this one brought enough."""
        if received - self.window_start >= MIN_PROGRESS:
            self.start(received)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        self._timer = None
        self.on_idle()
