"""``/<user>/<index>/+findlinks`` (devpi-findlinks): one flat page of every file, streamed.

Against a real ``twistd -n devpid``: the real pip and uv install with
``--no-index --find-links`` from a stage's page (its uploads and the mirror
pages devpid holds), the whitelist and a constrained index's constraints
apply as on the simple pages, and a page of tens of megabytes goes out in
chunks without the process's memory growing with it. In memory: the writer
stops while the client's transport is full and stops for good when it leaves.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from devpid.files.store import FileStore
from devpid.routes.findlinks import (
    PROJECTS_PER_TURN,
    ClientGone,
    FindLinksRoutes,
    Valve,
    render_link,
)
from devpid.simple.model import Link
from devpid.simple.render import LinkRenderer
from tests.conftest import installer_env
from tests.fixtures.devpi_client import client_venv
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, _build_wheel
from tests.fixtures.upstream import UpstreamProcess
from tests.test_private_api import Api

APP = Dist("acme-app", "1.0", "wheel", requires_dist=("devpid-demo-lib>=2",))
#: A private project that shadows the mirror's ``devpid-demo-sdist``.
SHADOW = Dist("devpid-demo-sdist", "9.0", "wheel")
HREF = re.compile(r'<a href="([^"]+)"[^>]*>([^<]+)</a>')


@attrs.frozen
class Setup:
    server: DevpidProcess
    base: Path

    def page(self, index: str) -> dict[str, str]:
        """filename -> href of the index's find-links page."""
        answer = http_get(f"{self.server.url}/{index}/+findlinks")
        assert answer.status == 200, answer
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        return {name: href for href, name in HREF.findall(answer.body.decode())}


