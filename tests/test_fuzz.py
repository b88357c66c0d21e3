"""Hypothesis fuzzing of every route (issue "Hardening").

Fuzzed: request targets (route prefixes, percent-encoding, raw and encoded
unicode, traversal attempts, over-long segments, query strings), project
names and file names, ``Accept`` and ``?format=``, ``Range`` (several,
overlapping, out of bounds, malformed), ``If-None-Match``, ``X-Outside-URL``,
``Host``, ``User-Agent``, methods, malformed request lines and huge headers.

Invariants, for every answer: no 5xx but the upstream-caused 502 and 504; no
traceback in it; not a byte of the canary file beside the serverdir, and no
file beside the serverdir opened at all (seen by an audit hook); errors are
devpid's one-line ``text/plain`` (devpi's one-line JSON ``message`` when
``Accept`` has ``application/json``); a 206 is exactly the asked slices of the
cached file and a 416 comes only when no range is satisfiable. Afterwards
devpid is healthy (``/+status?check=1`` is 200) and serves its cache intact.

Most examples run in memory (the real site from ``makeService`` on a memory
reactor, an unreachable upstream); one test sends a smaller number over real
sockets to a ``twistd -n devpid``. The examples are derandomized, so CI
replays the same ones. Inputs that hit a bug already reported but not yet
fixed are kept out by ``known_bug`` (none now).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import attrs
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from packaging.utils import canonicalize_name
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response, populate
from tests.fixtures.devpid_process import DevpidProcess

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
#: Unique bytes beside the serverdir: no answer may ever contain them.
CANARY = b"devpid-fuzz-canary-5b0c2f9e: outside the serverdir"
PROJECT = "demo"
SDIST = "demo-1.0.tar.gz"
WHEEL = "demo-1.0-py3-none-any.whl"
#: On the cached page but not in the cache: its download goes to the upstream.
COLD = "demo-0.9.tar.gz"
FILES = {
    SDIST: bytes(range(256)) * 12 + b"end of sdist",
    WHEEL: b"PK\x03\x04 a small wheel",
    COLD: b"never cached",
}
METADATA = {WHEEL: b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"}
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- requests ------------------------------------------------------------------


@attrs.frozen
class Request:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def wire(self, version: bytes = b"HTTP/1.0") -> bytes:
        lines = [b" ".join((self.method, self.target, version))]
        lines += [name + b": " + value for name, value in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def header(self, name: bytes) -> bytes | None:
        found = [v for k, v in self.headers if k.lower() == name]
        return found[-1] if found else None


@attrs.frozen(repr=False)
class Target:
    """What the server under test has cached, for strategies and checks."""

    files: dict[str, bytes]  # URL path -> content, of the cached files
    projects: tuple[str, ...]
    filenames: tuple[str, ...]
    hashes: tuple[tuple[str, str], ...]  # (h3, h13) of files on the page

    def __repr__(self) -> str:
        return f"<Target {sorted(self.files)}>"

    @property
    def sizes(self) -> list[int]:
        return sorted({len(content) for content in self.files.values()})


def known_bug(request: Request, sizes: Iterable[int]) -> str | None:
    """The reported, not yet fixed bug ``request`` would hit, if any.

    None now: the ten bugs the fuzzing found (Range edge cases handed to
    twisted.web's ``File``, Host names the router chokes on, an X-Outside-URL
    ``urlsplit`` rejects, methods in lower case) are fixed, and their
    regression tests are at the end of this module. When fuzzing finds a new
    one, keep its inputs out here (with an ``xfail(strict=True)`` regression
    test) until it is fixed. ``sizes``: of the cached files it may ask for.
    """
    return None


def as_request(data: bytes) -> Request:
    """Raw request bytes read the way ``known_bug`` needs: the method and header fields."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    words = lines[0].split()
    pairs = (line.partition(b":") for line in lines[1:])
    headers = tuple((name.strip(), value.strip()) for name, sep, value in pairs if sep)
    return Request(words[0] if words else b"GET", b"/", headers)


# -- strategies ----------------------------------------------------------------

_NO_CONTROLS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))
_WEIRD_SEGMENTS = [
    "",
    ".",
    "..",
    "%2e%2e",
    "%2E%2E%2F%2E%2E",
    "..%2F..%2Fsecret.txt",
    "..%5C..%5Csecret.txt",
    "%2F",
    "%00",
    "%ff",
    "%c3%a9",
    "%",
    "%zz",
    "%25",
    "%252e%252e",
    "é",
    "\u202e",
    "\ufeff",
    "😀",
    ";",
    "~",
    "+",
    "+files",
    "+pages",
    "state.sqlite",
    "secret.txt",
    "a" * 255,
    "b" * 5000,
    "x" * 9000,
]


def _encode_segment(text: str, how: str) -> str:
    if how == "raw":
        return text
    if how == "quoted":
        return quote(text, safe="")
    return "".join(f"%{b:02x}" for b in text.encode("utf-8"))  # every byte


def _segments(target: Target) -> st.SearchStrategy[str]:
    known = [
        "root",
        "pypi",
        "ROOT",
        "+simple",
        "+f",
        "+status",
        "+metrics",
        "refresh",
        *target.projects,
        *(p.upper() for p in target.projects),
        *(p + "_" for p in target.projects),
        "-x",
        "Flask.Ext_",
        "other",
        *target.filenames,
        *(f + ".metadata" for f in target.filenames),
        *(h for pair in target.hashes for h in pair),
        "AAA",
        "0123456789abcdef",
    ]
    words = st.sampled_from(known + _WEIRD_SEGMENTS)
    texts = st.builds(
        _encode_segment,
        st.text(_NO_CONTROLS, max_size=12),
        st.sampled_from(["raw", "quoted", "every"]),
    )
    return st.one_of(words, words.map(lambda w: _encode_segment(w, "every")), texts)


