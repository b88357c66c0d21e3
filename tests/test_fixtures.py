"""The test fixtures themselves: the repository builder and the upstream server."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import BIG_FILE_SIZE, installer_env
from tests.fixtures.distbuilder import Repository
from tests.fixtures.upstream import JSON_TYPE, UpstreamProcess, negotiate

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PIP_ACCEPT = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
LIB1 = "devpid_demo_lib-1.0-py3-none-any.whl"
LIB2 = "devpid_demo_lib-2.0-py3-none-any.whl"
APP = "devpid_demo_app-1.0-py3-none-any.whl"
BIG = "devpid_demo_big-1.0-py3-none-any.whl"
integration = pytest.mark.integration  # these start real processes on loopback
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Response:
    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def fetch(url: str, *, method: str = "GET", timeout: float = 10, **headers: str) -> Response:
    names = {key: key.replace("_", "-") for key in headers}
    request = urllib.request.Request(
        url, method=method, headers={names[k]: v for k, v in headers.items()}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers, error.read())


class LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def repository(demo_repository: Repository) -> Repository:
    """The session's demo repository (tests/conftest.py), served by ``upstream``."""
    return demo_repository


def test_repository_layout(repository: Repository) -> None:
    assert sorted(repository.projects) == [
        "devpid-demo-app",
        "devpid-demo-big",
        "devpid-demo-lib",
        "devpid-demo-sdist",
    ]
    assert repository.projects["devpid-demo-sdist"] == ["devpid_demo_sdist-0.1.tar.gz"]
    for project, filenames in repository.projects.items():
        page = json.loads((repository.simple_dir / project / "index.json").read_text())
        assert [entry["filename"] for entry in page["files"]] == filenames
        for entry in page["files"]:
            path = repository.path(entry["filename"])
            assert entry["hashes"]["sha256"] == sha256(path.read_bytes())
            assert entry["size"] == path.stat().st_size
    index = json.loads((repository.simple_dir / "index.json").read_text())
    assert [p["name"] for p in index["projects"]] == sorted(repository.projects)
    assert abs(repository.path(BIG).stat().st_size - BIG_FILE_SIZE) < BIG_FILE_SIZE * 0.01


def test_wheels_are_valid(repository: Repository) -> None:
    wheels = [f for files in repository.projects.values() for f in files if f.endswith(".whl")]
    for wheel in wheels:
        with zipfile.ZipFile(repository.path(wheel)) as zf:
            dist_info = wheel.split("-py3")[0] + ".dist-info"
            metadata = zf.read(f"{dist_info}/METADATA")
            assert metadata == repository.path(wheel + ".metadata").read_bytes()
            assert b"Root-Is-Purelib: true" in zf.read(f"{dist_info}/WHEEL")
            rows = zf.read(f"{dist_info}/RECORD").decode().splitlines()
            assert sorted(row.split(",")[0] for row in rows) == sorted(zf.namelist())
            for name, digest, size in (row.split(",") for row in rows if not row.endswith(",,")):
                data = zf.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data))
    with tarfile.open(repository.path("devpid_demo_sdist-0.1.tar.gz")) as tar:
        pyproject = tar.extractfile("devpid_demo_sdist-0.1/pyproject.toml")
        assert pyproject is not None
        assert b'build-backend = "backend"' in pyproject.read()


def test_negotiate() -> None:
    assert negotiate(None) == "html"
    assert negotiate("*/*") == "html"
    assert negotiate(PIP_ACCEPT) == "json"
    assert negotiate(JSON_TYPE) == "json"
    assert negotiate(f"text/html;q=0.5, {JSON_TYPE};q=0.4") == "html"
    assert negotiate(f"{JSON_TYPE}, */*;q=0.1") == "json"
    assert negotiate(f"{JSON_TYPE};q=0, */*") == "html"
    assert negotiate("application/json") is None


@integration
def test_html_page_links_and_hashes(upstream: UpstreamProcess, repository: Repository) -> None:
    page_url = upstream.simple_url + "devpid-demo-lib/"
    response = fetch(page_url)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    parser = LinkParser()
    parser.feed(response.body.decode())
    assert len(parser.links) == 3
    for link in parser.links:
        href = link["href"]
        assert href is not None and href.startswith("../../files/")
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        body = fetch(url).body
        assert fragment == f"sha256={sha256(body)}"
        if url.endswith(".whl"):
            metadata = fetch(url + ".metadata").body
            assert link["data-core-metadata"] == f"sha256={sha256(metadata)}"
            assert link["data-dist-info-metadata"] == link["data-core-metadata"]
        assert link["data-requires-python"] == ">=3.8"
        assert link.get("data-yanked") == ("broken build" if url.endswith(LIB1) else None)


