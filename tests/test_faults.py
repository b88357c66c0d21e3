"""The fault matrix: a real ``twistd -n devpid`` against a fault-injecting upstream.

Each row of the matrix (issue "Hardening") and the tests that check it; rows
covered elsewhere are named here so that the matrix is complete in one place.

| fault | expected | tests |
|---|---|---|
| upstream 500/502/503 on a page; on a file | stale page if cached, else 502 with a reason; file: 502, nothing cached | ``test_upstream_5xx`` (also ``test_streaming.py::test_upstream_errors``) |
| connect timeout, read timeout, black hole | the same within ``--upstream-timeout``; nothing hangs | ``test_upstream_timeouts``, ``test_connect_timeout_to_the_upstream_itself`` |
| connection reset at 10 %, 50 %, 99 % of a file | aborted transfers, never a complete 200; nothing cached; a clean refetch | ``test_connection_reset_mid_file`` (50 %: ``test_streaming.py::test_bad_transfers_are_never_a_complete_200_and_never_cached``) |
| slow drip (1 byte/s) | the idle timeout fires; no client blocked forever | ``test_slow_drip_is_cut_off`` |
| wrong sha256; right hash, wrong length; lying Content-Length | nothing cached, no complete 200 | ``test_lying_content_length`` (wrong hash and length: ``test_streaming.py::test_bad_transfers_are_never_a_complete_200_and_never_cached``) |
| malformed HTML/JSON, wrong Content-Type, 50 MB page, 200,000 links | 502 or a correct parse; bounded memory (VmHWM printed) | ``test_malformed_pages``, ``test_wrong_content_type``, ``test_huge_pages`` (stale on malformed JSON: ``test_streaming.py::test_stale_page_served_while_upstream_fails``) |
| redirects: same host, other host, loop | followed within a limit, or refused with a reason | ``test_redirects`` |
| lower ``X-PyPI-Last-Serial`` than cached | cached page kept | ``test_streaming.py::test_lower_serial_keeps_the_cached_page`` |
| Redis stopped, paused, restarted under load | no failed request for cached content; recovery without restart | ``test_redis_paused_under_load`` (stopped and restarted: ``test_cluster.py::test_redis_going_away_fails_no_request_for_cached_content``) |
| disk full in the serverdir during a fetch | a clean 5xx with a reason; nothing partial kept; cached files still served | ``test_disk_full_on_a_small_tmpfs``, ``test_file_size_limit`` |
"""  # noqa: E501

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.fixtures.devpid_process import DevpidProcess, Response
from tests.fixtures.distbuilder import Repository
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.upstream import UnconnectablePort, UpstreamProcess
from tests.test_streaming import BIG, JSON, cached, file_path_of, raw_get, wait_until

pytestmark = pytest.mark.integration

#: ``--upstream-timeout`` of these tests, in seconds.
TIMEOUT = 1
#: The most a request may take when the upstream times out: generous, never flaky.
BOUND = 3 * TIMEOUT + 5
LIB_PAGE = "/root/pypi/+simple/devpid-demo-lib/"
APP_PAGE = "/root/pypi/+simple/devpid-demo-app/"
LIB = "devpid_demo_lib-1.0-py3-none-any.whl"
APP = "devpid_demo_app-1.0-py3-none-any.whl"
#: Well below any test machine's memory, far above what these pages need.
RSS_BOUND_KIB = 1024 * 1024


def start(tmp_path: Path, upstream: UpstreamProcess, *options: str, **kw: Any) -> DevpidProcess:
    return DevpidProcess.start(
        tmp_path / "serverdir",
        upstream.simple_url,
        "--upstream-timeout",
        str(TIMEOUT),
        *options,
        **kw,
    )


def assert_one_line(response: Response, status: int, *words: str) -> None:
    """An error answer: ``status``, one line naming ``words``, no traceback."""
    text = response.body.decode()
    assert response.status == status, text
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    for word in words:
        assert word in text, text


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return call(), time.monotonic() - started


def get_within(devpid: DevpidProcess, path: str, seconds: float) -> tuple[int, int | None, bytes]:
    """``raw_get``, failing the test if the answer is not over within ``seconds``
    (a socket timeout alone never fires on a connection that drips)."""
    deadline = time.monotonic() + seconds
    host = urlsplit(devpid.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=seconds)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        length = response.getheader("Content-Length")
        body = bytearray()
        with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
            while chunk := response.read1(65536):
                body += chunk
                assert time.monotonic() < deadline, f"{path}: still streaming after {seconds}s"
        return response.status, int(length) if length else None, bytes(body)
    finally:
        connection.close()


