"""Hypothesis fuzzing of the private routes: users, indexes, tokens, login, projects.

Fuzzed: JSON bodies of every shape (wrong types, deep nesting, huge strings,
PATCH lists with odd operators), bodies that are not JSON at all, user, index
and project names (percent-encoded bytes, unicode, ``+``), methods, and
credentials. Invariants: never a 5xx, never a traceback; every error is one
line (devpi's ``{"message": ...}`` typed exactly ``application/json``); and a
4xx changes nothing: the serial and the records are as before.

Runs in memory: the real site from ``makeService`` on a memory reactor, as
root (empty password) so that requests get past the permission checks to the
validation they are meant to reach.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred

from devpid.private.data import PrivateData
from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response

ROOT_AUTH = base64.b64encode(b"root:").decode()
_TRACEBACK = (b"Traceback", b'File "', b"twisted.python.failure")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=20,
)
config_keys = st.sampled_from(
    [
        "type",
        "volatile",
        "bases",
        "acl_upload",
        "acl_toxresult_upload",
        "mirror_whitelist",
        "mirror_whitelist_inheritance",
        "mirror_url",
        "mirror_cache_expiry",
        "title",
        "description",
        "custom_data",
        "password",
        "pwhash",
        "email",
        "indexes",
        "projects",
        "result",
        "",
        "unknown",
    ]
)
config_bodies = st.dictionaries(config_keys, json_values, max_size=6)
patch_items = st.builds(
    lambda key, op, value: f"{key}{op}{value}",
    config_keys,
    st.sampled_from(["=", "+=", "-=", "==", "", "=+"]),
    st.text(max_size=20),
)
bodies = (
    config_bodies.map(json.dumps)
    | st.lists(patch_items, max_size=6).map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=50)
    | st.just("[" * 5000 + "]" * 5000)
    | st.just(json.dumps({"title": "x" * 60000}))
)
names = st.one_of(
    st.sampled_from(["root", "alice", "alice/dev", "root/pypi", "+api", "..", "a b"]),
    st.text(min_size=1, max_size=30),
).map(lambda name: quote(name, safe="/+"))


@pytest.fixture(scope="module")
def devpid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryDevpid]:
    server = MemoryDevpid.start(tmp_path_factory.mktemp("fuzz-private") / "serverdir")
    answer = call(server, "PUT", "/alice", json.dumps({"password": "pw"}))
    assert answer.code == 201, answer.raw
    assert call(server, "PUT", "/alice/dev", json.dumps({"bases": "root/pypi"})).code == 200
    yield server
    # let requests still waiting for the unreachable upstream time out first
    for _ in range(20):
        server.reactor.advance(5)
    # send() hung up every connection, but a StringTransport still says "connected"
    from devpid.service import ListenerService

    site = next(s for s in server.top if isinstance(s, ListenerService)).site
    for channel in site._open_channels():
        channel.transport.connected = False
    # one service at a time, as twistd's reverse order, each to its end
    for service in reversed(list(server.top)):
        stopped: list[object] = []
        maybeDeferred(service.stopService).addBoth(stopped.append)
        server.reactor.advance(0)
        for _ in range(40):  # responses still waiting get the shutdown grace (30 s)
            if stopped:
                break
            server.reactor.advance(1)
        assert stopped, f"{type(service).__name__} did not stop"
    server.top.running = False
    if server._cooperation is not None:
        server._cooperation.stop()


def private_data(server: MemoryDevpid) -> PrivateData:
    """The running site's private data (for the before/after comparison)."""
    service: Any = server.top.getServiceNamed("private")
    data: PrivateData = service.data
    return data


def call(
    server: MemoryDevpid, method: str, path: str, body: str | None = None, auth: str = ROOT_AUTH
) -> RawAnswer:
    payload = (body or "").encode("utf-8", errors="surrogatepass")
    head = [
        f"{method} {path} HTTP/1.0",
        "Host: localhost",
        "Accept: application/json",
        "Content-Type: application/json",
        f"X-Devpi-Auth: {auth}",
        f"Content-Length: {len(payload)}",
    ]
    exchange = server.send(
        "\r\n".join(head).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + payload
    )
    assert exchange.closed, exchange.raw[:300]
    return parse_response(exchange.raw)


def check(answer: RawAnswer) -> None:
    for mark in _TRACEBACK:
        assert mark not in answer.raw, answer.raw[:2000]
    # 502/504: the (unreachable) upstream of root/pypi, which alice/dev inherits
    assert answer.code < 500 or answer.code in (502, 504), answer.raw[:2000]
    if answer.code >= 400:
        content_type = answer.headers.get("content-type")
        if content_type == "application/json":
            message = json.loads(answer.body)["message"]
            assert "\n" not in message and message, answer.raw
        else:
            # refused before routing (size limits, bad Host): devpid's plain line
            assert content_type == "text/plain; charset=utf-8", answer.raw