def _query() -> st.SearchStrategy[str]:
    keys = st.sampled_from(["format", "check", "FORMAT", "x", "", "format[]"])
    values = st.one_of(
        st.sampled_from(
            [
                "json",
                "html",
                "JSON",
                "%20json",
                JSON_V1,
                HTML_V1,
                "application/vnd.pypi.simple.latest+json",
                "application/vnd.pypi.simple.latest+html",
                "text/html",
                "xml",
                "1",
                "0",
                "",
                "%00",
                "%ff",
            ]
        ),
        st.text(_NO_CONTROLS, max_size=10).map(lambda t: quote(t, safe="")),
    )
    pair = st.builds(lambda k, v, eq: k + eq + v, keys, values, st.sampled_from(["=", "", "=="]))
    return st.lists(pair, max_size=4).map("&".join)


def request_targets(target: Target) -> st.SearchStrategy[bytes]:
    prefixes = st.sampled_from(
        [
            "/",
            "/root/pypi/",
            "/root/pypi/+simple/",
            "/root/pypi/+f/",
            *(f"/root/pypi/+f/{h3}/{h13}/" for h3, h13 in target.hashes),
            "/root/other/+simple/",
            *(f"/root/pypi/+simple/{p}/" for p in target.projects),
            "//root//pypi//",
            "/+status",
            "/+metrics",
        ]
    )
    exact = st.sampled_from(
        [
            *target.files,
            *(f"/root/pypi/+simple/{p}/" for p in target.projects),
            *(f"/root/pypi/+simple/{p}/refresh" for p in target.projects),
            "/root/pypi/+simple/",
            "/root/pypi",
            "/+status",
            "/+status?check=1",
            "/+metrics",
        ]
    )
    built = st.builds(
        lambda prefix, parts, slash: prefix + "/".join(parts) + slash,
        prefixes,
        st.lists(_segments(target), max_size=4),
        st.sampled_from(["", "/"]),
    )
    odd = st.sampled_from(["*", "http://localhost/+status", "/?", "?", "/%", "/#x"])
    path = st.one_of(exact, exact, built, built, odd)
    with_query = st.builds(lambda p, q: p + ("?" + q if q else ""), path, _query())
    return with_query.map(lambda t: t.encode("utf-8"))


_TOKEN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


def _header_text(extra: list[str]) -> st.SearchStrategy[bytes]:
    """A header value: one of ``extra``, or printable latin-1 / UTF-8 junk."""
    return st.one_of(
        st.sampled_from(extra).map(lambda v: v.encode("utf-8")),
        _TOKEN_TEXT.map(lambda v: v.encode("latin-1")),
        st.text(_NO_CONTROLS, max_size=20).map(lambda v: v.encode("utf-8")),
    )


def accept_headers() -> st.SearchStrategy[bytes]:
    media = st.sampled_from(
        [
            JSON_V1,
            HTML_V1,
            "text/html",
            "TEXT/HTML",
            "*/*",
            "text/*",
            "application/*",
            "application/json",
            "application/xml",
            "application/vnd.pypi.simple.latest+json",
            "application/vnd.pypi.simple.latest+html",
            "application/openmetrics-text",
            "text/plain",
            "*",
            "",
            "/",
            "a/b/c",
        ]
    )
    qvalues = st.one_of(
        st.sampled_from(["1", "0", "0.5", "1.0", "0.001", "2", "-1", "nan", "inf", "-inf"]),
        st.sampled_from(["1e999", "1e-999", "", "abc", "0x1", "1_0", " 0.3 ", "\uff11"]),
        st.floats(allow_nan=True).map(repr),
    )
    params = st.one_of(
        qvalues.map(lambda q: "q=" + q),
        st.sampled_from(["Q=0", "version=0.0.4", "version=1.0.0", "version=bogus"]),
        st.sampled_from(["charset=utf-8", "escaping=underscores", "escaping=bogus", "q", "=", ""]),
    )
    one = st.builds(
        lambda m, ps: m + "".join(";" + p for p in ps), media, st.lists(params, max_size=3)
    )
    listed = st.builds(
        lambda items, sep: sep.join(items),
        st.lists(one, min_size=1, max_size=6),
        st.sampled_from([",", ", ", " , ", ",,"]),
    )
    return st.one_of(listed.map(str.encode), _header_text([""]))


def range_headers(sizes: list[int]) -> st.SearchStrategy[bytes]:
    """Mostly valid ``bytes`` ranges around the files' sizes (several, overlapping), then junk."""
    edges = sorted({n + d for n in [0, *sizes] for d in (-1, 0, 1) if n + d >= 0})
    ints = st.one_of(st.sampled_from(edges), st.integers(0, max(sizes) + 10), st.integers(0, 2**70))
    valid_spec = st.one_of(
        st.tuples(ints, ints).map(lambda ab: f"{min(ab)}-{max(ab)}"),
        ints.map(lambda a: f"{a}-"),
        ints.map(lambda b: f"-{b}"),
    )
    odd_spec = st.one_of(
        st.tuples(ints, ints).map(lambda ab: f"{max(ab)}-{min(ab)}"),
        st.sampled_from(["-", "", "abc", "1", "--1", "1--2", "0-0-0", " ", "0 - 1", "+1-2"]),
        st.sampled_from([" 1-", "01-2", "1_0-", "-0", "\u0663-", "0x10-", "1e3-", "-+5", "5-+6"]),
    )

    def overlapping(specs: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
        # Repeats make overlapping ranges likely.
        return st.lists(specs, min_size=1, max_size=4).flatmap(
            lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=8)
        )

    separators = st.sampled_from([",", ", ", " , ", ",,"])
    valid = st.builds(lambda s, sep: "bytes=" + sep.join(s), overlapping(valid_spec), separators)
    units = st.sampled_from(["bytes", "BYTES", " bytes", "items", "", "bytes "])
    mixed = overlapping(st.one_of(valid_spec, odd_spec))
    odd = st.builds(lambda u, s, sep: u + "=" + sep.join(s), units, mixed, separators)
    literal = st.sampled_from(["bytes", "bytes=", "=0-1", "0-1", "bytes=0-1;q=1", "bytes:0-1"])
    return st.one_of(valid, valid, odd, literal).map(lambda v: v.encode("utf-8"))


