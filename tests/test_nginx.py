"""A real nginx, from the ``nginx-devpid.conf`` that ``devpid gen-config`` writes, in front
of two real devpid workers sharing a serverdir and a real Redis.

nginx balances the workers, tells them the outside URL (also under a sub-path),
serves cached files from the serverdir itself, never serves a download in
progress, and streams cache misses through devpid; real pip and uv install
through it with the generated pip.conf and uv.toml. Uploads to a stage stream
through nginx to devpid (never spooled to nginx's disk) within the same size
limit; nginx serves the uploaded file from disk, and passes DELETE, tox
results and the 410 of a deleted file to devpid.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest

from tests.conftest import CORPUS, installer_env, needs_corpus
from tests.fixtures.deploy import gen_config
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, Repository, write_wheel
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


PASSWORD = "uploaderpw"  # a throwaway password of a throwaway server
#: nginx says this (at warn) each time it spools a request body to its disk.
SPOOLED = "a client request body is buffered to a temporary file"


# -- uploads: helpers, also for tests/test_upload_cluster.py ------------------------------


@attrs.frozen
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case
    body: bytes


def basic_auth(user: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def json_call(base: str, method: str, path: str, body: object, **headers: str) -> Answer:
    """devpi's JSON API, as devpi-client calls it."""
    return request(
        base + path,
        method,
        json.dumps(body).encode(),
        Accept="application/json",
        Content_Type="application/json",
        **headers,
    )


