"""Real pip and uv install through a real ``twistd -n devpid``, then with the upstream gone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import CORPUS, needs_corpus, pip_install, uv_install
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration
DEMO = ("devpid-demo-app", "devpid-demo-sdist")


def assert_demo_installed(target: Path) -> None:
    assert (target / "devpid_demo_app" / "__init__.py").read_text() == 'VERSION = "1.0"\n'
    # lib 1.0 is yanked upstream; resolving >=1.0 must pick 2.0.
    assert (target / "devpid_demo_lib" / "__init__.py").read_text() == 'VERSION = "2.0"\n'
    assert (target / "devpid_demo_sdist" / "__init__.py").read_text() == 'VERSION = "0.1"\n'


def cached_files(serverdir: Path) -> dict[str, str]:
    found = {}
    for path in (serverdir / "+files").rglob("*"):
        if path.is_file():
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_pip_then_uv_then_offline(tmp_path: Path, demo_repository: Repository) -> None:
    serverdir = tmp_path / "serverdir"
    with UpstreamProcess.start(demo_repository.root) as upstream:
        with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
            result = pip_install(devpid.simple_url, tmp_path / "pip", *DEMO)
            assert result.returncode == 0, result.stdout + result.stderr
            assert_demo_installed(tmp_path / "pip")
            first = upstream.stats()["gets"]
            # Every file came from the upstream exactly once ...
            for filename in (
                "devpid_demo_lib-2.0-py3-none-any.whl",
                "devpid_demo_sdist-0.1.tar.gz",
            ):
                assert first[f"/files/{filename}"] == 1
            # ... and was cached with the bytes the index promised.
            cached = cached_files(serverdir)
            for filename, digest in cached.items():
                if not filename.endswith(".metadata"):
                    assert digest == demo_repository.sha256(filename), filename

            upstream.reset_stats()
            result = uv_install(devpid.simple_url, tmp_path / "uv", *DEMO)
            assert result.returncode == 0, result.stdout + result.stderr
            assert_demo_installed(tmp_path / "uv")
            # uv needed nothing from the upstream's files that pip had fetched.
            files_again = {p for p in upstream.stats()["gets"] if p.startswith("/files/")}
            assert files_again == set(), files_again
        # The upstream goes away: a restarted devpid still installs from its cache.
        upstream.stop()
        with DevpidProcess.start(serverdir, upstream.simple_url, "--cache-expiry", "0") as devpid:
            result = pip_install(devpid.simple_url, tmp_path / "offline-pip", *DEMO)
            assert result.returncode == 0, result.stdout + result.stderr
            assert_demo_installed(tmp_path / "offline-pip")
            result = uv_install(devpid.simple_url, tmp_path / "offline-uv", *DEMO)
            assert result.returncode == 0, result.stdout + result.stderr
            assert_demo_installed(tmp_path / "offline-uv")
            status = devpid.status()
            assert status["upstream"]["last_error"]
            assert status["cache"]["files"] >= 4


def test_offline_flag_serves_only_cached(tmp_path: Path, demo_repository: Repository) -> None:
    serverdir = tmp_path / "serverdir"
    with UpstreamProcess.start(demo_repository.root) as upstream:
        with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
            result = pip_install(devpid.simple_url, tmp_path / "pip", "devpid-demo-app")
            assert result.returncode == 0, result.stdout + result.stderr
        upstream.reset_stats()
        with DevpidProcess.start(serverdir, upstream.simple_url, "--offline") as devpid:
            page = json.loads(
                devpid.get(
                    "/root/pypi/+simple/devpid-demo-lib/",
                    Accept="application/vnd.pypi.simple.v1+json",
                ).body
            )
            # Only lib 2.0's wheel was fetched; the sdist and the yanked 1.0 are left out.
            assert [f["filename"] for f in page["files"]] == [
                "devpid_demo_lib-2.0-py3-none-any.whl"
            ]
            listing = devpid.get(
                "/root/pypi/+simple/", Accept="application/vnd.pypi.simple.v1+json"
            )
            names = [p["name"] for p in json.loads(listing.body)["projects"]]
            assert names == ["devpid-demo-app", "devpid-demo-lib"]
            assert devpid.get("/root/pypi/+simple/devpid-demo-sdist/").status == 404
            result = pip_install(devpid.simple_url, tmp_path / "again", "devpid-demo-app")
            assert result.returncode == 0, result.stdout + result.stderr
        assert upstream.stats()["total"] == 0


@needs_corpus
def test_real_corpus_flask_and_requests(tmp_path: Path) -> None:
    serverdir = tmp_path / "serverdir"
    with UpstreamProcess.start(CORPUS) as upstream:
        with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
            result = pip_install(devpid.simple_url, tmp_path / "pip", "flask", "requests")
            assert result.returncode == 0, result.stdout + result.stderr
            assert (tmp_path / "pip" / "flask" / "__init__.py").is_file()
            assert (tmp_path / "pip" / "requests" / "__init__.py").is_file()
            result = uv_install(devpid.simple_url, tmp_path / "uv", "flask", "requests")
            assert result.returncode == 0, result.stdout + result.stderr
            assert (tmp_path / "uv" / "flask" / "__init__.py").is_file()
            gets = upstream.stats()["gets"]
            assert all(count == 1 for path, count in gets.items() if path.startswith("/files/"))
        upstream.stop()
        with DevpidProcess.start(serverdir, upstream.simple_url, "--cache-expiry", "0") as devpid:
            result = pip_install(devpid.simple_url, tmp_path / "offline", "flask", "requests")
            assert result.returncode == 0, result.stdout + result.stderr
            result = uv_install(devpid.simple_url, tmp_path / "offline-uv", "flask", "requests")
            assert result.returncode == 0, result.stdout + result.stderr