def outside_urls() -> st.SearchStrategy[bytes]:
    return _header_text(
        [
            "http://localhost:8080/pypi",
            "https://localhost/",
            "http://localhost:8080/pypi/",
            "javascript:alert(1)",
            "http://",
            "http:///x",
            "ftp://localhost/",
            "http://localhost/a b",
            'http://localhost/"x',
            "http://localhost:99999/",
            "http://é.localhost/",
            "  http://localhost  ",
            "http://localhost/%0d%0aSet-Cookie:x",
            "http://localhost/<script>",
        ]
    )


def hosts() -> st.SearchStrategy[bytes]:
    return _header_text(
        ["localhost", "localhost:3141", "127.0.0.1:80", "[::1]:3141", "[::1", "", "é.localhost"]
    )


def agents() -> st.SearchStrategy[bytes]:
    return _header_text(["pip/26.2", "uv/0.9", "curl/8.0", "Mozilla/5.0", "twine/6", ""])


def etags(target: Target) -> st.SearchStrategy[bytes]:
    tags = [f'"{h3}{h13}"' for h3, h13 in target.hashes]
    return _header_text([*tags, "*", 'W/"x"', '"a", "b"', ",", *(f"W/{t}" for t in tags)])


def _header_pairs(target: Target) -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    names = st.text(
        st.sampled_from("abcdefghijklmnopqrstuvwxyz-_0123456789!#$%&'*+.^`|~"),
        min_size=1,
        max_size=12,
    ).filter(lambda n: n.lower() not in ("connection", "content-length", "transfer-encoding"))
    other = st.tuples(names.map(str.encode), _header_text([""]))
    sizes = [len(content) for content in target.files.values()]
    one = st.one_of(
        st.tuples(st.just(b"Accept"), accept_headers()),
        st.tuples(st.just(b"Range"), range_headers(sizes)),
        st.tuples(st.just(b"If-None-Match"), etags(target)),
        st.tuples(st.just(b"X-Outside-URL"), outside_urls()),
        st.tuples(st.just(b"Host"), hosts()),
        st.tuples(st.just(b"User-Agent"), agents()),
        st.tuples(st.just(b"Via"), _header_text(["1.1 devpid", "1.1 devpid-000000000000"])),
        other,
    )
    return st.lists(one, max_size=5).map(tuple)


def project_names(project: str) -> st.SearchStrategy[str]:
    """Names as a URL segment: the cached ``project`` in any case, others valid, to
    normalize, invalid, encoded, unicode."""
    cases = st.lists(st.booleans(), min_size=len(project), max_size=len(project))
    upper = cases.map(
        lambda up: "".join(c.upper() if u else c for c, u in zip(project, up, strict=True))
    )
    cached = st.one_of(st.just(project), upper)
    others = st.one_of(
        st.sampled_from(
            [
                *("demo", "Demo", "DEMO", "de-mo", "de_mo", "de.mo", "demo-", "-demo", "demo__"),
                *("d", "a" * 200, "a" * 201, "Flask.Ext_", "..", ".", "+projects", "+simple"),
                *("demo%2F..", "%64emo", "de%2Dmo", "demo%00", "dem%C3%B6", "démo", "%", "-"),
            ]
        ),
        st.text(st.sampled_from("abcXYZ019-_."), min_size=1, max_size=30),
        st.text(_NO_CONTROLS, min_size=1, max_size=15).map(lambda t: quote(t, safe="")),
    )
    return st.one_of(cached, cached, others)


def page_requests(target: Target) -> st.SearchStrategy[Request]:
    """GET/HEAD of project pages and the project list, negotiated every way."""
    targets = st.builds(
        lambda name, slash, query: (
            f"/root/pypi/+simple/{name}{slash}" + (f"?{query}" * bool(query))
        ),
        project_names(target.projects[0]),
        st.sampled_from(["/", "/", ""]),
        st.one_of(st.just(""), _query()),
    )
    listing = _query().map(lambda q: "/root/pypi/+simple/" + "?" * bool(q) + q)
    headers = st.lists(
        st.one_of(
            st.tuples(st.just(b"Accept"), accept_headers()),
            st.tuples(st.just(b"User-Agent"), agents()),
            st.tuples(st.just(b"X-Outside-URL"), outside_urls()),
            st.tuples(st.just(b"If-None-Match"), _header_text(['"x"', "*"])),
        ),
        max_size=3,
    ).map(tuple)
    return st.builds(
        Request,
        st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"POST"]),
        st.one_of(targets, targets, listing).map(str.encode),
        headers,
    )


