"""The web pages in memory: negotiation, what each page shows, escaping, the refresh
form's cross-site checks, static files.

The real site from ``makeService`` on a memory reactor (``tests.fixtures.app``),
with a private package uploaded through the real upload route; the browser's own
view (scripts, CSP, clicks) is ``tests/browser``.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from devpid import __version__
from devpid.web.format import human_bytes, human_time, log_seconds
from devpid.web.readme import render_description
from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response, populate
from tests.fixtures.distbuilder import write_wheel

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ALICE = "Basic " + base64.b64encode(b"alice:alicepw").decode()
PAYLOAD = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
DESCRIPTION = f"""# Hello web

This is *hello-web*. [click](javascript:window.__xss=1)

<a href="javascript:window.__xss=1" onmouseover="window.__xss=1">x</a> {PAYLOAD}
"""


def metadata(name: str, version: str, summary: str, description: str) -> bytes:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\nSummary: {summary}\n"
        "Keywords: web,demo\n"
        f"Classifier: Topic :: {PAYLOAD}\n"
        "Home-page: javascript:window.__xss=1\n"
        "Description-Content-Type: text/markdown\n\n"
        f"{description}"
    ).encode()


def upload(server: MemoryDevpid, path: Path) -> RawAnswer:
    boundary = "devpidwebtest"
    body = io.BytesIO()
    for name, value in ((":action", "file_upload"), ("protocol_version", "1")):
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        )
        body.write(value.encode() + b"\r\n")
    body.write(f"--{boundary}\r\n".encode())
    body.write(
        f'Content-Disposition: form-data; name="content"; filename="{path.name}"\r\n\r\n'.encode()
    )
    body.write(path.read_bytes() + b"\r\n" + f"--{boundary}--\r\n".encode())
    return send(
        server,
        "POST",
        "/alice/dev/",
        body.getvalue(),
        {"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": ALICE},
    )


def send(
    server: MemoryDevpid,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> RawAnswer:
    lines = [f"{method} {path} HTTP/1.0", "Host: localhost", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    exchange = server.send("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    assert exchange.closed, exchange.raw[:300]
    return parse_response(exchange.raw)


def page(server: MemoryDevpid, path: str, **headers: str) -> RawAnswer:
    return send(server, "GET", path, headers={"Accept": BROWSER, **headers})


@pytest.fixture(scope="module")
def devpid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryDevpid]:
    base = tmp_path_factory.mktemp("web")
    serverdir = base / "serverdir"
    populate(
        serverdir,
        "cached-proj",
        {"cached_proj-1.0-py3-none-any.whl": b"wheel bytes", "cached_proj-2.0.tar.gz": b"sdist"},
        {},
    )
    server = MemoryDevpid.start(serverdir)
    json_headers = {"Accept": "application/json", "Content-Type": "application/json"}
    assert send(server, "PUT", "/alice", b'{"password": "alicepw"}', json_headers).code == 201
    answer = send(
        server,
        "PUT",
        "/alice/dev",
        b'{"bases": "root/pypi"}',
        {**json_headers, "Authorization": ALICE},
    )
    assert answer.code == 200, answer.raw
    for version in ("1.0", "2.0"):
        wheel = base / f"hello_web-{version}-py3-none-any.whl"
        write_wheel(
            str(wheel),
            f"hello_web-{version}.dist-info",
            metadata("hello-web", version, f"Hello {PAYLOAD}", DESCRIPTION),
            {"hello_web/__init__.py": b""},
        )
        answer = upload(server, wheel)
        assert answer.code == 200, answer.raw
    yield server
    server.stop()


def test_browsers_get_pages_and_everybody_else_the_api(devpid: MemoryDevpid) -> None:
    html = page(devpid, "/")
    assert html.code == 200
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in html.headers["content-security-policy"]
    assert "default-src 'none'" in html.headers["content-security-policy"]
    assert html.headers["x-frame-options"] == "DENY"
    assert b'<a class="index" href="/alice/dev">' in html.body
    for accept in ("application/json", "*/*", f"{BROWSER}, application/json"):
        api = send(devpid, "GET", "/", headers={"Accept": accept})
        assert api.headers["content-type"] == "application/json", accept
        assert "alice" in json.loads(api.body)["result"]
    # an installer asking for an index gets its simple page, never the web page
    pip = send(devpid, "GET", "/alice/dev", headers={"Accept": BROWSER, "User-Agent": "pip/24.0"})
    assert b"<table" not in pip.body


def test_index_page_shows_config_projects_and_latest_uploads(devpid: MemoryDevpid) -> None:
    answer = page(devpid, "/alice/dev")
    assert answer.code == 200
    body = answer.body.decode()
    assert '<a class="project" href="/alice/dev/hello-web">hello-web</a>' in body
    assert '<section id="latest">' in body and "hello_web-2.0-py3-none-any.whl" in body
    assert "<dt>bases</dt><dd>root/pypi</dd>" in body
    assert 'data-copy="http://localhost/alice/dev/+simple/"' in body
    mirror = page(devpid, "/root/pypi").body.decode()
    assert '<a class="project" href="/root/pypi/cached-proj">' in mirror
    assert 'id="latest"' not in mirror


def test_project_page_lists_versions_newest_first_with_yanked_marked(devpid: MemoryDevpid) -> None:
    answer = send(
        devpid,
        "PATCH",
        "/alice/dev/hello-web/1.0",
        b'{"yanked": true}',
        {"Accept": "application/json", "Content-Type": "application/json", "Authorization": ALICE},
    )
    assert answer.code == 200, answer.raw
    body = page(devpid, "/alice/dev/hello-web").body.decode()
    versions = re.findall(
        r'<tr class="(version[^"]*)">\s*<td><a class="version" href="[^"]+">([^<]+)', body
    )
    assert versions == [("version", "2.0"), ("version yanked", "1.0")]
    assert 'id="refresh"' not in body  # no mirror has it: nothing to refresh


def test_version_page_renders_the_description_and_escapes_everything(devpid: MemoryDevpid) -> None:
    answer = page(devpid, "/alice/dev/hello-web/2.0")
    assert answer.code == 200
    body = answer.body.decode()
    description = body.partition('<div id="description">')[2].partition("</div>")[0]
    assert '<h1 id="user-content-hello-web">' in description
    assert "<em>hello-web</em>" in description
    assert "<script" not in body.replace('<script src="/+static/', "")
    assert not re.search(r"<[^>]+\son\w+=", body), "an event handler attribute reached the page"
    assert not re.search(r"href=\"\s*javascript:", body, re.IGNORECASE)
    assert "Hello &lt;script&gt;window.__xss=1&lt;/script&gt;" in body  # the summary, as text
    assert "Topic :: &lt;script&gt;" in body  # a classifier, as text
    assert '<table id="files">' in body and "hello_web-2.0-py3-none-any.whl" in body
    assert '<li class="has"><a href="/alice/dev">alice/dev</a>: <strong>served from here' in body
    # a private project: the mirror is never asked (devpi's dependency-confusion guard)
    origin = body.partition('<section id="origin">')[2].partition("</section>")[0]
    assert '<li class="blocked"><a href="/root/pypi">root/pypi</a>: not asked' in origin


def test_mirror_project_page_tells_cached_from_listed(devpid: MemoryDevpid) -> None:
    body = page(devpid, "/root/pypi/cached-proj").body.decode()
    assert '<form id="refresh" method="post" action="/root/pypi/cached-proj/refresh">' in body
    rows = re.findall(r'<tr class="(cached|listed)[^"]*">\s*<td><a href="[^"]+">([^<]+)', body)
    assert ("cached", "cached_proj-1.0-py3-none-any.whl") in rows
    assert len(rows) == 2


def test_refresh_form_is_refused_across_sites(devpid: MemoryDevpid) -> None:
    shown = page(devpid, "/root/pypi/cached-proj")
    cookie = shown.headers["set-cookie"].split(";")[0]
    assert "samesite=strict" in shown.headers["set-cookie"].lower()
    assert "HttpOnly" in shown.headers["set-cookie"]
    token = re.search(rb'name="csrf_token" value="([0-9a-f]+)"', shown.body)
    assert token is not None
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    good = b"csrf_token=" + token.group(1)
    path = "/root/pypi/cached-proj/refresh"
    assert send(devpid, "POST", path, good, form).code == 403  # no cookie
    assert send(devpid, "POST", path, b"csrf_token=00", {**form, "Cookie": cookie}).code == 403
    evil = {**form, "Cookie": cookie, "Origin": "http://evil.example"}
    assert send(devpid, "POST", path, good, evil).code == 403
    cross = {**form, "Cookie": cookie, "Sec-Fetch-Site": "cross-site"}
    assert send(devpid, "POST", path, good, cross).code == 403
    # the API's refresh refuses a browser's cross-site post too
    api = send(devpid, "POST", "/root/pypi/+simple/cached-proj/refresh", b"", cross)
    assert api.code == 403
    # with its token the form gets through to the (unreachable) upstream: not a 403
    accepted = send(
        devpid, "POST", path, good, {**form, "Cookie": cookie, "Origin": "http://localhost"}
    )
    assert accepted.code in (303, 502), accepted.raw[:300]


def test_redirects_and_errors(devpid: MemoryDevpid) -> None:
    slash = page(devpid, "/alice/dev/")
    assert (slash.code, slash.headers["location"]) == (302, "/alice/dev")
    name = page(devpid, "/alice/dev/Hello_Web")
    assert (name.code, name.headers["location"]) == (302, "/alice/dev/hello-web")
    missing = page(devpid, "/alice/nope%3Cb%3E")
    assert missing.code == 404
    assert b"<b>" not in missing.body and b"nope&lt;b&gt;" in missing.body
    assert page(devpid, "/alice/dev/hello-web/9.9").code == 404
    # devpi's + segments are never pages
    assert page(devpid, "/alice/dev/+simple/").headers["content-type"].startswith("text/html")
    assert b"<table" not in page(devpid, "/alice/dev/+simple/").body


def test_static_files(devpid: MemoryDevpid) -> None:
    css = page(devpid, f"/+static/{__version__}/devpid.css")
    assert css.code == 200 and css.headers["content-type"].startswith("text/css")
    assert "immutable" in css.headers["cache-control"]
    js = send(devpid, "GET", f"/+static/{__version__}/devpid.js")
    assert js.code == 200 and b"search" in js.body
    for bad in ("/+static/x/..%2fapp.py", "/+static/x/app.py", "/+static/x/", "/+static/x/.hidden"):
        assert send(devpid, "GET", bad).code == 404, bad


def test_readme_rendering_is_sanitised() -> None:
    html = render_description(DESCRIPTION, "text/markdown")
    assert "<em>hello-web</em>" in html
    assert "<script" not in html and "onerror" not in html and "javascript:" not in html
    rst = render_description(
        "Title\n=====\n\n.. raw:: html\n\n   <script>x</script>\n", "text/x-rst"
    )
    assert "<script>" not in rst
    plain = render_description("a <b> c", "text/plain")
    assert "&lt;b&gt;" in plain
    image = render_description("![logo](https://example.invalid/x.png)", "text/markdown")
    assert "<img" not in image and 'href="https://example.invalid/x.png"' in image


def test_formatting() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KB"
    assert human_bytes(None) == "-"
    assert human_time([2026, 1, 2, 3, 4, 5]) == "2026-01-02 03:04 UTC"
    assert human_time(["x"]) == "-"
    assert log_seconds([1970, 1, 1, 0, 1, 0]) == 60.0
    assert log_seconds(None) == 0.0


def test_status_page_draws_its_charts(devpid: MemoryDevpid) -> None:
    answer = page(devpid, "/+status")
    assert answer.code == 200
    body = answer.body.decode()
    assert body.count('<svg class="chart"') >= 4
    for section in ("health", "poller", "store", "workers"):
        assert f'<section id="{section}"' in body
    # monitors still get the JSON document
    monitor = send(devpid, "GET", "/+status", headers={"Accept": "*/*"})
    assert json.loads(monitor.body)["healthy"] in (True, False)


def test_search_as_a_page_and_as_json(devpid: MemoryDevpid) -> None:
    hits = json.loads(
        send(devpid, "GET", "/+search?query=hello", headers={"Accept": "application/json"}).body
    )["result"]["hits"]
    assert {"index": "alice/dev", "project": "hello-web"}.items() <= hits[0].items()
    assert "cached-proj" in page(devpid, "/+search?query=cached").body.decode()
    empty = page(devpid, "/+search?query=zzzqqq-none").body.decode()
    assert 'id="no-results"' in empty
    bad = send(devpid, "GET", "/+search?query=%27x", headers={"Accept": "application/json"})
    assert bad.code == 400 and "unbalanced" in json.loads(bad.body)["message"]
    escaped = page(devpid, "/+search?query=%3Cb%3Ex").body
    assert b"<b>x" not in escaped and b"&lt;b&gt;x" in escaped
