"""Bad uploads against a real ``twistd -n devpid``: a clear 4xx, and nothing left behind.

Every body is built byte by byte and sent over a raw socket, so each test
controls exactly what arrives (a lying Content-Length, a missing final
boundary, a traversal in a file name, a zip bomb). Each answer must be a 4xx
with a one-line reason phrase (devpi's way for uploads); afterwards there is
no new file under ``+files/``, nothing in ``+files/+uploads/``, no new
version, and ``devpid fsck`` says what it said before.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.fixtures.devpid_process import DevpidProcess, devpid_env, http_get
from tests.fixtures.distbuilder import Dist, _build_sdist, _build_wheel

pytestmark = pytest.mark.integration

BOUNDARY = "devpidTestBoundary7MA4YWxkTrZu0gW"
ALICE = "Basic " + base64.b64encode(b"alice:alicepw").decode()
BOB = "Basic " + base64.b64encode(b"bob:bobpw").decode()
GOOD_SDIST = Dist("bad-proj", "1.0", "sdist")
GOOD_WHEEL = Dist("bad-proj", "1.0", "wheel")


@attrs.frozen
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


Field = tuple[str, str]
FilePart = tuple[str, str, bytes]  # field name, file name, content


def multipart(
    fields: list[Field], file: FilePart | None = None, boundary: str = BOUNDARY, final: bool = True
) -> bytes:
    """A ``multipart/form-data`` body, exactly; without its final boundary if not ``final``."""
    out = io.BytesIO()
    for name, value in fields:
        out.write(f"--{boundary}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode("utf-8") + b"\r\n")
    if file is not None:
        name, filename, content = file
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        out.write(b"Content-Type: application/octet-stream\r\n\r\n")
        out.write(content + b"\r\n")
    if final:
        out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def upload_fields(name: str = "bad-proj", version: str = "1.0", **extra: str) -> list[Field]:
    fields = [(":action", "file_upload"), ("protocol_version", "1")]
    if name:
        fields.append(("name", name))
    if version:
        fields.append(("version", version))
    return fields + list(extra.items())


def post(
    server: DevpidProcess,
    path: str,
    body: bytes,
    auth: str | None = ALICE,
    content_length: int | None = None,
    boundary: str = BOUNDARY,
) -> Reply:
    """Send the request over a raw socket; read the answer even if the server cut us short."""
    port = int(server.url.rsplit(":", 1)[1])
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: localhost:{port}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body) if content_length is None else content_length}",
        "Connection: close",
    ]
    if auth:
        head.append(f"Authorization: {auth}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        # refused early (a 413 on Content-Length), the answer is waiting all the same
        with contextlib.suppress(OSError):
            sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, response.reason, headers, response.read())
    finally:
        sock.close()


def send_and_hang_up(server: DevpidProcess, path: str, body: bytes, content_length: int) -> None:
    """An upload whose client goes away before it sent all it announced."""
    port = int(server.url.rsplit(":", 1)[1])
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: localhost:{port}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {content_length}",
        f"Authorization: {ALICE}",
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)


@attrs.frozen
class Setup:
    server: DevpidProcess
    dists: Path
    fsck_status: int


def fsck(serverdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devpid.cli", "fsck", "--serverdir", str(serverdir)],
        capture_output=True,
        text=True,
        env=devpid_env(),
        timeout=120,
    )


def put(server: DevpidProcess, path: str, body: object, auth: str | None) -> None:
    request = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), method="PUT"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if auth:
        request.add_header("Authorization", auth)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        assert response.status in (200, 201)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("upload-bad")
    dists = base / "dists"
    dists.mkdir()
    _build_sdist(GOOD_SDIST, dists)
    _build_wheel(GOOD_WHEEL, dists)
    with DevpidProcess.start(base / "serverdir", "http://127.0.0.1:9/simple/") as server:
        put(server, "/alice", {"password": "alicepw"}, None)
        put(server, "/bob", {"password": "bobpw"}, None)
        put(server, "/alice/dev", {"bases": ""}, ALICE)
        # one good upload, so that "nothing new" is checked against something
        other = Dist("good-proj", "1.0", "sdist")
        _build_sdist(other, dists)
        reply = post(
            server,
            "/alice/dev/",
            multipart(
                upload_fields("good-proj"),
                ("content", other.filename, (dists / other.filename).read_bytes()),
            ),
        )
        assert reply.status == 200, reply
        yield Setup(server, dists, fsck(server.serverdir).returncode)


@attrs.frozen
class State:
    files: frozenset[str]
    versions: str


def state(setup: Setup) -> State:
    root = setup.server.serverdir / "+files"
    files = frozenset(str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir())
    answers = []
    for project in ("bad-proj", "good-proj", "foo", "x"):
        answer = http_get(f"{setup.server.url}/alice/dev/{project}", accept="application/json")
        answers.append(f"{project}:{answer.status}:{answer.body.decode(errors='replace')}")
    return State(files, "\n".join(answers))


def uploads_dir(setup: Setup) -> Path:
    return setup.server.serverdir / "+files" / "+uploads"


def leftovers(setup: Setup) -> list[str]:
    directory = uploads_dir(setup)
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def wait_for_no_leftovers(setup: Setup) -> list[str]:
    """A client that hung up is noticed by the server a moment later."""
    for _ in range(200):
        found = leftovers(setup)
        if not found:
            return found
        time.sleep(0.05)
    return leftovers(setup)


@pytest.fixture
def unchanged(setup: Setup) -> Iterator[None]:
    before = state(setup)
    yield
    assert wait_for_no_leftovers(setup) == []
    after = state(setup)
    assert after.files == before.files, after.files ^ before.files
    assert after.versions == before.versions


def check_refused(reply: Reply, status: int, *words: str) -> None:
    assert reply.status == status, reply
    assert "\n" not in reply.reason and reply.reason, reply
    for word in words:
        assert word in reply.reason, reply
    for mark in (b"Traceback", b'File "'):
        assert mark not in reply.body, reply


def sdist_bytes(setup: Setup) -> bytes:
    return (setup.dists / GOOD_SDIST.filename).read_bytes()


# -- the body itself -----------------------------------------------------------------


def test_a_client_that_hangs_up_mid_body(setup: Setup, unchanged: None) -> None:
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    cut = body[: len(body) - 20]
    send_and_hang_up(setup.server, "/alice/dev/", cut, content_length=len(body) + 1000)
    # the same, having sent only the fields and the start of the file
    send_and_hang_up(setup.server, "/alice/dev/", body[:400], content_length=len(body))


def test_a_body_without_its_final_boundary(setup: Setup, unchanged: None) -> None:
    body = multipart(
        upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)), final=False
    )
    check_refused(post(setup.server, "/alice/dev/", body), 400, "truncated")
    # and one cut in the middle of the file part, the Content-Length telling the truth
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/dev/", body[:-300]), 400)


@pytest.mark.parametrize(
    ("field", "attribute"),
    [("sha256_digest", "sha256"), ("md5_digest", "md5"), ("blake2_256_digest", "blake2_256")],
)
def test_lying_digests(setup: Setup, unchanged: None, field: str, attribute: str) -> None:
    fields = upload_fields(**{field: "0" * 32 if field == "md5_digest" else "0" * 64})
    body = multipart(fields, ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/dev/", body), 400, attribute)


@pytest.mark.parametrize(
    ("name", "version", "filename", "words"),
    [
        ("bad-proj", "1.0", "other_proj-1.0.tar.gz", ("does not match project name",)),
        ("bad-proj", "2.0", "bad_proj-1.0.tar.gz", ("does not contain version '2.0'",)),
        ("bad-proj", "1.0", "bad_proj-1.0.tar", ("is not a valid archive name",)),
        ("bad-proj", "1.0", "bad_proj-1.0.exe.txt", ("is not a valid archive name",)),
        ("bad-proj", "1.0", "../../x-1.0.tar.gz", ("invalid file name",)),
        ("bad-proj", "1.0", "a/b", ("invalid file name",)),
        ("bad-proj", "1.0", "bad_proj\\..\\x-1.0.tar.gz", ("invalid file name",)),
        ("bad-proj", "1.0", "..", ("invalid file name",)),
    ],
)
def test_bad_file_names(
    setup: Setup, unchanged: None, name: str, version: str, filename: str, words: tuple[str, ...]
) -> None:
    body = multipart(upload_fields(name, version), ("content", filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/dev/", body), 400, *words)


@pytest.mark.parametrize(
    ("filename", "content", "words"),
    [
        (GOOD_WHEEL.filename, b"PK\x03\x04 this is not a zip at all", ("not a valid wheel",)),
        (GOOD_SDIST.filename, b"", ("empty",)),
        (GOOD_WHEEL.filename, b"", ("empty",)),
        (GOOD_SDIST.filename, b"\x1f\x8b\x08\x00garbage", ("not a valid sdist",)),
        ("bad_proj-1.0.zip", b"PK\x05\x06" + b"\x00" * 10, ("not a valid",)),
    ],
)
def test_files_that_are_not_what_they_say(
    setup: Setup, unchanged: None, filename: str, content: bytes, words: tuple[str, ...]
) -> None:
    body = multipart(upload_fields(), ("content", filename, content))
    check_refused(post(setup.server, "/alice/dev/", body), 400, *words)


def test_a_wheel_whose_metadata_names_another_project(setup: Setup, unchanged: None) -> None:
    # the form and the file name say bad-proj; the file itself says good-proj
    other = Dist("good-proj", "1.0", "wheel")
    _build_wheel(other, setup.dists / "..")
    content = (setup.dists / ".." / other.filename).read_bytes()
    body = multipart(upload_fields(), ("content", GOOD_WHEEL.filename, content))
    check_refused(post(setup.server, "/alice/dev/", body), 400, "does not match project name")


# -- documentation zips -----------------------------------------------------------------


def doc_fields(name: str = "good-proj", version: str | None = "1.0") -> list[Field]:
    fields = [(":action", "doc_upload"), ("protocol_version", "1"), ("name", name)]
    if version is not None:
        fields.append(("version", version))
    return fields


def zipped(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return out.getvalue()


def zip_bomb(size: int = 100 << 20) -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("index.html", "w", force_zip64=True) as member,
    ):
        chunk = b"\x00" * (1 << 20)
        for _ in range(size >> 20):
            member.write(chunk)
    return out.getvalue()


def test_a_doc_zip_bomb(setup: Setup, unchanged: None) -> None:
    bomb = zip_bomb()
    assert len(bomb) < 1 << 20
    body = multipart(doc_fields(), ("content", "good_proj-1.0.doc.zip", bomb))
    check_refused(post(setup.server, "/alice/dev/", body), 400)
    assert not (setup.server.serverdir / "+docs" / "alice" / "dev" / "good-proj").exists()


def test_a_doc_zip_bomb_that_lies_about_its_sizes(setup: Setup, unchanged: None) -> None:
    """The headers say 1 KiB, under every ratio check; the member inflates to 16 MiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("index.html", b"\x00" * (16 << 20))
    bomb = bytearray(out.getvalue())
    lie = struct.pack("<I", 1024)
    assert bomb[:4] == b"PK\x03\x04"
    bomb[22:26] = lie  # the local header's uncompressed size
    central = bomb.index(b"PK\x01\x02")
    bomb[central + 24 : central + 28] = lie  # the central directory's
    assert zipfile.ZipFile(io.BytesIO(bytes(bomb))).infolist()[0].file_size == 1024
    body = multipart(doc_fields(), ("content", "good_proj-1.0.doc.zip", bytes(bomb)))
    check_refused(post(setup.server, "/alice/dev/", body), 400, "Bad CRC-32")
    docs = setup.server.serverdir / "+docs" / "alice" / "dev" / "good-proj"
    assert not [path for path in docs.rglob("*") if not path.is_dir()]