def _hashes(target: Target) -> st.SearchStrategy[tuple[str, str]]:
    hexes = st.text(st.sampled_from("0123456789abcdef"), min_size=16, max_size=16)
    return st.one_of(
        st.sampled_from(target.hashes),
        hexes.map(lambda h: (h[:3], h[3:])),
        st.sampled_from(target.hashes).map(lambda pair: (pair[0].upper(), pair[1])),
        st.sampled_from(target.hashes).map(lambda pair: (pair[0] + "0", pair[1][:-1])),
        st.tuples(st.sampled_from(["..", ".", "", "%2e%2e", "abc/", "ABC", "g00"]), hexes),
    )


def filenames(target: Target) -> st.SearchStrategy[str]:
    """File names as a URL segment: cached, not cached, of other projects, unsafe, encoded."""
    return st.one_of(
        st.sampled_from([*target.filenames, *(f + ".metadata" for f in target.filenames)]),
        st.sampled_from(
            [
                *("other-1.0.tar.gz", "Demo-1.0.tar.gz", "demo-1.0.zip", "demo-1.0.egg", "a"),
                *("demo.tar.gz", "x-1.0-1-py3-none-any.whl", "-1.0.tar.gz", "+files"),
                *("..", ".", "..%2F..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", "secret.txt"),
                *(".metadata", "demo-1.0.tar.gz%00", "demo-1.0.tar.gz/", "demo-1.0.tar.gz%2F"),
                *("demo-" + "1" * 250 + ".tar.gz", "demo-1.0.tar.gz.metadata.metadata"),
                *("dęmo-1.0.tar.gz", "demo-1.0.tar.gz.devpid-partial", "state.sqlite"),
            ]
        ),
        st.text(st.sampled_from("abcXYZ019-_.+!~"), min_size=1, max_size=40),
        st.text(_NO_CONTROLS, min_size=1, max_size=15).map(lambda t: quote(t, safe="")),
    )


def _percent_encode_some(path: str, which: list[bool]) -> str:
    flags = [*which, *[False] * len(path)][: len(path)]
    return "".join(
        f"%{ord(c):02X}" if e and c != "/" else c for c, e in zip(path, flags, strict=True)
    )


def file_requests(target: Target) -> st.SearchStrategy[Request]:
    """GET/HEAD of ``+f/<h3>/<h13>/<filename>`` with fuzzed hashes and names."""
    encoded = st.builds(
        _percent_encode_some,
        st.sampled_from(sorted(target.files)),
        st.lists(st.booleans(), min_size=100, max_size=100),
    )
    built = st.builds(
        lambda index, pair, name: f"/root/{index}/+f/{pair[0]}/{pair[1]}/{name}",
        st.sampled_from(["pypi", "pypi", "other", "PYPI"]),
        _hashes(target),
        filenames(target),
    )
    paths = st.one_of(encoded, built, built)
    headers = st.lists(
        st.one_of(
            st.tuples(st.just(b"If-None-Match"), etags(target)),
            st.tuples(st.just(b"Range"), range_headers(target.sizes)),
        ),
        max_size=2,
    ).map(tuple)
    return st.builds(
        Request, st.sampled_from([b"GET", b"GET", b"HEAD"]), paths.map(str.encode), headers
    )


#: Mostly the methods the routes take; hypothesis favours the first ones.
METHODS = st.sampled_from(
    [b"GET"] * 10
    + [b"HEAD"] * 3
    + [b"POST"] * 2
    + [b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"FOO", b"M-SEARCH"]
    + [b"get", b"Head"]
)


def requests(target: Target) -> st.SearchStrategy[Request]:
    return st.builds(Request, METHODS, request_targets(target), _header_pairs(target))


def range_requests(target: Target) -> st.SearchStrategy[tuple[str, Request]]:
    sizes = [len(content) for content in target.files.values()]

    def build(path: str, method: bytes, ranges: bytes, etag: bytes | None) -> tuple[str, Request]:
        headers = [(b"Range", ranges)]
        if etag is not None:
            headers.append((b"If-None-Match", etag))
        return path, Request(method, path.encode(), tuple(headers))

    return st.builds(
        build,
        st.sampled_from(sorted(target.files)),
        st.sampled_from([b"GET", b"GET", b"GET", b"HEAD"]),
        range_headers(sizes),
        st.none() | etags(target),
    )


def raw_requests(target: Target) -> st.SearchStrategy[bytes]:
    """Malformed request lines, odd framing, huge and many headers."""
    line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n"])
    versions = st.sampled_from(
        [b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/0.9", b"http/1.0", b"HTTP/1.", b"", b"X"]
    )
    targets = st.one_of(request_targets(target), st.binary(max_size=40))
    methods = st.one_of(METHODS, st.binary(max_size=8))
    request_line = st.builds(
        lambda m, t, v, sp: m + sp + t + sp + v,
        methods,
        targets,
        versions,
        st.sampled_from([b" ", b"  ", b"\t"]),
    )
    header_line = st.one_of(
        st.builds(lambda n, v: n + b": " + v, st.sampled_from([b"Accept", b"X"]), st.binary()),
        st.binary(max_size=30),
        st.sampled_from(
            [
                b"Content-Length: abc",
                b"Content-Length: -1",
                b"Content-Length: 0, 0",
                b"Content-Length: 1, 2",
                b"Transfer-Encoding: chunked",
                b"Transfer-Encoding: gzip, chunked",
                b" folded continuation",
                b"NoColon",
                b": no name",
                b"Host: localhost",
                b"Expect: 100-continue",
            ]
        ),
    )
    framed = st.builds(
        lambda line, headers, end, body: end.join([line, *headers]) + end + end + body,
        request_line,
        st.lists(header_line, max_size=6),
        line_ends,
        st.sampled_from([b"", b"0\r\n\r\n", b"zz\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"]),
    )
    base = b"GET /root/pypi/+simple/%s/ HTTP/1.0\r\n" % target.projects[0].encode()
    huge_value = st.integers(1_000, 70_000).map(
        lambda n: base + b"X-Big: " + b"v" * n + b"\r\n\r\n"
    )
    many = st.integers(50, 800).map(
        lambda n: base + b"".join(b"X-%d: v\r\n" % i for i in range(n)) + b"\r\n"
    )
    long_line = st.integers(8_000, 20_000).map(lambda n: b"GET /" + b"a" * n + b" HTTP/1.0\r\n\r\n")
    return st.one_of(framed, framed, st.binary(max_size=200), huge_value, many, long_line)


# -- checks --------------------------------------------------------------------

_TRACEBACK_MARKS = (b"Traceback", b'File "', b"Processing Failed")


def check_bytes(raw: bytes) -> None:
    """What holds for anything devpid writes, well-formed request or not."""
    for mark in _TRACEBACK_MARKS:
        assert mark not in raw, raw[:2000]
    assert CANARY not in raw, "a byte from outside the serverdir was served"
    for code in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3})", raw):
        assert int(code) < 500 or int(code) in (502, 504), raw[:2000]


