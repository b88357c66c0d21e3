"""SIGTERM during slow downloads, against a real ``twistd -n devpid`` and a real upstream.

Ten cold files stream at the same time from an upstream limited per connection;
five are small enough to finish within ``--shutdown-grace``, five are not.
"""

from __future__ import annotations

import hashlib
import http.client
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.upstream import UpstreamProcess
from tests.test_streaming import file_path_of, raw_get

pytestmark = pytest.mark.integration

SMALL = [Dist(f"devpid-grace-small-{n}", "1.0", "wheel", blob_size=300_000) for n in range(5)]
LARGE = [Dist(f"devpid-grace-large-{n}", "1.0", "wheel", blob_size=4_000_000) for n in range(5)]
#: Sent from the cache to a slow reader: larger than what the kernel buffers on its way.
CACHED = Dist("devpid-grace-cached", "1.0", "wheel", blob_size=16_000_000)
#: Bytes per second per connection: the small files take about 1.5 s, the large ones 20 s.
RATE = 200_000
GRACE = "6"


@pytest.fixture(scope="module")
def grace_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return build_repository(tmp_path_factory.mktemp("grace-repo"), extra=[*SMALL, *LARGE, CACHED])


@pytest.fixture
def slow_upstream(grace_repository: Repository) -> Iterator[UpstreamProcess]:
    with UpstreamProcess.start(grace_repository.root) as process:
        yield process


def in_flight(devpid: DevpidProcess) -> int:
    running = devpid.status()["downloads"]["in_flight"]
    return sum(1 for download in running if download["bytes"] > 0)


def test_sigterm_lets_downloads_finish_within_the_grace_and_keeps_nothing_partial(
    tmp_path: Path, slow_upstream: UpstreamProcess, grace_repository: Repository
) -> None:
    serverdir = tmp_path / "serverdir"
    devpid = DevpidProcess.start(serverdir, slow_upstream.simple_url, "--shutdown-grace", GRACE)
    try:
        paths = {d.filename: file_path_of(devpid, d.project, d.filename) for d in SMALL + LARGE}
        slow_upstream.control(rate=RATE)
        with ThreadPoolExecutor(len(paths)) as pool:
            fetches: dict[str, Future[tuple[int, int | None, bytes]]] = {
                name: pool.submit(raw_get, devpid, path, 60) for name, path in paths.items()
            }
            deadline = time.monotonic() + 20
            while in_flight(devpid) < len(paths) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert in_flight(devpid) == len(paths), devpid.log_text()[-3000:]
            exit_code = devpid.stop(signal.SIGTERM, timeout=30)
            results = {name: future.result() for name, future in fetches.items()}
    finally:
        devpid.stop()
    assert exit_code == 0, devpid.log_text()[-3000:]
    for dist in SMALL:  # finished within the grace: whole, verified, and kept
        status, length, body = results[dist.filename]
        assert status == 200 and len(body) == length
        assert hashlib.sha256(body).hexdigest() == grace_repository.sha256(dist.filename)
        kept = list((serverdir / "+files").rglob(dist.filename))
        assert len(kept) == 1 and kept[0].read_bytes() == body
    for dist in LARGE:  # aborted: a truncated transfer, never a complete 200, nothing kept
        status, length, body = results[dist.filename]
        assert status == 200 and length is not None and len(body) < length
        assert list((serverdir / "+files").rglob(dist.filename)) == []
    assert list(serverdir.rglob("*.devpid-partial")) == []
    log = devpid.log_text()
    assert f"waiting up to {float(GRACE)}s for 10 downloads" in log
    assert "Traceback" not in log

    # A restart picks up where it left off: the small files from the cache, the
    # large ones fetched again, whole.
    slow_upstream.control()
    slow_upstream.reset_stats()
    with DevpidProcess.start(serverdir, slow_upstream.simple_url) as again:
        for dist in SMALL + LARGE:
            status, _, body = raw_get(again, paths[dist.filename])
            assert status == 200
            assert hashlib.sha256(body).hexdigest() == grace_repository.sha256(dist.filename)
    gets = slow_upstream.stats()["gets"]
    assert all(f"/files/{d.filename}" not in gets for d in SMALL)
    assert all(gets.get(f"/files/{d.filename}") == 1 for d in LARGE)