def test_a_doc_zip_refused_while_unpacked_leaves_no_directories(setup: Setup) -> None:
    """The test above was refused in the middle of unpacking: its version's directory
    (``+docs/alice/dev/good-proj/1.0``, for a version that has no docs) stays behind."""
    docs = setup.server.serverdir / "+docs" / "alice" / "dev" / "good-proj"
    assert not docs.exists(), sorted(str(path) for path in docs.rglob("*"))


@pytest.mark.parametrize(
    ("members", "symlink", "words"),
    [
        ({"index.html": b"ok", "../evil.html": b"x"}, None, ("leaves the directory",)),
        ({"index.html": b"ok", "a/../../evil.html": b"x"}, None, ("leaves the directory",)),
        ({"/etc/evil.html": b"x"}, None, ("absolute",)),
        ({"index.html": b"ok"}, "link.html", ("symbolic link",)),
    ],
)
def test_unsafe_doc_zip_members(
    setup: Setup,
    unchanged: None,
    members: dict[str, bytes],
    symlink: str | None,
    words: tuple[str, ...],
) -> None:
    content = zipped(members, symlink)
    body = multipart(doc_fields(), ("content", "good_proj-1.0.doc.zip", content))
    check_refused(post(setup.server, "/alice/dev/", body), 400, *words)
    assert not (setup.server.serverdir / "evil.html").exists()
    assert not (setup.server.serverdir / "+docs" / "alice" / "evil.html").exists()


