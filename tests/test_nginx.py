"""A real nginx, from the ``nginx-devpid.conf`` that ``devpid gen-config`` writes, in front
of two real devpid workers sharing a serverdir and a real Redis.

nginx balances the workers, tells them the outside URL (also under a sub-path),
serves cached files from the serverdir itself, never serves a download in
progress, and streams cache misses through devpid; real pip and uv install
through it with the generated pip.conf and uv.toml.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest

from tests.conftest import CORPUS, installer_env, needs_corpus
from tests.fixtures.deploy import gen_config
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Repository
from tests.fixtures.nginx import INSTALL_HINT, Nginx, nginx_path
from tests.fixtures.ports import free_consecutive_ports, wait_until
from tests.fixtures.redis_server import INSTALL_HINT as REDIS_HINT
from tests.fixtures.redis_server import RedisServer, redis_server_path
from tests.fixtures.upstream import UpstreamProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_path() is None, reason=INSTALL_HINT),
    pytest.mark.skipif(redis_server_path() is None, reason=REDIS_HINT),
]

JSON = "application/vnd.pypi.simple.v1+json"
DEMO = ("devpid-demo-app", "devpid-demo-sdist")
PREFIXES = ["", "/pypi"]


@attrs.frozen
class Deployment:
    """Two workers and one nginx per path prefix, from one gen-config run each."""

    workers: tuple[DevpidProcess, ...]
    nginx: dict[str, Nginx]  # by path prefix
    gen: dict[str, Path]  # the gen-config output directory, by path prefix

    @property
    def serverdir(self) -> Path:
        return self.workers[0].serverdir

    def url(self, prefix: str) -> str:
        return self.nginx[prefix].url + prefix

    def access_count(self, path: str) -> int:
        """How many access lines the workers logged for ``GET path``."""
        return sum(w.log_text().count(f'"GET {path}"') for w in self.workers)

    def barrier(self) -> None:
        """Wait until each worker logged a request made now: earlier lines are all in."""
        for worker in self.workers:
            marker = f"/+status?barrier={len(worker.log_text())}"
            assert worker.get(marker).status == 200
            assert wait_until(partial(_logged, worker, f'"GET {marker}"'))


def _logged(worker: DevpidProcess, text: str) -> bool:
    return text in worker.log_text()


@contextmanager
def deployment(tmp: Path, upstream: str, redis: str) -> Iterator[Deployment]:
    first = free_consecutive_ports(2)
    serverdir = tmp / "serverdir"
    with ExitStack() as stack:
        workers = []
        for port in (first, first + 1):
            worker = DevpidProcess.start(
                serverdir,
                upstream,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--redis",
                redis,
                "--changelog-interval",
                "0",
                name=f"worker-{port}",
            )
            stack.enter_context(worker)
            workers.append(worker)
        nginx, gen = {}, {}
        for prefix in PREFIXES:
            name = prefix.strip("/") or "root"
            gen[prefix] = tmp / f"gen-{name}"
            nginx_port = free_consecutive_ports(1)
            options = ["--path-prefix", prefix] if prefix else []
            result = gen_config(
                "--out", gen[prefix], "--serverdir", serverdir, "--port", str(first),
                "--workers", "2", "--redis", redis, "--upstream", upstream,
                "--nginx-address", "127.0.0.1", "--nginx-port", str(nginx_port), *options,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            conf = gen[prefix] / "nginx-devpid.conf"
            nginx[prefix] = stack.enter_context(
                Nginx.start(tmp / f"nginx-{name}", conf, nginx_port)
            )
        yield Deployment(tuple(workers), nginx, gen)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess, redis: RedisServer
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("nginx")
    with deployment(tmp, shared_upstream.simple_url, redis.url) as d:
        yield d


def file_url(d: Deployment, prefix: str, project: str, filename: str) -> str:
    page = json.loads(http_get(f"{d.url(prefix)}/root/pypi/+simple/{project}/", Accept=JSON).body)
    return str(next(f["url"] for f in page["files"] if f["filename"] == filename))


def pip_with_config(
    pip_conf: Path, target: Path, *requirements: str
) -> subprocess.CompletedProcess[str]:
    """pip as a client configured only by ``pip.conf`` (no --index-url)."""
    command = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--target", str(target)]
    env = {**installer_env(), "PIP_CONFIG_FILE": str(pip_conf)}
    return subprocess.run(
        [*command, *requirements], env=env, capture_output=True, text=True, timeout=300
    )


def uv_with_config(
    uv_toml: Path, target: Path, *requirements: str
) -> subprocess.CompletedProcess[str]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (pip install uv)")
    command = [uv, "pip", "install", "--no-cache", "--config-file", str(uv_toml)]
    command += ["--python", sys.executable, "--target", str(target), *requirements]
    return subprocess.run(command, env=installer_env(), capture_output=True, text=True, timeout=300)


def client_file(conf: Path, nginx: Nginx) -> Path:
    """A generated client file: it names 127.0.0.1, where nginx listens."""
    text = conf.read_text()
    assert f"http://127.0.0.1:{nginx.port}/" in text
    return conf


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_pip_and_uv_install_through_nginx_with_the_generated_client_files(
    demo: Deployment, tmp_path: Path, prefix: str
) -> None:
    pip_conf = client_file(demo.gen[prefix] / "pip.conf", demo.nginx[prefix])
    result = pip_with_config(pip_conf, tmp_path / "pip", *DEMO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pip" / "devpid_demo_app" / "__init__.py").is_file()
    assert (tmp_path / "pip" / "devpid_demo_lib" / "__init__.py").read_text() == (
        'VERSION = "2.0"\n'
    )
    assert (tmp_path / "pip" / "devpid_demo_sdist" / "__init__.py").is_file()
    uv_toml = client_file(demo.gen[prefix] / "uv.toml", demo.nginx[prefix])
    result = uv_with_config(uv_toml, tmp_path / "uv", *DEMO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "uv" / "devpid_demo_app" / "__init__.py").is_file()
    # Both workers answered some of it: nginx balances them.
    assert all(w.log_text().count('"GET /root/pypi/') > 0 for w in demo.workers)


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_links_and_redirects_carry_the_outside_url(demo: Deployment, prefix: str) -> None:
    base = demo.url(prefix)
    page = http_get(f"{base}/root/pypi/+simple/devpid-demo-lib/")
    assert page.status == 200
    assert f'href="{base}/root/pypi/+f/'.encode() in page.body
    document = json.loads(http_get(f"{base}/root/pypi/+simple/devpid-demo-lib/", Accept=JSON).body)
    assert all(f["url"].startswith(f"{base}/root/pypi/+f/") for f in document["files"])
    listing = http_get(f"{base}/root/pypi/+simple/")
    assert f'href="{base}/root/pypi/+simple/devpid-demo-app/"'.encode() in listing.body
    redirect = http_get(f"{base}/root/pypi/+simple/devpid-demo-lib", follow_redirects=False)
    assert redirect.status == 301
    assert redirect.headers["location"] == f"{base}/root/pypi/+simple/devpid-demo-lib/"
    # Another host name the client used is the one in the links.
    other = http_get(f"{base}/root/pypi/+simple/", Host=f"localhost:{demo.nginx[prefix].port}")
    assert f'href="http://localhost:{demo.nginx[prefix].port}{prefix}/root/'.encode() in other.body


@pytest.mark.parametrize(
    ("prefix", "project", "filename"),
    [
        ("", "devpid-demo-lib", "devpid_demo_lib-1.0-py3-none-any.whl"),
        ("/pypi", "devpid-demo-lib", "devpid_demo_lib-2.0.tar.gz"),
    ],
    ids=["root", "sub-path"],
)
def test_a_cached_file_is_served_by_nginx_without_reaching_devpid(
    demo: Deployment, demo_repository: Repository, prefix: str, project: str, filename: str
) -> None:
    url = file_url(demo, prefix, project, filename)
    path = url.removeprefix(demo.url(prefix))
    assert demo.access_count(path) == 0
    expected = demo_repository.sha256(filename)
    # A miss: nginx finds no file and passes the request to a worker, which streams it.
    first = http_get(url)
    assert first.status == 200
    assert hashlib.sha256(first.body).hexdigest() == expected
    h3, h13 = path.split("/")[-3:-1]
    assert first.headers["etag"] == f'"{h3}{h13}"'  # devpid's
    assert wait_until(lambda: demo.access_count(path) == 1)
    assert wait_until(lambda: (demo.serverdir / "+files" / path.lstrip("/")).is_file())
    # A hit: nginx reads the file from the serverdir; no worker hears of it.
    for method in ("GET", "HEAD"):
        again = http_get(url, method=method)
        assert again.status == 200
        assert again.headers["content-type"] == "application/octet-stream"
        assert again.headers["content-length"] == str(len(first.body))
        assert again.headers["cache-control"] == "max-age=31536000, immutable"
        assert again.headers["etag"] != first.headers["etag"]  # nginx's
    assert hashlib.sha256(http_get(url).body).hexdigest() == expected
    ranged = http_get(url, Range="bytes=10-19")
    assert ranged.status == 206 and ranged.body == first.body[10:20]
    demo.barrier()
    assert demo.access_count(path) == 1
    assert f'"GET {prefix}{path} HTTP/1.1" 200' in demo.nginx[prefix].access_log()


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_a_download_in_progress_is_never_served(demo: Deployment, prefix: str) -> None:
    url = file_url(demo, prefix, "devpid-demo-app", "devpid_demo_app-1.0-py3-none-any.whl")
    path = url.removeprefix(demo.url(prefix))
    directory = demo.serverdir / "+files" / path.lstrip("/").rpartition("/")[0]
    directory.mkdir(parents=True, exist_ok=True)
    in_progress = directory / "devpid_demo_app-1.0-py3-none-any.whl.4242-abcdef.devpid-partial"
    in_progress.write_bytes(b"half a wheel")
    try:
        names = (in_progress.name, in_progress.name.replace(".devpid", "%2Edevpid"))
        for name in names:
            response = http_get(f"{url.rpartition('/')[0]}/{name}")
            assert response.status == 404
            assert b"half a wheel" not in response.body
        demo.barrier()
        directory_path = path.rpartition("/")[0]
        assert demo.access_count(f"{directory_path}/{in_progress.name}") == 0
        assert demo.access_count(f"{directory_path}/{names[1]}") == 0
    finally:
        in_progress.unlink()


def test_nginx_checks_and_reloads_the_generated_file(demo: Deployment) -> None:
    nginx = demo.nginx["/pypi"]
    check = nginx.run("-t")
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr
    reload = nginx.run("-s", "reload")
    assert reload.returncode == 0, reload.stderr
    assert wait_until(lambda: "reconfiguring" in nginx.errors())
    assert http_get(f"{demo.url('/pypi')}/root/pypi/+simple/devpid-demo-app/").status == 200


@needs_corpus
def test_pip_installs_flask_and_requests_through_nginx(tmp_path: Path, redis: RedisServer) -> None:
    # A database of their own in the module's Redis: the demo workers use database 0.
    redis_url = redis.url.rpartition("/")[0] + "/1"
    with (
        UpstreamProcess.start(CORPUS) as upstream,
        deployment(tmp_path, upstream.simple_url, redis_url) as d,
    ):
        result = pip_with_config(d.gen["/pypi"] / "pip.conf", tmp_path / "pip", "flask", "requests")
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "pip" / "flask" / "__init__.py").is_file()
        assert (tmp_path / "pip" / "requests" / "__init__.py").is_file()
        gets = upstream.stats()["gets"]
        assert all(count == 1 for path, count in gets.items() if path.startswith("/files/"))


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_no_directory_is_listed_through_nginx_or_by_devpid(demo: Deployment, prefix: str) -> None:
    """Every directory of the cached file's path, and the serverdir's own: never a listing."""
    url = file_url(demo, prefix, "devpid-demo-app", "devpid_demo_app-1.0-py3-none-any.whl")
    assert http_get(url).status == 200  # cached now: its directories exist
    path = url.removeprefix(demo.url(prefix))
    parts = path.strip("/").split("/")
    directories = ["/" + "/".join(parts[:n]) + "/" for n in range(1, len(parts))]
    directories += ["/+files/", "/+pages/", "/+files/root/pypi/+f/", "/state.sqlite"]
    bases = [demo.url(prefix), demo.workers[0].url]
    for base in bases:
        for directory in directories:
            response = http_get(base + directory)
            # /root/ and /root/pypi/ are devpi's user and index documents (JSON), the
            # rest is not found: nothing lists what a directory holds.
            assert response.status < 500, (base, directory, response.status)
            if response.status == 200:
                assert directory in ("/root/", "/root/pypi/"), (base, directory)
                assert response.headers["content-type"] == "application/json"
            body = response.body.lower()
            assert b"index of" not in body and b".whl" not in body, (base, directory)
            assert b"traceback" not in body