def check_answer(answer: RawAnswer, request: Request) -> None:
    check_bytes(answer.raw)
    # twisted.web answers "*" (405) and 416 (from twisted.web.static) itself.
    if answer.code >= 400 and answer.code != 416 and request.target.startswith(b"/"):
        assert answer.headers.get("cache-control") == "no-store", answer.raw
        if answer.headers.get("content-type") == "application/json":
            # devpi's error form, for clients asking for application/json (devpi-client)
            assert b"application/json" in (request.header(b"accept") or b""), answer.raw
            if request.method != b"HEAD":
                message = json.loads(answer.body)["message"]
                assert message and "\n" not in message, answer.raw
            return
        assert answer.headers.get("content-type") == "text/plain; charset=utf-8", answer.raw
        if request.method != b"HEAD":
            line = answer.body.decode("utf-8")
            assert line.startswith(f"{answer.code} ") and line.count("\n") == 1, line


@attrs.frozen
class ByteRange:
    first: int
    last: int  # inclusive


def strict_ranges(header: bytes, size: int) -> list[ByteRange | None] | None:
    """RFC 9110 ``bytes`` ranges (None for each unsatisfiable one); None when not valid."""
    unit, sep, value = header.partition(b"=")
    if not sep or unit != b"bytes":
        return None
    found: list[ByteRange | None] = []
    for spec in (s.strip(b" \t") for s in value.split(b",")):
        if not spec:
            continue
        match = re.fullmatch(rb"([0-9]*)-([0-9]*)", spec)
        if match is None or not (match[1] or match[2]):
            return None
        if match[1]:
            first, last = int(match[1]), int(match[2]) if match[2] else size - 1
            if last < first:
                return None
            found.append(ByteRange(first, min(last, size - 1)) if first < size else None)
        else:
            length = min(int(match[2]), size)
            found.append(ByteRange(size - length, size - 1) if length > 0 else None)
    return found or None


def _content_range(value: str, size: int) -> ByteRange:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", value)
    assert match is not None, value
    first, last, total = (int(g) for g in match.groups())
    assert total == size and first <= last < size, value
    return ByteRange(first, last)


def _parts(answer: RawAnswer, content: bytes) -> list[ByteRange]:
    content_type = answer.headers.get("content-type", "")
    if not content_type.startswith("multipart/byteranges"):
        got = _content_range(answer.headers["content-range"], len(content))
        assert answer.body == content[got.first : got.last + 1]
        return [got]
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary is not None, content_type
    delimiter = b"\r\n--" + boundary[1].encode()
    chunks = answer.body.split(delimiter)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", answer.body[-100:]
    found = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines if line)}
        got = _content_range(fields["content-range"], len(content))
        assert data == content[got.first : got.last + 1]
        found.append(got)
    return found


def _covered(ranges: list[ByteRange]) -> set[int]:
    return {i for r in ranges for i in range(r.first, r.last + 1)}


def _none_match(condition: bytes, etag: bytes) -> bool:
    """RFC 9110 If-None-Match: ``*``, or the tag among the listed ones (weak comparison)."""
    tags = [t.strip().removeprefix(b"W/") for t in condition.split(b",")]
    return b"*" in tags or etag in tags


def check_range_answer(answer: RawAnswer, request: Request, content: bytes) -> None:
    check_answer(answer, request)
    condition = request.header(b"if-none-match")
    if condition is not None and _none_match(condition, answer.headers["etag"].encode()):
        assert answer.code == 304 and answer.body == b"", answer.raw[:500]
        return
    if request.method == b"HEAD":
        assert answer.code == 200 and answer.body == b""  # Range is for GET only
        assert int(answer.headers["content-length"]) == len(content)
        return
    size = len(content)
    asked = strict_ranges(request.header(b"range") or b"", size)
    if answer.code == 200:
        assert answer.body == content
        # A server may ignore several ranges (RFC 9110 14.2), not a single valid one.
        assert asked is None or len(asked) > 1, "a valid range was ignored"
    elif answer.code == 206:
        got = _parts(answer, content)
        assert got
        assert int(answer.headers["content-length"]) == len(answer.body)
        if asked is not None:
            wanted = _covered([r for r in asked if r is not None])
            assert _covered(got) == wanted
    else:
        assert answer.code == 416, answer.raw[:500]
        assert answer.headers["content-range"] == f"bytes */{size}"
        if asked is not None:
            assert all(r is None for r in asked), "a satisfiable range got 416"