def test_a_doc_zip_that_is_not_a_zip(setup: Setup, unchanged: None) -> None:
    body = multipart(doc_fields(), ("content", "good_proj-1.0.doc.zip", b"not a zip"))
    check_refused(post(setup.server, "/alice/dev/", body), 400)


def test_a_doc_upload_without_a_version_or_a_release(setup: Setup, unchanged: None) -> None:
    body = multipart(doc_fields("foo", None), ("content", "foo.doc.zip", zipped({"a.html": b"a"})))
    check_refused(
        post(setup.server, "/alice/dev/", body),
        400,
        "doczip has no version and 'foo' has no releases to derive one from",
    )


# -- sizes --------------------------------------------------------------------------------


def test_a_huge_form_field(setup: Setup, unchanged: None) -> None:
    fields = upload_fields(description="x" * ((4 << 20) + 10))
    body = multipart(fields, ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/dev/", body), 413, "description")


def test_an_upload_over_the_max_upload_size(tmp_path: Path) -> None:
    with DevpidProcess.start(
        tmp_path / "serverdir", "http://127.0.0.1:9/simple/", "--max-upload-size", "64K"
    ) as server:
        put(server, "/alice", {"password": "alicepw"}, None)
        put(server, "/alice/dev", {"bases": ""}, ALICE)
        content = os.urandom(100 << 10)
        body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, content))
        reply = post(server, "/alice/dev/", body)
        assert reply.status == 413, reply
        assert "\n" not in reply.reason
        # a lying Content-Length under the limit with a longer body: refused on the way
        reply = post(server, "/alice/dev/", body, content_length=60 << 10)
        assert 400 <= reply.status < 500, reply
        files = server.serverdir / "+files"
        assert not [p for p in files.rglob("*") if p.is_file()], list(files.rglob("*"))
        assert fsck(server.serverdir).returncode == 0


