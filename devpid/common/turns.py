"""Counting the reactor's turns: which poll of the reactor the current work follows.

The private data is checked for other workers' commits before each request
(``PrivateDatabase.catch_up``: a ``PRAGMA data_version``, about 6% of a cached
page's CPU). Looking once per turn is enough, if the look comes after the turn's
poll: a request handled in a turn was readable when that poll returned, and a
client that saw another worker's commit sent it after that commit, so the
commit came before the poll, and before the look.

The count is kept by a thin wrapper around the reactor's poller (the epoll and
poll reactors poll through ``_poller.poll``); with any other reactor there is no
count, and callers look every time.
"""

from __future__ import annotations

from typing import Any


class _CountingPoller:
    """The reactor's poller, counting its polls; everything else is the poller's own."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.polls = 0

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._poller.poll(*args, **kwargs)
        finally:
            self.polls += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


class ReactorTurns:
    """``count``: how many polls the reactor has made; None when it cannot be counted."""

    def __init__(self, reactor: Any) -> None:
        poller = getattr(reactor, "_poller", None)
        self._counter: _CountingPoller | None = None
        if isinstance(poller, _CountingPoller):
            self._counter = poller
        elif poller is not None and callable(getattr(poller, "poll", None)):
            self._counter = reactor._poller = _CountingPoller(poller)

    @property
    def countable(self) -> bool:
        return self._counter is not None

    @property
    def count(self) -> int | None:
        return self._counter.polls if self._counter is not None else None


__all__ = ["ReactorTurns"]
