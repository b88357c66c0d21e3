"""Hypothesis fuzzing of the lockdown gate and ``/+authcheck`` under ``--require-auth``.

Invariants: never a 5xx but the unreachable upstream's 502/504, never a
traceback; an anonymous request (whatever garbage it carries as credentials)
gets through only to the open paths; ``/+authcheck`` answers only 200, 400, 401 or
403, and 200 for anonymous only when the URI it is asked about is open; nothing
from the request is echoed unescaped on a page.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpid.auth.lockdown import decoded_path, is_health_check, is_open
from devpid.routes.authcheck import original_target
from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response

BROWSER = "text/html,application/xhtml+xml"
MARKER = "<xfz"
_TRACEBACK = (b"Traceback", b'File "', b"twisted.python.failure")

segments = st.one_of(
    st.sampled_from(
        [
            *("root", "pypi", "+simple", "+f", "+api", "+login", "+logout", "+status"),
            *("+static", "+replica", "+authcheck", "+search", "+metrics", "", ".."),
            *("%2Bapi", "%ff", "%00"),
        ]
    ),
    st.text(min_size=1, max_size=12).map(lambda text: quote(MARKER + text, safe="+")),
)
paths = st.lists(segments, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
queries = st.one_of(st.just(""), st.sampled_from(["?check=1", "?check=0", "?check="]))
credentials = st.one_of(
    st.none(),
    st.text(max_size=40).map(lambda t: "Basic " + base64.b64encode(t.encode()).decode()),
    st.sampled_from(["Basic", "Basic ===", "Bearer x", "Basic " + "A" * 5000, "basic Og=="]),
    st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()),
)
cookies = st.one_of(st.none(), st.text(alphabet="abcdefABCDEF0123456789+/=;", max_size=60)).map(
    lambda value: None if value is None else f"devpid_auth={value}"
)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "PUSH"])
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def devpid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryDevpid]:
    server = MemoryDevpid.start(
        tmp_path_factory.mktemp("lockdown-fuzz") / "serverdir", **{"require-auth": True}
    )
    # no credentials hypothesis could make up: root's empty password goes
    root = "Basic " + base64.b64encode(b"root:").decode()
    body = b'{"password": "a long root password"}'
    head = "PATCH /root HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    head += f"Authorization: {root}\r\nContent-Length: {len(body)}\r\n\r\n"
    changed = parse_response(server.send(head.encode() + body).raw)
    assert changed.code == 200, changed.raw[:300]
    yield server
    server.stop()


def send(server: MemoryDevpid, method: str, target: str, headers: dict[str, str]) -> RawAnswer:
    head = [f"{method} {target} HTTP/1.0", "Host: localhost", "Content-Length: 0"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    exchange = server.send("\r\n".join(head).encode("utf-8") + b"\r\n\r\n")
    assert exchange.closed, exchange.raw[:300]
    return parse_response(exchange.raw)


def check(answer: RawAnswer) -> None:
    for mark in _TRACEBACK:
        assert mark not in answer.raw, answer.raw[:2000]
    assert answer.code < 500 or answer.code in (502, 504), answer.raw[:2000]
    assert MARKER.encode() not in answer.body, answer.raw[:2000]


def open_to_anyone(path: str, query: str) -> bool:
    decoded = decoded_path(path.encode())
    if is_open(decoded):
        return True
    args = {b"check": [query.partition("=")[2].encode()]} if query else {}
    return decoded is not None and is_health_check(decoded, args)


@FUZZ
@given(
    method=methods,
    path=paths,
    query=queries,
    authorization=credentials,
    cookie=cookies,
    accept=st.sampled_from(["", BROWSER, "application/json"]),
)
def test_anonymous_gets_only_the_open_paths(
    devpid: MemoryDevpid,
    method: str,
    path: str,
    query: str,
    authorization: str | None,
    cookie: str | None,
    accept: str,
) -> None:
    headers = {"Accept": accept} if accept else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if cookie is not None:
        headers["Cookie"] = cookie
    answer = send(devpid, method, path + query, headers)
    check(answer)
    if not open_to_anyone(path, query) and answer.code not in (400, 404, 405, 414):
        assert answer.code in (401, 403), (path, answer.raw[:500])


@FUZZ
@given(
    uri=st.one_of(paths, header_text),
    query=queries,
    method=st.one_of(st.none(), methods, header_text),
    outside=st.one_of(st.none(), st.just("http://h/pypi"), header_text),
    authorization=credentials,
    agent=st.sampled_from(["", "devpi-client/7.3.0", "pip/24.0"]),
)
def test_authcheck_answers_only_its_four_codes(
    devpid: MemoryDevpid,
    uri: str,
    query: str,
    method: str | None,
    outside: str | None,
    authorization: str | None,
    agent: str,
) -> None:
    headers = {"X-Original-URI": uri + query}
    if method is not None:
        headers["X-Original-Method"] = method
    if outside is not None:
        headers["X-Outside-URL"] = outside
    if authorization is not None:
        headers["Authorization"] = authorization
    if agent:
        headers["User-Agent"] = agent
    answer = send(devpid, "GET", "/+authcheck", headers)
    check(answer)
    assert answer.code in (200, 400, 401, 403), answer.raw[:500]
    if answer.code == 200:
        prefix = ""
        if outside is not None:
            try:
                prefix = urlsplit(outside.strip()).path.rstrip("/")
            except ValueError:
                prefix = ""
        path, args = original_target((uri + query).encode("latin-1"), prefix)
        assert is_open(path) or (path is not None and is_health_check(path, args)), (
            uri,
            query,
            outside,
        )
    if answer.code == 401:
        assert "devpi-client" not in agent