# -- who may upload where -----------------------------------------------------------------


def test_anonymous_upload(setup: Setup, unchanged: None) -> None:
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    reply = post(setup.server, "/alice/dev/", body, auth=None)
    check_refused(reply, 401)
    assert reply.headers["www-authenticate"].startswith("Basic"), reply
    wrong = "Basic " + base64.b64encode(b"alice:wrong").decode()
    reply = post(setup.server, "/alice/dev/", body, auth=wrong)
    check_refused(reply, 401)


def test_another_users_index(setup: Setup, unchanged: None) -> None:
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/dev/", body, auth=BOB), 403, "no permission")


def test_a_mirror_index(setup: Setup, unchanged: None) -> None:
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/root/pypi/", body), 404, "cannot submit to mirror index")


def test_an_index_that_does_not_exist(setup: Setup, unchanged: None) -> None:
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/nope/", body), 404)


def test_early_refusals_of_malformed_forms_still_check_permissions(
    setup: Setup, unchanged: None
) -> None:
    body = multipart(upload_fields(), ("content", "../x-1.0.tar.gz", b"x"))
    reply = post(setup.server, "/alice/dev/", body, auth=None)
    check_refused(reply, 401)
    check_refused(post(setup.server, "/root/pypi/", body), 404, "cannot submit to mirror index")