def test_sigterm_closes_idle_keep_alive_connections_and_reports_shutting_down(
    tmp_path: Path, slow_upstream: UpstreamProcess
) -> None:
    """A proxy's kept-alive connection must not bring new work to a stopping process."""
    serverdir = tmp_path / "serverdir"
    devpid = DevpidProcess.start(serverdir, slow_upstream.simple_url, "--shutdown-grace", "3")
    host = urlsplit(devpid.url)
    try:
        large = LARGE[0]
        path = file_path_of(devpid, large.project, large.filename)
        slow_upstream.control(rate=RATE)
        idle = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        idle.request("GET", "/+status")
        assert idle.getresponse().read()  # kept alive, now idle
        with ThreadPoolExecutor(1) as pool:
            download = pool.submit(raw_get, devpid, path, 60)  # keeps the process draining
            deadline = time.monotonic() + 20
            while in_flight(devpid) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            devpid.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while "closed 1 idle connections" not in devpid.log_text():
                assert time.monotonic() < deadline, devpid.log_text()[-2000:]
                time.sleep(0.05)
            with pytest.raises((http.client.HTTPException, OSError)):
                idle.request("GET", "/+status?check=1")
                idle.getresponse().read()
            assert devpid.process.wait(30) == 0
            status, length, body = download.result()
            assert status == 200
            assert length is not None and len(body) < length  # cut off after the grace
    finally:
        devpid.stop()
    assert list(serverdir.rglob("*.devpid-partial")) == []


def wait_for_log(devpid: DevpidProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in devpid.log_text():
        assert time.monotonic() < deadline, devpid.log_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("first", "second", "exit_code"),
    [
        (signal.SIGINT, signal.SIGINT, -signal.SIGINT),  # Ctrl-C: ends by SIGINT, as shells expect
        (signal.SIGTERM, signal.SIGTERM, 0),
        (signal.SIGTERM, signal.SIGINT, 0),
    ],
)
def test_a_second_signal_while_draining_stops_at_once_without_a_traceback(
    tmp_path: Path,
    slow_upstream: UpstreamProcess,
    first: signal.Signals,
    second: signal.Signals,
    exit_code: int,
) -> None:
    serverdir = tmp_path / "serverdir"
    devpid = DevpidProcess.start(serverdir, slow_upstream.simple_url, "--shutdown-grace", "60")
    try:
        large = LARGE[0]
        path = file_path_of(devpid, large.project, large.filename)
        slow_upstream.control(rate=RATE)
        with ThreadPoolExecutor(1) as pool:
            download = pool.submit(raw_get, devpid, path, 60)
            deadline = time.monotonic() + 20
            while in_flight(devpid) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            devpid.process.send_signal(first)
            wait_for_log(devpid, "waiting up to 60.0s for 1 download")
            started = time.monotonic()
            devpid.process.send_signal(second)
            assert devpid.process.wait(15) == exit_code, devpid.log_text()[-3000:]
            assert time.monotonic() - started < 15
            status, length, body = download.result()
    finally:
        devpid.stop()
    assert status == 200 and length is not None and len(body) < length
    assert list(serverdir.rglob("*.devpid-partial")) == []
    assert list((serverdir / "+files").rglob(large.filename)) == []
    log = devpid.log_text()
    assert f"{first.name}: shutting down (a second SIGTERM or Ctrl-C stops at once)" in log
    assert f"{second.name} again: stopping at once" in log
    assert "Traceback" not in log and "ReactorNotRunning" not in log
    # The cut-off client's request is in the access log, with what it was sent.
    cut_off = [line for line in log.splitlines() if f'"GET {path}" 200 ' in line]
    assert len(cut_off) == 1 and cut_off[0].endswith(" cut off"), log[-3000:]
    sent = int(cut_off[0].split(f'"GET {path}" 200 ')[1].split()[0])
    assert len(body) <= sent < length  # what was written, some of it never received


def test_sigterm_lets_a_slow_client_receive_a_cached_file_whole(
    tmp_path: Path, slow_upstream: UpstreamProcess, grace_repository: Repository
) -> None:
    """Sends from the cache get the same grace as downloads."""
    serverdir = tmp_path / "serverdir"
    devpid = DevpidProcess.start(serverdir, slow_upstream.simple_url, "--shutdown-grace", "30")
    host = urlsplit(devpid.url)
    try:
        path = file_path_of(devpid, CACHED.project, CACHED.filename)
        status, _, body = raw_get(devpid, path)  # now cached
        size = len(body)
        assert status == 200 and size > 10_000_000
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        reader.settimeout(30)
        reader.connect((host.hostname, host.port))
        reader.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        signalled_at = None
        while chunk := reader.recv(64 * 1024):
            received += chunk
            if signalled_at is None and len(received) > 1_000_000:
                devpid.process.send_signal(signal.SIGTERM)
                signalled_at = time.monotonic()
            time.sleep(0.01)  # a slow reader: a few MB/s
        reader.close()
        assert signalled_at is not None
        assert devpid.process.wait(30) == 0, devpid.log_text()[-3000:]
    finally:
        devpid.stop()
    head, _, sent = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(sent) == size
    assert hashlib.sha256(sent).hexdigest() == grace_repository.sha256(CACHED.filename)
    log = devpid.log_text()
    assert "waiting up to 30.0s for 1 response still being sent" in log
    assert f'"GET {path}" 200 {size} ' in log
    assert "cut off" not in log and "Traceback" not in log