def check_page_answer(answer: RawAnswer, request: Request) -> None:
    check_answer(answer, request)
    if answer.code == 200 and request.method == b"GET":
        media = answer.headers["content-type"]
        assert media in (JSON_V1, HTML_V1, "text/html; charset=utf-8"), media
        assert answer.headers["vary"] == "Accept, Accept-Encoding, X-Outside-URL"
        assert b"/files/" not in answer.body, "a link points at the upstream"
        if media == JSON_V1:
            json.loads(answer.body)
    elif answer.code == 301:
        path, _, query = request.target.partition(b"?")
        location = answer.headers["location"].encode("latin-1")
        assert location.endswith(b"?" + query if query else b"/"), location
        name = unquote(path.decode().split("/")[4]) if path.count(b"/") > 3 else ""
        assert not name or f"/+simple/{canonicalize_name(name)}/".encode() in location
    elif answer.code == 502 and request.method != b"HEAD":
        assert b"upstream" in answer.body, answer.body


def check_file_answer(answer: RawAnswer, request: Request, target: Target) -> None:
    check_answer(answer, request)
    path = unquote_to_bytes(request.target).decode("utf-8", "replace")
    if answer.code == 200 and request.method == b"GET":
        assert answer.body == target.files[path], path
    if answer.code in (200, 206, 304):
        assert path in target.files, path


# -- files opened beside the serverdir -----------------------------------------


@attrs.define
class OpenWatch:
    """Records, while on, every file opened under ``root`` but outside ``allowed``."""

    root: str
    allowed: str
    active: bool = False
    outside: list[str] = attrs.field(factory=list)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        name = os.path.abspath(os.fsdecode(path))
        if name.startswith(self.root) and not name.startswith(self.allowed):
            self.outside.append(name)


_WATCHES: list[OpenWatch] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    for watch in _WATCHES:
        watch(event, args)


sys.addaudithook(_audit)


# -- the in-memory server --------------------------------------------------------


@attrs.define(repr=False)
class Fuzzed:
    app: MemoryDevpid
    target: Target
    watch: OpenWatch
    logged_failures: list[str]

    def __repr__(self) -> str:
        return f"<devpid in memory, serving {self.app.serverdir}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints with it
        printer.text(repr(self))

    def send(self, data: bytes, known_bug: str | None = None) -> tuple[bytes, bool]:
        """``data`` in, all that came back and whether the server closed the connection.

        Nothing opened beside the serverdir, and (unless ``data`` hits a
        ``known_bug``) nothing logged with a traceback.
        """
        self.logged_failures.clear()
        self.watch.active = True
        try:
            exchange = self.app.send(data)
        finally:
            self.watch.active = False
        assert not self.watch.outside, self.watch.outside
        if known_bug is None:
            assert not self.logged_failures, self.logged_failures[0]
        self.logged_failures.clear()
        return exchange.raw, exchange.closed

    def ask(self, request: Request) -> RawAnswer:
        raw, closed = self.send(request.wire())
        assert closed, f"no complete answer to {request}: {raw[:300]!r}"
        return parse_response(raw)

    def assert_healthy(self) -> None:
        status = self.ask(Request(b"GET", b"/+status?check=1"))
        assert status.code == 200 and json.loads(status.body)["healthy"] is True
        for path, content in self.target.files.items():
            answer = self.ask(Request(b"GET", path.encode()))
            assert answer.code == 200 and answer.body == content, path
        page = self.ask(
            Request(b"GET", b"/root/pypi/+simple/demo/", ((b"Accept", JSON_V1.encode()),))
        )
        assert page.code == 200 and len(json.loads(page.body)["files"]) == len(FILES)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "secret.txt").write_bytes(CANARY)
    (base / SDIST).write_bytes(CANARY)  # a traversal to a cached name would find this
    serverdir = base / "serverdir"
    cached = populate(serverdir, PROJECT, FILES, METADATA)
    cold = next(c for c in cached if c.path.endswith("/" + COLD))
    cold.disk.unlink()
    files = {c.path: c.content for c in cached if c is not cold}
    hashes = tuple(sorted({(c.path.split("/")[4], c.path.split("/")[5]) for c in cached}))
    target = Target(files, (PROJECT,), tuple(FILES), hashes)
    watch = OpenWatch(str(base), str(serverdir) + os.sep)
    failures: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        # twisted.logger's failures, and twisted.python.log.err's (Klein logs with it).
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None:
            failures.append(str(failure.getTraceback()))

    _WATCHES.append(watch)
    globalLogPublisher.addObserver(observe)
    app = MemoryDevpid.start(serverdir, **{"cache-expiry": "31536000"})
    try:
        yield Fuzzed(app, target, watch, failures)
    finally:
        app.stop()
        globalLogPublisher.removeObserver(observe)
        _WATCHES.remove(watch)


def _static_target() -> Target:
    """The in-memory server's target, known before the fixture runs (strategies need it)."""
    hashes = []
    files = {}
    for name, content in FILES.items():
        sha = hashlib.sha256(content).hexdigest()
        hashes.append((sha[:3], sha[3:16]))
        if name != COLD:
            files[f"/root/pypi/+f/{sha[:3]}/{sha[3:16]}/{name}"] = content
        if name in METADATA:
            files[f"/root/pypi/+f/{sha[:3]}/{sha[3:16]}/{name}.metadata"] = METADATA[name]
    return Target(files, (PROJECT,), tuple(FILES), tuple(sorted(hashes)))