def test_an_unknown_action_and_no_content(setup: Setup, unchanged: None) -> None:
    fields = [(":action", "remove_pkg"), ("name", "bad-proj"), ("version", "1.0")]
    check_refused(post(setup.server, "/alice/dev/", multipart(fields)), 400, "not supported")
    check_refused(
        post(setup.server, "/alice/dev/", multipart(upload_fields())),
        400,
        "content file field not found",
    )
    two_files = multipart(
        upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)), final=False
    ) + multipart([], ("other", GOOD_SDIST.filename, sdist_bytes(setup)))
    check_refused(post(setup.server, "/alice/dev/", two_files), 400)


def test_a_good_upload_still_works_and_fsck_agrees(setup: Setup) -> None:
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    reply = post(setup.server, "/alice/dev/", body)
    assert reply.status == 200, reply
    assert leftovers(setup) == []
    done = fsck(setup.server.serverdir)
    assert done.returncode == setup.fsck_status == 0, done.stdout + done.stderr


def test_a_file_name_too_long_for_the_disk(setup: Setup, unchanged: None) -> None:
    filename = "bad_proj-1.0" + "x" * 300 + ".tar.gz"
    body = multipart(upload_fields(), ("content", filename, sdist_bytes(setup)))
    reply = post(setup.server, "/alice/dev/", body)
    check_refused(reply, 400)


def test_a_wheel_whose_metadata_has_another_version(setup: Setup) -> None:
    """The file name and the form say 1.0, the wheel's METADATA 2.0. The file wins over
    the form, so the file would be listed as ``liar-1.0-...whl`` under version 2.0 (pip
    then finds metadata that contradicts the name): it must be refused."""
    other = Dist("liar", "2.0", "wheel")
    directory = setup.dists / "liar"
    directory.mkdir(exist_ok=True)
    _build_wheel(other, directory)
    content = (directory / other.filename).read_bytes()
    body = multipart(
        upload_fields("liar", "1.0"), ("content", "liar-1.0-py3-none-any.whl", content)
    )
    reply = post(setup.server, "/alice/dev/", body)
    stored = http_get(f"{setup.server.url}/alice/dev/liar", accept="application/json")
    assert reply.status == 400, (reply, stored.body.decode())
    assert "version" in reply.reason, reply


def test_forms_the_parser_refuses(setup: Setup, unchanged: None) -> None:
    sdist = ("content", GOOD_SDIST.filename, sdist_bytes(setup))
    many = upload_fields() + [(f"f{i}", "v") for i in range(1100)]
    check_refused(post(setup.server, "/alice/dev/", multipart(many, sdist)), 400)
    not_utf8 = multipart(upload_fields(), sdist).replace(b"bad-proj", b"bad-\xff", 1)
    check_refused(post(setup.server, "/alice/dev/", not_utf8), 400, "UTF-8")
    long_header = multipart(upload_fields(), sdist).replace(
        b'name="version"', b'name="version"; x="' + b"y" * 10000 + b'"', 1
    )
    check_refused(post(setup.server, "/alice/dev/", long_header), 400)
    other_boundary = multipart(upload_fields(), sdist, boundary="elsewhere")
    check_refused(post(setup.server, "/alice/dev/", other_boundary), 400)


