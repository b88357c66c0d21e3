"""Seed 001, the air-gapped site, in one test with real processes only.

A team warms its devpid from a requirements file through the gateway, for this machine
and for the ARM machines behind the gap; exports the requirements' part of the mirror
cache to one ``.tar``; imports it into a fresh serverdir on the other side; runs devpid
there with ``--offline`` and no upstream at all. pip and uv install the requirements from
it, pip downloads the ARM wheels from it, and a package nobody warmed fails at once with
pip's and uv's one-line reason, counted as an offline miss.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import installer_env, pip_install, uv_install
from tests.fixtures.devpid_process import REPO_ROOT, DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, build_repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

#: This machine's wheel (the suite runs on CPython 3.11, x86_64 Linux) and the ARM one.
OWN_TAG = "cp311-cp311-manylinux2014_x86_64"
ARM_TAG = "cp312-cp312-manylinux2014_aarch64"
ARM_TARGET = "platform=manylinux2014_aarch64,python=3.12"
REQUIREMENTS = "native\ndevpid-demo-app\n"
INSTALLED = {"native", "devpid_demo_app", "devpid_demo_lib"}


def devpid_tool(*arguments: str) -> Any:
    """``devpid <arguments> --json`` as a user runs it; its JSON summary (exit 0 asserted)."""
    command = [sys.executable, "-m", "devpid.cli", arguments[0], "--json", *arguments[1:]]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=installer_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{arguments[0]}: {done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def installed(target: Path) -> set[str]:
    return {p.name.split("-")[0] for p in target.glob("*.dist-info")}


def test_warm_export_import_then_install_offline(tmp_path: Path) -> None:
    if sys.version_info[:2] != (3, 11) or shutil.which("uv") is None:
        pytest.skip("the wheels are built for CPython 3.11 and uv must be installed")
    requires = ("devpid-demo-lib>=1.0",)
    repository = build_repository(
        tmp_path / "repo",
        extra=[
            Dist("native", "1.0", "wheel", requires, wheel_tag=OWN_TAG),
            Dist("native", "1.0", "wheel", requires, wheel_tag=ARM_TAG),
        ],
    )
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(REQUIREMENTS)
    bundle = tmp_path / "carry" / "cache.tar"
    bundle.parent.mkdir()

    # The connected side: warm for here and for the ARM machines, then export.
    with UpstreamProcess.start(repository.root) as upstream:
        with DevpidProcess.start(tmp_path / "gateway", upstream.simple_url) as gateway:
            index = ["--index-url", gateway.simple_url]
            here = devpid_tool("warm", *index, "-r", str(requirements))
            arm = devpid_tool("warm", *index, "--target", ARM_TARGET, "-r", str(requirements))
            assert here["failed"] == arm["failed"] == {"files": 0, "resolutions": 0}
            warmed = {f["filename"] for f in here["files"] + arm["files"]}
            assert f"native-1.0-{ARM_TAG}.whl" in warmed
            # Something the gateway cached that the requirements do not need.
            other = pip_install(gateway.simple_url, tmp_path / "other", "devpid-demo-sdist")
            assert other.returncode == 0, other.stderr
            exported = devpid_tool(
                "export", "--serverdir", str(gateway.serverdir), "--mirror", str(requirements),
                str(bundle),
            )  # fmt: skip
        upstream_files = set(upstream.stats()["gets"])
    assert exported["mirror_files"] >= 4 and exported["mirror_pages"] >= 3, exported
    assert any(path.endswith(f"native-1.0-{ARM_TAG}.whl") for path in upstream_files)

    # The air-gapped side: a fresh serverdir, the bundle, no upstream.
    airgapped = tmp_path / "airgapped"
    devpid_tool("import", "--serverdir", str(airgapped), str(bundle))
    with DevpidProcess.start(
        airgapped, "http://127.0.0.1:9/simple/", "--offline", "--upstream-timeout", "60"
    ) as offline:
        url = offline.simple_url
        by_pip = pip_install(url, tmp_path / "pip-target", "-r", str(requirements))
        assert by_pip.returncode == 0, by_pip.stderr
        assert installed(tmp_path / "pip-target") == INSTALLED
        by_uv = uv_install(url, tmp_path / "uv-target", "-r", str(requirements))
        assert by_uv.returncode == 0, by_uv.stderr
        assert installed(tmp_path / "uv-target") == INSTALLED

        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
             "--index-url", url, "--trusted-host", "127.0.0.1", "--only-binary=:all:",
             "--platform", "manylinux2014_aarch64", "--python-version", "3.12",
             "-d", str(tmp_path / "arm"), "native"],
            env=installer_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert download.returncode == 0, download.stderr
        assert (tmp_path / "arm" / f"native-1.0-{ARM_TAG}.whl").read_bytes() == (
            repository.path(f"native-1.0-{ARM_TAG}.whl").read_bytes()
        )

        # Not exported: pip and uv fail at once (the upstream timeout is a minute; a
        # request that went upstream could not have answered) with the package named.
        missing = pip_install(url, tmp_path / "nothing", "devpid-demo-sdist")
        assert missing.returncode != 0
        assert "No matching distribution found for devpid-demo-sdist" in missing.stderr
        missing_uv = uv_install(url, tmp_path / "nothing-uv", "devpid-demo-sdist")
        assert missing_uv.returncode != 0 and "devpid-demo-sdist" in missing_uv.stderr
        status = json.loads(http_get(f"{offline.url}/+status").body)
        assert status["counters"]["offline_misses"] >= 2
        assert "offline miss: project devpid-demo-sdist is not cached" in offline.log_text()