def twine_upload(server: DevpidProcess, index: str, path: Path) -> None:
    twine = shutil.which("twine") or str(client_venv() / "bin" / "twine")
    env = installer_env()
    env.update(TWINE_NON_INTERACTIVE="1", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    done = subprocess.run(
        [
            *(twine, "upload", "--disable-progress-bar", "--repository-url"),
            *(f"{server.url}/{index}/", "-u", "alice", "-p", "alicepw", str(path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("findlinks")
    with DevpidProcess.start(base / "serverdir", shared_upstream.simple_url) as server:
        root = Api(server)
        root.login("root", "")
        assert root.call("PUT", "/alice", {"password": "alicepw"}).status == 201
        alice = Api(server)
        alice.login("alice", "alicepw")
        assert alice.call("PUT", "/alice/dev", {"bases": "root/pypi"}).status == 200
        for dist in (APP, SHADOW):
            _build_wheel(dist, base)
            twine_upload(server, "alice/dev", base / dist.filename)
        # the mirror pages devpid holds: what a mirror adds to the page
        for project in ("devpid-demo-lib", "devpid-demo-sdist"):
            assert http_get(f"{server.url}/root/pypi/+simple/{project}/").status == 200
        yield Setup(server, base)


@pytest.mark.integration
def test_the_page_lists_stage_and_mirror_files_with_hashes(setup: Setup) -> None:
    page = setup.page("alice/dev")
    assert sorted(page) == [
        "acme_app-1.0-py3-none-any.whl",
        "devpid_demo_lib-1.0-py3-none-any.whl",
        "devpid_demo_lib-2.0-py3-none-any.whl",
        "devpid_demo_lib-2.0.tar.gz",
        # the private project shadows the mirror's (no 0.1 sdist from root/pypi)
        "devpid_demo_sdist-9.0-py3-none-any.whl",
    ]
    assert page["acme_app-1.0-py3-none-any.whl"].startswith("/alice/dev/+f/")
    assert page["devpid_demo_lib-2.0.tar.gz"].startswith("/root/pypi/+f/")
    for href in page.values():
        assert re.search(r"#sha256=[0-9a-f]{64}$", href), href
    # the mirror's own page: its held pages only
    assert "devpid_demo_sdist-0.1.tar.gz" in setup.page("root/pypi")
    assert "acme_app-1.0-py3-none-any.whl" not in setup.page("root/pypi")


@pytest.mark.integration
def test_pip_and_uv_install_from_the_page(setup: Setup, tmp_path: Path) -> None:
    url = f"{setup.server.url}/alice/dev/+findlinks"
    pip = [
        *("pip", "install", "--isolated", "--no-cache-dir", "--disable-pip-version-check"),
        *("--no-index", "--find-links", url, "--target", str(tmp_path / "pip"), "acme-app"),
    ]
    done = subprocess.run(
        ["python3", "-m", *pip], env=installer_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "pip" / "acme_app-1.0.dist-info").is_dir()
    assert (tmp_path / "pip" / "devpid_demo_lib-2.0.dist-info").is_dir()
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    done = subprocess.run(
        [
            *(uv, "pip", "install", "--no-cache", "--no-config", "--python", "python3"),
            *("--no-index", "--find-links", url, "--target", str(tmp_path / "uv"), "acme-app"),
        ],
        env=installer_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "uv" / "devpid_demo_lib-2.0.dist-info").is_dir()


@pytest.mark.integration
def test_a_constrained_index_lists_what_it_allows(setup: Setup) -> None:
    root = Api(setup.server)
    root.login("root", "")
    made = root.call(
        "PUT",
        "/root/vetted",
        {
            "type": "constrained",
            "bases": "alice/dev",
            "constraints": "acme-app\ndevpid-demo-lib>=2\n*",
        },
    )
    assert made.status == 200, made.body
    assert sorted(setup.page("root/vetted")) == [
        "acme_app-1.0-py3-none-any.whl",
        "devpid_demo_lib-2.0-py3-none-any.whl",
        "devpid_demo_lib-2.0.tar.gz",
    ]


@pytest.mark.integration
def test_unknown_index_and_empty_index(setup: Setup) -> None:
    missing = http_get(f"{setup.server.url}/alice/nope/+findlinks")
    assert missing.status == 404 and missing.body == b"404 Not Found: no index alice/nope\n"
    alice = Api(setup.server)
    alice.login("alice", "alicepw")
    assert alice.call("PUT", "/alice/empty", {"bases": ""}).status == 200
    body = http_get(f"{setup.server.url}/alice/empty/+findlinks").body
    assert b"<p>No releases.</p>" in body and b"<a " not in body


# -- a big page ----------------------------------------------------------------------

BIG_PROJECTS, LINKS_PER_PROJECT = 1500, 40


def seed_pages(serverdir: Path) -> None:
    """Pages of a mirror as devpid keeps them, written before it starts."""
    files = FileStore(serverdir)
    for n in range(BIG_PROJECTS):
        project = f"big-{n:05d}"
        links = [
            Link(
                filename=f"big_{n:05d}-{v}.0-py3-none-any.whl",
                url=f"https://127.0.0.1/files/big_{n:05d}-{v}.0-py3-none-any.whl",
                hashes={"sha256": f"{n:032x}{v:032x}"},
                requires_python=">=3.8",
            ).to_json()
            for v in range(LINKS_PER_PROJECT)
        ]
        files.write_page("root/pypi", project, {"name": project, "links": links})


def read_streamed(url: str) -> tuple[dict[str, str], int, int]:
    """The headers, the body's size and its anchors, read a piece at a time."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    connection.request("GET", parts.path)
    response = connection.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    size = anchors = 0
    tail = b""
    while piece := response.read(256 * 1024):
        size += len(piece)
        data = tail + piece
        anchors += data.count(b"</a>")
        tail = data[-3:] if not data.endswith(b"</a>") else b""
    connection.close()
    return headers, size, anchors


@pytest.mark.integration
def test_a_big_page_is_streamed_in_little_memory(
    tmp_path: Path, shared_upstream: UpstreamProcess
) -> None:
    serverdir = tmp_path / "serverdir"
    seed_pages(serverdir)
    with DevpidProcess.start(serverdir, shared_upstream.simple_url) as server:
        root = Api(server)
        root.login("root", "")
        assert root.call("PUT", "/root/small", {"bases": ""}).status == 200
        assert http_get(f"{server.url}/root/small/+findlinks").status == 200  # warmed up
        before = server.peak_rss_kib()
        headers, size, anchors = read_streamed(f"{server.url}/root/pypi/+findlinks")
        grown = server.peak_rss_kib() - before
        # a client that leaves half way: the page stops, quietly
        parts = urlsplit(server.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        connection.request("GET", "/root/pypi/+findlinks")
        assert len(connection.getresponse().read(100_000)) == 100_000
        connection.close()
        deadline = time.monotonic() + 30
        while "cut off" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.log_text()
        assert '"GET /root/pypi/+findlinks" 200' in log and "cut off" in log
        assert "Traceback" not in log and "Unhandled" not in log
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert anchors == BIG_PROJECTS * LINKS_PER_PROJECT
    assert size > 10_000_000
    # the page is never held: the process grows by a fraction of it at most
    assert grown * 1024 < size / 4, (grown, size)


# -- in memory: pacing -------------------------------------------------------------------


class PacedRequest:
    """A request whose transport is full after every write, as a slow client's is."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.channel: object | None = object()
        self.finished: list[Deferred[None]] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.producer.pauseProducing()

    def notifyFinish(self) -> Deferred[None]:
        finished: Deferred[None] = Deferred()
        self.finished.append(finished)
        return finished


@attrs.define
class StubFinder:
    """Projects of ``links`` links each, and some of none."""

    count: int
    links_each: int
    asked: int = 0

    async def links(self, index: str, project: str, constraints: object) -> list[Any]:
        n = int(project.rpartition("-")[2])
        self.asked += 1
        return [
            (
                "root/pypi",
                Link(filename=f"p{n}-{v}.tar.gz", url=f"u{n}-{v}", hashes={"sha256": "ab"}),
            )
            for v in range(self.links_each if n % 2 else 0)
        ]


def start_stream(request: PacedRequest, finder: StubFinder, clock: MemoryReactorClock) -> Any:
    routes = FindLinksRoutes(None, {}, None, clock=clock, chunk_bytes=4096)  # type: ignore[arg-type]
    valve = Valve(request)  # type: ignore[arg-type]
    projects = [f"p-{n}" for n in range(finder.count)]
    urls = LinkRenderer("", "root/pypi")
    coroutine = routes._stream(valve, finder, "root/pypi", projects, None, urls)  # type: ignore[arg-type]
    return valve, Deferred.fromCoroutine(coroutine)


def test_writes_wait_while_the_client_is_behind() -> None:
    request, clock = PacedRequest(), MemoryReactorClock()
    valve, done = start_stream(request, StubFinder(600, 20), clock)
    line = len(
        render_link(
            Link("p599-19.tar.gz", "u", {"sha256": "ab"}), "root/pypi", LinkRenderer("", "x")
        )
    )
    rounds = 0
    while not done.called:
        # paused: nothing more is written until the client catches up
        assert len(request.written) == rounds + 1
        assert len(request.written[-1]) < 4096 + 4 * line
        clock.advance(0)
        assert len(request.written) == rounds + 1
        valve.resumeProducing()
        clock.advance(0)
        rounds += 1
    body = b"".join(request.written).decode()
    assert body.count("<a ") == 300 * 20 and body.endswith("</body></html>\n")
    assert rounds > 50  # written in many small pieces, not at once


def test_projects_without_files_give_the_reactor_turns() -> None:
    request, clock = PacedRequest(), MemoryReactorClock()
    finder = StubFinder(2000, 0)
    _, done = start_stream(request, finder, clock)
    # nothing written yet, and the reactor was given a turn after a batch of projects
    assert finder.asked == PROJECTS_PER_TURN and not request.written
    assert clock.getDelayedCalls() and not done.called
    while not done.called:
        if request.producer is not None and request.producer.paused:
            request.producer.resumeProducing()
        else:
            clock.advance(0)
    assert finder.asked == 2000
    assert b"No releases." in b"".join(request.written)


def test_a_client_that_leaves_stops_the_page() -> None:
    request, clock = PacedRequest(), MemoryReactorClock()
    valve, done = start_stream(request, StubFinder(600, 20), clock)
    valve.resumeProducing()
    written = len(request.written)
    valve.stopProducing()
    clock.advance(0)
    failures: list[Any] = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(ClientGone)
    assert len(request.written) == written
    valve.close()
    assert request.producer is None