STATIC = _static_target()


def test_the_static_target_is_what_is_cached(fuzzed: Fuzzed) -> None:
    assert fuzzed.target == STATIC
    fuzzed.assert_healthy()


def test_the_watch_sees_files_opened_beside_the_serverdir(fuzzed: Fuzzed) -> None:
    canary = os.path.join(fuzzed.watch.root, "secret.txt")
    fuzzed.watch.active = True
    try:
        with open(canary, "rb"):
            pass
    finally:
        fuzzed.watch.active = False
    assert fuzzed.watch.outside == [canary]
    fuzzed.watch.outside.clear()
    for path, content in STATIC.files.items():  # these open files in the serverdir only
        assert fuzzed.ask(Request(b"GET", path.encode(), ((b"Range", b"bytes=0-"),))).body
        assert fuzzed.ask(Request(b"GET", path.encode())).body == content


@settings(FUZZ_SETTINGS, max_examples=500)
@given(request=requests(STATIC))
def test_every_route_with_fuzzed_requests(fuzzed: Fuzzed, request: Request) -> None:
    bug = known_bug(request, STATIC.sizes)
    if bug is not None:
        event(f"known bug: {bug}")
        fuzzed.send(request.wire(), bug)  # still sent: devpid must stay healthy
        return
    answer = fuzzed.ask(request)
    # Statistics only: the route labels themselves are tested in test_metrics.
    path = request.target.partition(b"?")[0]
    areas = ("+simple", "+f", "+status", "+metrics")
    area = next((a for a in areas if f"/{a}".encode() in path), "other")
    event(f"{area} {answer.code}")
    check_answer(answer, request)


@settings(FUZZ_SETTINGS, max_examples=300)
@given(request=page_requests(STATIC))
def test_project_pages_with_fuzzed_names_and_negotiation(fuzzed: Fuzzed, request: Request) -> None:
    bug = known_bug(request, STATIC.sizes)
    assume(bug is None)
    answer = fuzzed.ask(request)
    event(f"{request.method.decode()} {answer.code}")
    check_page_answer(answer, request)


@settings(FUZZ_SETTINGS, max_examples=300)
@given(request=file_requests(STATIC))
def test_files_with_fuzzed_hashes_and_names(fuzzed: Fuzzed, request: Request) -> None:
    assume(known_bug(request, STATIC.sizes) is None)
    answer = fuzzed.ask(request)
    event(f"{request.method.decode()} {answer.code}")
    check_file_answer(answer, request, STATIC)


@settings(FUZZ_SETTINGS, max_examples=300)
@given(case=range_requests(STATIC))
def test_ranges_on_cached_files(fuzzed: Fuzzed, case: tuple[str, Request]) -> None:
    path, request = case
    assume(known_bug(request, [len(STATIC.files[path])]) is None)
    answer = fuzzed.ask(request)
    event(f"{request.method.decode()} {answer.code}")
    check_range_answer(answer, request, STATIC.files[path])


@settings(FUZZ_SETTINGS, max_examples=200)
@given(data=raw_requests(STATIC))
def test_malformed_and_huge_requests(fuzzed: Fuzzed, data: bytes) -> None:
    bug = known_bug(as_request(data), STATIC.sizes)
    raw, _closed = fuzzed.send(data, bug)
    event(f"answer: {raw[:12].decode('latin-1') or 'none'}")
    if bug is None:
        check_bytes(raw)


# -- a real twistd -n devpid, over sockets ----------------------------------------------

REAL_PROJECT = "devpid-demo-lib"


def _over_socket(address: tuple[str, int], data: bytes, idle: float = 0.5) -> bytes:
    """Send ``data``; all that comes back until the server closes or is quiet for ``idle``."""
    received = []
    with socket.create_connection(address, timeout=5) as sock:
        with contextlib.suppress(OSError):  # refused early: its answer is still to read
            sock.sendall(data)
        sock.settimeout(idle)
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received.append(chunk)
    return b"".join(received)