def is_complete(status: int, length: int | None, body: bytes) -> bool:
    return status == 200 and length is not None and len(body) == length


def partials(serverdir: Path) -> list[Path]:
    return list(serverdir.rglob("*.devpid-partial"))


def in_flight(devpid: DevpidProcess) -> list[Any]:
    result: list[Any] = devpid.status()["downloads"]["in_flight"]
    return result


def report_rss(capsys: pytest.CaptureFixture[str], label: str, devpid: DevpidProcess) -> int:
    peak = devpid.peak_rss_kib()
    with capsys.disabled():
        print(f"\n[fault matrix] devpid VmHWM {label}: {peak / 1024:.1f} MiB")
    return peak


# -- upstream errors and timeouts ---------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_upstream_5xx(tmp_path: Path, upstream: UpstreamProcess, status: int) -> None:
    """Stale page if cached, else 502 with a reason; a file: 502 and nothing cached."""
    with start(tmp_path, upstream, "--cache-expiry", "0") as devpid:
        first = devpid.get(LIB_PAGE)
        assert first.status == 200
        lib_path = file_path_of(devpid, "devpid-demo-lib", LIB)
        upstream.control(status=status)
        stale = devpid.get(LIB_PAGE)
        assert stale.status == 200 and stale.body == first.body
        assert "serving stale page for devpid-demo-lib" in devpid.log_text()
        assert_one_line(devpid.get(APP_PAGE), 502, f"upstream answered {status}")
        assert_one_line(devpid.get(lib_path), 502, str(status))
        assert cached(devpid) == [] and partials(devpid.serverdir) == []
        assert upstream.stats()["gets"][f"/files/{LIB}"] == 1


@pytest.mark.parametrize("fault", ["connect", "read", "black_hole"])
def test_upstream_timeouts(tmp_path: Path, upstream: UpstreamProcess, fault: str) -> None:
    """Within the timeout: the stale page, 502 for an uncached page, a failed file."""
    unconnectable = UnconnectablePort.open() if fault == "connect" else None
    if fault == "connect" and unconnectable is None:
        pytest.skip("this kernel completes connections to a full accept queue")
    with contextlib.ExitStack() as stack:
        if unconnectable is not None:
            stack.callback(unconnectable.close)
        devpid = stack.enter_context(
            start(tmp_path, upstream, "--cache-expiry", "0", "--changelog-interval", "0")
        )
        first = devpid.get(LIB_PAGE)
        lib_path = file_path_of(devpid, "devpid-demo-lib", LIB)
        if unconnectable is not None:
            # Each request's first hop connects; the redirect's target never does.
            upstream.control(redirect_to=unconnectable.url)
        elif fault == "read":
            upstream.control(stall_after=0.5)  # headers and half the body, then silence
        else:
            upstream.control(black_hole=True)
        with ThreadPoolExecutor(3) as pool:
            stale = pool.submit(timed, lambda: devpid.get(LIB_PAGE))
            missing = pool.submit(timed, lambda: devpid.get(APP_PAGE))
            file = pool.submit(timed, lambda: get_within(devpid, lib_path, BOUND + 10))
            (stale_answer, stale_took) = stale.result()
            (missing_answer, missing_took) = missing.result()
            ((status, length, body), file_took) = file.result()
        assert stale_answer.status == 200 and stale_answer.body == first.body
        assert "serving stale page for devpid-demo-lib" in devpid.log_text()
        assert_one_line(missing_answer, 502, "timed out")
        # The client had no byte of the file yet (the newest chunk is held back).
        assert status == 502 and not is_complete(status, length, body)
        reasons = (b"stalled", b"too slow") if fault == "read" else (b"timed out",)
        assert any(reason in body for reason in reasons), body
        assert max(stale_took, missing_took, file_took) < BOUND
        assert cached(devpid) == [] and partials(devpid.serverdir) == []
        assert wait_until(lambda: not in_flight(devpid), timeout=BOUND)
        if fault != "connect":  # (there, the first hops' connections stay in the pool)
            # Given up on means closed: a stalled upstream holds no connection of devpid's.
            assert wait_until(lambda: upstream.open_connections() == 0, timeout=BOUND)
        upstream.control()
        # Past the timeouts, nothing is left wedged: a clean fetch works.
        status, _, body = raw_get(devpid, lib_path)
        assert status == 200 and len(body) > 0


