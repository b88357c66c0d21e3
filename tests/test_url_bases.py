"""A base given as a URL (seed 002's ``bases=http://other:3141/root/dev``).

Unit tests of the rewriting, hypothesis over what a client may send, and two
real devpids: the second's stage names the first's index by URL, devpi-client
creates it, and pip and uv install the first's upload through the second.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devpid.private.data import PrivateData, Refused
from devpid.private.database import PrivateDatabase
from devpid.private.init import initialize
from devpid.private.names import InvalidConfig
from devpid.private.urlbases import expand_url_bases, mirror_name, simple_url
from devpid.private.userconfig import NewUser
from tests.conftest import pip_install, uv_install
from tests.fixtures.devpi_client import DevpiClient, client_venv
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Dist, _build_wheel, build_repository
from tests.fixtures.upstream import UpstreamProcess

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- the rewriting ------------------------------------------------------------------


def test_a_base_url_names_a_mirror_of_its_simple_pages() -> None:
    assert simple_url("http://other:3141/root/dev") == "http://other:3141/root/dev/+simple/"
    assert simple_url("http://other:3141/root/dev/") == "http://other:3141/root/dev/+simple/"
    assert simple_url("https://x.example/root/dev/+simple/") == (
        "https://x.example/root/dev/+simple/"
    )
    assert simple_url("http://localhost/simple") == "http://localhost/simple/"
    assert mirror_name("http://other:3141/root/dev") == "other-3141-root-dev"
    assert mirror_name("http://Other:3141/root/dev/+simple/") == "other-3141-root-dev"


def _follow_into(created: dict[str, str]) -> Any:
    def follow(name: str, url: str) -> str:
        created[name] = url
        return f"alice/{name}"

    return follow


def test_put_and_patch_bodies_have_their_urls_replaced() -> None:
    created: dict[str, str] = {}
    follow = _follow_into(created)
    body = {"bases": "http://other:3141/root/dev, root/pypi", "volatile": "False"}
    assert expand_url_bases("alice", body, follow) == {
        "bases": ["alice/other-3141-root-dev", "root/pypi"],
        "volatile": "False",
    }
    ops = ["bases+=http://other:3141/root/dev", "title=x", "bases-=http://other:3141/root/dev"]
    assert expand_url_bases("alice", ops, follow) == [
        "bases+=alice/other-3141-root-dev",
        "title=x",
        "bases-=alice/other-3141-root-dev",
    ]
    envelope = {"type": "indexconfig", "result": {"bases": ["http://other:3141/root/dev"]}}
    assert expand_url_bases("alice", envelope, follow) == {
        "type": "indexconfig",
        "result": {"bases": ["alice/other-3141-root-dev"]},
    }
    assert created == {"other-3141-root-dev": "http://other:3141/root/dev/+simple/"}
    untouched = {"bases": "root/pypi"}
    assert expand_url_bases("alice", untouched, follow) is untouched


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("http://user:secret@other/root/dev", "carries credentials"),
        ("http://other:99999/root/dev", "must be an http"),
        ("http:///root/dev", "must be an http"),
        ("http://other/root dev", "must be an http"),
    ],
)
def test_bad_base_urls_get_one_line(spec: str, reason: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        expand_url_bases("alice", {"bases": [spec]}, _follow_into({}))
    assert reason in caught.value.message
    assert "\n" not in caught.value.message
    assert "secret" not in caught.value.message


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80).map(lambda t: "http://" + t),
        st.text(max_size=80),
        st.lists(st.one_of(st.text(max_size=40), st.integers(), st.none()), max_size=4),
        st.none(),
    )
)
def test_any_bases_value_is_a_clean_answer(bases: object) -> None:
    created: dict[str, str] = {}
    try:
        out = expand_url_bases("alice", {"bases": bases}, _follow_into(created))
    except InvalidConfig as e:
        assert "\n" not in e.message
        return
    assert isinstance(out, dict)
    for name in created:
        assert name and "/" not in name and len(name) <= 100


def _data(tmp_path: Path) -> PrivateData:
    database = PrivateDatabase.in_serverdir(tmp_path)
    database.open()
    data = PrivateData(database, default_cache_expiry=1800)
    initialize(data, "", "http://127.0.0.1:9/simple/", "2026-01-01T00:00:00Z")
    data.create_user("alice", NewUser("alicepw", None, {}), "x", None)
    return data


def test_the_mirror_is_created_in_the_same_transaction(tmp_path: Path) -> None:
    data = _data(tmp_path)
    before = data.database.serial
    config, serial = data.create_index(
        "alice", "prod", {"bases": "http://other:3141/root/dev,root/pypi"}, "alice"
    )
    assert serial == before + 1
    assert config["bases"] == ["alice/other-3141-root-dev", "root/pypi"]
    mirror = data.database.records.of("index")["alice/other-3141-root-dev"]
    assert mirror["type"] == "mirror"
    assert mirror["mirror_url"] == "http://other:3141/root/dev/+simple/"
    # a second stage on the same URL reuses the mirror
    data.create_index("alice", "qa", {"bases": "http://other:3141/root/dev"}, "alice")
    assert data.database.serial == serial + 1
    # a refused change leaves no mirror behind
    with pytest.raises(Refused):
        data.create_index(
            "alice", "bad", {"bases": "http://third:1/root/dev", "volatile": "maybe"}, "alice"
        )
    assert "alice/third-1-root-dev" not in data.database.records.of("index")


def test_a_name_taken_by_something_else_is_refused(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data.create_index("alice", "other-3141-root-dev", {}, "alice")
    with pytest.raises(Refused) as caught:
        data.create_index("alice", "prod", {"bases": "http://other:3141/root/dev"}, "alice")
    assert caught.value.code == 400
    assert "exists already" in caught.value.message


# -- two real devpids -----------------------------------------------------------------


def _call(url: str, method: str, body: Any = None, auth: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", auth)
    try:
        with _NO_PROXY.open(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@attrs.frozen
class Pair:
    other: DevpidProcess
    here: DevpidProcess
    wheel: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("url-bases")
    repository = build_repository(base / "upstream")
    (base / "dists").mkdir()
    dist = Dist("acme-remote", "1.0", "wheel")
    _build_wheel(dist, base / "dists")
    with (
        UpstreamProcess.start(repository.root) as upstream,
        DevpidProcess.start(base / "other", upstream.simple_url, name="other") as other,
        DevpidProcess.start(base / "here", upstream.simple_url, name="here") as here,
    ):
        yield Pair(other, here, base / "dists" / dist.filename)


def test_a_stage_based_on_another_devpids_index_installs_from_it(
    pair: Pair, tmp_path: Path
) -> None:
    root = _basic("root", "")
    assert _call(pair.other.url + "/root/dev", "PUT", {"bases": ""}, root)[0] == 200
    venv = client_venv()
    upload = subprocess.run(
        [
            *(str(venv / "bin" / "twine"), "upload", "--disable-progress-bar"),
            *("--repository-url", pair.other.url + "/root/dev/", "-u", "root", "-p", ""),
            str(pair.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upload.returncode == 0, upload.stdout + upload.stderr

    devpi = DevpiClient(venv, tmp_path / "client")
    devpi("use", pair.here.url).ok()
    devpi("user", "-c", "alice", "password=alicepw").ok()
    devpi("login", "alice", "--password", "alicepw").ok()
    out = devpi("index", "-c", "prod", f"bases={pair.other.url}/root/dev,root/pypi").ok().out
    mirror = f"alice/127-0-0-1-{pair.other.url.rpartition(':')[2]}-root-dev"
    assert f"bases={mirror},root/pypi" in out
    status, config = _call(f"{pair.here.url}/{mirror}", "GET")
    assert status == 200
    assert config["result"]["type"] == "mirror"
    assert config["result"]["mirror_url"] == pair.other.url + "/root/dev/+simple/"

    index = pair.here.url + "/alice/prod/+simple/"
    done = pip_install(index, tmp_path / "pip", "acme-remote==1.0", "devpid-demo-app")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pip" / "acme_remote" / "__init__.py").exists()
    done = uv_install(index, tmp_path / "uv", "acme-remote==1.0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "uv" / "acme_remote" / "__init__.py").exists()

    # a bad URL base is one line, and nothing is created
    bad = devpi("index", "prod", "bases+=http://127.0.0.1:99999/root/dev")
    assert bad.returncode != 0
    assert "must be an http:// or https:// URL of an index" in bad.out
