"""Constrained indexes (devpi-constrained) on a real ``twistd -n devpid``.

A constrained index on top of a mirror of a local upstream, made and changed
with the real devpi-client, installed from with the real pip and uv: its
pages, project list, project JSON and web page show only what its
``constraints`` allow, a change shows on the next request, and it takes no
uploads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from packaging.requirements import Requirement

from tests.conftest import installer_env, pip_install, uv_install
from tests.fixtures.devpi_client import DevpiClient, client_venv
from tests.fixtures.devpid_process import DevpidProcess, Response, http_get
from tests.fixtures.distbuilder import Dist, _build_wheel, build_repository
from tests.fixtures.upstream import UpstreamProcess
from tests.test_private_api import Api

pytestmark = pytest.mark.integration

JSON_V1 = "application/vnd.pypi.simple.v1+json"
VETTED = (
    Dist("devpid-vetted", "1.0", "wheel"),
    Dist("devpid-vetted", "2.0", "wheel"),
    Dist("devpid-vetted", "2.0", "sdist"),
    Dist("devpid-vetted", "3.0rc1", "wheel"),
)
INDEX = "prod/vetted"


@attrs.frozen
class Setup:
    server: DevpidProcess
    devpi: DevpiClient
    base: Path

    def get(self, path: str, **headers: str) -> Response:
        return http_get(self.server.url + path, **headers)

    def configure(self, *changes: str) -> str:
        """``devpi index prod/vetted <changes>``; its output."""
        return self.devpi("index", INDEX, *changes).ok().out

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.get(f"/{INDEX}", accept="application/json").body)
        return result["result"]

    def files(self, project: str) -> list[str]:
        """The file names of ``project``'s PEP 691 page on the constrained index."""
        answer = self.get(f"/{INDEX}/+simple/{project}/", accept=JSON_V1)
        assert answer.status == 200, answer
        return sorted(f["filename"] for f in json.loads(answer.body)["files"])


@pytest.fixture(scope="module")
def vetted_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    repository = build_repository(tmp_path_factory.mktemp("vetted-upstream"), extra=VETTED)
    with UpstreamProcess.start(repository.root) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, vetted_upstream: UpstreamProcess
) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("constrained")
    with DevpidProcess.start(base / "serverdir", vetted_upstream.simple_url) as server:
        devpi = DevpiClient(client_venv(), base / "client")
        devpi("use", server.url).ok()
        devpi("login", "root", "--password", "").ok()
        devpi("user", "-c", "prod", "password=prodpw").ok()
        devpi("login", "prod", "--password", "prodpw").ok()
        yield Setup(server, devpi, base)


@pytest.fixture(scope="module")
def created(setup: Setup) -> Setup:
    out = setup.devpi("index", "-c", "vetted", "type=constrained", "bases=root/pypi").ok().out
    assert "type=constrained" in out and "constraints=" in out
    return setup


def test_created_like_devpi_constrained(created: Setup) -> None:
    config = created.config()
    assert config["type"] == "constrained"
    assert config["bases"] == ["root/pypi"]
    assert config["constraints"] == []
    assert config["acl_upload"] == ["prod"] and config["volatile"] is True
    # with no constraints, the bases show whole
    assert created.files("devpid-vetted") == sorted(d.filename for d in VETTED)


def test_constraint_lines_from_devpi_client(created: Setup) -> None:
    created.configure("constraints=")
    # one line with a comma inside: not split
    created.configure("constraints+=devpid-vetted<3,>1")
    assert created.config()["constraints"] == ["devpid-vetted<3,>1"]
    assert created.files("devpid-vetted") == [
        "devpid_vetted-2.0-py3-none-any.whl",
        "devpid_vetted-2.0.tar.gz",
    ]
    # constraints="$(cat constraints.txt)": comments and blank lines dropped, names normalised
    text = "# vetted by QA\nDevpid_Vetted <2\n\n  devpid-demo-lib>=2  # the fixed one\n"
    created.configure(f"constraints={text}")
    assert created.config()["constraints"] == ["devpid-vetted<2", "devpid-demo-lib>=2"]
    assert created.files("devpid-vetted") == ["devpid_vetted-1.0-py3-none-any.whl"]
    # -= finds a line however it is spelled
    created.configure("constraints-=devpid_vetted < 2")
    assert created.config()["constraints"] == ["devpid-demo-lib>=2"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("pip<8,,>4", "bad constraint 'pip<8,,>4'"),
        ("requests @ http://127.0.0.1/r.whl", "a URL can't constrain an index"),
        ("x<2; python_version<'3'", "environment markers"),
        ("~=1", "bad constraint '~=1'"),
    ],
)
def test_bad_lines_are_one_clear_line(created: Setup, line: str, reason: str) -> None:
    before = created.config()["constraints"]
    refused = created.devpi("index", INDEX, f"constraints+={line}")
    assert refused.returncode != 0
    assert reason in refused.out and "Traceback" not in refused.out
    # the server's own answer: a 400 with one line, and nothing changed
    api = Api(created.server)
    api.login("prod", "prodpw")
    answer = api.call("PATCH", f"/{INDEX}", {"constraints": f"devpid-vetted<2\n{line}"})
    assert answer.status == 400
    message = json.loads(answer.body)["message"]
    assert reason in message and "\n" not in message
    assert created.config()["constraints"] == before


