"""Moving a devpi site to devpid: a real devpi-server 6 export, ``devpid import --from-devpi``,
and a real devpid serving what devpi held.

The devpi-server side (once per module): users (alice with a password, bob, carol), a
mirror, a non-volatile base stage and a dev stage with bases, ACLs and a mirror
whitelist; wheels and sdists uploaded with devpi-client, a doc zip, a tox result posted as
``devpi test`` does, and a version uploaded then removed. Then ``devpi-export``.

carol's password predates devpi-server 6 at many sites: her hash in the export is
rewritten to devpi's legacy salted sha256 (devpi-server 6.20 writes only argon2, and keeps
reading what older servers wrote), so the legacy path is proven against the same export.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from devpid.auth.passwords import legacy_password_hash
from devpid.tools.bundle.format import HEADER, MANIFEST, Header, hash_file, parse_manifest
from devpid.tools.devpi_export import convert
from tests.conftest import pip_install
from tests.fixtures.devpi_server import DevpiServer, server_venv, server_version
from tests.fixtures.devpid_process import REPO_ROOT, DevpidProcess, devpid_env, http_get
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

ALICE_PASSWORD = "alice-secret"
CAROL_PASSWORD = "carol-pw"
CAROL_SALT = "c2FsdHNhbHRzYWx0c2FsdA=="
TOX_RESULT = {"reportversion": "1", "testenvs": {"py311": {"test": [{"retcode": 0}]}}}
DOC_HTML = "<html><body><h1>devpid-private docs</h1></body></html>"
PRIVATE = (Dist("devpid-private", "1.0", "wheel"), Dist("devpid-private", "1.1", "wheel"))


@attrs.frozen
class Exported:
    directory: Path
    repo: Repository
    devpi_version: str
    #: the tox result's URL path on devpi (``alice/dev/+f/...``)
    toxresult_path: str


def _post_json(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Accept": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def _make_export(work: Path, upstream: UpstreamProcess) -> Exported:
    venv = server_venv()
    repo = build_repository(work / "repo", extra=PRIVATE)
    doc = work / "devpid_private-1.1.doc.zip"
    with zipfile.ZipFile(doc, "w") as z:
        z.writestr("index.html", DOC_HTML)
    with DevpiServer.start(venv, work / "devpi") as server:
        devpi = server.client(work / "client")
        devpi("login", "root", "--password", "").ok()
        devpi("user", "-c", "alice", f"password={ALICE_PASSWORD}", "email=alice@example.org").ok()
        devpi("user", "-c", "bob", "password=bob-pw").ok()
        devpi("user", "-c", "carol", "password=temporary").ok()
        # a mirror of the local upstream: devpi runs --offline-mode and never fetches from it
        devpi("index", "-c", "root/local", "type=mirror", f"mirror_url={upstream.simple_url}").ok()
        devpi("login", "alice", "--password", ALICE_PASSWORD).ok()
        devpi("index", "-c", "alice/base", "volatile=False", "title=Base").ok()
        devpi(
            "index",
            "-c",
            "alice/dev",
            "bases=alice/base,root/local",
            "acl_upload=alice,bob",
            "mirror_whitelist=devpid-demo-lib",
            "description=the dev stage",
        ).ok()
        devpi("use", "alice/base").ok()
        devpi("upload", str(repo.path("devpid_demo_sdist-0.1.tar.gz"))).ok()
        devpi("use", "alice/dev").ok()
        uploads = [
            "devpid_demo_lib-2.0-py3-none-any.whl",
            "devpid_demo_lib-2.0.tar.gz",
            "devpid_demo_app-1.0-py3-none-any.whl",
            *(dist.filename for dist in PRIVATE),
        ]
        devpi("upload", *(str(repo.path(name)) for name in uploads)).ok()
        devpi("upload", str(doc)).ok()
        devpi("remove", "-y", "devpid-private==1.0").ok()
        wheel = PRIVATE[1].filename
        sha256 = repo.sha256(wheel)
        release = f"{server.url}/alice/dev/+f/{sha256[:3]}/{sha256[3:16]}/{wheel}"
        posted = _post_json(release, TOX_RESULT)
        toxresult_path = str(posted["result"]).partition("#")[0]
    server.export(work / "export")
    _give_carol_a_legacy_password(work / "export" / "dataindex.json")
    return Exported(work / "export", repo, server_version(venv), toxresult_path)


def _give_carol_a_legacy_password(dataindex: Path) -> None:
    data = json.loads(dataindex.read_text())
    carol = data["users"]["carol"]
    carol["pwsalt"] = CAROL_SALT
    carol["pwhash"] = legacy_password_hash(CAROL_SALT, CAROL_PASSWORD)
    dataindex.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Exported:
    return _make_export(tmp_path_factory.mktemp("devpi-site"), shared_upstream)


def _devpid_import(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devpid.cli", "import", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=devpid_env(),
        cwd=REPO_ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def imported(
    exported: Exported, tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[tuple[DevpidProcess, str]]:
    serverdir = tmp_path_factory.mktemp("devpid-site") / "serverdir"
    done = _devpid_import("--from-devpi", "--serverdir", str(serverdir), str(exported.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    with DevpidProcess.start(serverdir, shared_upstream.simple_url) as process:
        yield process, done.stdout + done.stderr


def _json(process: DevpidProcess, path: str, **headers: str) -> dict[str, object]:
    response = process.get(path, Accept="application/json", **headers)
    assert response.status == 200, (path, response.status, response.body[:300])
    result: dict[str, object] = json.loads(response.body)["result"]
    return result


def _login(process: DevpidProcess, user: str, password: str) -> int:
    request = urllib.request.Request(
        process.url + "/+login",
        data=json.dumps({"user": user, "password": password}).encode(),
        method="POST",
        headers={"Accept": "application/json", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_export_converts_to_a_whole_bundle(exported: Exported, tmp_path: Path) -> None:
    """The converter's output, read back with the format's own rules."""
    warnings = convert(exported.directory, tmp_path)
    assert any("carol" in w and "legacy" in w for w in warnings), warnings
    header = Header.from_bytes((tmp_path / HEADER).read_bytes())
    assert header.source["kind"] == "devpi-server"
    assert header.source["version"] in exported.devpi_version
    manifest = (tmp_path / MANIFEST).read_bytes()
    assert hash_file(tmp_path / MANIFEST)[1] == header.manifest_sha256
    entries = parse_manifest(manifest)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == sorted([HEADER, MANIFEST, *(e.path for e in entries)])
    for entry in entries:
        assert hash_file(tmp_path / entry.path) == (entry.size, entry.sha256)
    sha256 = exported.repo.sha256(PRIVATE[1].filename)
    wheel = f"files/alice/dev/+f/{sha256[:3]}/{sha256[3:16]}/{PRIVATE[1].filename}"
    assert {wheel, wheel + ".metadata"} <= {e.path for e in entries}
    removed = exported.repo.sha256(PRIVATE[0].filename)
    assert not any(removed[:16] in e.path.replace("/", "") for e in entries)


def test_users_log_in_with_their_devpi_passwords(imported: tuple[DevpidProcess, str]) -> None:
    process, output = imported
    assert "carol" in output and "legacy" in output  # the import says so
    assert _login(process, "alice", ALICE_PASSWORD) == 200
    assert _login(process, "alice", "wrong") == 401
    assert _login(process, "bob", "bob-pw") == 200
    assert _login(process, "carol", CAROL_PASSWORD) == 200
    assert _login(process, "carol", "temporary") == 401
    assert _login(process, "root", "") == 200
    alice = _json(process, "/alice")
    assert alice["email"] == "alice@example.org"
    assert "pwhash" not in alice


def test_indexes_keep_their_configuration(imported: tuple[DevpidProcess, str]) -> None:
    process, _ = imported
    dev = _json(process, "/alice/dev")
    assert dev["type"] == "stage" and dev["volatile"] is True
    assert dev["bases"] == ["alice/base", "root/local"]
    assert dev["acl_upload"] == ["alice", "bob"]
    assert dev["mirror_whitelist"] == ["devpid-demo-lib"]
    assert dev["description"] == "the dev stage"
    base = _json(process, "/alice/base")
    assert base["volatile"] is False and base["title"] == "Base"
    mirror = _json(process, "/root/local")
    assert mirror["type"] == "mirror"


def test_pip_installs_the_uploads_through_devpid(
    imported: tuple[DevpidProcess, str], tmp_path: Path
) -> None:
    process, _ = imported
    index = f"{process.url}/alice/dev/+simple/"
    done = pip_install(
        index, tmp_path / "t", "devpid-private", "devpid-demo-app", "devpid-demo-sdist"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    installed = {p.name for p in (tmp_path / "t").iterdir()}
    assert "devpid_private-1.1.dist-info" in installed
    assert "devpid_demo_app-1.0.dist-info" in installed
    assert any(name.startswith("devpid_demo_sdist-0.1") for name in installed)


def test_the_removed_version_stays_removed(imported: tuple[DevpidProcess, str]) -> None:
    process, _ = imported
    page = process.get("/alice/dev/+simple/devpid-private/").body.decode()
    assert PRIVATE[1].filename in page
    assert PRIVATE[0].filename not in page
    assert process.get("/alice/dev/devpid-private/1.0", Accept="application/json").status == 404


def test_docs_and_the_tox_result_come_along(
    imported: tuple[DevpidProcess, str], exported: Exported
) -> None:
    process, _ = imported
    doc = process.get("/alice/dev/devpid-private/1.1/+doc/index.html")
    assert doc.status == 200 and b"devpid-private docs" in doc.body
    version = _json(process, "/alice/dev/devpid-private/1.1")
    links = version["+links"]
    assert isinstance(links, list)
    tox = [link for link in links if link["rel"] == "toxresult"]
    assert len(tox) == 1
    assert str(tox[0]["for_href"]).endswith(PRIVATE[1].filename)
    # every file keeps its URL path from devpi, the tox result's included
    assert str(tox[0]["href"]) == f"{process.url}/{exported.toxresult_path}"
    body = http_get(str(tox[0]["href"]))
    assert body.status == 200 and json.loads(body.body) == TOX_RESULT


def test_bob_uploads_with_basic_auth(imported: tuple[DevpidProcess, str], tmp_path: Path) -> None:
    """bob is in alice/dev's acl_upload, and his devpi password works over Basic auth."""
    process, _ = imported
    repo = build_repository(tmp_path / "repo", extra=(Dist("devpid-bob", "1.0", "wheel"),))
    wheel = repo.path("devpid_bob-1.0-py3-none-any.whl")
    boundary = "devpidboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in ((":action", "file_upload"), ("name", "devpid-bob"), ("version", "1.0"))
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{wheel.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + wheel.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    auth = base64.b64encode(b"bob:bob-pw").decode()
    request = urllib.request.Request(
        process.url + "/alice/dev/",
        data=b"".join(parts),
        method="POST",
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": f"Basic {auth}",
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        assert response.status == 200
    assert "devpid_bob-1.0" in process.get("/alice/dev/+simple/devpid-bob/").body.decode()


def test_the_import_is_clean_and_importing_again_changes_nothing(
    exported: Exported, tmp_path: Path
) -> None:
    serverdir = tmp_path / "serverdir"
    first = _devpid_import("--from-devpi", "--serverdir", str(serverdir), str(exported.directory))
    assert first.returncode == 0, first.stdout + first.stderr
    fsck = subprocess.run(
        [sys.executable, "-m", "devpid.cli", "fsck", "--serverdir", str(serverdir)],
        capture_output=True,
        text=True,
        env=devpid_env(),
        timeout=300,
    )
    assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr
    again = _devpid_import("--from-devpi", "--serverdir", str(serverdir), str(exported.directory))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing written" in again.stdout, again.stdout
