"""Replication in memory: applying a primary's events, resets, the wire format, the secret,
the refusal of writes, the long poll's waiting, and the follower's decisions.

Real processes (a primary and two replicas) are in tests/test_replica.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from devpid.private.data import PrivateData
from devpid.private.database import (
    OutOfOrder,
    PrimaryChanged,
    PrivateDatabase,
    ReadOnlyReplica,
    event_mark,
)
from devpid.private.events import Change, Event
from devpid.replica.client import FeedAnswer, PrimaryUnreachable
from devpid.replica.feed import EventFeed
from devpid.replica.follower import BACKOFF_FIRST, RESYNC_BEHIND, Follower
from devpid.replica.readonly import is_write
from devpid.replica.secret import MAX_SKEW, ReplicationSecret, SecretError
from devpid.replica.state import FollowerLease, ReplicaState, status_of
from devpid.replica.wire import (
    FeedError,
    event_line,
    parse_events,
    parse_snapshot,
    snapshot_lines,
)

PRIMARY = "a" * 32


def open_db(path: Path) -> PrivateDatabase:
    database = PrivateDatabase(path)
    database.open()
    return database


def user_event(serial: int, name: str, at: float = 1000.0) -> Event:
    return Event(
        serial, at + serial, "root", f"create user {name}", (Change("user", name, {"n": serial}),)
    )


@pytest.fixture
def primary(tmp_path: Path) -> PrivateDatabase:
    database = open_db(tmp_path / "primary.sqlite")
    for name in ("root", "alice", "bob"):
        database.write(f"create user {name}", None, lambda tx, n=name: tx.put("user", n, {"pw": n}))
    return database


@pytest.fixture
def replica(tmp_path: Path) -> PrivateDatabase:
    database = open_db(tmp_path / "replica.sqlite")
    database.mark_replica("http://primary:3141")
    return database


# -- applying the primary's events ---------------------------------------------------------


def test_events_are_applied_with_the_primarys_serials_and_replay_to_its_records(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    events = primary.events_since(-1)
    applied = replica.apply_replicated(events, PRIMARY)
    assert [e.serial for e in applied] == [0, 1, 2]
    assert replica.serial == primary.serial == 2
    assert replica.records.by_kind == primary.records.by_kind
    assert replica.events_since(-1) == events
    assert (
        replica.event_mark(2)
        == primary.event_mark(2)
        == event_mark(2, events[2].at, events[2].what)
    )


def test_an_event_is_never_applied_twice(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    events = primary.events_since(-1)
    replica.apply_replicated(events[:2], PRIMARY)
    applied = replica.apply_replicated(events, PRIMARY)  # 0 and 1 again, then 2
    assert [e.serial for e in applied] == [2]
    assert replica.apply_replicated(events, PRIMARY) == []
    assert [e.serial for e in replica.events_since(-1)] == [0, 1, 2]


def test_an_event_out_of_order_is_refused_and_nothing_of_its_batch_is_written(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    events = primary.events_since(-1)
    replica.apply_replicated(events[:1], PRIMARY)
    with pytest.raises(OutOfOrder, match="event 2 cannot follow serial 0"):
        replica.apply_replicated([events[2]], PRIMARY)
    with pytest.raises(OutOfOrder):
        replica.apply_replicated([events[1], events[1].__class__(3, 1.0, None, "x", ())], PRIMARY)
    assert replica.serial == 0
    assert [e.serial for e in replica.events_since(-1)] == [0]
    # and another process sharing the serverdir sees the same
    other = open_db(replica.path)
    assert other.serial == 0


def test_a_wrong_serial_is_checked_against_what_another_worker_committed(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    events = primary.events_since(-1)
    other = open_db(replica.path)  # a second follower, behind in memory
    replica.apply_replicated(events[:2], PRIMARY)
    assert [e.serial for e in other.apply_replicated(events[:2], PRIMARY)] == []
    assert [e.serial for e in other.apply_replicated(events, PRIMARY)] == [2]
    assert other.serial == 2


def test_events_of_another_primary_are_refused(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    events = primary.events_since(-1)
    replica.apply_replicated(events[:1], PRIMARY)
    with pytest.raises(PrimaryChanged, match="uuid"):
        replica.apply_replicated(events[1:], "b" * 32)
    assert replica.serial == 0


def test_a_serverdir_with_data_of_its_own_needs_a_resync(
    tmp_path: Path, primary: PrivateDatabase
) -> None:
    own = open_db(tmp_path / "own.sqlite")
    own.write("create user x", None, lambda tx: tx.put("user", "x", {}))
    with pytest.raises(PrimaryChanged, match="resync"):
        own.apply_replicated(primary.events_since(-1), PRIMARY)


def test_a_replica_refuses_local_writes_until_promoted(replica: PrivateDatabase) -> None:
    with pytest.raises(ReadOnlyReplica, match="read-only replica of http://primary:3141"):
        replica.write("create user x", None, lambda tx: tx.put("user", "x", {}))
    assert replica.mark_replica(None) == "http://primary:3141"
    replica.write("create user x", None, lambda tx: tx.put("user", "x", {}))
    assert replica.serial == 0


# -- resets ------------------------------------------------------------------------------------


def test_replace_all_is_one_transaction_and_every_worker_sees_the_reset(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    events = primary.events_since(-1)
    replica.apply_replicated(events, PRIMARY)
    worker = open_db(replica.path)  # another worker of the replica
    heard: list[Event] = []
    worker.listeners.append(heard.append)
    assert worker.serial == 2
    # the new primary has fewer events: the serial goes down
    new_events = [user_event(0, "carol")]
    records = [("user", "carol", {"n": 0}, 0)]
    replica.replace_all(records, new_events, "c" * 32)
    assert replica.serial == 0
    assert replica.meta("primary_uuid") == "c" * 32
    assert worker.catch_up()
    assert worker.serial == 0
    assert dict(worker.records.of("user")) == {"carol": {"n": 0}}
    [reset] = heard
    assert reset.what == "resync"
    assert {(c.name, c.value is None) for c in reset.changes} == {
        ("root", True),
        ("alice", True),
        ("bob", True),
        ("carol", False),
    }
    # and the replica goes on from the new history
    replica.apply_replicated([user_event(1, "dave")], "c" * 32)
    assert worker.catch_up() and sorted(worker.records.of("user")) == ["carol", "dave"]


def test_a_failed_replace_all_leaves_everything_as_it_was(
    primary: PrivateDatabase, replica: PrivateDatabase
) -> None:
    replica.apply_replicated(primary.events_since(-1), PRIMARY)

    def broken() -> Any:
        yield user_event(0, "carol")
        raise FeedError("cut short")

    with pytest.raises(FeedError):
        replica.replace_all([], broken(), "c" * 32)
    again = open_db(replica.path)
    assert again.serial == 2 and sorted(again.records.of("user")) == ["alice", "bob", "root"]
    assert again.meta("primary_uuid") == PRIMARY


# -- the wire ----------------------------------------------------------------------------------


def test_events_round_trip_through_their_lines(primary: PrivateDatabase) -> None:
    events = primary.events_since(-1)
    assert parse_events(b"".join(event_line(e) for e in events)) == events
    assert parse_events(b"") == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{\n", "not JSON"),
        (b'{"serial": 0}\n', "not an event"),
        (event_line(user_event(0, "a"))[:-1], "whole line"),
        (event_line(user_event(0, "a")) + event_line(user_event(2, "b")), "out of order"),
        (b'{"serial":-1,"at":1,"who":null,"what":"x","changes":[]}\n', "serial"),
        (b'{"serial":true,"at":1,"who":null,"what":"x","changes":[]}\n', "serial"),
        (b'{"serial":0,"at":"x","who":null,"what":"x","changes":[]}\n', "time"),
        (
            b'{"serial":0,"at":1,"who":null,"what":"x","changes":[{"kind":"bad","name":"a","value":{}}]}\n',
            "record",
        ),
        (
            b'{"serial":0,"at":1,"who":null,"what":"x","changes":[{"kind":"user","name":"a","value":[]}]}\n',
            "object",
        ),
        (b'{"serial":0,"at":1e999,"who":null,"what":"x","changes":[]}\n', "time"),
    ],
)
def test_a_garbled_feed_is_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(FeedError, match=reason):
        parse_events(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_events_or_a_feed_error(body: bytes) -> None:
    try:
        parse_events(body)
    except FeedError as e:
        assert "\n" not in str(e)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, max_size=4))
def test_any_json_lines_are_a_snapshot_or_a_feed_error(documents: list[Any]) -> None:
    lines = [json.dumps(d).encode() + b"\n" for d in documents]
    with contextlib.suppress(FeedError):
        parse_snapshot(lines)


def test_a_snapshot_round_trips_and_one_cut_short_is_refused(primary: PrivateDatabase) -> None:
    rows = primary.db.execute("SELECT kind, name, value, serial FROM records").fetchall()
    lines = list(snapshot_lines(primary.uuid, primary.serial, rows, primary.events_since(-1)))
    snapshot = parse_snapshot(lines)
    assert (snapshot.uuid, snapshot.serial, len(snapshot.records), len(snapshot.events)) == (
        primary.uuid,
        2,
        3,
        3,
    )
    for cut in range(1, len(lines)):
        with pytest.raises(FeedError):
            parse_snapshot(lines[:cut])
    with pytest.raises(FeedError, match="does not count"):
        parse_snapshot([*lines[:1], *lines[2:]])


# -- the secret ---------------------------------------------------------------------------------


def test_signatures_hold_for_one_path_a_few_minutes_and_one_secret() -> None:
    secret = ReplicationSecret(b"s" * 40)
    signed = secret.sign(b"GET", b"/+replica/events?since=3", 1000.0)
    assert secret.verify(signed, b"GET", b"/+replica/events?since=3", 1000.0 + MAX_SKEW)
    assert not secret.verify(signed, b"GET", b"/+replica/events?since=4", 1000.0)
    assert not secret.verify(signed, b"GET", b"/+replica/snapshot", 1000.0)
    assert not secret.verify(signed, b"GET", b"/+replica/events?since=3", 1001.0 + MAX_SKEW)
    assert not ReplicationSecret(b"t" * 40).verify(
        signed, b"GET", b"/+replica/events?since=3", 1000.0
    )
    for bad in (None, b"", b"x", b"1000:", b"abc:def", b"\xff:\xff"):
        assert not secret.verify(bad, b"GET", b"/", 1000.0)


def test_a_secret_file_must_be_long_private_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    with pytest.raises(SecretError, match="cannot read"):
        ReplicationSecret.from_file(path)
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(SecretError, match="at least 32"):
        ReplicationSecret.from_file(path)
    path.write_text("x" * 40 + "\n")
    path.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        ReplicationSecret.from_file(path)
    path.chmod(0o600)
    assert ReplicationSecret.from_file(path).value == b"x" * 40


# -- writes on a replica ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "write"),
    [
        (b"GET", b"/alice/dev/+simple/", False),
        (b"HEAD", b"/alice/dev/+f/abc/def/x.whl", False),
        (b"POST", b"/+login", False),
        (b"POST", b"/root/pypi/+simple/x/refresh", False),
        (b"POST", b"/root/pypi/x/refresh", False),
        (b"POST", b"/alice/dev/", True),
        (b"POST", b"/alice/+tokens", True),
        (b"PUT", b"/alice", True),
        (b"PATCH", b"/alice/dev", True),
        (b"DELETE", b"/alice/dev/x/1.0", True),
        (b"PUSH", b"/alice/dev", True),
    ],
)
def test_writes_are_told_from_reads(method: bytes, path: bytes, write: bool) -> None:
    assert is_write(method, path) is write


# -- the long poll ----------------------------------------------------------------------------


def test_the_long_poll_returns_on_the_next_event_or_when_its_time_is_up(
    primary: PrivateDatabase,
) -> None:
    clock = Clock()
    feed = EventFeed(primary, clock)
    primary.listeners.append(feed.heard)
    waiting = Deferred.fromCoroutine(feed.wait_after(2, 25.0))
    assert not waiting.called
    clock.advance(1)
    primary.write("create user carol", None, lambda tx: tx.put("user", "carol", {}))
    assert waiting.called
    assert [e.serial for e in feed.events_after(2)] == [3]
    timed = Deferred.fromCoroutine(feed.wait_after(3, 25.0))
    clock.pump([5] * 4)
    assert not timed.called
    clock.advance(5)
    assert timed.called
    assert feed._poll is None  # nothing runs while nobody waits


def test_the_long_poll_hears_another_workers_commit(primary: PrivateDatabase) -> None:
    clock = Clock()
    feed = EventFeed(primary, clock)
    primary.listeners.append(feed.heard)
    waiting = Deferred.fromCoroutine(feed.wait_after(2, 25.0))
    other = open_db(primary.path)
    other.write("create user carol", None, lambda tx: tx.put("user", "carol", {}))
    assert not waiting.called
    clock.advance(0.05)
    assert waiting.called


def test_a_long_poll_given_up_by_its_client_leaves_no_waiter(primary: PrivateDatabase) -> None:
    feed = EventFeed(primary, Clock())
    waiting = Deferred.fromCoroutine(feed.wait_after(2, 25.0))
    waiting.cancel()
    waiting.addErrback(lambda _: None)
    assert feed._waiters == [] and feed._poll is None


# -- the follower -------------------------------------------------------------------------------


@attrs.define
class ScriptedPrimary:
    """A primary client answering from a list (an exception is raised)."""

    answers: list[Any]
    snapshots: list[list[bytes]] = attrs.field(factory=list)
    asked: list[int] = attrs.field(factory=list)

    async def events(
        self, since: int, wait: float, primary: str | None = None, mark: str | None = None
    ) -> FeedAnswer:
        self.asked.append(since)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def snapshot(self, into: Path) -> None:
        into.write_bytes(b"".join(self.snapshots.pop(0)))


@attrs.define
class NoFiles:
    wanted: list[Any] = attrs.field(factory=list)
    removed_paths: list[str] = attrs.field(factory=list)
    everything: int = 0

    def want(self, wanted: Any) -> None:
        self.wanted.extend(wanted)

    def want_everything(self) -> None:
        self.everything += 1

    def retry_failed(self) -> None:
        pass

    def removed(self, paths: Any) -> None:
        self.removed_paths.extend(paths)


def follower_of(replica: PrivateDatabase, client: ScriptedPrimary, tmp_path: Path) -> Follower:
    state = ReplicaState("http://primary:3141", tmp_path / "status.json", lambda: 5000.0)
    return Follower(PrivateData(replica), client, NoFiles(), state, Clock())  # type: ignore[arg-type]


def answer(primary: PrivateDatabase, since: int, uuid: str = PRIMARY) -> FeedAnswer:
    mark = primary.event_mark(since) if since >= 0 else ""
    body = b"".join(event_line(e) for e in primary.events_since(since))
    return FeedAnswer(uuid, primary.serial, mark if mark is not None else "none", body)


def step(follower: Follower) -> float:
    done = Deferred.fromCoroutine(follower.step())
    assert done.called
    return done.result  # type: ignore[no-any-return]


def test_the_follower_applies_then_backs_off_on_garbage_and_a_lost_primary(
    primary: PrivateDatabase, replica: PrivateDatabase, tmp_path: Path
) -> None:
    garbled = FeedAnswer(PRIMARY, 2, "", b'{"serial": 0, "at": "soon"}\n')
    client = ScriptedPrimary(
        [garbled, PrimaryUnreachable("connection refused"), answer(primary, -1)]
    )
    follower = follower_of(replica, client, tmp_path)
    assert step(follower) == BACKOFF_FIRST
    assert replica.serial == -1 and "not applied" in (follower.state.last_error or "")
    assert step(follower) == BACKOFF_FIRST * 2
    assert follower.state.state == "disconnected"
    assert step(follower) == 0.0
    assert replica.serial == 2 and follower.state.state == "following"
    saved = json.loads((tmp_path / "status.json").read_text())
    section = status_of(saved, "http://primary:3141", replica.serial, 5001.0, False)
    assert (section["lag_events"], section["lag_seconds"], section["state"]) == (
        0,
        0.0,
        "following",
    )


def snapshot_of(database: PrivateDatabase) -> list[bytes]:
    rows = database.db.execute("SELECT kind, name, value, serial FROM records").fetchall()
    return list(snapshot_lines(database.uuid, database.serial, rows, database.events_since(-1)))


@pytest.mark.parametrize("why", ["new uuid", "serial below", "other history", "too far behind"])
def test_the_follower_resyncs_when_the_primarys_history_is_not_its_own(
    why: str, primary: PrivateDatabase, replica: PrivateDatabase, tmp_path: Path
) -> None:
    replica.apply_replicated(primary.events_since(-1), PRIMARY)
    restored = open_db(tmp_path / "restored.sqlite")
    restored.write("create user zoe", None, lambda tx: tx.put("user", "zoe", {}))
    uuid = PRIMARY
    if why == "new uuid":
        uuid = restored.uuid
    elif why == "other history":  # the same uuid, and serials past ours, but other events
        for name in ("a", "b", "c", "d"):
            restored.write(name, None, lambda tx, n=name: tx.put("user", n, {}))
    first = answer(restored, 2, uuid)
    if why == "too far behind":
        first = FeedAnswer(uuid, 2 + RESYNC_BEHIND + 1, replica.event_mark(2) or "", b"")
    client = ScriptedPrimary([first], snapshots=[snapshot_of(restored)])
    follower = follower_of(replica, client, tmp_path)
    assert step(follower) == 0.0
    assert replica.records.by_kind == restored.records.by_kind
    assert replica.serial == restored.serial
    assert follower.state.resyncs == 1
    assert follower.files.everything == 1  # type: ignore[attr-defined]


def test_the_follower_fetches_what_events_link_and_removes_what_they_unlink(
    tmp_path: Path, replica: PrivateDatabase
) -> None:
    source = open_db(tmp_path / "source.sqlite")
    link = {
        "rel": "releasefile",
        "entrypath": "a/dev/+f/abc/0123456789abc/x-1.whl",
        "hashes": {"sha256": "abc"},
    }
    source.write("up", None, lambda tx: tx.put("version", "a/dev/x/1", {"+links": [link]}))
    source.write("del", None, lambda tx: tx.delete("version", "a/dev/x/1"))
    first, second = source.events_since(-1)
    client = ScriptedPrimary(
        [
            FeedAnswer(source.uuid, 0, "", event_line(first)),
            FeedAnswer(source.uuid, 1, source.event_mark(0) or "", event_line(second)),
        ]
    )
    follower = follower_of(replica, client, tmp_path)
    step(follower)
    assert [w.path for w in follower.files.wanted] == [link["entrypath"]]  # type: ignore[attr-defined]
    step(follower)
    assert follower.files.removed_paths == [link["entrypath"]]  # type: ignore[attr-defined]


def test_only_one_worker_holds_the_follower_lease(tmp_path: Path) -> None:
    first, second = (
        FollowerLease(tmp_path / "replica.lock"),
        FollowerLease(tmp_path / "replica.lock"),
    )
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()
    assert os.path.exists(tmp_path / "replica.lock")


# -- the primary's endpoints, in memory -----------------------------------------------------


def replica_app(primary: PrivateDatabase, tmp_path: Path, secret: ReplicationSecret | None) -> Any:
    from klein import Klein
    from treq.testing import StubTreq
    from twisted.internet.defer import maybeDeferred

    from devpid.files.releases import ReleaseFiles
    from devpid.files.store import FileStore
    from devpid.http.errors import ErrorAnswers
    from devpid.routes.replica import ReplicaRoutes

    clock = Clock()
    data = PrivateData(primary)
    files = ReleaseFiles(FileStore(tmp_path / "serverdir"), lambda path: False)
    feed = EventFeed(primary, clock)
    app = Klein()
    ReplicaRoutes(data, files, feed, clock, maybeDeferred, secret).register(app)
    ErrorAnswers().register(app)
    stub = StubTreq(app.resource())
    stub.clock = clock  # type: ignore[attr-defined]
    return stub


SECRET = ReplicationSecret(b"k" * 40)


def get(stub: Any, target: str, signed: bool = True) -> tuple[int, bytes, Any]:
    headers = {}
    if signed:
        headers["X-Devpid-Replication"] = SECRET.sign(b"GET", target.encode(), 0.0).decode()
    answered: list[Any] = []
    stub.get("http://primary" + target, headers=headers).addCallback(answered.append)
    stub.flush()
    if not answered:  # a long poll: its time runs out
        stub.clock.pump([5] * 13)
        stub.flush()
    [response] = answered
    body: list[bytes] = []
    stub.content(response).addCallback(body.append)
    stub.flush()
    return response.code, body[0], response.headers


def test_the_feed_answers_signed_requests_only(primary: PrivateDatabase, tmp_path: Path) -> None:
    stub = replica_app(primary, tmp_path, SECRET)
    code, body, headers = get(stub, "/+replica/events?since=0&timeout=0")
    assert code == 200
    assert [e.serial for e in parse_events(body)] == [1, 2]
    assert headers.getRawHeaders(b"x-devpid-primary-serial") == [b"2"]
    assert headers.getRawHeaders(b"x-devpid-since-mark") == [primary.event_mark(0).encode()]  # type: ignore[union-attr]
    assert get(stub, "/+replica/events?since=0&timeout=0", signed=False)[0] == 403
    assert get(stub, "/+replica/events?since=9&timeout=0")[2].getRawHeaders(
        b"x-devpid-since-mark"
    ) == [b"none"]
    unlinked = "/+replica/files/alice/dev/+f/abc/0123456789abc/x-1.whl"
    assert get(stub, unlinked)[0] == 404
    closed = replica_app(primary, tmp_path, None)
    code, body, _ = get(closed, "/+replica/events?since=0&timeout=0")
    assert code == 404 and b"--replication-secret-file" in body


@settings(max_examples=150, deadline=None)
@given(since=st.text(max_size=12), timeout=st.text(max_size=8))
def test_any_query_gets_the_events_or_one_line_400(
    since: str, timeout: str, tmp_path_factory: Any
) -> None:
    from urllib.parse import quote

    database = open_db(tmp_path_factory.mktemp("db") / "p.sqlite")
    stub = replica_app(database, tmp_path_factory.mktemp("s"), SECRET)
    target = f"/+replica/events?since={quote(since)}&timeout={quote(timeout)}"
    code, body, _ = get(stub, target)
    if code == 200:
        return
    assert code == 400, (code, body)
    assert body.count(b"\n") == 1 and b"Traceback" not in body


def test_gen_config_writes_a_replicas_command_line_and_refuses_half_of_it() -> None:
    from devpid.cli.gen_config import deployment_from_options
    from devpid.config import ConfigError
    from devpid.ops.genconfig import render_nginx

    options = {
        "workers": "1",
        "primary-url": "http://primary:3141/",
        "replication-secret-file": "/etc/s",
    }
    deployment = deployment_from_options(options)
    command = deployment.devpid_command("tcp:3141")
    assert command[-4:] == [
        "--primary-url",
        "http://primary:3141",
        "--replication-secret-file",
        "/etc/s",
    ]
    assert "proxy_pass http://primary:3141;" in render_nginx(deployment)
    with pytest.raises(ConfigError, match="needs --replication-secret-file"):
        deployment_from_options({"workers": "1", "primary-url": "http://primary:3141/"})
    with pytest.raises(ConfigError, match="plain http"):
        deployment_from_options({**options, "primary-url": "http://u:p@primary/"})
    primary = deployment_from_options({"workers": "1", "replication-secret-file": "/etc/s"})
    assert "--primary-url" not in primary.devpid_command("tcp:3141")
    assert "@primary" not in render_nginx(primary)


def answered_at_once(stub: Any, target: str) -> bool:
    answered: list[Any] = []
    signature = SECRET.sign(b"GET", target.encode(), 0.0).decode()
    stub.get("http://primary" + target, headers={"X-Devpid-Replication": signature}).addCallback(
        answered.append
    )
    stub.flush()
    if answered:
        return True
    stub.clock.pump([5] * 13)  # let the long poll end
    stub.flush()
    return False


def test_a_replica_that_cannot_continue_is_answered_without_waiting(
    primary: PrivateDatabase, tmp_path: Path
) -> None:
    stub = replica_app(primary, tmp_path, SECRET)
    mark = primary.event_mark(2)
    assert not answered_at_once(
        stub, f"/+replica/events?since=2&primary={primary.uuid}&mark={mark}"
    )
    assert answered_at_once(stub, "/+replica/events?since=7")  # ahead of this primary
    assert answered_at_once(stub, f"/+replica/events?since=2&primary={'b' * 32}")
    assert answered_at_once(stub, f"/+replica/events?since=2&mark={'0' * 32}")
