"""Hypothesis fuzzing of uploads: ``StreamingForm`` alone, and the upload route in memory.

``StreamingForm`` gets multipart bodies (well formed, mangled, or bytes at
random) cut into random chunks: ``feed`` never raises, ``finish`` gives the
same form whatever the chunking or a 400/413 ``FormError``, and a refused
form leaves no temporary file.

The route runs in the real site from ``makeService`` on a memory reactor (as
``test_private_fuzz`` does), alice uploading to ``alice/dev``: random form
fields and actions, random file names (traversals included), random bytes,
real wheels and sdists bit-flipped or cut short, doc zips with hostile member
names, random boundaries and chunking. Invariants: never a 5xx, never a
traceback, a one-line reason phrase, nothing written outside the serverdir
(nor outside a version's own docs directory), no leftover in ``+files/+uploads/``.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from devpid.service import ListenerService
from devpid.upload.form import FormError, FormLimits, StreamingForm
from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response
from tests.fixtures.distbuilder import Dist, _build_sdist, _build_wheel

ALICE = base64.b64encode(b"alice:alicepw").decode()
_TRACEBACK = (b"Traceback", b'File "', b"twisted.python.failure")
ESCAPE = "fuzzescape"

boundaries = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?",
    min_size=1,
    max_size=70,
).filter(lambda b: not b.endswith(" "))
#: What may appear in a quoted Content-Disposition parameter without escaping.
safe_text = st.text(
    alphabet=st.characters(blacklist_characters='"\\\r\n', blacklist_categories=("Cs",)),
    max_size=30,
)
field_names = st.sampled_from(
    [":action", "name", "version", "sha256_digest", "md5_digest", "summary", "description"]
) | safe_text.filter(bool)
field_values = st.text(max_size=60) | st.sampled_from(
    ["file_upload", "doc_upload", "submit", "fuzz-proj", "1.0", "0" * 64, ""]
)
chunkings = st.lists(st.integers(1, 4096), min_size=1, max_size=20)


def multipart(
    fields: list[tuple[str, str]],
    file: tuple[str, str, bytes] | None,
    boundary: str,
) -> bytes:
    out = io.BytesIO()
    for name, value in fields:
        out.write(f"--{boundary}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode("utf-8", "surrogatepass") + b"\r\n")
    if file is not None:
        name, filename, content = file
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode())
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def chunked(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        yield data[position : position + size]
        position += size
        turn += 1


# -- StreamingForm alone ------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("form-fuzz")


def new_form(directory: Path, boundary: str, limits: FormLimits) -> StreamingForm:
    def create_file() -> tuple[Path, int]:
        fd, name = tempfile.mkstemp(dir=directory, suffix=".devpid-partial")
        return Path(name), fd

    return StreamingForm(boundary.encode(), limits, create_file)


def parse(
    directory: Path, boundary: str, body: bytes, sizes: list[int], limits: FormLimits
) -> tuple[dict[str, list[str]], tuple[str, str, bytes] | None] | FormError:
    """The form ``body`` gives, fed in chunks; its temporary file read and removed."""
    form = new_form(directory, boundary, limits)
    for chunk in chunked(body, sizes):
        form.feed(chunk)  # must not raise, whatever the bytes
    try:
        result = form.finish()
    except FormError as error:
        assert error.code in (400, 413), error
        assert "\n" not in error.message and error.message
        form.abort()
        assert not os.listdir(directory), os.listdir(directory)
        return error
    received = None
    if result.file is not None:
        os.close(result.file.fd)
        content = result.file.path.read_bytes()
        result.file.path.unlink()
        assert len(content) == result.file.size
        received = (result.file.field, result.file.filename, content)
    assert not os.listdir(directory)
    return result.fields, received


SMALL_LIMITS = FormLimits(max_file_size=3000, max_field_size=200, max_fields_size=600, max_fields=8)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    boundary=boundaries,
    fields=st.lists(st.tuples(field_names, field_values), max_size=10),
    file=st.none() | st.tuples(field_names, safe_text.filter(bool), st.binary(max_size=5000)),
    first=chunkings,
    second=chunkings,
    limits=st.sampled_from([FormLimits(), SMALL_LIMITS]),
)
def test_a_well_formed_body_parses_the_same_in_any_chunks(
    scratch: Path,
    boundary: str,
    fields: list[tuple[str, str]],
    file: tuple[str, str, bytes] | None,
    first: list[int],
    second: list[int],
    limits: FormLimits,
) -> None:
    fields = [(name, value.encode("utf-8", "replace").decode()) for name, value in fields]
    body = multipart(fields, file, boundary)
    one = parse(scratch, boundary, body, first, limits)
    other = parse(scratch, boundary, body, second, limits)
    assert repr(one) == repr(other)
    if isinstance(one, FormError):
        return
    got_fields, got_file = one
    expected: dict[str, list[str]] = {}
    for name, value in fields:
        expected.setdefault(name, []).append(value)
    assert got_fields == expected
    if file is not None and got_file is not None:
        assert got_file[2] == file[2]
        assert got_file[0] == file[0]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    boundary=boundaries,
    fields=st.lists(st.tuples(field_names, field_values), max_size=6),
    content=st.binary(max_size=3000),
    cut=st.integers(0, 10_000),
    noise=st.binary(max_size=40),
    at=st.integers(0, 10_000),
    sizes=chunkings,
    limits=st.sampled_from([FormLimits(), SMALL_LIMITS]),
)
def test_a_mangled_body_never_escapes_feed(
    scratch: Path,
    boundary: str,
    fields: list[tuple[str, str]],
    content: bytes,
    cut: int,
    noise: bytes,
    at: int,
    sizes: list[int],
    limits: FormLimits,
) -> None:
    body = multipart(fields, ("content", "x-1.0.tar.gz", content), boundary)
    at %= len(body) + 1
    body = (body[:at] + noise + body[at:])[: max(cut, 1)]
    parse(scratch, boundary, body, sizes, limits)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(boundary=boundaries, body=st.binary(max_size=2000), sizes=chunkings)
def test_random_bytes_are_a_form_error(
    scratch: Path, boundary: str, body: bytes, sizes: list[int]
) -> None:
    parse(scratch, boundary, body, sizes, FormLimits())


# -- the route, in memory ---------------------------------------------------------------


@pytest.fixture(scope="module")
def devpid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryDevpid]:
    server = MemoryDevpid.start(tmp_path_factory.mktemp("fuzz-upload") / "serverdir")
    for path, body in (("/alice", '{"password": "alicepw"}'), ("/alice/dev", '{"bases": ""}')):
        payload = body.encode()
        head = (
            f"PUT {path} HTTP/1.0\r\nHost: localhost\r\nAccept: application/json\r\n"
            f"Content-Type: application/json\r\nAuthorization: Basic {ALICE}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        answer = parse_response(server.send(head.encode() + payload).raw)
        assert answer.code in (200, 201), answer.raw
    yield server
    server.stop()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real distributions to mangle, by file name."""
    directory = tmp_path_factory.mktemp("fuzz-dists")
    dists = [Dist("fuzz-proj", "1.0", "wheel"), Dist("fuzz-proj", "1.0", "sdist")]
    _build_wheel(dists[0], directory)
    _build_sdist(dists[1], directory)
    found = {dist.filename: (directory / dist.filename).read_bytes() for dist in dists}
    found["fuzz_proj-1.0.doc.zip"] = doc_zip({"index.html": b"<p>docs</p>"})
    return found