def request(url: str, method: str = "GET", body: bytes | None = None, **headers: str) -> Answer:
    """One request on its own connection, any answer returned (not raised), no redirects."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        connection.request(method, target, body=body, headers=sent)
        answer = connection.getresponse()
        headers = {name.lower(): value for name, value in answer.getheaders()}
        return Answer(answer.status, answer.reason, headers, answer.read())
    finally:
        connection.close()


def create_stage(base: str, user: str, index: str = "dev", bases: str = "root/pypi") -> None:
    """A user (password ``PASSWORD``) and a stage index of theirs."""
    made = json_call(base, "PUT", f"/{user}", {"password": PASSWORD})
    assert made.status == 201, made
    auth = basic_auth(user)
    made = json_call(base, "PUT", f"/{user}/{index}", {"bases": bases}, Authorization=auth)
    assert made.status == 200, made


def build_wheel(directory: Path, project: str, version: str, blob_size: int = 0) -> Path:
    """A real py3-none-any wheel; ``blob_size`` incompressible bytes make it that big."""
    dist = Dist(project, version, "wheel")
    path = directory / dist.filename
    files = {f"{dist.module}/__init__.py": dist.module_source()}
    blob = (f"{dist.module}/blob.bin", blob_size, 42) if blob_size else None
    write_wheel(str(path), f"{dist.stem}.dist-info", dist.metadata(), files, blob)
    return path


def upload(
    url: str, wheel: Path, user: str, project: str, version: str, chunked: bool = False
) -> Answer:
    """twine's upload form, its file streamed from disk with http.client (never in memory);
    ``chunked``: without a Content-Length, as ``Transfer-Encoding: chunked``."""
    boundary = "devpid-test-boundary-" + hashlib.sha256(wheel.name.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": project,
        "version": version,
        "filetype": "bdist_wheel",
        "pyversion": "py3",
        "metadata_version": "2.1",
        "sha256_digest": digest.hexdigest(),
    }
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{wheel.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        else:
            size = len(head) + wheel.stat().st_size + len(tail)
            connection.putheader("Content-Length", str(size))
        connection.putheader("Authorization", basic_auth(user))
        connection.endheaders()

        def send(data: bytes) -> None:
            connection.send(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)

        try:
            send(head)
            with wheel.open("rb") as f:
                while chunk := f.read(1 << 16):
                    send(chunk)
            send(tail)
            if chunked:
                connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer says why
        answer = connection.getresponse()
        headers = {name.lower(): value for name, value in answer.getheaders()}
        return Answer(answer.status, answer.reason, headers, answer.read())
    finally:
        connection.close()


def release_file_url(base: str, index: str, project: str, filename: str) -> str:
    """The file's URL on the index's simple page (PEP 691), as pip finds it."""
    page = http_get(f"{base}/{index}/+simple/{project}/", Accept=JSON)
    assert page.status == 200, page
    urls = [f["url"] for f in json.loads(page.body)["files"] if f["filename"] == filename]
    assert urls, (filename, page.body)
    return str(urls[0]).partition("#")[0]


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


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_an_upload_streams_through_nginx_which_serves_it_and_passes_the_rest_to_devpid(
    demo: Deployment, tmp_path: Path, prefix: str
) -> None:
    base, nginx = demo.url(prefix), demo.nginx[prefix]
    user = f"uploader{prefix.strip('/')}"
    project = f"devpid-uploaded{prefix.strip('/')}"
    create_stage(base, user)
    # Bigger than nginx's client_body_buffer_size (16k) many times over.
    wheel = build_wheel(tmp_path, project, "1.0", blob_size=3 << 20)
    error_log = nginx.prefix / "error.log"
    before = error_log.stat().st_size
    uploaded = upload(f"{base}/{user}/dev/", wheel, user, project, "1.0")
    assert uploaded.status == 200, uploaded
    # Without a length too: nginx passes the chunks on (HTTP/1.1 to devpid).
    other = build_wheel(tmp_path, project, "1.1", blob_size=1 << 20)
    assert upload(f"{base}/{user}/dev/", other, user, project, "1.1", chunked=True).status == 200
    # Streamed to devpid as they came: nginx wrote none of it to its own disk.
    assert SPOOLED not in error_log.read_text(errors="replace")[before:]
    assert list((nginx.prefix / "temp" / "client_body").iterdir()) == []
    assert release_file_url(base, f"{user}/dev", project, other.name)

    url = release_file_url(base, f"{user}/dev", project, wheel.name)
    assert url.startswith(f"{base}/{user}/dev/+f/")
    path = url.removeprefix(base)
    expected = hashlib.sha256(wheel.read_bytes()).hexdigest()
    # Served by nginx from the serverdir: no worker hears of it (the workers' log, below;
    # nginx names itself in Server for what it proxies too, so that header cannot tell).
    for method in ("GET", "HEAD"):
        served = request(url, method)
        assert served.status == 200, served
        assert served.headers["server"].startswith("nginx")
        assert served.headers["content-type"] == "application/octet-stream"
        assert served.headers["content-length"] == str(wheel.stat().st_size)
        assert served.headers["cache-control"] == "max-age=31536000, immutable"
        assert not [name for name in served.headers if name.startswith("x-devpi")]
        if method == "GET":
            assert hashlib.sha256(served.body).hexdigest() == expected
    demo.barrier()
    assert demo.access_count(path) == 0
    # devpi's JSON about the file is devpid's.
    meta = request(url, Accept="application/json")
    assert meta.status == 200, meta
    assert json.loads(meta.body)["type"] == "releasefilemeta"
    assert json.loads(meta.body)["result"]["hashes"]["sha256"] == expected

    # A tox result posted to the file reaches devpid (not nginx's 405).
    toxresult = json.dumps({"reportversion": "1", "testenvs": {}}).encode()
    posted = request(
        url, "POST", toxresult, Content_Type="application/json", Authorization=basic_auth(user)
    )
    assert posted.status == 200, posted
    assert json.loads(posted.body)["type"] == "toxresultpath"
    assert request(f"{url}.metadata").status == 200  # PEP 658, from disk too
    toxresult_url = f"{base}/{json.loads(posted.body)['result'].partition('#')[0]}"
    assert request(toxresult_url).status == 200
    # nginx logs a request once it answered: the line may come a moment later.
    assert wait_until(lambda: f'"POST {prefix}{path} HTTP/1.1" 200' in nginx.access_log())

    # DELETE reaches devpid, which removes the file from disk: nginx then asks devpid,
    # which answers 410 (deleted), not 404.
    deleted = request(url, "DELETE", Accept="application/json", Authorization=basic_auth(user))
    assert deleted.status == 200, deleted
    assert "x-devpi-serial" in deleted.headers
    assert not (demo.serverdir / "+files" / path.lstrip("/")).exists()
    for method in ("GET", "HEAD"):
        gone = request(url, method)
        assert gone.status == 410, gone
    # Nor does nginx find what came with the file: its metadata and its tox result.
    for companion in (f"{url}.metadata", toxresult_url):
        assert request(companion).status in (404, 410), companion
    demo.barrier()
    assert demo.access_count(path) == 2  # the JSON one, and the GET after the delete
    assert wait_until(lambda: f'"DELETE {prefix}{path} HTTP/1.1" 200' in nginx.access_log())


def test_nginx_refuses_an_upload_over_the_generated_limit(demo: Deployment, tmp_path: Path) -> None:
    """gen-config's --max-upload-size is nginx's limit too: 413 before devpid hears of it."""
    port = free_consecutive_ports(1)
    first = int(urlsplit(demo.workers[0].url).port or 0)
    result = gen_config(
        "--out", tmp_path / "gen", "--serverdir", demo.serverdir, "--port", str(first),
        "--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--nginx-address", "127.0.0.1",
        "--nginx-port", str(port), "--max-upload-size", "64K",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "gen" / "nginx-devpid.conf"
    assert "client_max_body_size 64k;" in conf.read_text()
    with Nginx.start(tmp_path / "nginx", conf, port) as nginx:
        create_stage(nginx.url, "limited")
        small = build_wheel(tmp_path, "devpid-limited", "1.0", blob_size=16 << 10)
        taken = upload(f"{nginx.url}/limited/dev/", small, "limited", "devpid-limited", "1.0")
        assert taken.status == 200, taken
        big = build_wheel(tmp_path, "devpid-limited", "2.0", blob_size=80 << 10)
        refused = upload(f"{nginx.url}/limited/dev/", big, "limited", "devpid-limited", "2.0")
        assert refused.status == 413, refused
        assert refused.headers["server"].startswith("nginx")
        demo.barrier()
        posts = sum(w.log_text().count('"POST /limited/dev/') for w in demo.workers)
        assert posts == 1  # the small one