@integration
def test_json_page(upstream: UpstreamProcess, repository: Repository) -> None:
    page_url = upstream.simple_url + "devpid-demo-lib/"
    response = fetch(page_url, Accept=PIP_ACCEPT)
    assert response.status == 200
    assert response.headers["Content-Type"] == JSON_TYPE
    page = json.loads(response.body)
    assert page["meta"] == {"api-version": "1.1"}
    assert page["versions"] == ["1.0", "2.0"]
    for entry in page["files"]:
        body = fetch(urllib.parse.urljoin(page_url, entry["url"])).body
        assert entry["hashes"]["sha256"] == sha256(body) == repository.sha256(entry["filename"])
        assert entry["size"] == len(body)
        assert entry["upload-time"].endswith("Z")
        assert entry["yanked"] == ("broken build" if entry["filename"] == LIB1 else False)
        assert bool(entry["core-metadata"]) == entry["filename"].endswith(".whl")
    root = json.loads(fetch(upstream.simple_url, Accept=JSON_TYPE).body)
    assert {"name": "devpid-demo-app"} in root["projects"]


@integration
def test_etag_and_not_found(upstream: UpstreamProcess) -> None:
    url = upstream.simple_url + "devpid-demo-app/"
    first = fetch(url, Accept=JSON_TYPE)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["X-PyPI-Last-Serial"] == "1000"
    assert fetch(url, Accept=JSON_TYPE, If_None_Match=etag).status == 304
    assert fetch(url, Accept=JSON_TYPE, If_None_Match=f'"other", W/{etag}').status == 304
    assert fetch(url, If_None_Match=etag).status == 200  # the HTML has another tag
    assert fetch(upstream.simple_url + "no-such-project/").status == 404
    assert fetch(upstream.file_url("no-such-file.whl")).status == 404


@integration
def test_head_and_stats(upstream: UpstreamProcess) -> None:
    head = fetch(upstream.file_url(APP), method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) > 0
    fetch(upstream.file_url(APP))
    fetch(upstream.file_url(APP))
    fetch(upstream.simple_url)
    stats = upstream.stats()
    assert stats["gets"] == {f"/files/{APP}": 2, "/simple/": 1}
    assert stats["heads"] == {f"/files/{APP}": 1}
    assert stats["total"] == 4
    upstream.reset_stats()
    assert upstream.stats() == {"gets": {}, "heads": {}, "ranges": {}, "total": 0}


def test_ranges_and_no_ranges_mode(upstream: UpstreamProcess) -> None:
    whole = fetch(upstream.file_url(APP)).body
    part = fetch(upstream.file_url(APP), Range="bytes=10-")
    assert part.status == 206
    assert part.body == whole[10:]
    assert part.headers["Content-Range"] == f"bytes 10-{len(whole) - 1}/{len(whole)}"
    assert fetch(upstream.file_url(APP), Range="bytes=2-5").body == whole[2:6]
    beyond = fetch(upstream.file_url(APP), Range=f"bytes={len(whole)}-")
    assert beyond.status == 200 and beyond.body == whole  # unsatisfiable: the whole file
    assert upstream.stats()["ranges"] == {f"/files/{APP}": 3}
    upstream.control(no_ranges=True)
    ignored = fetch(upstream.file_url(APP), Range="bytes=10-")
    assert ignored.status == 200 and ignored.body == whole


@integration
def test_status_mode(upstream: UpstreamProcess) -> None:
    upstream.control(status=503)
    assert fetch(upstream.simple_url + "devpid-demo-app/").status == 503
    assert fetch(upstream.file_url(APP)).status == 503
    upstream.control(status=503, status_paths=["/files/"])
    assert fetch(upstream.simple_url + "devpid-demo-app/").status == 200
    assert fetch(upstream.file_url(APP)).status == 503