def test_connect_timeout_to_the_upstream_itself(tmp_path: Path) -> None:
    unconnectable = UnconnectablePort.open()
    if unconnectable is None:
        pytest.skip("this kernel completes connections to a full accept queue")
    try:
        with DevpidProcess.start(
            tmp_path / "serverdir",
            unconnectable.url + "/simple/",
            "--upstream-timeout",
            str(TIMEOUT),
            "--changelog-interval",
            "0",
        ) as devpid:
            answer, took = timed(lambda: devpid.get(LIB_PAGE))
            assert_one_line(answer, 502, "timed out")
            assert took < BOUND
            assert "timed out" in devpid.status()["upstream"]["last_error"]
    finally:
        unconnectable.close()


# -- broken file transfers ------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.99])  # 0.5: test_streaming.py
def test_connection_reset_mid_file(
    devpid: DevpidProcess, upstream: UpstreamProcess, demo_repository: Repository, fraction: float
) -> None:
    path = file_path_of(devpid, "devpid-demo-big", BIG)
    upstream.control(drop_after=fraction, rate=demo_repository.path(BIG).stat().st_size * 4)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: raw_get(devpid, path), range(3)))
    for status, length, body in results:
        assert not is_complete(status, length, body), (status, length, len(body))
    assert wait_until(lambda: not in_flight(devpid))
    assert cached(devpid) == [] and partials(devpid.serverdir) == []
    upstream.control()
    status, _, body = raw_get(devpid, path)
    assert status == 200 and hashlib.sha256(body).hexdigest() == demo_repository.sha256(BIG)
    assert devpid.status()["counters"]["download_failures"] == 1