def snapshot(data: PrivateData) -> tuple[int, str]:
    return data.serial, json.dumps(data.database.records.by_kind, sort_keys=True)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    method=st.sampled_from(["PUT", "PATCH", "DELETE", "POST", "GET"]),
    target=st.sampled_from(["user", "index", "project", "version", "tokens", "login"]),
    name=names,
    body=bodies,
)
def test_private_routes_never_fail_and_refusals_change_nothing(
    devpid: MemoryDevpid, method: str, target: str, name: str, body: str
) -> None:
    path = {
        "user": f"/{name}",
        "index": f"/alice/{name}",
        "project": f"/alice/dev/{name}",
        "version": f"/alice/dev/{name}/1.0",
        "tokens": f"/{name}/+tokens",
        "login": "/+login",
    }[target]
    data = private_data(devpid)
    before = snapshot(data)
    answer = call(devpid, method, path, body)
    check(answer)
    if answer.code >= 400:
        assert snapshot(data) == before, (method, path, body[:200], answer.raw[:500])


@FUZZ
@given(
    auth=st.one_of(
        st.text(max_size=60),
        st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()),
        st.tuples(st.text(max_size=20), st.text(max_size=40)).map(
            lambda t: base64.b64encode(f"{t[0]}:{t[1]}".encode()).decode()
        ),
    ),
    path=st.sampled_from(["/+api", "/alice", "/alice/dev", "/", "/root/pypi/+api"]),
)
def test_garbage_credentials_are_anonymous(devpid: MemoryDevpid, auth: str, path: str) -> None:
    # the fuzzing before may have deleted them (as root, rightly)
    call(devpid, "PUT", "/alice", json.dumps({"password": "pw"}))
    call(devpid, "PUT", "/alice/dev", json.dumps({"bases": "root/pypi"}))
    answer = call(devpid, "GET", path, None, auth=auth.replace("\r", "").replace("\n", ""))
    check(answer)
    assert answer.code in (200, 400), answer.raw[:500]
    if path == "/+api" and answer.code == 200:
        status: Any = json.loads(answer.body)["result"]["authstatus"]
        assert status[0] in ("ok", "noauth")


def test_deep_and_huge_json_is_refused_in_one_line(devpid: MemoryDevpid) -> None:
    for body in ("[" * 100_000, '{"a":' * 20_000 + "1" + "}" * 20_000):
        answer = call(devpid, "PATCH", "/alice/dev", body)
        check(answer)
        assert answer.code in (400, 413), answer.raw[:300]


def test_fuzz_leaves_the_data_consistent(devpid: MemoryDevpid, tmp_path: Path) -> None:
    from devpid.ops.fsck import check as fsck

    data = private_data(devpid)
    assert data.user("root") is not None and data.index("root/pypi") is not None
    report = fsck(devpid.serverdir)
    assert report.exit_status == 0, [p.line() for p in report.problems]


def test_json_nested_deeper_than_the_limit_is_a_400(devpid: MemoryDevpid) -> None:
    for depth in (33, 480):
        custom = "[" * depth + "]" * depth
        answer = call(devpid, "PUT", "/nested", '{"password": "pw", "custom_data": ' + custom + "}")
        check(answer)
        assert answer.code == 400 and "nested deeper" in answer.body.decode(), answer.raw[:300]
    fine = "[" * 10 + "]" * 10
    answer = call(devpid, "PUT", "/nested", '{"password": "pw", "custom_data": ' + fine + "}")
    assert answer.code == 201, answer.raw[:300]


def test_limits_on_what_users_may_store(devpid: MemoryDevpid) -> None:
    huge = "1" + "0" * 400
    answer = call(
        devpid,
        "PUT",
        "/alice/huge",
        json.dumps(
            {"type": "mirror", "mirror_url": "http://localhost:9/", "mirror_cache_expiry": huge}
        ),
    )
    check(answer)
    assert answer.code == 400, answer.raw[:300]
    costly = "$argon2id$v=19$m=8,t=3000000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
    answer = call(devpid, "PUT", "/costly", json.dumps({"password": "x", "pwhash": costly}))
    check(answer)
    data = private_data(devpid)
    record = data.user("costly")
    assert record is None or record["pwhash"] != costly


def test_a_write_lock_held_too_long_is_a_503_that_changes_nothing(devpid: MemoryDevpid) -> None:
    import sqlite3

    data = private_data(devpid)
    data.database.db.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(data.database.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another worker in the middle of a long write
        before = snapshot(data)
        answer = call(devpid, "PUT", "/blocked", json.dumps({"password": "pw"}))
        assert not any(mark in answer.raw for mark in _TRACEBACK), answer.raw[:300]
        assert json.loads(answer.body)["message"]
        assert answer.code == 503 and answer.headers["retry-after"] == "1", answer.raw[:300]
        assert snapshot(data) == before
        other.execute("ROLLBACK")
        assert call(devpid, "PUT", "/blocked", json.dumps({"password": "pw"})).code == 201
    finally:
        other.close()
        data.database.db.execute("PRAGMA busy_timeout=10000")
