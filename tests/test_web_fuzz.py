"""Hypothesis fuzzing of the web pages: paths, queries, ``Accept`` headers, forms.

Invariants: never a 5xx but the unreachable upstream's 502/504, never a traceback;
an HTML answer always carries the CSP; text from the request never reaches a page
unescaped (a ``<`` marker sent in a path or query is never echoed raw); and the
refresh form never gets past its check without the cookie's token.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
MARKER = "<xfz"
_TRACEBACK = (b"Traceback", b'File "', b"twisted.python.failure")

segments = st.one_of(
    st.sampled_from(["root", "pypi", "alice", "dev", "+simple", "+static", "refresh", "1.0"]),
    st.text(min_size=1, max_size=20).map(lambda text: MARKER + text),
    st.text(min_size=1, max_size=20),
)
paths = st.lists(segments, min_size=0, max_size=5).map(
    lambda parts: "/" + "/".join(quote(part, safe="+") for part in parts)
)
accepts = st.sampled_from(
    [BROWSER, "text/html", "text/html;q=0", "text/html;q=x", "*/*", "application/json", ""]
)
queries = st.text(max_size=60).map(lambda text: quote(MARKER + text))

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def devpid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryDevpid]:
    server = MemoryDevpid.start(tmp_path_factory.mktemp("web-fuzz") / "serverdir")
    yield server
    server.stop()


def send(
    server: MemoryDevpid, method: str, target: str, accept: str, body: bytes = b""
) -> RawAnswer:
    head = [f"{method} {target} HTTP/1.0", "Host: localhost", f"Content-Length: {len(body)}"]
    if accept:
        head.append(f"Accept: {accept}")
    if body:
        head.append("Content-Type: application/x-www-form-urlencoded")
    exchange = server.send("\r\n".join(head).encode("utf-8") + b"\r\n\r\n" + body)
    assert exchange.closed, exchange.raw[:300]
    return parse_response(exchange.raw)


def check(answer: RawAnswer) -> None:
    for mark in _TRACEBACK:
        assert mark not in answer.raw, answer.raw[:2000]
    assert answer.code < 500 or answer.code in (502, 504), answer.raw[:2000]
    assert MARKER.encode() not in answer.body, answer.raw[:2000]
    if answer.headers.get("content-type", "").startswith("text/html;"):
        assert "default-src 'none'" in answer.headers.get("content-security-policy", "")


@FUZZ
@given(method=st.sampled_from(["GET", "HEAD", "POST"]), path=paths, accept=accepts)
def test_pages_never_fail_nor_echo_markup(
    devpid: MemoryDevpid, method: str, path: str, accept: str
) -> None:
    check(send(devpid, method, path, accept))


@FUZZ
@given(query=queries, page=st.text(max_size=6).map(quote), accept=accepts)
def test_search_never_fails_nor_echoes_markup(
    devpid: MemoryDevpid, query: str, page: str, accept: str
) -> None:
    check(send(devpid, "GET", f"/+search?query={query}&page={page}", accept))


@FUZZ
@given(
    project=st.text(min_size=1, max_size=20).map(lambda text: quote(text, safe="")),
    form=st.binary(max_size=200),
)
def test_refresh_form_never_passes_without_its_token(
    devpid: MemoryDevpid, project: str, form: bytes
) -> None:
    answer = send(devpid, "POST", f"/root/pypi/{project}/refresh", BROWSER, form)
    check(answer)
    assert answer.code in (400, 403, 404, 405), answer.raw[:500]
