"""Run one coroutine per key, however many callers ask for it at once."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


@attrs.define
class Coalescer(Generic[T]):
    """Callers of ``run`` with the same key share one run of the work.

    Each caller gets its own Deferred, so cancelling one (Klein does this when
    a client disconnects) detaches that caller and never cancels the work.
    """

    _waiting: dict[str, list[Deferred[T]]] = attrs.field(factory=dict)

    def running(self, key: str) -> bool:
        return key in self._waiting

    def run(self, key: str, work: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        waiters = self._waiting.get(key)
        start = waiters is None
        if waiters is None:
            waiters = self._waiting[key] = []

        def detach(waiter: Deferred[T]) -> None:
            if waiter in waiters:
                waiters.remove(waiter)

        waiter: Deferred[T] = Deferred(detach)
        waiters.append(waiter)
        if start:
            Deferred.fromCoroutine(work()).addBoth(self._deliver, key)
        return waiter

    def _deliver(self, result: T | Failure, key: str) -> None:
        for waiter in self._waiting.pop(key, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