def test_racing_uploads_of_one_file_name(setup: Setup) -> None:
    """Eight clients upload ``race_proj-1.0.tar.gz`` at once, in two different contents:
    each is stored (the index is volatile) or told it raced another (409); one link remains,
    nothing is left over."""
    from concurrent.futures import ThreadPoolExecutor

    contents = []
    for flavour in ("a", "b"):
        directory = setup.dists / f"race-{flavour}"
        directory.mkdir(exist_ok=True)
        dist = Dist("race-proj", "1.0", "sdist", requires_dist=(f"dep-{flavour}",))
        _build_sdist(dist, directory)
        # a bigger file: a longer window between an upload's place and its link
        with (directory / dist.filename).open("ab") as extend:
            extend.write(os.urandom(2 << 20))
        contents.append((directory / dist.filename).read_bytes())
    assert contents[0] != contents[1]
    bodies = [
        multipart(upload_fields("race-proj"), ("content", "race_proj-1.0.tar.gz", content))
        for content in contents
    ]
    for _ in range(10):  # a race: a few rounds make it show
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(lambda i: post(setup.server, "/alice/dev/", bodies[i % 2]), range(8))
            )
        # devpid refuses an upload that raced another for the same file (the client may retry)
        for reply in replies:
            assert reply.status == 200 or (
                reply.status == 409 and "at the same time by another request" in reply.reason
            ), reply
        assert any(reply.status == 200 for reply in replies)
        answer = http_get(f"{setup.server.url}/alice/dev/race-proj", accept="application/json")
        links = json.loads(answer.body)["result"]["1.0"]["+links"]
        assert len(links) == 1, links
        served = http_get(links[0]["href"])
        assert served.status == 200 and served.body in contents, (
            served,
            fsck(setup.server.serverdir).stdout,
        )
    assert leftovers(setup) == []

    def race_files() -> list[Path]:
        files = setup.server.serverdir / "+files"
        return [path for path in files.rglob("race_proj-1.0.tar.gz") if path.is_file()]

    for _ in range(100):  # the replaced file's removal runs in a thread, after the answer
        if len(race_files()) == 1:
            break
        time.sleep(0.05)
    # a file no link names stays on disk until the next start's sweep, and fsck says so
    done = fsck(setup.server.serverdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(race_files()) == 1, race_files()


def test_an_upload_the_guard_refuses_leaves_no_temporary_file(
    setup: Setup, unchanged: None
) -> None:
    """The body streams to disk before any route runs; an answer from the guard (here a
    URL over the length limit) must still remove it."""
    body = multipart(upload_fields(), ("content", GOOD_SDIST.filename, sdist_bytes(setup)))
    reply = post(setup.server, "/alice/dev/?" + "x" * 9000, body)
    assert reply.status == 414, reply


def test_the_same_file_cannot_belong_to_two_versions(setup: Setup) -> None:
    """A plain zip's version comes from the form: ``1.0`` and ``1`` both appear in
    ``bad-zip-1.0.zip``, but one file links one version, or deleting one would take the
    other's file."""
    content = io.BytesIO()
    with zipfile.ZipFile(content, "w") as archive:
        archive.writestr("readme.txt", "a plain zip")
    data = content.getvalue()
    first = post(
        setup.server,
        "/alice/dev/",
        multipart(upload_fields("bad-zip", "1.0"), ("content", "bad-zip-1.0.zip", data)),
    )
    assert first.status == 200, first
    second = post(
        setup.server,
        "/alice/dev/",
        multipart(upload_fields("bad-zip", "1"), ("content", "bad-zip-1.0.zip", data)),
    )
    check_refused(second, 409, "already belongs to bad-zip 1.0")
