"""Shared fixtures: a built repository, a real upstream process, a real devpid process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository, build_repository
from tests.fixtures.redis_server import INSTALL_HINT, RedisServer, redis_server_path
from tests.fixtures.upstream import UpstreamProcess

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(
    not (CORPUS / "simple").is_dir(),
    reason=f"the shared corpus of real distributions is absent ({CORPUS})",
)
#: Large enough that a rate-limited transfer takes a few seconds.
BIG_FILE_SIZE = 4_000_000


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return build_repository(tmp_path_factory.mktemp("demo-repo"), big_file_size=BIG_FILE_SIZE)


@pytest.fixture(scope="module")
def shared_upstream(demo_repository: Repository) -> Iterator[UpstreamProcess]:
    with UpstreamProcess.start(demo_repository.root) as process:
        yield process


@pytest.fixture
def upstream(shared_upstream: UpstreamProcess) -> Iterator[UpstreamProcess]:
    """The module's upstream with no faults and zeroed counters."""
    shared_upstream.control()
    shared_upstream.reset_stats()
    yield shared_upstream
    shared_upstream.control()


@pytest.fixture
def devpid(tmp_path: Path, upstream: UpstreamProcess) -> Iterator[DevpidProcess]:
    with DevpidProcess.start(
        tmp_path / "serverdir", upstream.simple_url, "--upstream-timeout", "3"
    ) as process:
        yield process


def installer_env() -> dict[str, str]:
    """The environment minus pip/uv configuration, so only the given index is used."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PIP_", "UV_")) and "PROXY" not in key.upper()
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def pip_install(
    index_url: str, target: Path, *requirements: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir"]
    command += ["--disable-pip-version-check", "--index-url", index_url, "--target", str(target)]
    command += ["--trusted-host", "127.0.0.1", *requirements]
    return subprocess.run(command, env=installer_env(), capture_output=True, text=True, timeout=300)


def uv_install(
    index_url: str, target: Path, *requirements: str
) -> subprocess.CompletedProcess[str]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (pip install uv)")
    command = [uv, "pip", "install", "--no-cache", "--no-config", "--python", sys.executable]
    command += ["--index-url", index_url, "--target", str(target), *requirements]
    return subprocess.run(command, env=installer_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port (skips, saying how to get one)."""
    if redis_server_path() is None:
        pytest.skip(INSTALL_HINT)
    server = RedisServer.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()
