"""The streaming tee against a real devpid and a real (fault-injecting) upstream."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import BIG_FILE_SIZE
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration
BIG = "devpid_demo_big-1.0-py3-none-any.whl"
JSON = "application/vnd.pypi.simple.v1+json"


def file_path_of(devpid: DevpidProcess, project: str, filename: str) -> str:
    page = json.loads(devpid.get(f"/root/pypi/+simple/{project}/", Accept=JSON).body)
    return next(f["url"] for f in page["files"] if f["filename"] == filename)


def raw_get(devpid: DevpidProcess, path: str, timeout: float = 30) -> tuple[int, int | None, bytes]:
    """(status, Content-Length, body) — the body may be short if the server aborted."""
    host = urlsplit(devpid.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        length = response.getheader("Content-Length")
        body = b""
        try:
            while chunk := response.read(65536):
                body += chunk
        except (http.client.IncompleteRead, ConnectionError) as e:
            if isinstance(e, http.client.IncompleteRead):
                body += e.partial
            return response.status, int(length) if length else None, body
        return response.status, int(length) if length else None, body
    finally:
        connection.close()


def cached(devpid: DevpidProcess) -> list[Path]:
    return [p for p in (devpid.serverdir / "+files").rglob("*") if p.is_file()]


def wait_until(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_concurrent_cold_requests_make_one_upstream_get(
    devpid: DevpidProcess, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    path = file_path_of(devpid, "devpid-demo-big", BIG)
    upstream.control(rate=BIG_FILE_SIZE)  # about one second for the whole file
    expected = demo_repository.sha256(BIG)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: raw_get(devpid, path), range(20)))
    for status, length, body in results:
        assert status == 200
        assert length == demo_repository.path(BIG).stat().st_size
        assert hashlib.sha256(body).hexdigest() == expected
    assert upstream.stats()["gets"][f"/files/{BIG}"] == 1
    [stored] = cached(devpid)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == expected


def test_client_disconnect_does_not_abort_the_download(
    devpid: DevpidProcess, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    path = file_path_of(devpid, "devpid-demo-big", BIG)
    upstream.control(rate=BIG_FILE_SIZE * 2)
    host = urlsplit(devpid.url)
    sock = socket.create_connection((host.hostname, host.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    received = b""
    while len(received) < 100_000:
        received += sock.recv(65536)
    sock.close()  # gone mid-file
    assert wait_until(
        lambda: len(cached(devpid)) == 1 and not devpid.status()["downloads"]["in_flight"]
    )
    [stored] = cached(devpid)
    assert stored.name == BIG
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == demo_repository.sha256(BIG)
    assert upstream.stats()["gets"][f"/files/{BIG}"] == 1


@pytest.mark.parametrize(
    "fault", [{"wrong_hash": True}, {"drop_after": 0.5}, {"wrong_length": True}]
)
def test_bad_transfers_are_never_a_complete_200_and_never_cached(
    devpid: DevpidProcess, upstream: UpstreamProcess, demo_repository: Repository, fault: dict
) -> None:
    path = file_path_of(devpid, "devpid-demo-big", BIG)
    upstream.control(rate=BIG_FILE_SIZE * 4, **fault)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: raw_get(devpid, path), range(3)))
    for status, length, body in results:
        complete = status == 200 and length is not None and len(body) == length
        assert not complete, (status, length, len(body))
        assert hashlib.sha256(body).hexdigest() != demo_repository.sha256(BIG)
    assert wait_until(lambda: not devpid.status()["downloads"]["in_flight"])
    assert cached(devpid) == []
    # Once the upstream behaves, the next request fetches cleanly.
    upstream.control()
    status, _, body = raw_get(devpid, path)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == demo_repository.sha256(BIG)
    assert devpid.status()["counters"]["download_failures"] >= 1


def test_upstream_errors(devpid: DevpidProcess, upstream: UpstreamProcess) -> None:
    path = file_path_of(devpid, "devpid-demo-app", "devpid_demo_app-1.0-py3-none-any.whl")
    upstream.control(status=503)
    response = devpid.get(path)
    assert response.status == 502
    assert response.body.count(b"\n") == 1 and b"503" in response.body
    assert cached(devpid) == []
    # A page that was never cached: 502 with one line.
    response = devpid.get("/root/pypi/+simple/devpid-demo-lib/")
    assert response.status == 502
    assert response.body.count(b"\n") == 1
    assert b"Traceback" not in response.body
    upstream.control()
    assert devpid.get("/root/pypi/+simple/devpid-demo-nope/").status == 404


def test_stale_page_served_while_upstream_fails(tmp_path: Path, upstream: UpstreamProcess) -> None:
    with DevpidProcess.start(
        tmp_path / "sd", upstream.simple_url, "--cache-expiry", "0", "--upstream-timeout", "1"
    ) as devpid:
        first = devpid.get("/root/pypi/+simple/devpid-demo-lib/")
        assert first.status == 200
        for fault in ({"status": 500}, {"black_hole": True}, {"malformed": "json"}):
            upstream.control(**fault)
            stale = devpid.get("/root/pypi/+simple/devpid-demo-lib/", Accept="text/html")
            assert stale.status == 200, fault
            assert stale.body == first.body, fault
            upstream.control()
            # Past the error back-off, a healthy upstream is asked again.
        assert "last_error" in devpid.status()["upstream"]


def test_lower_serial_keeps_the_cached_page(tmp_path: Path, upstream: UpstreamProcess) -> None:
    with DevpidProcess.start(tmp_path / "sd", upstream.simple_url, "--cache-expiry", "0") as devpid:
        upstream.control(serial=2000)
        first = devpid.get("/root/pypi/+simple/devpid-demo-lib/")
        assert first.headers["x-pypi-last-serial"] == "2000"
        assert b"devpid_demo_lib-1.0" in first.body
        # An older mirror answers with a lower serial and a different page.
        upstream.control(serial=1500, hide_files=["devpid_demo_lib-1.0-py3-none-any.whl"])
        again = devpid.get("/root/pypi/+simple/devpid-demo-lib/")
        assert again.headers["x-pypi-last-serial"] == "2000"
        assert again.body == first.body
        assert "serial 1500 < cached 2000" in devpid.log_text()
        # A newer serial replaces it.
        upstream.control(serial=2500, hide_files=["devpid_demo_lib-1.0-py3-none-any.whl"])
        newer = devpid.get("/root/pypi/+simple/devpid-demo-lib/")
        assert newer.headers["x-pypi-last-serial"] == "2500"
        assert b"devpid_demo_lib-1.0" not in newer.body


def test_restart_keeps_cache_and_removes_partials(
    tmp_path: Path, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    serverdir = tmp_path / "sd"
    with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
        path = file_path_of(devpid, "devpid-demo-app", "devpid_demo_app-1.0-py3-none-any.whl")
        assert devpid.get(path).status == 200
        counters = devpid.status()["counters"]
    [stored] = cached(devpid)
    leftover = stored.with_name("other.whl.devpid-partial")
    leftover.write_bytes(b"half a file")
    upstream.reset_stats()
    with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
        assert wait_until(lambda: not leftover.exists())  # the start-up count removes it
        response = devpid.get(path)
        assert response.status == 200
        assert response.body == demo_repository.path(stored.name).read_bytes()
        page = devpid.get("/root/pypi/+simple/devpid-demo-app/")
        assert page.status == 200
        assert upstream.stats()["total"] == 0
        # Counters survive the restart too.
        assert devpid.status()["counters"]["file_misses"] >= counters["file_misses"]
        assert devpid.status()["counters"]["requests"] > counters["requests"]