def test_two_lines_for_one_project_refused(created: Setup) -> None:
    refused = created.devpi("index", INDEX, "constraints=devpid-vetted<2\ndevpid-vetted>1")
    assert refused.returncode != 0
    assert "constraint for 'devpid-vetted' given twice" in refused.out


def test_needs_a_base_and_plain_stages_take_no_constraints(created: Setup) -> None:
    refused = created.devpi("index", "-c", "nobase", "type=constrained")
    assert refused.returncode != 0 and "needs at least one base" in refused.out
    refused = created.devpi("index", "-c", "plain", "bases=root/pypi", "constraints=x<2")
    assert refused.returncode != 0 and "unexpected keyword arguments: constraints" in refused.out


def test_pages_json_and_versions_follow_the_constraints(created: Setup) -> None:
    created.configure("constraints=devpid-vetted>1")
    # a specifier allows the pre-releases it contains
    assert created.files("devpid-vetted") == [
        "devpid_vetted-2.0-py3-none-any.whl",
        "devpid_vetted-2.0.tar.gz",
        "devpid_vetted-3.0rc1-py3-none-any.whl",
    ]
    page = json.loads(created.get(f"/{INDEX}/+simple/devpid-vetted/", accept=JSON_V1).body)
    assert page["versions"] == ["2.0", "3.0rc1"]
    html = created.get(f"/{INDEX}/+simple/devpid-vetted/", accept="text/html").body.decode()
    assert "devpid_vetted-1.0" not in html and "devpid_vetted-2.0.tar.gz" in html
    assert "/root/pypi/+f/" in html  # the files are the mirror's
    versions = json.loads(created.get(f"/{INDEX}/devpid-vetted", accept="application/json").body)[
        "result"
    ]
    assert sorted(versions) == ["2.0", "3.0rc1"]
    gone = created.get(f"/{INDEX}/devpid-vetted/1.0", accept="application/json")
    assert gone.status == 404
    # a project without a line shows whole
    assert "devpid_demo_sdist-0.1.tar.gz" in created.files("devpid-demo-sdist")


def test_star_hides_every_other_project(created: Setup) -> None:
    created.configure("constraints=devpid-vetted<2\n*")
    assert created.config()["constraints"] == ["devpid-vetted<2", "*"]
    names = created.get(f"/{INDEX}/+simple/", accept="text/html").body.decode()
    assert "devpid-vetted" in names and "devpid-demo-lib" not in names
    listed = json.loads(created.get(f"/{INDEX}/+simple/", accept=JSON_V1).body)["projects"]
    assert [p["name"] for p in listed] == ["devpid-vetted"]
    hidden = created.get(f"/{INDEX}/+simple/devpid-demo-lib/", accept=JSON_V1)
    assert hidden.status == 404 and b"no project 'devpid-demo-lib'" in hidden.body
    hidden = created.get(f"/{INDEX}/devpid-demo-lib", accept="application/json")
    assert hidden.status == 404
    assert json.loads(hidden.body)["message"] == "no project 'devpid-demo-lib'"
    # the mirror itself still has it
    assert created.get("/root/pypi/+simple/devpid-demo-lib/").status == 200


