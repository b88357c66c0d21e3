"""Cached files sent by ``os.sendfile`` from a real ``twistd -n devpid``, to real sockets.

Two big wheels on a local upstream, cached once; then many clients at once,
slow readers beside fast ones, keep-alive and pipelined requests, clients that
leave mid-body, Range and HEAD, and wrk: every body whole and right.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.ports import wait_until
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration
JSON = "application/vnd.pypi.simple.v1+json"
BIG = "devpid_demo_big-1.0-py3-none-any.whl"
OTHER = "devpid_sendfile_other-1.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    other = Dist("devpid-sendfile-other", "1.0", "wheel", blob_size=5_000_000)
    return build_repository(
        tmp_path_factory.mktemp("sendfile-repo"), big_file_size=6_000_000, extra=(other,)
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, repository: Repository
) -> Iterator[tuple[DevpidProcess, dict[str, str]]]:
    """devpid with both wheels cached: (process, {filename: URL path})."""
    with UpstreamProcess.start(repository.root) as upstream:
        serverdir = tmp_path_factory.mktemp("sendfile") / "serverdir"
        with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
            paths = {}
            for project, filename in (("devpid-demo-big", BIG), ("devpid-sendfile-other", OTHER)):
                page = json.loads(devpid.get(f"/root/pypi/+simple/{project}/", Accept=JSON).body)
                url = next(f["url"] for f in page["files"] if f["filename"] == filename)
                paths[filename] = urlsplit(url).path
                assert devpid.get(paths[filename]).headers["x-devpid-cache"] == "miss"
                assert wait_until(lambda p=paths[filename]: hit(devpid, p), 20)
            yield devpid, paths


def hit(devpid: DevpidProcess, path: str) -> bool:
    return devpid.get(path, method="HEAD").headers.get("x-devpid-cache") == "hit"


def digest(repository: Repository, filename: str) -> str:
    return repository.sha256(filename)


def fetch(devpid: DevpidProcess, path: str) -> tuple[int, str, int]:
    """(status, sha256 of the body, Content-Length) of one GET on a fresh connection."""
    host = urlsplit(devpid.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = hashlib.sha256()
        while chunk := response.read(1 << 20):
            body.update(chunk)
        return response.status, body.hexdigest(), int(response.getheader("Content-Length"))
    finally:
        connection.close()


def slow_fetch(devpid: DevpidProcess, path: str) -> tuple[bytes, str]:
    """A client with a small receive buffer reading a few KiB at a time, with pauses."""
    host = urlsplit(devpid.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(60)
    sock.connect((host.hostname, host.port))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = bytearray()
        reads = 0
        while chunk := sock.recv(4096):
            received += chunk
            reads += 1
            if reads % 64 == 0:
                time.sleep(0.005)
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        return head, hashlib.sha256(body).hexdigest()
    finally:
        sock.close()


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[bytes, bytes]:
    """One response (head, body) from a keep-alive socket; what follows stays in ``buffered``."""
    while b"\r\n\r\n" not in buffered:
        buffered += sock.recv(1 << 16)
    head = bytes(buffered).partition(b"\r\n\r\n")[0]
    del buffered[: len(head) + 4]
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    if length is not None:
        return head, take(sock, buffered, int(length.group(1)))
    assert re.search(rb"(?im)^transfer-encoding: *chunked", head), head
    body = b""
    while True:
        while b"\r\n" not in buffered:
            buffered += sock.recv(1 << 16)
        size_line = bytes(buffered).partition(b"\r\n")[0]
        del buffered[: len(size_line) + 2]
        size = int(size_line, 16)
        body += take(sock, buffered, size + 2)[:size]
        if not size:
            return head, body


def take(sock: socket.socket, buffered: bytearray, length: int) -> bytes:
    while len(buffered) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "the connection closed mid-body"
        buffered += chunk
    taken = bytes(buffered[:length])
    del buffered[:length]
    return taken


def open_fds(devpid: DevpidProcess) -> int:
    return len(os.listdir(f"/proc/{devpid.process.pid}/fd"))


def test_many_clients_at_once_get_whole_bodies(
    server: tuple[DevpidProcess, dict[str, str]], repository: Repository
) -> None:
    devpid, paths = server
    names = [BIG, OTHER] * 12
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda name: fetch(devpid, paths[name]), names))
    for name, (status, sha, length) in zip(names, answers, strict=True):
        assert status == 200
        assert sha == digest(repository, name)
        assert length == repository.path(name).stat().st_size


def test_slow_readers_beside_fast_ones(
    server: tuple[DevpidProcess, dict[str, str]], repository: Repository
) -> None:
    devpid, paths = server
    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(slow_fetch, devpid, paths[BIG]) for _ in range(3)]
        fast = [pool.submit(fetch, devpid, paths[OTHER]) for _ in range(10)]
        for future in fast:
            status, sha, _ = future.result()
            assert (status, sha) == (200, digest(repository, OTHER))
        for future in slow:
            head, sha = future.result()
            assert head.startswith(b"HTTP/1.1 200 ")
            assert sha == digest(repository, BIG)


def test_keep_alive_and_pipelined_requests_get_their_own_bodies(
    server: tuple[DevpidProcess, dict[str, str]], repository: Repository
) -> None:
    devpid, paths = server
    host = urlsplit(devpid.url)
    order = [BIG, OTHER, OTHER, BIG]
    with socket.create_connection((host.hostname, host.port), timeout=60) as sock:
        buffered = bytearray()
        for name in order:  # one after the other, on one connection
            sock.sendall(f"GET {paths[name]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, body = read_response(sock, buffered)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert hashlib.sha256(body).hexdigest() == digest(repository, name)
        # all at once (pipelined), a small answer between the big ones
        requests = [f"GET {paths[name]} HTTP/1.1\r\nHost: x\r\n\r\n" for name in order]
        requests.insert(2, "GET /+api HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall("".join(requests).encode())
        for name in [BIG, OTHER, None, OTHER, BIG]:
            head, body = read_response(sock, buffered)
            assert head.startswith(b"HTTP/1.1 200 ")
            if name is not None:
                assert hashlib.sha256(body).hexdigest() == digest(repository, name)
        assert not buffered


def test_clients_leaving_mid_body_leak_nothing(
    server: tuple[DevpidProcess, dict[str, str]], repository: Repository
) -> None:
    devpid, paths = server
    fetch(devpid, paths[BIG])
    before = open_fds(devpid)
    host = urlsplit(devpid.url)
    for n in range(8):
        sock = socket.create_connection((host.hostname, host.port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(f"GET {paths[BIG]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 200_000:
            received += len(sock.recv(65536))
        if n % 2:  # a reset rather than a close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()
    # others are served meanwhile and after
    status, sha, _ = fetch(devpid, paths[OTHER])
    assert (status, sha) == (200, digest(repository, OTHER))
    assert wait_until(lambda: open_fds(devpid) <= before, 20), (before, open_fds(devpid))
    log = devpid.log_text()
    assert "Traceback" not in log and "Unhandled" not in log
    cut = re.findall(rf'"GET {re.escape(paths[BIG])}" 200 (\d+) .* cut off', log)
    assert len(cut) >= 8 and all(0 < int(sent) < 6_000_000 for sent in cut)


def test_range_head_length_and_access_log(
    server: tuple[DevpidProcess, dict[str, str]], repository: Repository
) -> None:
    devpid, paths = server
    whole = repository.path(OTHER).read_bytes()
    answer = devpid.get(paths[OTHER], Range="bytes=1000-2999")
    assert answer.status == 206 and answer.body == whole[1000:3000]
    assert answer.headers["content-range"] == f"bytes 1000-2999/{len(whole)}"
    answer = devpid.get(paths[OTHER], Range="bytes=-100")
    assert answer.status == 206 and answer.body == whole[-100:]
    head = devpid.get(paths[OTHER], method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(whole))
    answer = devpid.get(paths[OTHER])
    assert answer.status == 200 and answer.body == whole
    assert answer.headers["content-length"] == str(len(whole))
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["content-type"] == "application/octet-stream"
    assert wait_until(
        lambda: re.search(rf'"GET {re.escape(paths[OTHER])}" 200 {len(whole)} ', devpid.log_text()),
        10,
    )
    status = devpid.status()
    assert json.dumps(status)  # the process still answers its status


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_sees_no_truncated_body(
    server: tuple[DevpidProcess, dict[str, str]], repository: Repository, tmp_path: Path
) -> None:
    devpid, paths = server
    size = repository.path(BIG).stat().st_size
    script = tmp_path / "check.lua"
    script.write_text(
        f"good, bad = 0, 0\nlocal threads = {{}}\n"
        "setup = function(thread) table.insert(threads, thread) end\n"
        "response = function(status, headers, body)\n"
        f"  if status == 200 and #body == {size} then good = good + 1 else bad = bad + 1 end\n"
        "end\n"
        "done = function(summary, latency, requests)\n"
        "  local g, b = 0, 0\n"
        '  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end\n'
        '  io.write(string.format("CHECK %d %d %d\\n", g, b, summary.errors.read))\n'
        "end\n"
    )
    result = subprocess.run(
        ["wrk", "-t2", "-c8", "-d2s", "-s", str(script), devpid.url + paths[BIG]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"CHECK (\d+) (\d+) (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    good, bad, read_errors = map(int, match.groups())
    assert good > 0 and bad == 0 and read_errors == 0