@attrs.define
class RealClient:
    """Requests to a real devpid: http.client on one keep-alive connection, raw bytes for
    what http.client cannot send (a URL that is not ASCII)."""

    address: tuple[str, int]
    connection: http.client.HTTPConnection | None = None

    def ask(self, request: Request) -> RawAnswer:
        if not request.target.isascii():
            data = request.wire()  # HTTP/1.0: the server closes after its answer
            return parse_response(_over_socket(self.address, data, idle=5))
        if self.connection is None:
            self.connection = http.client.HTTPConnection(*self.address, timeout=30)
        connection = self.connection
        connection.putrequest(
            request.method.decode(),
            request.target.decode(),
            skip_host=True,
            skip_accept_encoding=True,
        )
        for name, value in request.headers:
            connection.putheader(name.decode(), value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        if response.will_close:
            connection.close()
            self.connection = None
        head = f"HTTP/1.1 {response.status} {response.reason}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in response.getheaders())
        return parse_response(head.encode("latin-1") + b"\r\n" + body)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _real_target(devpid: DevpidProcess) -> Target:
    """Cache ``REAL_PROJECT``'s files in ``devpid``; what it then serves, for the strategies."""
    answer = devpid.get(f"/root/pypi/+simple/{REAL_PROJECT}/", Accept=JSON_V1)
    assert answer.status == 200
    files = {}
    for entry in json.loads(answer.body)["files"]:
        content = devpid.get(entry["url"]).body
        assert hashlib.sha256(content).hexdigest() == entry["hashes"]["sha256"]
        files[entry["url"]] = content
        if entry["core-metadata"]:
            files[entry["url"] + ".metadata"] = devpid.get(entry["url"] + ".metadata").body
    hashes = {(url.split("/")[4], url.split("/")[5]) for url in files}
    names = tuple(url.rsplit("/", 1)[1] for url in files if not url.endswith(".metadata"))
    return Target(files, (REAL_PROJECT,), names, tuple(sorted(hashes)))


@pytest.mark.integration
def test_fuzzing_a_real_devpid(devpid: DevpidProcess) -> None:
    for name in ("secret.txt", "devpid_demo_lib-2.0.tar.gz"):
        (devpid.serverdir.parent / name).write_bytes(CANARY)
    target = _real_target(devpid)
    host, port = devpid.url.removeprefix("http://").split(":")
    client = RealClient((host, int(port)))
    well_formed = st.one_of(
        requests(target),
        page_requests(target),
        file_requests(target),
        range_requests(target).map(lambda case: case[1]),
    )

    @settings(FUZZ_SETTINGS, max_examples=300)
    @given(request=well_formed)
    def fuzz(request: Request) -> None:
        assume(known_bug(request, target.sizes) is None)
        check_answer(client.ask(request), request)

    @settings(FUZZ_SETTINGS, max_examples=100)
    @given(data=raw_requests(target))
    def fuzz_raw(data: bytes) -> None:
        assume(known_bug(as_request(data), target.sizes) is None)
        check_bytes(_over_socket(client.address, data))

    try:
        fuzz()
        fuzz_raw()
    finally:
        client.close()
    status = devpid.get("/+status?check=1")
    assert status.status == 200, status.body
    assert devpid.process.poll() is None, "devpid died"
    for url, content in target.files.items():
        assert devpid.get(url).body == content
    assert "Traceback" not in devpid.log_text()


# -- bugs the fuzzing found, fixed: their regression tests ----------------------------

SDIST_PATH = next(path for path in STATIC.files if path.endswith("/" + SDIST))
SDIST_SIZE = len(FILES[SDIST])


def _get_sdist(fuzzed: Fuzzed, range_header: bytes) -> RawAnswer:
    return fuzzed.ask(Request(b"GET", SDIST_PATH.encode(), ((b"Range", range_header),)))


def test_a_suffix_range_longer_than_the_file_is_the_whole_file(fuzzed: Fuzzed) -> None:
    answer = _get_sdist(fuzzed, b"bytes=-%d" % (SDIST_SIZE + 1))
    assert answer.code in (200, 206) and answer.body == FILES[SDIST]  # RFC 9110 14.1.1


def test_several_ranges_with_a_suffix_longer_than_the_file(fuzzed: Fuzzed) -> None:
    answer = _get_sdist(fuzzed, b"bytes=0-0,-%d" % (SDIST_SIZE + 1))
    assert answer.code in (200, 206)


def test_several_unsatisfiable_ranges_are_416_or_ignored(fuzzed: Fuzzed) -> None:
    answer = _get_sdist(fuzzed, b"bytes=%d-,%d-" % (SDIST_SIZE, SDIST_SIZE + 10))
    if answer.code == 416:
        assert answer.headers["content-range"] == f"bytes */{SDIST_SIZE}"
    else:
        assert answer.code == 200 and answer.body == FILES[SDIST]


def test_a_range_header_without_ranges_is_ignored(fuzzed: Fuzzed) -> None:
    answer = _get_sdist(fuzzed, b"bytes=,")
    assert answer.code == 200 and answer.body == FILES[SDIST]


def test_a_malformed_range_that_is_not_utf8_is_ignored(fuzzed: Fuzzed) -> None:
    answer = _get_sdist(fuzzed, b"bytes=\xff")
    assert answer.code == 200 and answer.body == FILES[SDIST]


def test_overlapping_ranges_do_not_multiply_the_file(fuzzed: Fuzzed) -> None:
    # RFC 9110 14.2: a server may ignore or coalesce them, a known denial of service.
    answer = _get_sdist(fuzzed, b"bytes=" + b",".join([b"0-"] * 100))
    assert answer.code in (200, 206) and len(answer.body) < 2 * SDIST_SIZE


def test_a_host_that_is_not_a_host_name_is_400(fuzzed: Fuzzed) -> None:
    for host in (b"a..b", b".", b"a" * 64):
        answer = fuzzed.ask(Request(b"GET", b"/+status", ((b"Host", host),)))
        assert answer.code == 400, host
        check_answer(answer, Request(b"GET", b"/+status"))


def test_a_host_that_is_not_utf8_is_400_without_a_traceback(fuzzed: Fuzzed) -> None:
    answer = fuzzed.ask(Request(b"GET", b"/+status", ((b"Host", b"\xff"),)))
    assert answer.code == 400
    check_answer(answer, Request(b"GET", b"/+status"))


def test_an_outside_url_that_urlsplit_rejects_is_400(fuzzed: Fuzzed) -> None:
    for url in (b"http://[", b"http://localhost]/"):
        request = Request(b"GET", b"/root/pypi/+simple/demo/", ((b"X-Outside-URL", url),))
        answer = fuzzed.ask(request)
        assert answer.code == 400, url
        check_answer(answer, request)


def test_a_method_in_lower_case_is_405(fuzzed: Fuzzed) -> None:
    answer = fuzzed.ask(Request(b"get", SDIST_PATH.encode()))
    assert answer.code == 405
    check_answer(answer, Request(b"get", SDIST_PATH.encode()))


def test_still_healthy_after_fuzzing(fuzzed: Fuzzed) -> None:
    fuzzed.assert_healthy()