def test_pip_and_uv_install_through_it(created: Setup, tmp_path: Path) -> None:
    created.configure("constraints=devpid-vetted<2\n*")
    url = f"{created.server.url}/{INDEX}/+simple/"
    done = pip_install(url, tmp_path / "pip", "devpid-vetted")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "pip" / "devpid_vetted-1.0.dist-info").is_dir()
    done = uv_install(url, tmp_path / "uv", "devpid-vetted")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "uv" / "devpid_vetted-1.0.dist-info").is_dir()
    refused = pip_install(url, tmp_path / "pip2", "devpid-vetted==2.0")
    assert refused.returncode != 0 and "No matching distribution" in refused.stderr
    refused = pip_install(url, tmp_path / "pip3", "devpid-demo-sdist")
    assert refused.returncode != 0 and "No matching distribution" in refused.stderr
    refused = uv_install(url, tmp_path / "uv2", "devpid-demo-sdist")
    assert refused.returncode != 0 and "devpid-demo-sdist" in refused.stderr


def test_a_change_shows_on_the_next_request(created: Setup) -> None:
    created.configure("constraints=devpid-vetted<2")
    assert created.files("devpid-vetted") == ["devpid_vetted-1.0-py3-none-any.whl"]
    created.configure("constraints=devpid-vetted==2.0")
    assert created.files("devpid-vetted") == [
        "devpid_vetted-2.0-py3-none-any.whl",
        "devpid_vetted-2.0.tar.gz",
    ]
    created.configure("constraints=")
    assert len(created.files("devpid-vetted")) == len(VETTED)


def test_read_only(created: Setup) -> None:
    wheel_dir = created.base / "upload"
    wheel_dir.mkdir(exist_ok=True)
    dist = Dist("prod-app", "1.0", "wheel")
    _build_wheel(dist, wheel_dir)
    twine = shutil.which("twine") or str(client_venv() / "bin" / "twine")
    env = installer_env()
    env.update(TWINE_NON_INTERACTIVE="1", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    done = subprocess.run(
        [
            *(twine, "upload", "--disable-progress-bar"),
            *("--repository-url", f"{created.server.url}/{INDEX}/", "-u", "prod", "-p", "prodpw"),
            str(wheel_dir / dist.filename),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "403" in out, out
    assert "constrained index: read-only" in out, out
    # a push to it is refused too, with the same one line
    created.devpi("index", "-c", "dev", "bases=root/pypi").ok()
    created.devpi("use", "prod/dev").ok()
    created.devpi("upload", str(wheel_dir / dist.filename)).ok()
    pushed = created.devpi("push", "prod-app==1.0", INDEX)
    assert pushed.returncode != 0 and "constrained index: read-only" in pushed.out


def test_web_page_shows_the_constraints_escaped(created: Setup) -> None:
    created.configure("constraints=devpid-vetted<2,>0.5\n*")
    page = created.get(f"/{INDEX}", accept="text/html").body.decode()
    assert '<section id="constraints">' in page
    assert "<code>devpid-vetted&lt;2,&gt;0.5</code>" in page
    assert "<code>*</code>" in page
    assert "devpid-vetted<2" not in page
    project = created.get(f"/{INDEX}/devpid-vetted", accept="text/html").body.decode()
    assert "devpid_vetted-1.0-py3-none-any.whl" in project
    assert "devpid_vetted-2.0" not in project and "3.0rc1" not in project
    assert created.get(f"/{INDEX}/devpid-demo-lib", accept="text/html").status == 404


def test_every_worker_sees_a_change_at_once(
    tmp_path: Path, vetted_upstream: UpstreamProcess
) -> None:
    """Two processes on one serverdir: each one's kept pages follow the other's changes."""
    serverdir = tmp_path / "serverdir"
    with (
        DevpidProcess.start(serverdir, vetted_upstream.simple_url, name="a") as first,
        DevpidProcess.start(serverdir, vetted_upstream.simple_url, name="b") as second,
    ):
        writer = Api(first)
        writer.login("root", "")
        made = writer.call("PUT", "/root/vetted", {"type": "constrained", "bases": "root/pypi"})
        assert made.status == 200, made.body
        specs = ["devpid-vetted<2", "devpid-vetted>=2", "devpid-vetted==3.0rc1", ""]
        for n, spec in enumerate(specs * 2):
            changed = writer.call("PATCH", "/root/vetted", [f"constraints={spec}"])
            assert changed.status == 200, changed.body
            for reader in (second, first)[n % 2 :] + (second, first)[: n % 2]:
                answer = http_get(
                    reader.url + "/root/vetted/+simple/devpid-vetted/", accept=JSON_V1
                )
                shown = {f["filename"] for f in json.loads(answer.body)["files"]}
                expected = {
                    d.filename
                    for d in VETTED
                    if not spec or Requirement(spec).specifier.contains(d.version, True)
                }
                assert shown == expected, (n, spec, reader.url)
