"""A real nginx from ``devpid gen-config --require-auth`` in front of a real
``twistd devpid --require-auth``: nginx asks devpid's ``/+authcheck`` before every
request, and still serves cached files from the serverdir itself.

An anonymous request for a cached file gets nginx's 401 (with devpid's Basic
challenge), never the file; an authorised one gets the file, byte for byte, from
nginx (devpid hears only the authcheck); pip installs through nginx with credentials
in its index URL; the health check stays open. At the root and under a path prefix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import attrs
import pytest

from tests.conftest import pip_install
from tests.fixtures.deploy import gen_config
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository
from tests.fixtures.lockdown import ALICE_PASSWORD, People, call, lock_down
from tests.fixtures.nginx import INSTALL_HINT, Nginx, nginx_path
from tests.fixtures.ports import free_consecutive_ports, wait_until
from tests.fixtures.upstream import UpstreamProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_path() is None, reason=INSTALL_HINT),
]

JSON = "application/vnd.pypi.simple.v1+json"
PREFIXES = ["", "/pypi"]
FILES = {
    "": ("devpid-demo-lib", "devpid_demo_lib-1.0-py3-none-any.whl"),
    "/pypi": ("devpid-demo-lib", "devpid_demo_lib-2.0.tar.gz"),
}


@attrs.frozen
class Locked:
    devpid: DevpidProcess
    people: People
    nginx: dict[str, Nginx]  # by path prefix
    gen: dict[str, Path]

    def url(self, prefix: str) -> str:
        return self.nginx[prefix].url + prefix

    def heard(self, text: str) -> int:
        """How many access lines devpid logged that contain ``text``."""
        return self.devpid.log_text().count(text)

    def barrier(self) -> None:
        """Wait until devpid logged a request made now: earlier lines are all in."""
        marker = f"/+status?check=1&barrier={len(self.devpid.log_text())}"
        assert self.devpid.get(marker).status == 200
        assert wait_until(partial(_logged, self.devpid, f'"GET {marker}"'))


def _logged(devpid: DevpidProcess, text: str) -> bool:
    return text in devpid.log_text()


@pytest.fixture(scope="module")
def locked(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[Locked]:
    tmp = tmp_path_factory.mktemp("lockdown-nginx")
    port = free_consecutive_ports(1)
    serverdir = tmp / "serverdir"
    with ExitStack() as stack:
        devpid = stack.enter_context(
            DevpidProcess.start(
                serverdir,
                shared_upstream.simple_url,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--require-auth",
            )
        )
        people = lock_down(devpid.url)
        nginx, gen = {}, {}
        for prefix in PREFIXES:
            name = prefix.strip("/") or "root"
            gen[prefix] = tmp / f"gen-{name}"
            nginx_port = free_consecutive_ports(1)
            options = ["--path-prefix", prefix] if prefix else []
            result = gen_config(
                "--out", gen[prefix], "--serverdir", serverdir, "--port", str(port),
                "--workers", "1", "--upstream", shared_upstream.simple_url,
                "--nginx-address", "127.0.0.1", "--nginx-port", str(nginx_port),
                "--require-auth", *options,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "--require-auth" in (gen[prefix] / "supervisord.conf").read_text()
            conf = gen[prefix] / "nginx-devpid.conf"
            nginx[prefix] = stack.enter_context(
                Nginx.start(tmp / f"nginx-{name}", conf, nginx_port)
            )
        yield Locked(devpid, people, nginx, gen)


def cached_file_url(locked: Locked, prefix: str) -> tuple[str, str]:
    """The file's URL through nginx (cached by devpid first) and its path."""
    project, filename = FILES[prefix]
    base = locked.url(prefix)
    page = call(
        f"{base}/root/pypi/+simple/{project}/", Accept=JSON, Authorization=locked.people.alice
    )
    assert page.status == 200, page
    url = next(f["url"] for f in page.json()["files"] if f["filename"] == filename)
    url = str(url).partition("#")[0]
    path = url.removeprefix(base)
    fetched = locked.devpid.get(path, Authorization=locked.people.alice)
    assert fetched.status == 200
    assert wait_until(lambda: (locked.devpid.serverdir / "+files" / path.lstrip("/")).is_file())
    return url, path


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_nginx_serves_a_cached_file_only_to_who_may_read_it(
    locked: Locked, demo_repository: Repository, prefix: str
) -> None:
    url, path = cached_file_url(locked, prefix)
    locked.barrier()
    served_before = locked.heard(f'"GET {path}"')
    checks_before = locked.heard('"GET /+authcheck"')
    anonymous = call(url)
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="pypi"'
    assert hashlib.sha256(anonymous.body).hexdigest() != demo_repository.sha256(FILES[prefix][1])
    wrong = call(url, Authorization=locked.people.alice.replace("Basic ", "Basic x"))
    assert wrong.status == 401
    devpi_client = call(url, User_Agent="devpi-client/7.3.0 (py3.11; linux)")
    assert devpi_client.status == 403
    for credentials in (locked.people.alice, locked.people.root):
        answer = call(url, Authorization=credentials)
        assert answer.status == 200
        assert hashlib.sha256(answer.body).hexdigest() == demo_repository.sha256(FILES[prefix][1])
        assert answer.headers["cache-control"] == "max-age=31536000, immutable"  # nginx's
    head = call(url, "HEAD", Authorization=locked.people.alice)
    assert head.status == 200 and head.body == b""
    locked.barrier()
    # nginx served the file; devpid only answered its questions
    assert locked.heard(f'"GET {path}"') == served_before
    assert locked.heard('"GET /+authcheck"') >= checks_before + 5
    assert f'"GET {prefix}{path} HTTP/1.1" 401' in locked.nginx[prefix].access_log()
    assert f'"GET {prefix}{path} HTTP/1.1" 200' in locked.nginx[prefix].access_log()


@pytest.mark.parametrize("prefix", PREFIXES, ids=["root", "sub-path"])
def test_pages_and_the_health_check_through_nginx(locked: Locked, prefix: str) -> None:
    base = locked.url(prefix)
    assert call(f"{base}/root/pypi/+simple/").status == 401
    assert call(f"{base}/root/pypi/+simple/", Authorization=locked.people.alice).status == 200
    health = call(f"{base}/+status?check=1")
    assert health.status == 200 and health.json() == {"healthy": True}
    assert call(f"{base}/+api", Accept="application/json").status == 200
    # nginx's own question is internal: no client asks it
    assert (
        call(f"{locked.nginx[prefix].url}/+devpid-authcheck", X_Original_URI="/+api").status == 404
    )
    login = call(
        f"{base}/+login",
        "POST",
        json.dumps({"user": "alice", "password": ALICE_PASSWORD}).encode(),
        Accept="application/json",
        Content_Type="application/json",
    )
    assert login.status == 200, login


def test_pip_installs_through_nginx_with_credentials(locked: Locked, tmp_path: Path) -> None:
    through_nginx = attrs.evolve(locked.people, url=locked.url(""))
    index_url = through_nginx.index_url("alice", ALICE_PASSWORD)
    done = pip_install(index_url, tmp_path / "pip", "devpid-demo-app")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "pip" / "devpid_demo_app" / "__init__.py").is_file()
    index_url = through_nginx.index_url("__token__", locked.people.token)
    done = pip_install(index_url, tmp_path / "token", "devpid-demo-sdist")
    assert done.returncode == 0, done.stdout + done.stderr
    refused = pip_install(
        f"{locked.url('')}/root/pypi/+simple/", tmp_path / "no", "devpid-demo-app"
    )
    assert refused.returncode != 0
    assert "401" in refused.stdout + refused.stderr
