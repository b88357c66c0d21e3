"""The real devpi-client 7.x against a real ``twistd -n devpid``: the commands teams type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.devpi_client import DevpiClient, client_venv
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[DevpidProcess]:
    base = tmp_path_factory.mktemp("devpi-client")
    with DevpidProcess.start(base / "serverdir", shared_upstream.simple_url) as devpid:
        yield devpid


@pytest.fixture
def devpi(tmp_path: Path) -> DevpiClient:
    return DevpiClient(client_venv(), tmp_path / "client")


def test_version_reads_status(server: DevpidProcess, devpi: DevpiClient) -> None:
    devpi("use", server.url).ok()
    out = devpi("--version").ok().out
    assert "devpi-server" in out and "devpi-client" in out


def test_seed_guide_session(server: DevpidProcess, devpi: DevpiClient) -> None:
    """The guide's steps: a user, a dev index on the mirror, use it, log in and out."""
    out = devpi("use", server.url).ok().out
    assert server.url in out
    devpi("user", "-c", "alice", "password=alicepw", "email=alice@example.com").ok()
    out = devpi("login", "alice", "--password", "alicepw").ok().out
    assert "credentials valid for 10.00 hours" in out
    out = devpi("index", "-c", "dev", "bases=root/pypi").ok().out
    assert "bases=root/pypi" in out
    out = devpi("use", "alice/dev").ok().out
    assert f"{server.url}/alice/dev" in out
    listed = devpi("use", "-l").ok().out
    assert "alice/dev" in listed and "root/pypi" in listed
    assert "alice" in devpi("user", "-l").ok().out
    out = devpi("index", "-l").ok().out
    assert "alice/dev" in out
    devpi("logoff").ok()
    # logged off, changing alice is refused
    assert devpi("user", "-m", "alice", "email=x@example.com").returncode != 0


def test_user_modify_passwd_and_delete(server: DevpidProcess, devpi: DevpiClient) -> None:
    devpi("use", server.url).ok()
    devpi("user", "-c", "bob", "password=bobpw").ok()
    devpi("login", "bob", "--password", "bobpw").ok()
    devpi("user", "-m", "bob", "email=bob@example.com", "title=Bob").ok()
    shown = devpi("getjson", "/bob").ok().out
    config = json.loads(shown)["result"]
    assert config["email"] == "bob@example.com" and config["title"] == "Bob"
    devpi("passwd", "bob", stdin="newbobpw\nnewbobpw\n").ok()
    devpi("logoff").ok()
    assert devpi("login", "bob", "--password", "bobpw").returncode != 0
    devpi("login", "bob", "--password", "newbobpw").ok()
    devpi("user", "--delete", "bob", "-y").ok()
    assert devpi("getjson", "/bob").returncode != 0


def test_index_create_modify_delete(server: DevpidProcess, devpi: DevpiClient) -> None:
    devpi("use", server.url).ok()
    devpi("user", "-c", "carol", "password=carolpw").ok()
    devpi("login", "carol", "--password", "carolpw").ok()
    devpi("index", "-c", "stage", "bases=root/pypi", "volatile=False").ok()
    # the list form of PATCH (server-keyvalue-parsing)
    devpi("index", "stage", "mirror_whitelist+=hello", "title=Staging").ok()
    config = json.loads(devpi("getjson", "/carol/stage").ok().out)["result"]
    assert config["mirror_whitelist"] == ["hello"] and config["title"] == "Staging"
    assert config["volatile"] is False
    devpi("index", "stage", "title-=", "acl_upload+=:authenticated:").ok()
    config = json.loads(devpi("getjson", "/carol/stage?no_projects=").ok().out)["result"]
    assert "title" not in config and config["acl_upload"] == ["carol", ":AUTHENTICATED:"]
    bad = devpi("index", "stage", "acl_upload-=nobody")
    assert bad.returncode != 0 and "doesn't have value 'nobody'" in bad.out
    refused = devpi("index", "--delete", "stage", "-y")
    assert refused.returncode != 0 and "non-volatile" in refused.out
    devpi("index", "stage", "volatile=True").ok()
    devpi("index", "--delete", "stage", "-y").ok()
    assert "carol/stage" not in devpi("index", "-l").out


def test_getjson_shows_devpi_headers(server: DevpidProcess, devpi: DevpiClient) -> None:
    devpi("use", server.url).ok()
    out = devpi("getjson", "-v", "/root/pypi").ok().out
    assert "X-DEVPI-API-VERSION" in out.upper()
    assert '"type": "mirror"' in out
