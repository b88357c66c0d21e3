"""Uploads end to end: twine, devpi upload, pip and uv against a real ``twistd -n devpid``.

One devpid (module scope) in front of a local upstream that has the demo
projects and a public ``six``. Alice uploads ``acme-core`` and ``acme-app``
(which depends on ``acme-core`` and on the upstream's ``devpid-demo-lib``)
with twine (a ``.pypirc``, ``-u``/``-p``, an API token) and with devpi-client;
then installs them with pip and uv into fresh venvs, checks the project and
simple JSON, re-uploads to a non-volatile index, deletes, pushes and yanks.
Last, the dependency-confusion guard: a private ``six`` hides the mirror's,
which is never even asked, until ``mirror_whitelist`` lets it in.

The tests run in file order and build on each other's uploads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import installer_env
from tests.fixtures.devpi_client import DevpiClient, client_venv
from tests.fixtures.devpid_process import DevpidProcess, devpid_env
from tests.fixtures.distbuilder import Dist, _build_sdist, _build_wheel, build_repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@attrs.frozen
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


ALICE = basic("alice", "alicepw")


def call(
    server: DevpidProcess,
    method: str,
    path: str,
    body: Any = None,
    auth: str | None = ALICE,
    accept: str = "application/json",
) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    url = path if path.startswith("http") else server.url + path
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", accept)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", auth)
    try:
        with _NO_PROXY.open(request, timeout=60) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return Answer(response.status, response.reason, headers, response.read())
    except urllib.error.HTTPError as e:
        headers = {k.lower(): v for k, v in e.headers.items()}
        return Answer(e.code, e.reason, headers, e.read())


@attrs.frozen
class Setup:
    server: DevpidProcess
    upstream: UpstreamProcess
    dists: Path  # built distributions, by file name


def build(dist: Dist, directory: Path, module_source: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if dist.kind == "wheel":
        if module_source is not None:
            # a rebuild with other content under the same file name
            dist = _Rebuilt(dist.project, dist.version, dist.kind, dist.requires_dist)
        _build_wheel(dist, directory)
        (directory / f"{dist.filename}.metadata").unlink()
    else:
        _build_sdist(dist, directory)
    return directory / dist.filename


@attrs.frozen
class _Rebuilt(Dist):
    def module_source(self) -> bytes:
        return b'VERSION = "rebuilt"\n'


CORE_10_WHEEL = Dist("acme-core", "1.0", "wheel")
CORE_10_SDIST = Dist("acme-core", "1.0", "sdist")
CORE_20_WHEEL = Dist("acme-core", "2.0", "wheel")
CORE_30_WHEEL = Dist("acme-core", "3.0", "wheel")
APP_WHEEL = Dist("acme-app", "1.0", "wheel", requires_dist=("acme-core>=1.0", "devpid-demo-lib"))
PRIVATE_SIX = Dist("six", "99.0", "wheel")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("uploads")
    repository = build_repository(base / "upstream", extra=[Dist("six", "1.0", "wheel")])
    dists = base / "dists"
    for dist in (CORE_10_WHEEL, CORE_10_SDIST, CORE_20_WHEEL, CORE_30_WHEEL, APP_WHEEL):
        build(dist, dists)
    build(PRIVATE_SIX, base / "six")
    with (
        UpstreamProcess.start(repository.root) as upstream,
        DevpidProcess.start(base / "serverdir", upstream.simple_url) as server,
    ):
        answer = call(server, "PUT", "/alice", {"password": "alicepw"}, auth=None)
        assert answer.status == 201, answer
        for index, config in (
            ("dev", {"bases": "root/pypi"}),
            ("stable", {"bases": "", "volatile": False}),
            ("prod", {"bases": ""}),
        ):
            answer = call(server, "PUT", f"/alice/{index}", config)
            assert answer.status in (200, 201), answer
        yield Setup(server, upstream, dists)


def run(
    *command: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=300,
        env=env if env is not None else installer_env(),
    )


def twine(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("twine")
    command: list[str | Path] = [client_venv() / "bin" / "twine"] if binary is None else [binary]
    env = installer_env()
    env.update(TWINE_NON_INTERACTIVE="1", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    for key in ("TWINE_USERNAME", "TWINE_PASSWORD", "TWINE_REPOSITORY", "TWINE_REPOSITORY_URL"):
        env.pop(key, None)
    return run(*command, "upload", "--disable-progress-bar", *args, env=env)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def links(setup: Setup, index: str, project: str) -> dict[str, list[dict[str, Any]]]:
    """version -> its ``+links``, of this index only."""
    answer = call(setup.server, "GET", f"/{index}/{project}?ignore_bases=")
    assert answer.status == 200, answer
    return {version: data.get("+links", []) for version, data in answer.json()["result"].items()}


def release_links(setup: Setup, index: str, project: str, version: str) -> list[dict[str, Any]]:
    return [link for link in links(setup, index, project)[version] if link["rel"] == "releasefile"]


def simple_json(setup: Setup, index: str, project: str) -> dict[str, Any]:
    answer = call(setup.server, "GET", f"/{index}/+simple/{project}/", accept=SIMPLE_JSON)
    assert answer.status == 200, answer
    result: dict[str, Any] = answer.json()
    return result


# -- uploading ----------------------------------------------------------------


def test_twine_uploads_with_pypirc_password_and_token(setup: Setup, tmp_path: Path) -> None:
    url = f"{setup.server.url}/alice/dev/"
    pypirc = tmp_path / "pypirc"
    pypirc.write_text(
        "[distutils]\nindex-servers = devpid\n\n"
        f"[devpid]\nrepository = {url}\nusername = alice\npassword = alicepw\n"
    )
    ok(twine("--config-file", pypirc, "-r", "devpid", setup.dists / CORE_10_WHEEL.filename))
    ok(
        twine(
            "--repository-url",
            url,
            "-u",
            "alice",
            "-p",
            "alicepw",
            setup.dists / CORE_10_SDIST.filename,
            setup.dists / CORE_30_WHEEL.filename,
        )
    )
    made = run(
        sys.executable,
        "-m",
        "devpid.cli",
        "token",
        "--serverdir",
        setup.server.serverdir,
        "create",
        "alice",
        "--index",
        "alice/dev",
        env=devpid_env(),
    )
    token_match = re.search(r"devpid_\S+_\S+", made.stdout)
    assert made.returncode == 0 and token_match, made.stdout + made.stderr
    token = token_match.group(0)
    ok(
        twine(
            "--repository-url",
            url,
            "-u",
            "__token__",
            "-p",
            token,
            setup.dists / APP_WHEEL.filename,
        )
    )
    # a token limited to alice/dev does not open alice/prod
    refused = twine(
        "--repository-url",
        f"{setup.server.url}/alice/prod/",
        "-u",
        "__token__",
        "-p",
        token,
        setup.dists / APP_WHEEL.filename,
    )
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
    core = links(setup, "alice/dev", "acme-core")
    assert sorted(core) == ["1.0", "3.0"]
    assert sorted(link["href"].rsplit("/", 1)[1] for link in core["1.0"]) == sorted(
        [CORE_10_WHEEL.filename, CORE_10_SDIST.filename]
    )
    assert [link["href"].rsplit("/", 1)[1] for link in links(setup, "alice/dev", "acme-app")["1.0"]]


def test_devpi_upload_with_docs(setup: Setup, tmp_path: Path) -> None:
    devpi = DevpiClient(client_venv(), tmp_path / "client")
    devpi("use", f"{setup.server.url}/alice/dev").ok()
    devpi("login", "alice", "--password", "alicepw").ok()
    upload = tmp_path / "upload"
    upload.mkdir()
    shutil.copy(setup.dists / CORE_20_WHEEL.filename, upload)
    with zipfile.ZipFile(upload / "acme_core-2.0.doc.zip", "w") as doc:
        doc.writestr("index.html", "<html><body>acme-core manual</body></html>")
        doc.writestr("sub/page.html", "<html><body>a sub page</body></html>")
    out = devpi("upload", "--from-dir", str(upload)).ok().out
    assert CORE_20_WHEEL.filename in out, out
    page = call(setup.server, "GET", "/alice/dev/acme-core/2.0/+doc/index.html", accept="*/*")
    assert page.status == 200 and b"acme-core manual" in page.body, page
    rels = sorted(link["rel"] for link in links(setup, "alice/dev", "acme-core")["2.0"])
    assert rels == ["doczip", "releasefile"]
    # and a doc zip alone, by its path (--only-docs builds docs; a path is uploaded as is)
    with zipfile.ZipFile(tmp_path / "acme_core-3.0.doc.zip", "w") as doc:
        doc.writestr("index.html", "<html><body>version three</body></html>")
    devpi("upload", str(tmp_path / "acme_core-3.0.doc.zip")).ok()
    page = call(setup.server, "GET", "/alice/dev/acme-core/3.0/+doc/index.html", accept="*/*")
    assert page.status == 200 and b"version three" in page.body, page


def test_a_doc_upload_keeps_the_release_metadata(setup: Setup) -> None:
    """devpi-client names a doc zip's project after its file (``acme_core``): that upload
    adds a link, it does not rewrite the name the release's own metadata gave."""
    result = call(setup.server, "GET", "/alice/dev/acme-core").json()["result"]
    assert {version: result[version]["name"] for version in ("1.0", "2.0", "3.0")} == {
        "1.0": "acme-core",
        "2.0": "acme-core",
        "3.0": "acme-core",
    }