def doc_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def post(server: MemoryDevpid, body: bytes, boundary: str, sizes: list[int]) -> RawAnswer:
    """The upload over HTTP/1.0, its body in chunks; the whole answer."""
    head = (
        f"POST /alice/dev/ HTTP/1.0\r\nHost: localhost\r\n"
        f'Content-Type: multipart/form-data; boundary="{boundary}"\r\n'
        f"Authorization: Basic {ALICE}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    site = next(s for s in server.top if isinstance(s, ListenerService)).site
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(head)
    for chunk in chunked(body, sizes):
        protocol.dataReceived(chunk)
        server.reactor.advance(0)
    for _ in range(20):
        if transport.disconnecting:
            break
        server.reactor.advance(1)
    assert transport.disconnecting, transport.value()[:300]
    protocol.connectionLost(Failure(ConnectionDone("the test hangs up")))
    server.reactor.advance(0)
    return parse_response(bytes(transport.value()))


def mangle(content: bytes, flips: list[int], cut: int | None) -> bytes:
    data = bytearray(content)
    for flip in flips:
        if data:
            data[flip % len(data)] ^= 0xFF
    return bytes(data if cut is None else data[: cut % (len(data) + 1)])


member_names = st.sampled_from(
    [
        "index.html",
        "a/b.html",
        f"../{ESCAPE}.html",
        f"../../../{ESCAPE}.html",
        f"/tmp/{ESCAPE}.html",
        f"a/../../{ESCAPE}.html",
        f"a\\..\\{ESCAPE}.html",
        "a/",
        "./index.html",
        "",
    ]
) | safe_text.filter(bool)
filenames = st.sampled_from(
    [
        "fuzz_proj-1.0-py3-none-any.whl",
        "fuzz_proj-1.0.tar.gz",
        "fuzz_proj-1.0.zip",
        "fuzz_proj-1.0.doc.zip",
        f"../{ESCAPE}-1.0.tar.gz",
        f"fuzz_proj-1.0/../../{ESCAPE}.tar.gz",
        "fuzz_proj-1.0.tar.gz\x00.txt",
        "fuzz_proj-1.0" + "x" * 300 + ".tar.gz",
        ".",
        "fuzz_proj-1.0.exe",
    ]
) | safe_text.filter(bool)


@st.composite
def uploads(draw: st.DrawFn, samples: dict[str, bytes]) -> tuple[list[tuple[str, str]], bytes]:
    action = draw(st.sampled_from(["file_upload", "doc_upload", "submit", "other"]))
    fields = [(":action", action)]
    if draw(st.booleans()):
        fields.append(("name", draw(st.sampled_from(["fuzz-proj", "fuzz_proj", "Fuzz.Proj"]))))
    else:
        fields.append(("name", draw(field_values)))
    fields.append(("version", draw(st.sampled_from(["1.0", "2.0", ""]) | field_values)))
    fields += draw(st.lists(st.tuples(field_names, field_values), max_size=4))
    kind = draw(st.sampled_from(["sample", "random", "doczip"]))
    if kind == "sample":
        content = draw(st.sampled_from(sorted(samples)))
        content_bytes = mangle(
            samples[content],
            draw(st.lists(st.integers(0, 1 << 20), max_size=3)),
            draw(st.none() | st.integers(0, 1 << 20)),
        )
    elif kind == "doczip":
        members = draw(st.dictionaries(member_names, st.binary(max_size=200), max_size=4))
        content_bytes = doc_zip(members)
    else:
        content_bytes = draw(st.binary(max_size=2000))
    return fields, content_bytes


def files_outside_own_places(serverdir: Path) -> list[str]:
    """Files that landed where no upload may write: outside the serverdir, or in
    ``+docs`` above a version's own unpacked directory."""
    wrong = [
        str(path)
        for path in serverdir.parent.rglob(f"*{ESCAPE}*")
        if not path.is_relative_to(serverdir / "+files")
    ]
    docs = serverdir / "+docs"
    if docs.is_dir():
        for path in docs.rglob("*"):
            depth = len(path.relative_to(docs).parts)
            if path.is_file() and depth < 6:  # user/index/project/version/sha16/file
                wrong.append(str(path))
    return wrong


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), boundary=boundaries, sizes=chunkings)
def test_the_upload_route_never_fails(
    devpid: MemoryDevpid,
    samples: dict[str, bytes],
    data: st.DataObject,
    boundary: str,
    sizes: list[int],
) -> None:
    fields, content = data.draw(uploads(samples))
    filename = data.draw(filenames)
    body = multipart(fields, ("content", filename, content), boundary)
    if data.draw(st.booleans()):  # sometimes a mangled or a cut body
        body = mangle(body, data.draw(st.lists(st.integers(0, 1 << 20), max_size=2)), None)
    top = sorted(os.listdir(devpid.serverdir.parent))
    answer = post(devpid, body, boundary, sizes)
    for mark in _TRACEBACK:
        assert mark not in answer.raw, answer.raw[:2000]
    assert answer.code < 500, answer.raw[:2000]
    status_line = answer.raw.split(b"\r\n", 1)[0]
    event(f"{answer.code} {status_line.split(b' ', 2)[-1][:40]!r}")
    assert len(status_line.split(b" ", 2)) == 3, status_line
    uploads_dir = devpid.serverdir / "+files" / "+uploads"
    assert not uploads_dir.exists() or not os.listdir(uploads_dir), os.listdir(uploads_dir)
    assert sorted(os.listdir(devpid.serverdir.parent)) == top
    assert files_outside_own_places(devpid.serverdir) == []


def test_the_fuzzed_serverdir_is_consistent(devpid: MemoryDevpid) -> None:
    from devpid.ops.fsck import check as fsck

    report = fsck(devpid.serverdir)
    assert report.exit_status == 0, [problem.line() for problem in report.problems]
