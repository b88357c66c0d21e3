"""An upload to one worker is found at once through nginx pinned to another worker.

Two real ``twistd -n devpid`` workers share a serverdir (with a real Redis,
and without one); a real nginx from ``devpid gen-config`` has only worker B
as its upstream. Fifty times in a row a new version goes to worker A
directly, and the very next request, through nginx to B, must list it and
fetch it: B caches the merged page of the stage (and its project list) in its
own memory, and A's commit must invalidate that. pip downloads a few of the
versions; raw HTTP the rest, to keep the file quick.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest

from tests.conftest import installer_env
from tests.fixtures.deploy import gen_config
from tests.fixtures.devpid_process import DevpidProcess, devpid_env
from tests.fixtures.nginx import INSTALL_HINT, Nginx, nginx_path
from tests.fixtures.ports import free_consecutive_ports
from tests.fixtures.redis_server import INSTALL_HINT as REDIS_HINT
from tests.fixtures.redis_server import RedisServer, redis_server_path
from tests.fixtures.upstream import UpstreamProcess
from tests.test_nginx import (
    JSON,
    PASSWORD,
    basic_auth,
    build_wheel,
    create_stage,
    request,
    upload,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_path() is None, reason=INSTALL_HINT),
]

ROUNDS = 50
#: The rounds whose version goes up with twine and comes down with pip; raw HTTP otherwise.
PIP_ROUNDS = frozenset({0, ROUNDS // 2, ROUNDS - 1})
USER = "alice"
INDEX = f"{USER}/dev"
PROJECT = "devpid-cluster-pkg"
MODULE = PROJECT.replace("-", "_")


@attrs.frozen
class Cluster:
    writer: DevpidProcess  # A: uploads go to it directly
    reader: DevpidProcess  # B: nginx's only upstream
    nginx: Nginx

    def log_count(self, worker: DevpidProcess, text: str) -> int:
        return worker.log_text().count(text)


@pytest.fixture(params=["redis", "no-redis"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, shared_upstream: UpstreamProcess
) -> Iterator[Cluster]:
    with ExitStack() as stack:
        options = ["--changelog-interval", "0"]
        if request.param == "redis":
            if redis_server_path() is None:
                pytest.skip(REDIS_HINT)
            redis = RedisServer.start(tmp_path)
            stack.callback(redis.stop)
            options += ["--redis", redis.url]
        serverdir = tmp_path / "serverdir"
        upstream = shared_upstream.simple_url
        writer = stack.enter_context(DevpidProcess.start(serverdir, upstream, *options, name="a"))
        reader = stack.enter_context(DevpidProcess.start(serverdir, upstream, *options, name="b"))
        port = free_consecutive_ports(1)
        # One worker, B: nginx sends every request it does not answer itself to B.
        result = gen_config(
            "--out", tmp_path / "gen", "--serverdir", serverdir,
            "--port", str(urlsplit(reader.url).port), "--workers", "1",
            "--upstream", upstream, "--nginx-address", "127.0.0.1", "--nginx-port", str(port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        conf = tmp_path / "gen" / "nginx-devpid.conf"
        nginx = stack.enter_context(Nginx.start(tmp_path / "nginx", conf, port))
        yield Cluster(writer, reader, nginx)


def twine_upload(url: str, wheel: Path, version: str) -> None:
    """``twine upload`` as a user runs it (raw HTTP where twine is not installed)."""
    if importlib.util.find_spec("twine") is None:
        uploaded = upload(url, wheel, USER, PROJECT, version)
        assert uploaded.status == 200, (version, uploaded)
        return
    command = [sys.executable, "-m", "twine", "upload", "--non-interactive"]
    command += ["--disable-progress-bar", "--repository-url", url, "-u", USER, "-p", PASSWORD]
    # No ~/.pypirc or TWINE_* of this host's.
    env = {k: v for k, v in devpid_env().items() if not k.startswith("TWINE_")}
    env["HOME"] = str(wheel.parent)
    result = subprocess.run(
        [*command, str(wheel)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def pip_download(index_url: str, version: str, into: Path) -> Path:
    """``pip download --no-deps`` of exactly that version: the file pip fetched."""
    command = [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir"]
    command += ["--disable-pip-version-check", "--no-deps", "--index-url", index_url]
    command += ["--trusted-host", "127.0.0.1", "--dest", str(into), f"{PROJECT}=={version}"]
    result = subprocess.run(
        command, env=installer_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = list(into.glob(f"{MODULE}-{version}-*.whl"))
    assert len(found) == 1, (found, result.stdout)
    return found[0]


def raw_download(base: str, version: str, filename: str, as_json: bool) -> bytes:
    """The simple page (PEP 691 JSON or HTML, as pip asks), then the file it links."""
    page = request(f"{base}/{INDEX}/+simple/{PROJECT}/", Accept=JSON if as_json else "text/html")
    assert page.status == 200, page
    if as_json:
        urls = [f["url"] for f in json.loads(page.body)["files"] if f["filename"] == filename]
    else:
        urls = [
            href
            for href in re.findall(r'href="([^"]+)"', page.body.decode())
            if href.partition("#")[0].endswith(f"/{filename}")
        ]
    assert len(urls) == 1, (version, page.body.decode()[-2000:])
    url = urls[0].partition("#")[0]
    fetched = request(url)
    assert fetched.status == 200, (version, fetched)
    # devpi's JSON about the file is B's to answer (nginx passes it on): B knows it too.
    meta = request(url, Accept="application/json")
    assert meta.status == 200, (version, meta)
    assert json.loads(meta.body)["result"]["version"] == version
    return fetched.body


def test_an_upload_to_one_worker_is_found_at_once_through_nginx_on_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    writer, base = cluster.writer.url, cluster.nginx.url
    create_stage(writer, USER)
    # B caches the stage's project list and page before the first upload.
    listing = request(f"{base}/{INDEX}/+simple/")
    assert listing.status == 200 and PROJECT.encode() not in listing.body
    assert request(f"{base}/{INDEX}/+simple/{PROJECT}/").status == 404
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for n in range(ROUNDS):
        version = f"1.{n}"
        wheel = build_wheel(wheels, PROJECT, version)
        expected = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if n in PIP_ROUNDS:
            twine_upload(f"{writer}/{INDEX}/", wheel, version)
            got = pip_download(f"{base}/{INDEX}/+simple/", version, tmp_path / f"pip-{n}")
            body = got.read_bytes()
        else:
            uploaded = upload(f"{writer}/{INDEX}/", wheel, USER, PROJECT, version)
            assert uploaded.status == 200, (version, uploaded)
            body = raw_download(base, version, wheel.name, as_json=n % 2 == 0)
            # devpi's project JSON, from B too.
            project = request(f"{base}/{INDEX}/{PROJECT}", Accept="application/json")
            assert project.status == 200 and version in json.loads(project.body)["result"]
        assert hashlib.sha256(body).hexdigest() == expected, version
        if n == 0:
            listing = request(f"{base}/{INDEX}/+simple/")
            assert listing.status == 200 and f"/{PROJECT}/".encode() in listing.body
    # The pages came from B only (A served the uploads), and A's project JSON agrees.
    page_path = f"/{INDEX}/+simple/{PROJECT}/"
    assert cluster.log_count(cluster.reader, f'"GET {page_path}') >= ROUNDS
    assert cluster.log_count(cluster.writer, f'"GET {page_path}') == 0
    project = request(f"{writer}/{INDEX}/{PROJECT}", Accept="application/json")
    versions = json.loads(project.body)["result"]
    assert set(versions) == {f"1.{n}" for n in range(ROUNDS)}
    # A deletion on A is seen the same way: B's page drops the version at once, and
    # its file, gone from disk, is devpid's 410 through nginx.
    last = f"1.{ROUNDS - 1}"
    page = request(f"{base}/{INDEX}/+simple/{PROJECT}/", Accept=JSON)
    url = next(f["url"] for f in json.loads(page.body)["files"] if f"-{last}-" in f["filename"])
    deleted = request(
        f"{writer}/{INDEX}/{PROJECT}/{last}", "DELETE", Authorization=basic_auth(USER)
    )
    assert deleted.status == 200, deleted
    page = request(f"{base}/{INDEX}/+simple/{PROJECT}/", Accept=JSON)
    filenames = [f["filename"] for f in json.loads(page.body)["files"]]
    assert len(filenames) == ROUNDS - 1 and not [f for f in filenames if f"-{last}-" in f]
    assert request(url.partition("#")[0]).status == 410
