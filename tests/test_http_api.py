"""The URL space as clients see it: negotiation, redirects, files, status, and bad input."""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures.devpid_process import DevpidProcess, NoRedirect, http_get_no_redirect
from tests.fixtures.distbuilder import Repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration
JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
APP = "devpid_demo_app-1.0-py3-none-any.whl"
SECRET = b"this must never be served"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[DevpidProcess]:
    base = tmp_path_factory.mktemp("api")
    # Something beside the serverdir that traversal attempts would like to reach.
    (base / "secret.whl").write_bytes(SECRET)
    with DevpidProcess.start(base / "serverdir", shared_upstream.simple_url) as devpid:
        yield devpid


def app_path(server: DevpidProcess) -> str:
    page = json.loads(server.get("/root/pypi/+simple/devpid-demo-app/", Accept=JSON).body)
    return str(page["files"][0]["url"])


def test_negotiation_and_headers(server: DevpidProcess) -> None:
    as_json = server.get("/root/pypi/+simple/devpid-demo-lib/", Accept=PIP_ACCEPT)
    assert as_json.status == 200
    assert as_json.headers["content-type"] == JSON
    assert as_json.headers["vary"] == "Accept, Accept-Encoding, X-Outside-URL"
    assert "max-age" in as_json.headers["cache-control"]
    page = json.loads(as_json.body)
    assert page["meta"]["api-version"].startswith("1.")
    files = {f["filename"]: f for f in page["files"]}
    yanked = files["devpid_demo_lib-1.0-py3-none-any.whl"]
    assert yanked["yanked"] == "broken build"
    assert yanked["requires-python"] == ">=3.8"
    assert yanked["size"] > 0 and yanked["upload-time"]
    assert yanked["core-metadata"]["sha256"]
    assert all(f["url"].startswith("/root/pypi/+f/") for f in page["files"])
    assert page["versions"] == ["1.0", "2.0"]

    as_html = server.get("/root/pypi/+simple/devpid-demo-lib/", Accept="text/html")
    assert as_html.headers["content-type"].startswith("text/html")
    assert b'data-yanked="broken build"' in as_html.body
    assert b'data-requires-python="&gt;=3.8"' in as_html.body
    v1_html = server.get("/root/pypi/+simple/devpid-demo-lib/?format=html")
    assert v1_html.headers["content-type"].startswith("text/html")
    fmt = server.get("/root/pypi/+simple/devpid-demo-lib/?format=json")
    assert fmt.headers["content-type"] == JSON
    assert (
        server.get("/root/pypi/+simple/devpid-demo-lib/", Accept="application/json").status == 406
    )

    etag = as_json.headers["etag"]
    again = server.get("/root/pypi/+simple/devpid-demo-lib/", Accept=PIP_ACCEPT, If_None_Match=etag)
    assert again.status == 304 and again.body == b""


def test_redirects_and_trailing_slash(server: DevpidProcess) -> None:
    moved = http_get_no_redirect(server.url + "/root/pypi/+simple/Devpid_Demo.Lib/")
    assert moved.status == 301
    assert moved.headers["location"] == "/root/pypi/+simple/devpid-demo-lib/"
    # Installers get the page without the slash; browsers are redirected to it.
    installer = http_get_no_redirect(
        server.url + "/root/pypi/+simple/devpid-demo-lib", User_Agent="pip/26.2"
    )
    assert installer.status == 200
    browser = http_get_no_redirect(
        server.url + "/root/pypi/+simple/devpid-demo-lib", User_Agent="Mozilla/5.0"
    )
    assert browser.status == 301
    assert browser.headers["location"] == "/root/pypi/+simple/devpid-demo-lib/"
    assert server.get("/root/pypi/+simple/no-such-project/").status == 404
    assert server.get("/root/nope/+simple/devpid-demo-lib/").status == 404


def test_project_list_and_outside_url(server: DevpidProcess) -> None:
    listing = server.get("/root/pypi/+simple/", Accept=JSON)
    names = [p["name"] for p in json.loads(listing.body)["projects"]]
    assert "devpid-demo-app" in names
    html = server.get("/root/pypi/+simple/").body
    assert b'href="/root/pypi/+simple/devpid-demo-app/"' in html
    outside = server.get(
        "/root/pypi/+simple/devpid-demo-app/",
        Accept=JSON,
        X_Outside_URL="http://localhost:8080/pypi",
    )
    url = json.loads(outside.body)["files"][0]["url"]
    assert url.startswith("http://localhost:8080/pypi/root/pypi/+f/")
    bad = server.get("/root/pypi/+simple/devpid-demo-app/", X_Outside_URL="javascript:alert(1)")
    assert bad.status == 400


