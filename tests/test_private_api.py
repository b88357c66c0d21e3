"""devpi's JSON API on a real ``twistd -n devpid``: users, login, tokens, indexes, projects.

Status codes and messages are devpi-server 6.20.3's (../shared/devpi-api.md).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest

from devpid.private.data import PrivateData
from devpid.private.database import PrivateDatabase
from tests.conftest import pip_install, uv_install
from tests.fixtures.devpid_process import DevpidProcess, Response, http_get
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration
JSON_V1 = "application/vnd.pypi.simple.v1+json"


@attrs.define
class Api:
    """A devpi-client-like JSON client of one devpid."""

    devpid: DevpidProcess
    auth: str | None = None

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.devpid.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        request.add_header("Content-Type", "application/json")
        if self.auth is not None:
            request.add_header("X-Devpi-Auth", self.auth)
        for name, value in headers.items():
            request.add_header(name.replace("_", "-"), value)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        try:
            with opener.open(request, timeout=30) as answer:
                return Response(answer.status, _lower(answer.headers), answer.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, _lower(e.headers), e.read())

    def login(self, user: str, password: str) -> str:
        answer = self.call("POST", "/+login", {"user": user, "password": password})
        assert answer.status == 200, answer.body
        token = str(json.loads(answer.body)["result"]["password"])
        self.auth = base64.b64encode(f"{user}:{token}".encode()).decode()
        return token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def body(answer: Response) -> Any:
    assert answer.headers["content-type"] == "application/json", answer.headers
    return json.loads(answer.body)


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[DevpidProcess]:
    base = tmp_path_factory.mktemp("private")
    with DevpidProcess.start(base / "serverdir", shared_upstream.simple_url) as devpid:
        yield devpid


def test_first_start_has_root_and_root_pypi(server: DevpidProcess) -> None:
    api = Api(server)
    answer = api.call("GET", "/")
    assert answer.status == 200
    assert answer.headers["x-devpi-api-version"] == "2"
    assert len(answer.headers["x-devpi-uuid"]) == 32
    assert int(answer.headers["x-devpi-serial"]) >= 0
    users = body(answer)
    assert users["type"] == "list:userconfig"
    root = users["result"]["root"]
    assert root["username"] == "root" and "pwhash" not in root
    assert root["indexes"]["pypi"]["type"] == "mirror"
    # root's password is the empty string
    assert Api(server).login("root", "")


def test_discovery(server: DevpidProcess) -> None:
    api = Api(server)
    result = body(api.call("GET", "/+api"))["result"]
    assert result["login"] == f"{server.url}/+login"
    assert result["authstatus"] == ["noauth", "", []]
    assert "server-keyvalue-parsing" in result["features"]
    index = body(api.call("GET", "/root/pypi/+api"))["result"]
    assert index["index"] == f"{server.url}/root/pypi"
    assert index["simpleindex"] == f"{server.url}/root/pypi/+simple/"
    assert "pypisubmit" not in index
    missing = api.call("GET", "/root/nope/+api")
    assert missing.status == 404
    assert body(missing)["message"] == "The stage root/nope could not be found."
    outside = body(api.call("GET", "/+api", X_Outside_Url="https://pkgs.example/sub"))
    assert outside["result"]["login"] == "https://pkgs.example/sub/+login"


def test_users_lifecycle(server: DevpidProcess) -> None:
    api = Api(server)
    created = api.call("PUT", "/alice", {"password": "alicepw", "email": "alice@example.com"})
    assert created.status == 201
    config = body(created)["result"]
    assert config["username"] == "alice" and config["email"] == "alice@example.com"
    assert "created" in config and "pwhash" not in config
    again = api.call("PUT", "/alice", {"password": "x"})
    assert again.status == 409 and body(again)["message"] == "user already exists"
    assert body(api.call("PUT", "/bob", {"email": "x"}))["message"] == "password needs to be set"
    bad = api.call("PUT", "/ca rol".replace(" ", "%20"), {"password": "x"})
    assert bad.status == 400 and "contains characters" in body(bad)["message"]
    # anonymous may not change alice
    denied = api.call("PATCH", "/alice", {"email": "evil@example.com"})
    assert denied.status == 403
    api.login("alice", "alicepw")
    changed = api.call("PATCH", "/alice", {"email": "a2@example.com", "created": "ignored"})
    assert changed.status == 200 and body(changed)["message"] == "user updated"
    new_password = api.call("PATCH", "/alice", {"password": "alicepw2"})
    result = body(new_password)
    assert result["type"] == "userpassword" and result["result"]["expiration"] == 36000
    assert (
        Api(server).call("POST", "/+login", {"user": "alice", "password": "alicepw"}).status == 401
    )
    assert Api(server).login("alice", "alicepw2")
    assert api.call("GET", "/nobody").status == 404
    assert body(api.call("GET", "/nobody"))["message"] == "no user 'nobody'"


def test_login_errors_and_throttling(server: DevpidProcess) -> None:
    api = Api(server)
    assert body(api.call("POST", "/+login", {"user": "root"}))["message"] == (
        "Bad request: no user/password specified"
    )
    garbage = api.call("POST", "/+login", None, Content_Length="0")
    assert garbage.status == 400
    wrong = api.call("POST", "/+login", {"user": "root", "password": "nope"})
    assert wrong.status == 401
    assert body(wrong)["message"] == "user 'root' could not be authenticated"
    api.call("PUT", "/victim", {"password": "right"})
    statuses = [
        api.call("POST", "/+login", {"user": "victim", "password": f"guess{n}"}).status
        for n in range(8)
    ]
    assert statuses[:5] == [401] * 5
    assert 429 in statuses
    throttled = api.call("POST", "/+login", {"user": "victim", "password": "right"})
    assert throttled.status == 429 and int(throttled.headers["retry-after"]) >= 1


def test_bad_credentials_mean_anonymous(server: DevpidProcess) -> None:
    api = Api(server)
    api.auth = base64.b64encode(b"root:not-a-token").decode()
    answer = api.call("GET", "/+api", Authorization=basic("root", "also wrong"))
    assert answer.status == 200
    assert body(answer)["result"]["authstatus"] == ["noauth", "", []]
    page = http_get(
        server.url + "/root/pypi/+simple/devpid-demo-lib/", Authorization=basic("x", "y")
    )
    assert page.status == 200


def test_indexes_with_string_values_and_patch_forms(server: DevpidProcess) -> None:
    api = Api(server)
    api.call("PUT", "/ixuser", {"password": "pw"})
    api.login("ixuser", "pw")
    created = api.call(
        "PUT", "/ixuser/dev", {"bases": "root/pypi", "volatile": "False", "title": "Dev"}
    )
    assert created.status == 200
    config = body(created)["result"]
    assert config["bases"] == ["root/pypi"] and config["volatile"] is False
    assert config["acl_upload"] == ["ixuser"]
    assert config["mirror_whitelist_inheritance"] == "intersection"
    serial = int(created.headers["x-devpi-serial"])
    listed = body(api.call("GET", "/ixuser/dev"))["result"]
    assert listed["projects"] == []
    assert "projects" not in body(api.call("GET", "/ixuser/dev?no_projects="))["result"]
    patched = api.call("PATCH", "/ixuser/dev", ["mirror_whitelist+=Hello_World", "title-="])
    assert patched.status == 200
    result = body(patched)["result"]
    assert result["mirror_whitelist"] == ["hello-world"] and "title" not in result
    assert int(patched.headers["x-devpi-serial"]) == serial + 1
    atomic = api.call("PATCH", "/ixuser/dev", ["title=New", "acl_upload-=nobody"])
    assert atomic.status == 400
    assert body(atomic)["message"] == "The 'acl_upload' setting doesn't have value 'nobody'"
    assert "title" not in body(api.call("GET", "/ixuser/dev"))["result"]
    merged = body(api.call("PATCH", "/ixuser/dev", {"description": "d"}))["result"]
    assert merged["description"] == "d" and merged["mirror_whitelist"] == ["hello-world"]
    assert api.call("PUT", "/ixuser/dev", {}).status == 409
    # another user may not touch it; a missing index is 403 too
    other = Api(server)
    assert other.call("PATCH", "/ixuser/dev", {"title": "x"}).status == 403
    assert api.call("PATCH", "/ixuser/nope", {"title": "x"}).status == 403
    assert api.call("DELETE", "/ixuser/dev").status == 403  # non-volatile
    assert body(api.call("DELETE", "/ixuser/dev"))["message"] == (
        "index ixuser/dev non-volatile, cannot delete"
    )
    api.call("PATCH", "/ixuser/dev", ["volatile=True"])
    deleted = api.call("DELETE", "/ixuser/dev")
    assert deleted.status == 201 and body(deleted)["message"] == "index ixuser/dev deleted"
    assert api.call("GET", "/ixuser/dev").status == 404


def test_mirror_index_of_a_user_and_a_stage_inheriting_it(
    server: DevpidProcess, shared_upstream: UpstreamProcess
) -> None:
    api = Api(server)
    api.call("PUT", "/mir", {"password": "pw"})
    api.login("mir", "pw")
    created = api.call(
        "PUT",
        "/mir/local",
        {"type": "mirror", "mirror_url": shared_upstream.simple_url, "mirror_cache_expiry": "60"},
    )
    assert created.status == 200, created.body
    assert body(created)["result"]["mirror_cache_expiry"] == 60
    page = http_get(server.url + "/mir/local/+simple/devpid-demo-lib/", Accept="text/html")
    assert page.status == 200
    assert b"/mir/local/+f/" in page.body
    assert api.call("PUT", "/mir/dev", {"bases": "mir/local"}).status == 200
    inherited = http_get(server.url + "/mir/dev/+simple/devpid-demo-lib/", Accept="text/html")
    assert inherited.status == 200 and b"/mir/local/+f/" in inherited.body
    versions = body(api.call("GET", "/mir/dev/devpid-demo-lib"))
    assert versions["type"] == "projectconfig"
    assert set(versions["result"]) == {"1.0", "2.0"}
    link = versions["result"]["2.0"]["+links"][0]
    assert link["rel"] == "releasefile" and link["href"].startswith(f"{server.url}/mir/local/+f/")
    assert body(api.call("GET", "/mir/dev/devpid-demo-lib?ignore_bases="))["result"] == {}
    moved = api.call("GET", "/mir/dev/Devpid_Demo_Lib/?ignore_bases=")
    assert moved.status == 302
    assert moved.headers["location"] == f"{server.url}/mir/dev/devpid-demo-lib"
    assert api.call("GET", "/mir/dev/devpid-demo-lib", Accept="text/plain").status == 415
    version = body(api.call("GET", "/mir/dev/devpid-demo-lib/2.0"))
    assert version["type"] == "versiondata" and version["result"]["version"] == "2.0"
    assert api.call("GET", "/mir/dev/devpid-demo-lib/9.9").status == 404
    # the index list of a user shows both; the mirror's config has no bases
    user = body(api.call("GET", "/mir"))["result"]
    assert set(user["indexes"]) == {"local", "dev"}
    assert "bases" not in user["indexes"]["local"]


def test_api_tokens(server: DevpidProcess) -> None:
    api = Api(server)
    api.call("PUT", "/tokuser", {"password": "pw"})
    assert api.call("POST", "/tokuser/+tokens", {}).status == 403
    api.login("tokuser", "pw")
    api.call("PUT", "/tokuser/dev", {})
    created = api.call("POST", "/tokuser/+tokens", {"indexes": ["tokuser/dev"]})
    assert created.status == 201
    token = body(created)["result"]
    secret = token["token"]
    assert secret.startswith("devpid_")
    listed = body(api.call("GET", "/tokuser/+tokens"))["result"]
    assert token["id"] in listed and secret not in json.dumps(listed)
    for user in ("tokuser", "__token__"):
        anonymous = Api(server)
        who = body(anonymous.call("GET", "/+api", Authorization=basic(user, secret)))
        assert who["result"]["authstatus"][:2] == ["ok", "tokuser"]
    # limited to tokuser/dev: it cannot manage users or indexes
    limited = Api(server)
    assert (
        limited.call(
            "PATCH", "/tokuser", {"email": "x@y"}, Authorization=basic("tokuser", secret)
        ).status
        == 403
    )
    revoked = api.call("DELETE", f"/tokuser/+tokens/{token['id']}")
    assert revoked.status == 200
    gone = body(Api(server).call("GET", "/+api", Authorization=basic("tokuser", secret)))
    assert gone["result"]["authstatus"] == ["noauth", "", []]


def test_deleting_a_user(server: DevpidProcess) -> None:
    api = Api(server)
    api.call("PUT", "/dave", {"password": "pw"})
    assert api.call("DELETE", "/dave").status == 403
    api.login("dave", "pw")
    api.call("PUT", "/dave/prod", {"volatile": False})
    refused = api.call("DELETE", "/dave")
    assert refused.status == 403
    assert body(refused)["message"] == "user 'dave' has non-volatile index: prod"
    api.call("PATCH", "/dave/prod", {"volatile": True})
    deleted = api.call("DELETE", "/dave")
    assert deleted.status == 200 and body(deleted)["message"] == "user 'dave' deleted"
    # the login token of a deleted user is worth nothing
    assert body(api.call("GET", "/+api"))["result"]["authstatus"][0] == "noauth"
    root = Api(server)
    root.login("root", "")
    assert root.call("DELETE", "/root").status == 403


def test_status_has_devpi_fields(server: DevpidProcess) -> None:
    plain = server.status()
    assert plain["versioninfo"]["devpi-server"]
    assert plain["serial"] >= 0 and len(plain["uuid"]) == 32
    assert plain["private"]["users"] >= 1
    enveloped = body(Api(server).call("GET", "/+status"))
    assert enveloped["type"] == "status" and "devpi-server" in enveloped["result"]["versioninfo"]


def test_secrets_not_in_the_access_log(server: DevpidProcess) -> None:
    api = Api(server)
    api.call("PUT", "/logged", {"password": "sup3rsecret"})
    api.login("logged", "sup3rsecret")
    api.call("GET", "/+api", Authorization=basic("logged", "sup3rsecret"))
    text = server.log_text()
    assert "sup3rsecret" not in text
    assert api.auth is not None and api.auth not in text


def register(server: DevpidProcess, index: str, project: str, version: str) -> None:
    """A private version, written as the upload of the next issue will write it: one
    transaction in the serverdir, which the running devpid picks up on its next request."""
    database = PrivateDatabase(server.serverdir / "private.sqlite")
    database.open()
    try:
        data = PrivateData(database)
        data.set_version(index, project, version, {"name": project, "version": version}, "test")
    finally:
        database.close()


def test_dependency_confusion_guard(server: DevpidProcess) -> None:
    api = Api(server)
    api.call("PUT", "/conf", {"password": "pw"})
    api.login("conf", "pw")
    assert api.call("PUT", "/conf/dev", {"bases": "root/pypi"}).status == 200
    # not private: the mirror's versions come through the base
    assert set(body(api.call("GET", "/conf/dev/devpid-demo-lib"))["result"]) == {"1.0", "2.0"}
    register(server, "conf/dev", "devpid-demo-lib", "0.1")
    # private now: the mirror is not even asked, its versions are hidden
    assert set(body(api.call("GET", "/conf/dev/devpid-demo-lib"))["result"]) == {"0.1"}
    hidden = http_get(server.url + "/conf/dev/+simple/devpid-demo-lib/", Accept="text/html")
    # a registered version without files: the project is private, its page has no links
    assert hidden.status == 200 and b"/+f/" not in hidden.body
    # whitelisted: the mirror's versions are back
    api.call("PATCH", "/conf/dev", ["mirror_whitelist+=devpid-demo-lib"])
    assert set(body(api.call("GET", "/conf/dev/devpid-demo-lib"))["result"]) == {
        "0.1",
        "1.0",
        "2.0",
    }
    shown = http_get(server.url + "/conf/dev/+simple/devpid-demo-lib/", Accept="text/html")
    assert shown.status == 200 and b"/root/pypi/+f/" in shown.body
    # a child with an empty whitelist: intersection hides the mirror again, union shows it
    api.call("PUT", "/conf/child", {"bases": "conf/dev"})
    assert set(body(api.call("GET", "/conf/child/devpid-demo-lib"))["result"]) == {"0.1"}
    api.call("PATCH", "/conf/child", ["mirror_whitelist_inheritance=union"])
    assert set(body(api.call("GET", "/conf/child/devpid-demo-lib"))["result"]) == {
        "0.1",
        "1.0",
        "2.0",
    }


def test_pip_and_uv_install_through_a_stage_with_a_token(
    server: DevpidProcess, tmp_path: Path
) -> None:
    api = Api(server)
    api.call("PUT", "/inst", {"password": "pw"})
    token = api.login("inst", "pw")
    api.call("PUT", "/inst/dev", {"bases": "root/pypi"})
    host = server.url.removeprefix("http://")
    index = f"http://inst:{quote(token, safe='')}@{host}/inst/dev/+simple/"
    done = pip_install(index, tmp_path / "pip", "devpid-demo-app")
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "pip").glob("devpid_demo_app*"))
    done = uv_install(index, tmp_path / "uv", "devpid-demo-app")
    assert done.returncode == 0, done.stderr
    assert token not in server.log_text()


def test_a_password_in_a_mirror_url_is_never_shown(server: DevpidProcess) -> None:
    api = Api(server)
    api.call("PUT", "/secretive", {"password": "pw"})
    api.login("secretive", "pw")
    url = "http://user:hunter2@localhost:9/simple/"
    created = api.call("PUT", "/secretive/mir", {"type": "mirror", "mirror_url": url})
    assert created.status == 200
    for answer in (created, api.call("GET", "/secretive/mir"), api.call("GET", "/secretive")):
        assert b"hunter2" not in answer.body and b"user:***@localhost" in answer.body
    # devpi-client's dict PATCH sends the shown URL back: the real one is kept
    shown = body(api.call("GET", "/secretive/mir?no_projects="))["result"]
    assert api.call("PATCH", "/secretive/mir", {**shown, "title": "T"}).status == 200
    database = PrivateDatabase(server.serverdir / "private.sqlite")
    database.open()
    try:
        assert PrivateData(database).index("secretive/mir")["mirror_url"] == url  # type: ignore[index]
    finally:
        database.close()


def test_deleting_a_mirror_index_removes_its_cache(
    server: DevpidProcess, shared_upstream: UpstreamProcess
) -> None:
    api = Api(server)
    api.call("PUT", "/gone", {"password": "pw"})
    api.login("gone", "pw")
    config = {"type": "mirror", "mirror_url": shared_upstream.simple_url}
    assert api.call("PUT", "/gone/mir", config).status == 200
    page = http_get(server.url + "/gone/mir/+simple/devpid-demo-lib/", Accept=JSON_V1)
    url = json.loads(page.body)["files"][0]["url"]
    assert http_get(server.url + url).status == 200
    pages = server.serverdir / "+pages" / "gone" / "mir"
    files = server.serverdir / "+files" / "gone" / "mir"
    assert pages.is_dir() and files.is_dir()
    assert api.call("DELETE", "/gone/mir").status == 201
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        pages.exists()
        or files.exists()
        or list(pages.parent.glob(".mir.*"))
        or list(files.parent.glob(".mir.*"))
    ):
        time.sleep(0.05)
    assert not pages.exists() and not files.exists()
    assert not list(pages.parent.glob(".mir.*")) and not list(files.parent.glob(".mir.*"))
    # a new index of that name starts empty, and works
    assert api.call("PUT", "/gone/mir", config).status == 200
    again = http_get(server.url + "/gone/mir/+simple/devpid-demo-lib/", Accept=JSON_V1)
    assert again.status == 200


def test_guesses_are_throttled_and_a_stale_password_locks_nobody_out(
    server: DevpidProcess,
) -> None:
    api = Api(server)
    api.call("PUT", "/guessed", {"password": "right"})
    api.call("PUT", "/stale", {"password": "right"})

    def whoami(user: str, secret: str) -> str:
        answer = Api(server).call("GET", "/+api", Authorization=basic(user, secret))
        return str(body(answer)["result"]["authstatus"][0])

    # pip with an old password in its index URL, request after request: counted once
    assert [whoami("stale", "old") for _ in range(10)] == ["noauth"] * 10
    assert whoami("stale", "right") == "ok"
    for n in range(6):
        whoami("guessed", f"guess{n}")
    assert api.call("POST", "/+login", {"user": "guessed", "password": "right"}).status == 429