@integration
def test_control_rejects_unknown_keys(upstream: UpstreamProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        upstream.control(no_such_mode=True)
    assert raised.value.code == 400
    assert upstream.control(status=404)["status"] == 404


@integration
def test_drop_after(upstream: UpstreamProcess) -> None:
    upstream.control(drop_after=0.5)
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    connection.request("GET", f"/files/{BIG}")
    response = connection.getresponse()
    assert response.status == 200
    assert int(response.headers["Content-Length"]) > BIG_FILE_SIZE * 0.9
    received = bytearray()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while chunk := response.read(65536):
            received += chunk
        raise AssertionError(f"full body after drop_after: {len(received)} bytes")
    connection.close()
    upstream.control(drop_after=0.5, status_paths=["/simple/"])
    assert len(fetch(upstream.file_url(BIG)).body) > BIG_FILE_SIZE * 0.9


@integration
def test_wrong_hash_and_wrong_length(upstream: UpstreamProcess, repository: Repository) -> None:
    true_body = repository.path(LIB2).read_bytes()
    upstream.control(wrong_hash=True)
    body = fetch(upstream.file_url(LIB2)).body
    assert len(body) == len(true_body) and sha256(body) != repository.sha256(LIB2)
    upstream.control(wrong_length=True)
    response = fetch(upstream.file_url(LIB2))
    assert response.body[:-1] == true_body and len(response.body) == len(true_body) + 1
    assert response.headers["Content-Length"] == str(len(true_body) + 1)


@integration
def test_malformed_pages(upstream: UpstreamProcess) -> None:
    url = upstream.simple_url + "devpid-demo-lib/"
    upstream.control(malformed="json")
    response = fetch(url, Accept=JSON_TYPE)
    assert response.status == 200 and response.headers["Content-Type"] == JSON_TYPE
    with pytest.raises(ValueError):
        json.loads(response.body)
    assert fetch(url).body.endswith(b"</html>\n")
    upstream.control(malformed="html")
    assert b"</html>" not in fetch(url).body
    json.loads(fetch(url, Accept=JSON_TYPE).body)


@integration
def test_serial_and_hidden_files(upstream: UpstreamProcess) -> None:
    app, lib = upstream.simple_url + "devpid-demo-app/", upstream.simple_url + "devpid-demo-lib/"
    upstream.control(serial=7)
    assert fetch(app).headers["X-PyPI-Last-Serial"] == "7"
    upstream.control(serial={"devpid-demo-app": 42})
    assert fetch(app).headers["X-PyPI-Last-Serial"] == "42"
    assert fetch(lib).headers["X-PyPI-Last-Serial"] == "1000"
    before = fetch(lib, Accept=JSON_TYPE).headers["ETag"]
    upstream.control(hide_files=[LIB1])
    assert LIB1.encode() not in fetch(lib).body and LIB2.encode() in fetch(lib).body
    page = fetch(lib, Accept=JSON_TYPE)
    assert [f["filename"] for f in json.loads(page.body)["files"]] == [
        LIB2,
        "devpid_demo_lib-2.0.tar.gz",
    ]
    assert page.headers["ETag"] != before


@integration
def test_delay_rate_and_black_hole(upstream: UpstreamProcess, repository: Repository) -> None:
    upstream.control(delay=0.3)
    started = time.monotonic()
    assert fetch(upstream.simple_url).status == 200
    assert time.monotonic() - started >= 0.3
    size = repository.path(APP).stat().st_size
    upstream.control(rate=size * 2)
    started = time.monotonic()
    assert fetch(upstream.file_url(APP)).body == repository.path(APP).read_bytes()
    assert time.monotonic() - started >= 0.4
    upstream.control(black_hole=True)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        fetch(upstream.simple_url, timeout=0.5)
    assert upstream.stats()["gets"]["/simple/"] == 2


def assert_installed(target: Path) -> None:
    assert (target / "devpid_demo_app" / "__init__.py").read_text() == 'VERSION = "1.0"\n'
    assert (target / "devpid_demo_lib" / "__init__.py").read_text() == 'VERSION = "2.0"\n'
    assert (target / "devpid_demo_sdist" / "__init__.py").read_text() == 'VERSION = "0.1"\n'
    assert (target / "devpid_demo_sdist-0.1.dist-info" / "RECORD").is_file()


@integration
def test_pip_installs_from_fixture(upstream: UpstreamProcess, tmp_path: Path) -> None:
    target = tmp_path / "target"
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir"]
    command += ["--disable-pip-version-check"]
    command += ["--index-url", upstream.simple_url, "--target", str(target)]
    command += ["devpid-demo-app", "devpid-demo-sdist"]
    result = subprocess.run(
        command, env=installer_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_installed(target)
    gets = upstream.stats()["gets"]
    assert f"/files/{LIB2}" in gets and f"/files/{LIB1}" not in gets


@integration
def test_uv_installs_from_fixture(upstream: UpstreamProcess, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    target = tmp_path / "target"
    command = [uv, "pip", "install", "--no-cache", "--no-config", "--python", sys.executable]
    command += ["--index-url", upstream.simple_url, "--target", str(target)]
    command += ["devpid-demo-app", "devpid-demo-sdist"]
    result = subprocess.run(
        command, env=installer_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_installed(target)


@integration
@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared corpus is absent ({CORPUS})")
def test_serves_the_real_corpus() -> None:
    with UpstreamProcess.start(CORPUS) as upstream:
        page_url = upstream.simple_url + "flask/"
        response = fetch(page_url, Accept=PIP_ACCEPT)
        assert response.headers["Content-Type"] == JSON_TYPE
        page = json.loads(response.body)
        assert page["name"] == "flask"
        wheel = next(f for f in page["files"] if f["filename"].endswith(".whl"))
        body = fetch(urllib.parse.urljoin(page_url, wheel["url"])).body
        assert sha256(body) == wheel["hashes"]["sha256"]


def raw_fetch(
    upstream: UpstreamProcess, path: str, timeout: float = 10, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers in lower case, body as far as it came) without following redirects."""
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = bytearray()
        try:
            while chunk := response.read1(65536):
                body += chunk
        except TimeoutError:
            pass
        return response.status, {k.lower(): v for k, v in response.getheaders()}, bytes(body)
    finally:
        connection.close()


@integration
def test_redirect_modes(upstream: UpstreamProcess) -> None:
    page = "/simple/devpid-demo-lib/"
    plain = fetch(upstream.url.rstrip("/") + page).body
    upstream.control(redirect_to="/mirror")
    status, headers, _ = raw_fetch(upstream, page)
    assert (status, headers["location"]) == (302, "/mirror" + page)
    assert fetch(upstream.url.rstrip("/") + page).body == plain  # the mirror is not redirected
    upstream.control(redirect_to="")
    assert raw_fetch(upstream, page)[1]["location"] == page  # a loop
    upstream.control(redirect_to="http://127.0.0.1:9", status_paths=["/files/"])
    assert raw_fetch(upstream, f"/files/{APP}")[1]["location"] == f"http://127.0.0.1:9/files/{APP}"
    assert raw_fetch(upstream, page)[0] == 200
    assert upstream.stats()["gets"]["/mirror" + page] == 1


@integration
def test_length_modes(upstream: UpstreamProcess, repository: Repository) -> None:
    true_body = repository.path(LIB2).read_bytes()
    upstream.control(length_delta=-1)
    headers = raw_fetch(upstream, f"/files/{LIB2}")[1]
    assert headers["content-length"] == str(len(true_body) - 1)
    upstream.control(length_delta=5)
    _, headers, body = raw_fetch(upstream, f"/files/{LIB2}", timeout=0.5)
    assert headers["content-length"] == str(len(true_body) + 5) and body == true_body
    upstream.control(no_length=True)
    _, headers, body = raw_fetch(upstream, f"/files/{LIB2}")
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    assert body == true_body


@integration
def test_stall_after(upstream: UpstreamProcess, repository: Repository) -> None:
    upstream.control(stall_after=0.5)
    size = repository.path(BIG).stat().st_size
    status, headers, body = raw_fetch(upstream, f"/files/{BIG}", timeout=1)
    assert status == 200 and int(headers["content-length"]) == size
    assert 0 < len(body) <= size // 2
    status, headers, body = raw_fetch(upstream, "/simple/devpid-demo-lib/", timeout=1)
    assert status == 200 and 0 < len(body) < int(headers["content-length"])


@integration
def test_open_connections(upstream: UpstreamProcess) -> None:
    assert upstream.open_connections() == 0
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    connection.request("GET", "/simple/")
    connection.getresponse().read()
    assert upstream.open_connections() == 1  # kept alive
    connection.close()
    deadline = time.monotonic() + 10
    while upstream.open_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_connections() == 0


@integration
def test_page_shape_modes(upstream: UpstreamProcess) -> None:
    url = upstream.simple_url + "devpid-demo-lib/"
    upstream.control(page_format="html", content_type="text/plain")
    response = fetch(url, Accept=JSON_TYPE)
    assert response.headers["Content-Type"] == "text/plain"
    assert response.body.startswith(b"<!DOCTYPE html>")
    upstream.control(extra_links=1000, page_padding=10_000)
    files = json.loads(fetch(url, Accept=JSON_TYPE).body)["files"]
    assert len(files) == 1003 and files[-1]["filename"] == "devpid_demo_lib-0.0.999.tar.gz"
    html = fetch(url)
    parser = LinkParser()
    parser.feed(html.body.decode())
    assert len(parser.links) == 1003 and len(html.body) > 10_000
