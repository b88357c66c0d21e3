"""Simple pages go gzip-compressed to clients that accept it, compressed once per page."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from twisted.internet.defer import Deferred
from twisted.web.test.requesthelper import DummyRequest

from devpid.http.request import accepts_gzip
from devpid.mirror import pages
from devpid.mirror.pages import GZIP_OFFLOAD_BYTES, CachedPage, Rendered
from devpid.simple.render import LinkRenderer
from tests.fixtures.app import CachedFile, MemoryDevpid, populate

PAGE = "/root/pypi/+simple/demo/"
JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
GZIP = {**JSON, "Accept-Encoding": "gzip, deflate"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[MemoryDevpid, list[CachedFile]]]:
    serverdir = tmp_path / "serverdir"
    files = {f"demo-{n}.0.tar.gz": b"release %d" % n for n in range(40)}  # a page of some KiB
    cached = populate(serverdir, "demo", files, {})
    devpid = MemoryDevpid.start(serverdir)
    try:
        yield devpid, cached
    finally:
        devpid.stop()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, deflate", False),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),  # named beats the wildcard
        ("identity", False),
        ("gzip;q=oops", False),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    request = DummyRequest([b""])
    if header is not None:
        request.requestHeaders.setRawHeaders(b"accept-encoding", [header.encode()])
    assert accepts_gzip(request) is expected


def test_a_page_is_gzipped_for_clients_that_accept_it(
    app: tuple[MemoryDevpid, list[CachedFile]],
) -> None:
    devpid, _ = app
    plain = devpid.request("GET", PAGE, JSON)
    assert plain.code == 200 and "content-encoding" not in plain.headers
    assert len(plain.body) >= pages.GZIP_MIN_BYTES
    assert plain.headers["vary"] == "Accept, Accept-Encoding, X-Outside-URL"
    refused = devpid.request("GET", PAGE, {**JSON, "Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers and refused.body == plain.body

    zipped = devpid.request("GET", PAGE, GZIP)
    assert zipped.code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept, Accept-Encoding, X-Outside-URL"
    assert int(zipped.headers["content-length"]) == len(zipped.body) < len(plain.body)
    assert gzip.decompress(zipped.body) == plain.body
    etag = plain.headers["etag"]
    assert zipped.headers["etag"] == etag[:-1] + '-gz"' != etag

    head = devpid.request("HEAD", PAGE, GZIP)
    assert head.code == 200 and head.body == b""
    for name in ("content-encoding", "etag", "content-length", "vary"):
        assert head.headers[name] == zipped.headers[name]


def test_a_304_answers_either_etag(app: tuple[MemoryDevpid, list[CachedFile]]) -> None:
    devpid, _ = app
    etag = devpid.request("GET", PAGE, JSON).headers["etag"]
    gz_etag = devpid.request("GET", PAGE, GZIP).headers["etag"]
    for headers, tag in [
        (GZIP, gz_etag),  # the gzip copy a client holds
        (GZIP, etag),  # an identity copy, revalidated by a client that now accepts gzip
        (JSON, etag),
        (JSON, gz_etag),
    ]:
        again = devpid.request("GET", PAGE, {**headers, "If-None-Match": tag})
        assert again.code == 304 and again.body == b""
        assert again.headers["etag"] == tag
        assert "content-encoding" not in again.headers
    star = devpid.request("GET", PAGE, {**GZIP, "If-None-Match": "*"})
    assert star.code == 304 and star.headers["etag"] == gz_etag
    other = devpid.request("GET", PAGE, {**GZIP, "If-None-Match": '"something-else"'})
    assert other.code == 200 and other.headers["content-encoding"] == "gzip"


def test_a_page_is_compressed_once(app: tuple[MemoryDevpid, list[CachedFile]]) -> None:
    devpid, _ = app
    with mock.patch.object(pages.gzip, "compress", wraps=gzip.compress) as compress:
        bodies = [devpid.request("GET", PAGE, GZIP).body for _ in range(3)]
        assert compress.call_count == 1
        devpid.request("GET", PAGE, {**GZIP, "Accept": "text/html"})
        assert compress.call_count == 2  # another rendering, compressed once too
        devpid.request("GET", PAGE, {**GZIP, "Accept": "text/html"})
        assert compress.call_count == 2
    assert bodies[0] == bodies[1] == bodies[2]


def test_small_pages_and_files_are_sent_as_they_are(
    app: tuple[MemoryDevpid, list[CachedFile]],
) -> None:
    devpid, cached = app
    small = devpid.request("GET", "/root/pypi/+simple/", GZIP)  # the list of two projects
    assert small.code == 200 and "content-encoding" not in small.headers
    assert len(small.body) < pages.GZIP_MIN_BYTES and b"demo" in small.body
    file = devpid.request("GET", cached[0].path, {"Accept-Encoding": "gzip"})
    assert file.code == 200 and "content-encoding" not in file.headers
    assert file.body == cached[0].content


def test_a_large_body_is_compressed_through_offload_once() -> None:
    """Concurrent first requests share one compression, in a thread in production."""
    pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def offload(work: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((work, d))
        return d

    body = b"<a href='x'>x</a>\n" * (GZIP_OFFLOAD_BYTES // 10)
    rendered = Rendered.of(body)
    first = Deferred.fromCoroutine(rendered.gzip(offload))
    second = Deferred.fromCoroutine(rendered.gzip(offload))
    assert len(pending) == 1 and not first.called and not second.called
    work, done = pending.pop()
    done.callback(work())
    results: list[bytes] = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    assert len(results) == 2 and results[0] is results[1]
    assert gzip.decompress(results[0]) == body
    third = Deferred.fromCoroutine(rendered.gzip(offload))
    assert pending == [] and third.result is results[0]  # kept: never compressed again

    small = Rendered.of(b"x" * 2000)
    done_small = Deferred.fromCoroutine(small.gzip(offload))
    assert pending == [] and gzip.decompress(done_small.result) == b"x" * 2000


def test_a_large_body_is_kept_only_gzipped() -> None:
    """The project list of a real index is tens of MB as HTML: memory keeps it gzipped."""
    page = CachedPage(tuple(f"project-{n}" for n in range(2000)), None, None, 0.0)
    with mock.patch.object(pages, "KEEP_PLAIN_MAX", 10_000):
        rendered = page.rendered("text/html", LinkRenderer("", "root/pypi"))
    assert rendered.plain is None and rendered.gzipped is not None
    body = rendered.body  # decompressed for a client without gzip
    assert len(body) == rendered.size > 10_000 and b"project-1999" in body
    assert rendered.etag == page.rendered("text/html", LinkRenderer("", "root/pypi")).etag
    zipped = Deferred.fromCoroutine(rendered.gzip(None)).result
    assert zipped is rendered.gzipped and gzip.decompress(zipped) == body
