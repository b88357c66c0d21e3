"""Looking for other workers' commits once per reactor turn (devpid.common.turns)."""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock

from devpid.common.turns import ReactorTurns
from devpid.private.data import PrivateData
from devpid.private.database import PrivateDatabase
from devpid.private.init import initialize
from devpid.private.userconfig import NewUser

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def opened(path: Path) -> PrivateData:
    database = PrivateDatabase(path / "private.sqlite")
    database.open()
    return PrivateData(database)


class _Turns:
    """A turn counter the test moves by hand."""

    def __init__(self) -> None:
        self.count = 0


def test_an_epoll_reactor_s_polls_are_counted_and_its_poller_still_works() -> None:
    reactor = EPollReactor()
    try:
        turns = ReactorTurns(reactor)
        assert turns.countable and turns.count == 0
        reader, writer = os.pipe()
        try:
            reactor._poller.register(reader, select.EPOLLIN)  # through the wrapper
            os.write(writer, b"x")
            assert reactor._poller.poll(0, 4) == [(reader, select.EPOLLIN)]
            reactor.doPoll(0)  # the reactor's own poll, as each of its turns makes
            assert turns.count == 2
            reactor._poller.unregister(reader)
        finally:
            os.close(reader)
            os.close(writer)
        # a second wrapper counts on the same poller, never wrapping twice
        assert ReactorTurns(reactor).count == 2
    finally:
        reactor._poller.close()


def test_a_reactor_without_a_poller_is_not_counted() -> None:
    turns = ReactorTurns(MemoryReactorClock())
    assert not turns.countable and turns.count is None


def test_once_per_turn_sees_another_worker_s_commit_from_the_next_turn_on(
    tmp_path: Path,
) -> None:
    one, two = opened(tmp_path), opened(tmp_path)
    initialize(one, HASH, None, "x")
    turns: Any = _Turns()
    two.database.turns = turns
    assert two.catch_up_in_this_turn() and two.user("root") is not None
    one.create_user("carol", NewUser("pw", None, {}), HASH, None)
    # the same turn: looked already (a request of this turn was sent before the commit)
    assert not two.catch_up_in_this_turn() and two.user("carol") is None
    turns.count += 1  # the next poll: a request now may follow the commit
    assert two.catch_up_in_this_turn() and two.user("carol") is not None
    # what must see a commit at once still does, in any turn
    one.create_user("dave", NewUser("pw", None, {}), HASH, None)
    assert two.catch_up() and two.user("dave") is not None


def test_without_turns_every_request_looks(tmp_path: Path) -> None:
    one, two = opened(tmp_path), opened(tmp_path)
    initialize(one, HASH, None, "x")
    assert two.catch_up_in_this_turn()
    one.create_user("erin", NewUser("pw", None, {}), HASH, None)
    assert two.catch_up_in_this_turn() and two.user("erin") is not None
