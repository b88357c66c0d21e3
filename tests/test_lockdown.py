"""``twistd devpid --require-auth`` with the real clients: pip and uv with credentials in
the index URL (a password, an API token), twine uploading with a password, devpi-client
logging in and installing through ``devpi install``, and everyone anonymous refused.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import installer_env, pip_install, uv_install
from tests.fixtures.devpi_client import DevpiClient, client_venv
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Dist, _build_wheel
from tests.fixtures.lockdown import ALICE_PASSWORD, People, call, lock_down
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

DEMO = ("devpid-demo-app", "devpid-demo-sdist")
PRIVATE = Dist("lockdown-private", "1.0", "wheel", requires_dist=("devpid-demo-lib",))


@pytest.fixture(scope="module")
def locked(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[tuple[DevpidProcess, People]]:
    base = tmp_path_factory.mktemp("lockdown")
    with DevpidProcess.start(
        base / "serverdir", shared_upstream.simple_url, "--require-auth"
    ) as server:
        yield server, lock_down(server.url)


def test_anonymous_pip_and_uv_are_refused(
    locked: tuple[DevpidProcess, People], tmp_path: Path
) -> None:
    server, _ = locked
    done = pip_install(server.simple_url, tmp_path / "pip", *DEMO)
    assert done.returncode != 0
    assert "401" in done.stdout + done.stderr
    done = uv_install(server.simple_url, tmp_path / "uv", *DEMO)
    assert done.returncode != 0
    assert "401" in done.stdout + done.stderr
    assert not (tmp_path / "pip" / "devpid_demo_app").exists()


def test_pip_with_a_password_and_uv_with_a_token_install(
    locked: tuple[DevpidProcess, People], tmp_path: Path
) -> None:
    server, people = locked
    done = pip_install(people.index_url("alice", ALICE_PASSWORD), tmp_path / "pip", *DEMO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "pip" / "devpid_demo_app" / "__init__.py").is_file()
    assert (tmp_path / "pip" / "devpid_demo_sdist" / "__init__.py").is_file()
    done = uv_install(people.index_url("__token__", people.token), tmp_path / "uv", *DEMO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "uv" / "devpid_demo_app" / "__init__.py").is_file()
    # the passwords were checked once each, not per request: the log has no failures
    assert "Traceback" not in server.log_text()


def twine(*args: str) -> subprocess.CompletedProcess[str]:
    command = shutil.which("twine") or str(client_venv() / "bin" / "twine")
    env = installer_env()
    env.update(TWINE_NON_INTERACTIVE="1", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    return subprocess.run(
        [command, "upload", "--disable-progress-bar", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_twine_uploads_and_pip_installs_from_the_stage(
    locked: tuple[DevpidProcess, People], tmp_path: Path
) -> None:
    server, people = locked
    _build_wheel(PRIVATE, tmp_path)
    wheel = str(tmp_path / PRIVATE.filename)
    stage = f"{server.url}/alice/dev/"
    refused = twine("--repository-url", stage, "-u", "alice", "-p", "wrong", wheel)
    assert refused.returncode != 0
    done = twine("--repository-url", stage, "-u", "alice", "-p", ALICE_PASSWORD, wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    index_url = people.index_url("__token__", people.token, "alice/dev")
    done = pip_install(index_url, tmp_path / "pip", "lockdown-private")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "pip" / "lockdown_private" / "__init__.py").is_file()
    assert (tmp_path / "pip" / "devpid_demo_lib" / "__init__.py").is_file()


def test_devpi_client_logs_in_and_installs(
    locked: tuple[DevpidProcess, People], tmp_path: Path
) -> None:
    server, _ = locked
    devpi = DevpiClient(client_venv(), tmp_path / "client")
    devpi("use", server.url).ok()
    anonymous = devpi("getjson", "/alice/dev")
    assert anonymous.returncode != 0
    assert "403" in anonymous.out
    devpi("login", "alice", "--password", ALICE_PASSWORD).ok()
    devpi("use", "alice/dev").ok()
    assert '"type": "stage"' in devpi("getjson", "/alice/dev").ok().out
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    devpi("install", "--venv", str(venv), "devpid-demo-app").ok()
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import devpid_demo_app, devpid_demo_lib"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    devpi("logoff").ok()
    assert devpi("getjson", "/alice/dev").returncode != 0


def test_status_health_check_stays_open(locked: tuple[DevpidProcess, People]) -> None:
    server, people = locked
    health = call(f"{server.url}/+status?check=1")
    assert health.status == 200 and health.json() == {"healthy": True}
    refused = call(f"{server.url}/+status")
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="pypi"'
    assert call(f"{server.url}/+status", Authorization=people.alice).status == 200