def test_file_get_head_range_etag(server: DevpidProcess, demo_repository: Repository) -> None:
    path = app_path(server)
    expected = demo_repository.path(APP).read_bytes()
    cold = server.get(path)
    assert cold.status == 200 and cold.body == expected
    warm = server.get(path)
    assert warm.status == 200 and warm.body == expected
    assert warm.headers["cache-control"] == "max-age=31536000, immutable"
    assert "content-encoding" not in warm.headers
    head = server.get(path, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == len(expected)
    part = server.get(path, Range="bytes=10-19")
    assert part.status == 206 and part.body == expected[10:20]
    etag = warm.headers["etag"]
    assert server.get(path, If_None_Match=etag).status == 304
    metadata = server.get(path + ".metadata")
    assert metadata.status == 200 and b"Name: devpid-demo-app" in metadata.body
    assert metadata.body == demo_repository.path(APP + ".metadata").read_bytes()
    # An sdist is served byte for byte, not re-encoded.
    page = json.loads(server.get("/root/pypi/+simple/devpid-demo-sdist/", Accept=JSON).body)
    sdist = server.get(page["files"][0]["url"])
    assert sdist.status == 200 and "content-encoding" not in sdist.headers
    assert hashlib.sha256(sdist.body).hexdigest() == page["files"][0]["hashes"]["sha256"]


def test_status_document(server: DevpidProcess) -> None:
    server.get("/root/pypi/+simple/devpid-demo-app/")
    status = server.status()
    for key in (
        "version",
        "uptime",
        "serverdir",
        "store",
        "upstream",
        "cache",
        "hits",
        "misses",
        "bytes_served",
        "downloads",
    ):
        assert key in status, key
    assert status["store"].startswith("embedded")
    assert {"url", "last_success", "last_error"} <= set(status["upstream"])
    assert {"projects", "files", "bytes", "files_without_hash"} <= set(status["cache"])
    assert status["downloads"]["in_flight"] == []
    assert status["hits"] >= 1


BAD_PATHS = [
    "/root/pypi/+f/../../../secret.whl",
    "/root/pypi/+f/%2e%2e/%2e%2e/%2e%2e/secret.whl",
    "/root/pypi/+f/abc/0123456789abc/..%2F..%2Fsecret.whl",
    "/root/pypi/+f/abc/0123456789abc/%2e%2e",
    "/root/pypi/+f/abc/0123456789abc/secret%00.whl",
    "/root/pypi/+f/ABC/0123456789abc/x-1.0.tar.gz",
    "/root/pypi/+f/abc/0123456789ab/x-1.0.tar.gz",
    "/root/pypi/+f/abc/0123456789abc/" + "a" * 300 + "-1.0.tar.gz",
    "/root/pypi/+f/abc/0123456789abc/.hidden-1.0.tar.gz",
    "/root/pypi/+f/abc/0123456789abc/nothing-here-1.0.tar.gz",
    "/root/pypi/+simple/../../../etc/passwd",
    "/root/pypi/+simple/%2e%2e/",
    "/root/pypi/+simple/bad%00name/",
    "/root/pypi/+simple/-leading-dash/",
    "/root/pypi/+simple/" + "a" * 500 + "/",
    "/root/pypi/+simple/%ff%fe/",
    "/..%2f..%2fsecret.whl",
    "/root/%2e%2e/+simple/x/",
    "/+status/../../secret.whl",
    "/root/pypi/+simple/devpid-demo-app/?format=%00",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_input_gets_a_4xx_with_one_line(server: DevpidProcess, path: str) -> None:
    host = urlsplit(server.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert 400 <= response.status < 500, (response.status, body)
    assert SECRET not in body
    assert b"Traceback" not in body and b"<html" not in body.lower()
    assert body.count(b"\n") <= 1


def test_still_healthy_after_bad_input(server: DevpidProcess) -> None:
    assert server.get("/root/pypi/+simple/devpid-demo-app/").status == 200
    assert "Traceback" not in server.log_text()
    assert not list(Path(server.serverdir).parent.glob("*.devpid-partial"))


def test_refresh_revalidates_now_and_redirects(
    server: DevpidProcess, shared_upstream: UpstreamProcess
) -> None:
    assert server.get("/root/pypi/+simple/devpid-demo-lib/").status == 200
    shared_upstream.reset_stats()
    request = urllib.request.Request(
        server.url + "/root/pypi/+simple/Devpid_Demo_Lib/refresh", data=b"", method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    try:
        opener.open(request, timeout=10)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 302
        assert e.headers["Location"] == "/root/pypi/+simple/devpid-demo-lib/"
    assert shared_upstream.stats()["gets"]["/simple/devpid-demo-lib/"] == 1
    # The refetch cleared the mark: the next request is served from the cache.
    assert server.get("/root/pypi/+simple/devpid-demo-lib/").status == 200
    assert shared_upstream.stats()["gets"]["/simple/devpid-demo-lib/"] == 1