def test_slow_drip_is_cut_off(
    tmp_path: Path, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    """One byte a second keeps a connection alive but must not keep a client forever."""
    timeout = 2  # twice the drip's interval: every window sees bytes, none sees progress
    with start(tmp_path, upstream, "--upstream-timeout", str(timeout)) as devpid:
        path = file_path_of(devpid, "devpid-demo-lib", LIB)
        upstream.control(rate=1, status_paths=["/files/"])
        bound = 3 * timeout + 5
        (status, length, body), took = timed(lambda: get_within(devpid, path, bound + 10))
        assert not is_complete(status, length, body)
        assert took < bound
        assert wait_until(lambda: not in_flight(devpid))
        assert cached(devpid) == [] and partials(devpid.serverdir) == []
        assert "too slow" in devpid.log_text()
        upstream.control()
        status, _, body = raw_get(devpid, path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == demo_repository.sha256(LIB)


@pytest.mark.parametrize("page_format", ["json", "html"], ids=["size-on-page", "no-size"])
@pytest.mark.parametrize("delta", [-1, 1], ids=["short", "long"])
def test_lying_content_length(
    tmp_path: Path,
    upstream: UpstreamProcess,
    demo_repository: Repository,
    delta: int,
    page_format: str,
) -> None:
    """Content-Length off by one byte either way, with and without a size on the page."""
    with start(tmp_path, upstream) as devpid:
        upstream.control(page_format=page_format, status_paths=["/simple/"])
        path = file_path_of(devpid, "devpid-demo-lib", LIB)
        upstream.control(length_delta=delta, status_paths=["/files/"])
        (status, length, body), took = timed(lambda: get_within(devpid, path, BOUND + 10))
        assert not is_complete(status, length, body), (status, length, len(body))
        assert hashlib.sha256(body).hexdigest() != demo_repository.sha256(LIB)
        assert took < BOUND
        assert wait_until(lambda: not in_flight(devpid))
        assert cached(devpid) == [] and partials(devpid.serverdir) == []
        upstream.control()
        status, _, body = raw_get(devpid, path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == demo_repository.sha256(LIB)


# -- bad pages -------------------------------------------------------------------


def test_malformed_pages(tmp_path: Path, upstream: UpstreamProcess) -> None:
    """Garbled JSON: 502 with a reason. Garbled HTML: what parses, never a broken link."""
    with start(tmp_path, upstream) as devpid:
        upstream.control(malformed="json")
        assert_one_line(devpid.get(LIB_PAGE), 502, "unparseable JSON")
        upstream.control(malformed="html", page_format="html")
        answer = devpid.get(LIB_PAGE, Accept=JSON)
        assert answer.status == 200
        files = json.loads(answer.body)["files"]
        assert [entry["filename"] for entry in files] == [LIB]  # the one link before the cut
        assert len(files[0]["hashes"]["sha256"]) == 64


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain", 502),
        ("application/octet-stream", 502),
        ("text/html", 502),  # a JSON body said to be HTML: not an empty page
        ("application/json", 200),
    ],
)
def test_wrong_content_type(
    tmp_path: Path, upstream: UpstreamProcess, content_type: str, expected: int
) -> None:
    with start(tmp_path, upstream) as devpid:
        upstream.control(content_type=content_type)
        answer = devpid.get(LIB_PAGE, Accept=JSON)
        if expected == 200:
            assert answer.status == 200
            assert len(json.loads(answer.body)["files"]) == 3
        else:
            assert_one_line(answer, 502)
            assert cached(devpid) == []
            assert not list((devpid.serverdir / "+pages").rglob("devpid-demo-lib*"))


@pytest.mark.parametrize(
    ("label", "modes", "files"),
    [
        ("a 50 MB page (HTML)", {"page_padding": 50_000_000, "page_format": "html"}, 3),
        ("a 50 MB page (JSON)", {"page_padding": 50_000_000}, 3),
        # JSON, the format devpid asks for; devpid takes about twice as long
        # over the same links in HTML (see the report), too long for every run.
        ("200,000 links", {"extra_links": 200_000}, 200_003),
    ],
    ids=["50MB-html", "50MB-json", "200k-links"],
)
def test_huge_pages(
    tmp_path: Path,
    upstream: UpstreamProcess,
    capsys: pytest.CaptureFixture[str],
    label: str,
    modes: dict[str, Any],
    files: int,
) -> None:
    """Parsed correctly, in bounded memory (the peak RSS is printed)."""
    with start(tmp_path, upstream, "--upstream-timeout", "30") as devpid:
        assert devpid.get(APP_PAGE).status == 200
        baseline = report_rss(capsys, "after a small page", devpid)
        upstream.control(status_paths=["/simple/devpid-demo-lib/"], **modes)
        html = devpid.get(LIB_PAGE)
        assert html.status == 200, html.body[:200]
        assert html.body.count(b"<a ") == files
        peak = report_rss(capsys, f"after {label}", devpid)
        assert baseline <= peak < RSS_BOUND_KIB


# -- redirects -------------------------------------------------------------------


def test_redirects(tmp_path: Path, upstream: UpstreamProcess, demo_repository: Repository) -> None:
    """Same host and other host: followed (links resolved against the final URL).
    A loop: 502 with a reason, or the stale page."""
    with (
        UpstreamProcess.start(demo_repository.root) as other,
        start(tmp_path, upstream, "--cache-expiry", "0") as devpid,
    ):
        big_page = devpid.get("/root/pypi/+simple/devpid-demo-big/")
        big_path = file_path_of(devpid, "devpid-demo-big", BIG)

        upstream.control(redirect_to="/mirror")
        lib_path = file_path_of(devpid, "devpid-demo-lib", LIB)
        status, _, body = raw_get(devpid, lib_path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == demo_repository.sha256(LIB)
        gets = upstream.stats()["gets"]
        assert gets["/mirror/simple/devpid-demo-lib/"] >= 1 and gets[f"/mirror/files/{LIB}"] == 1

        upstream.control(redirect_to=other.url.rstrip("/"))
        app_path = file_path_of(devpid, "devpid-demo-app", APP)
        status, _, body = raw_get(devpid, app_path)
        assert status == 200 and hashlib.sha256(body).hexdigest() == demo_repository.sha256(APP)
        assert other.stats()["gets"][f"/files/{APP}"] == 1

        upstream.control(redirect_to="")  # every URL to itself
        assert_one_line(
            devpid.get("/root/pypi/+simple/devpid-demo-sdist/"), 502, "nfinite redirect"
        )
        assert_one_line(devpid.get(big_path), 502, "nfinite redirect")
        stale = devpid.get("/root/pypi/+simple/devpid-demo-big/")
        assert stale.status == 200 and stale.body == big_page.body
        assert sorted(p.name for p in cached(devpid)) == [APP, LIB]


# -- the state store ---------------------------------------------------------------


def test_redis_paused_under_load(
    tmp_path: Path, upstream: UpstreamProcess, redis: RedisServer, demo_repository: Repository
) -> None:
    """``DEBUG SLEEP``: Redis holds every reply for a while, then carries on."""
    with start(
        tmp_path, upstream, "--redis", redis.url, "--cache-expiry", "0", "--changelog-interval", "0"
    ) as devpid:
        lib_path = file_path_of(devpid, "devpid-demo-lib", LIB)
        expected = demo_repository.sha256(LIB)
        assert raw_get(devpid, lib_path)[0] == 200
        assert wait_until(lambda: devpid.status()["store_health"]["state"] == "up")
        failures: list[str] = []
        served = [0]
        done = threading.Event()

        def hammer() -> None:
            while not done.is_set():
                try:
                    status, _, body = raw_get(devpid, lib_path, timeout=10)
                    if status != 200 or hashlib.sha256(body).hexdigest() != expected:
                        failures.append(f"file: {status}")
                    page = devpid.get(LIB_PAGE)  # revalidated: the store is written each time
                    if page.status != 200 or LIB.encode() not in page.body:
                        failures.append(f"page: {page.status}")
                except OSError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                served[0] += 1

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.3)
            # A cold file while Redis sleeps: its download lock cannot be had.
            with ThreadPoolExecutor(1) as pool:
                cold = pool.submit(
                    lambda: raw_get(devpid, file_path_of(devpid, "devpid-demo-app", APP))
                )
                redis.command("DEBUG", "SLEEP", "3")
                status, _, body = cold.result(timeout=30)
            assert status == 200 and hashlib.sha256(body).hexdigest() == demo_repository.sha256(APP)
            assert wait_until(lambda: devpid.status()["store_health"]["state"] == "up")
            time.sleep(0.5)
        finally:
            done.set()
            for thread in threads:
                thread.join(30)
        assert served[0] > 10
        assert failures == []
        text = devpid.log_text()
        assert "Traceback" not in text
        assert "is unavailable" in text and "reachable again" in text
        # Recovered without a restart: the store takes writes again.
        assert devpid.get("/root/pypi/+simple/devpid-demo-sdist/").status == 200
        assert redis.command("EXISTS", "devpid:doc:page:root/pypi:devpid-demo-sdist") == 1


# -- the disk ----------------------------------------------------------------------


def check_disk_full(
    devpid: DevpidProcess, upstream: UpstreamProcess, demo_repository: Repository, reason: str
) -> None:
    """The shared part of the disk-full variants; ``reason`` is in the 5xx's line."""
    lib_path = file_path_of(devpid, "devpid-demo-lib", LIB)
    status, _, lib_body = raw_get(devpid, lib_path)
    assert status == 200
    # No size known in advance (no Content-Length, no size on the page): the
    # write fails during the transfer, which is then cut off.
    upstream.control(
        page_format="html",
        no_length=True,
        status_paths=["/simple/devpid-demo-big/", f"/files/{BIG}"],
    )
    big_path = file_path_of(devpid, "devpid-demo-big", BIG)
    status, _, body = raw_get(devpid, big_path)
    assert status == 200 and len(body) < demo_repository.path(BIG).stat().st_size
    assert wait_until(lambda: not in_flight(devpid))
    assert partials(devpid.serverdir) == []
    assert "cannot write to the cache" in devpid.log_text()
    # With the size known, the answer is a clean 507 before any byte.
    upstream.control()
    assert_one_line(devpid.get(big_path), 507, reason)
    assert partials(devpid.serverdir) == []
    assert [p.name for p in cached(devpid)] == [LIB]
    # Cached content is still served.
    assert raw_get(devpid, lib_path) == (200, len(lib_body), lib_body)
    assert devpid.get(LIB_PAGE).status == 200
    assert devpid.status()["counters"]["download_failures"] == 2


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mountpoint = tmp_path / "serverdir"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """A file taking up all the space left in ``directory``'s file system."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def test_disk_full_on_a_small_tmpfs(
    small_tmpfs: Path, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    with DevpidProcess.start(
        small_tmpfs, upstream.simple_url, "--upstream-timeout", str(TIMEOUT)
    ) as devpid:
        check_disk_full(devpid, upstream, demo_repository, "not enough space")
        # A page fetched while nothing can be written is still served, and
        # leaves nothing behind.
        filler = fill(small_tmpfs)
        try:
            page = devpid.get(APP_PAGE)
            assert page.status == 200 and APP.encode() in page.body
            assert "cannot save the page of devpid-demo-app" in devpid.log_text()
            assert partials(devpid.serverdir) == []
            assert devpid.get(LIB_PAGE).status == 200
        finally:
            filler.unlink()
        assert devpid.get(APP_PAGE).status == 200
        assert "Traceback" not in devpid.log_text()


FILE_SIZE_LIMIT = 1024 * 1024


def _limit_file_size() -> None:
    """In the child: writes past the limit fail with EFBIG (no SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_file_size_limit(
    tmp_path: Path, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    """Writes fail with EFBIG past RLIMIT_FSIZE: the variant that runs everywhere."""
    with start(tmp_path, upstream, preexec_fn=_limit_file_size) as devpid:
        check_disk_full(devpid, upstream, demo_repository, "file size limit")
        assert "File too large" in devpid.log_text()
        assert "Traceback" not in devpid.log_text()