def test_ignore_bases_without_a_value(setup: Setup) -> None:
    """devpi takes ``?ignore_bases`` with any value, or none (WebOb keeps a bare key)."""
    answer = call(setup.server, "GET", "/alice/dev/devpid-demo-lib?ignore_bases")
    assert answer.status == 200 and answer.json()["result"] == {}, answer


def test_doc_pages_in_subdirectories(setup: Setup) -> None:
    """Sphinx puts pages in subdirectories (``_static/``, ``api/``): they are served too."""
    for marker in ("+doc", "+d"):
        sub = call(setup.server, "GET", f"/alice/dev/acme-core/2.0/{marker}/sub/page.html")
        assert sub.status == 200 and b"a sub page" in sub.body, sub
        assert sub.headers["content-type"].startswith("text/html"), sub


# -- installing ---------------------------------------------------------------


def installed(python: Path) -> dict[str, str]:
    done = run(
        python,
        "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    ok(done)
    return {name.lower(): version for name, version in json.loads(done.stdout).items()}


def test_pip_and_uv_install_private_and_public_packages(setup: Setup, tmp_path: Path) -> None:
    index_url = f"{setup.server.url}/alice/dev/+simple/"
    ok(run(sys.executable, "-m", "venv", tmp_path / "pip-venv"))
    pip_python = tmp_path / "pip-venv" / "bin" / "python"
    ok(
        run(
            pip_python,
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--index-url",
            index_url,
            "acme-app",
        )
    )
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    ok(run(uv, "venv", "--no-config", "--python", sys.executable, tmp_path / "uv-venv"))
    uv_python = tmp_path / "uv-venv" / "bin" / "python"
    ok(
        run(
            uv,
            "pip",
            "install",
            "--no-cache",
            "--no-config",
            "--python",
            uv_python,
            "--index-url",
            index_url,
            "acme-app",
        )
    )
    for python in (pip_python, uv_python):
        versions = installed(python)
        assert versions["acme-app"] == "1.0", versions
        assert versions["acme-core"] == "3.0", versions
        assert versions["devpid-demo-lib"] == "2.0", versions
        ok(run(python, "-c", "import acme_app, acme_core, devpid_demo_lib"))


# -- non-volatile indexes -------------------------------------------------------


def test_non_volatile_identical_reupload_and_conflict(setup: Setup, tmp_path: Path) -> None:
    url = f"{setup.server.url}/alice/stable/"
    wheel = setup.dists / CORE_10_WHEEL.filename
    auth = ("-u", "alice", "-p", "alicepw", "--repository-url", url)
    ok(twine(*auth, wheel))
    out = ok(twine(*auth, "--verbose", wheel))
    assert "200" in out, out
    assert "Upload of identical file to non volatile index" in out or "200 OK" in out, out
    rebuilt = build(CORE_10_WHEEL, tmp_path / "rebuilt", module_source=b"other")
    assert rebuilt.read_bytes() != wheel.read_bytes()
    refused = twine(*auth, rebuilt)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0, text
    assert "409" in text and f"{CORE_10_WHEEL.filename} already exists in non-volatile" in text
    # twine 7 allows --skip-existing for PyPI only; its test for "exists" is a 409
    skipped = twine(*auth, "--skip-existing", rebuilt)
    text = skipped.stdout + skipped.stderr
    assert (skipped.returncode == 0 and "Skipping" in text) or "UnsupportedConfiguration" in text
    # the first upload is still the one served
    [link] = links(setup, "alice/stable", "acme-core")["1.0"]
    served = call(setup.server, "GET", link["href"], accept="*/*")
    assert served.body == wheel.read_bytes()


def test_non_volatile_docs_and_deletes(setup: Setup, tmp_path: Path) -> None:
    devpi = DevpiClient(client_venv(), tmp_path / "client")
    devpi("use", f"{setup.server.url}/alice/stable").ok()
    devpi("login", "alice", "--password", "alicepw").ok()
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, text in ((first, "first"), (second, "second")):
        directory.mkdir()
        with zipfile.ZipFile(directory / "acme_core-1.0.doc.zip", "w") as doc:
            doc.writestr("index.html", f"<p>{text}</p>")
    devpi("upload", str(first / "acme_core-1.0.doc.zip")).ok()
    devpi("upload", str(first / "acme_core-1.0.doc.zip")).ok()  # identical: fine
    refused = devpi("upload", str(second / "acme_core-1.0.doc.zip"))
    assert refused.returncode != 0 and "409" in refused.out, refused.out
    page = call(setup.server, "GET", "/alice/stable/acme-core/1.0/+doc/index.html", accept="*/*")
    assert page.status == 200 and b"first" in page.body, page
    for path in ("/alice/stable/acme-core/1.0", "/alice/stable/acme-core"):
        answer = call(setup.server, "DELETE", path)
        assert answer.status == 403, answer
        assert "non-volatile" in answer.json()["message"], answer
    assert "1.0" in links(setup, "alice/stable", "acme-core")


# -- what the index shows --------------------------------------------------------


def test_project_json_and_simple_json(setup: Setup) -> None:
    answer = call(setup.server, "GET", "/alice/dev/acme-core")
    assert answer.status == 200, answer
    result = answer.json()["result"]
    assert {"1.0", "2.0", "3.0"} <= set(result)
    for version in ("1.0", "3.0"):
        assert result[version]["version"] == version
        for link in result[version]["+links"]:
            assert link["href"].startswith(f"{setup.server.url}/alice/dev/+f/"), link
            assert link["hash_spec"] == "sha256=" + link["hashes"]["sha256"]
            assert [entry["what"] for entry in link["log"]] == ["upload"], link
            assert link["log"][0]["who"] == "alice" and link["log"][0]["dst"] == "alice/dev"
    # ignore_bases: devpid-demo-lib lives only in the mirror
    answer = call(setup.server, "GET", "/alice/dev/devpid-demo-lib?ignore_bases=")
    assert answer.status == 200 and answer.json()["result"] == {}, answer
    answer = call(setup.server, "GET", "/alice/dev/devpid-demo-lib")
    assert answer.status == 200 and "2.0" in answer.json()["result"], answer
    page = simple_json(setup, "alice/dev", "acme-core")
    by_name = {entry["filename"]: entry for entry in page["files"]}
    wheel = by_name[CORE_10_WHEEL.filename]
    sdist = by_name[CORE_10_SDIST.filename]
    assert isinstance(wheel["core-metadata"], dict), wheel
    assert sdist.get("core-metadata", False) is False, sdist
    base = f"{setup.server.url}/alice/dev/+simple/acme-core/"
    file_url = urllib.request.urljoin(base, wheel["url"]).split("#", 1)[0]
    metadata = call(setup.server, "GET", file_url + ".metadata", accept="*/*")
    assert metadata.status == 200, metadata
    assert metadata.body == CORE_10_WHEEL.metadata()
    assert hashlib.sha256(metadata.body).hexdigest() == wheel["core-metadata"]["sha256"]


def test_simple_html_page_and_file_answers(setup: Setup) -> None:
    page = call(setup.server, "GET", "/alice/dev/+simple/acme-core/", accept="text/html")
    assert page.status == 200, page
    text = page.body.decode()
    [anchor] = [line for line in text.splitlines() if CORE_10_WHEEL.filename + "</a>" in line]
    assert "data-core-metadata=" in anchor or "data-dist-info-metadata=" in anchor, anchor
    assert 'data-requires-python="&gt;=3.8"' in anchor, anchor
    [link] = [
        link
        for link in links(setup, "alice/dev", "acme-core")["1.0"]
        if link["href"].endswith(".whl")
    ]
    head = call(setup.server, "HEAD", link["href"], accept="*/*")
    size = (setup.dists / CORE_10_WHEEL.filename).stat().st_size
    assert head.status == 200 and head.headers["content-length"] == str(size), head
    meta = call(setup.server, "GET", link["href"])
    assert meta.status == 200, meta
    assert meta.json()["result"]["hashes"]["sha256"] == link["hashes"]["sha256"], meta


def test_re_upload_to_a_volatile_index_replaces_the_file(setup: Setup, tmp_path: Path) -> None:
    rebuilt = build(CORE_30_WHEEL, tmp_path / "rebuilt", module_source=b"other")
    # the upload URL without its trailing slash works too
    url = f"{setup.server.url}/alice/dev"
    ok(twine("--repository-url", url, "-u", "alice", "-p", "alicepw", rebuilt))
    [link] = release_links(setup, "alice/dev", "acme-core", "3.0")
    assert [entry["what"] for entry in link["log"]] == ["overwrite", "upload"], link
    assert link["log"][0]["count"] == 1, link
    served = call(setup.server, "GET", link["href"], accept="*/*")
    assert served.body == rebuilt.read_bytes()
    ok(
        twine(
            "--repository-url",
            url,
            "-u",
            "alice",
            "-p",
            "alicepw",
            setup.dists / CORE_30_WHEEL.filename,
        )
    )
    [link] = release_links(setup, "alice/dev", "acme-core", "3.0")
    assert link["log"][0]["count"] == 2, link


# -- push, yank, delete --------------------------------------------------------------


def test_push_then_install_from_the_target(setup: Setup, tmp_path: Path) -> None:
    devpi = DevpiClient(client_venv(), tmp_path / "client")
    devpi("use", f"{setup.server.url}/alice/dev").ok()
    devpi("login", "alice", "--password", "alicepw").ok()
    devpi("push", "acme-core==1.0", "alice/prod").ok()
    pushed = links(setup, "alice/prod", "acme-core")["1.0"]
    assert sorted(link["href"].rsplit("/", 1)[1] for link in pushed) == sorted(
        [CORE_10_WHEEL.filename, CORE_10_SDIST.filename]
    )
    for link in pushed:
        assert link["href"].startswith(f"{setup.server.url}/alice/prod/+f/")
        assert link["log"][-1]["what"] == "push", link
    target = tmp_path / "target"
    ok(
        run(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--only-binary",
            ":all:",
            "--target",
            target,
            "--index-url",
            f"{setup.server.url}/alice/prod/+simple/",
            "acme-core",
        )
    )
    assert (target / "acme_core-1.0.dist-info").is_dir()


def pip_target(setup: Setup, target: Path, index: str, *requirements: str) -> str:
    return ok(
        run(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            target,
            "--index-url",
            f"{setup.server.url}/{index}/+simple/",
            *requirements,
        )
    )


def test_yank_hides_a_version_from_installers(setup: Setup, tmp_path: Path) -> None:
    answer = call(setup.server, "PATCH", "/alice/dev/acme-core/3.0", {"yanked": "broken"})
    assert answer.status == 200, answer
    page = simple_json(setup, "alice/dev", "acme-core")
    by_name = {entry["filename"]: entry for entry in page["files"]}
    assert by_name[CORE_30_WHEEL.filename]["yanked"] == "broken"
    assert by_name[CORE_20_WHEEL.filename].get("yanked", False) is False
    pip_target(setup, tmp_path / "target", "alice/dev", "--only-binary", ":all:", "acme-core")
    assert (tmp_path / "target" / "acme_core-2.0.dist-info").is_dir()
    answer = call(setup.server, "PATCH", "/alice/dev/acme-core/3.0", {"yanked": False})
    assert answer.status == 200, answer
    page = simple_json(setup, "alice/dev", "acme-core")
    by_name = {entry["filename"]: entry for entry in page["files"]}
    assert by_name[CORE_30_WHEEL.filename].get("yanked", False) is False


def test_delete_version_then_its_files_are_gone(setup: Setup, tmp_path: Path) -> None:
    before = links(setup, "alice/dev", "acme-core")["1.0"]
    anonymous = call(setup.server, "DELETE", "/alice/dev/acme-core/1.0", auth=None)
    assert anonymous.status in (401, 403), anonymous
    answer = call(setup.server, "DELETE", "/alice/dev/acme-core/1.0")
    assert answer.status == 200, answer
    for link in before:
        gone = call(setup.server, "GET", link["href"], accept="*/*")
        assert gone.status == 410, (link["href"], gone)
    assert "1.0" not in links(setup, "alice/dev", "acme-core")
    # pushed copies in alice/prod are untouched
    for link in links(setup, "alice/prod", "acme-core")["1.0"]:
        assert call(setup.server, "GET", link["href"], accept="*/*").status == 200
    devpi = DevpiClient(client_venv(), tmp_path / "client")
    devpi("use", f"{setup.server.url}/alice/dev").ok()
    devpi("login", "alice", "--password", "alicepw").ok()
    doc_links = links(setup, "alice/dev", "acme-core")["2.0"]
    devpi("remove", "-y", "acme-core==2.0").ok()
    assert sorted(links(setup, "alice/dev", "acme-core")) == ["3.0"]
    for link in doc_links:
        assert call(setup.server, "GET", link["href"], accept="*/*").status == 410
    page = call(setup.server, "GET", "/alice/dev/acme-core/2.0/+doc/index.html", accept="*/*")
    assert page.status == 404, page


def test_re_upload_after_delete_serves_the_file_again(setup: Setup) -> None:
    """A tombstone (410) of a deleted file does not outlive a new upload of the same bytes."""
    url = f"{setup.server.url}/alice/dev/"
    ok(
        twine(
            "--repository-url",
            url,
            "-u",
            "alice",
            "-p",
            "alicepw",
            setup.dists / "acme_core-1.0-py3-none-any.whl",
        )
    )
    [link] = release_links(setup, "alice/dev", "acme-core", "1.0")
    served = call(setup.server, "GET", link["href"], accept="*/*")
    assert served.status == 200, served
    assert served.body == (setup.dists / CORE_10_WHEEL.filename).read_bytes()
    metadata = call(setup.server, "GET", link["href"] + ".metadata", accept="*/*")
    assert metadata.status == 200, metadata


def test_bad_yank_values_and_pushed_docs(setup: Setup, tmp_path: Path) -> None:
    for value in (5, [], {"a": 1}, "x" * 100_000):
        answer = call(setup.server, "PATCH", "/alice/dev/acme-core/3.0", {"yanked": value})
        assert 400 <= answer.status < 500, (value if len(str(value)) < 50 else "long", answer)
    answer = call(setup.server, "PATCH", "/alice/dev/acme-core/9.9", {"yanked": True})
    assert answer.status == 404, answer
    page = simple_json(setup, "alice/dev", "acme-core")
    assert all(entry.get("yanked", False) is False for entry in page["files"]), page
    # push a version with docs: the docs are served from the target too
    answer = call(
        setup.server,
        "POST",
        "/alice/dev",
        {"name": "acme-core", "version": "3.0", "targetindex": "alice/prod"},
    )
    assert answer.status == 200, answer
    page = call(setup.server, "GET", "/alice/prod/acme-core/3.0/+doc/index.html", accept="*/*")
    assert page.status == 200 and b"version three" in page.body, page


# -- dependency confusion ---------------------------------------------------------


def test_a_private_name_hides_the_mirror_until_whitelisted(setup: Setup, tmp_path: Path) -> None:
    setup.upstream.reset_stats()
    wheel = tmp_path.parent / "six" / PRIVATE_SIX.filename
    if not wheel.exists():
        wheel = build(PRIVATE_SIX, tmp_path / "six")
    url = f"{setup.server.url}/alice/dev/"
    ok(twine("--repository-url", url, "-u", "alice", "-p", "alicepw", wheel))
    pip_target(setup, tmp_path / "target", "alice/dev", "six")
    assert (tmp_path / "target" / "six-99.0.dist-info").is_dir()
    page = simple_json(setup, "alice/dev", "six")
    assert [entry["filename"] for entry in page["files"]] == [PRIVATE_SIX.filename]
    assert not (setup.server.serverdir / "+pages" / "root" / "pypi" / "six.json").exists()
    gets = setup.upstream.stats()["gets"]
    assert not any("six" in path for path in gets), gets
    answer = call(setup.server, "PATCH", "/alice/dev", ["mirror_whitelist=six"])
    assert answer.status == 200, answer
    page = simple_json(setup, "alice/dev", "six")
    names = sorted(entry["filename"] for entry in page["files"])
    assert names == sorted([PRIVATE_SIX.filename, "six-1.0-py3-none-any.whl"]), names
    assert any("/simple/six/" in path for path in setup.upstream.stats()["gets"])


def test_the_serverdir_is_consistent(setup: Setup) -> None:
    done = run(
        sys.executable,
        "-m",
        "devpid.cli",
        "fsck",
        "--serverdir",
        setup.server.serverdir,
        env=devpid_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    uploads = setup.server.serverdir / "+files" / "+uploads"
    assert not uploads.exists() or not os.listdir(uploads)
