"""The upload building blocks without HTTP: the streamed form, archive checks, doc zips."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpid.upload.archive import (
    ARCHIVE_EXTENSIONS,
    LIST_KEYS,
    METADATA_KEYS,
    BadArchive,
    DistributionInfo,
    has_archive_extension,
    inspect_distribution,
    merged_metadata,
    metadata_from_form,
)
from devpid.upload.docs import BadDocZip, DocLimits, check_doc_zip, unpack_doc_zip
from devpid.upload.form import (
    FormError,
    FormLimits,
    StreamingForm,
    boundary_of,
)

BOUNDARY = b"----devpidBoundary7MA4YWxkTrZu0gW"


# ---------------------------------------------------------------- form helpers


def field(name: str, value: bytes | str, content_type: str | None = None) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    head = f'Content-Disposition: form-data; name="{name}"\r\n'
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return b"--" + BOUNDARY + b"\r\n" + head.encode() + b"\r\n" + data + b"\r\n"


def file_part(name: str, filename: str, data: bytes) -> bytes:
    head = (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n"
    )
    return b"--" + BOUNDARY + b"\r\n" + head.encode("utf-8") + b"\r\n" + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


class TempFiles:
    """``create_file`` for the form: fresh files in a directory, remembered."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.created: list[Path] = []

    def __call__(self) -> tuple[Path, int]:
        path = self.directory / f"upload-{len(self.created)}.partial"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.created.append(path)
        return path, fd


def new_form(tmp_path: Path, limits: FormLimits | None = None) -> tuple[StreamingForm, TempFiles]:
    files = TempFiles(tmp_path)
    return StreamingForm(BOUNDARY, limits or FormLimits(), files), files


def feed_in(form: StreamingForm, data: bytes, sizes: list[int]) -> None:
    offset = 0
    for size in sizes:
        form.feed(data[offset : offset + size])
        offset += size
    form.feed(data[offset:])


PAYLOAD = bytes(range(256)) * 40 + b"\r\n--" + BOUNDARY[:-3] + b"\r\n-- almost a boundary"
TWINE_LIKE = body(
    field(":action", "file_upload"),
    field("protocol_version", "1"),
    field("name", "hello"),
    field("version", "1.0"),
    field("classifiers", "A :: B"),
    field("classifiers", "C :: D"),
    field("description", "ünïcode\r\n\r\nwith lines", content_type="text/x-rst; charset=utf-8"),
    # announced before the file: computed while it streams (the md5 is not: not announced)
    field("blake2_256_digest", "checked later"),
    file_part("content", "hello-1.0.tar.gz", PAYLOAD),
    field("sha256_digest", "ignored"),
)


def check_twine_like(form: StreamingForm) -> None:
    result = form.finish()
    assert result.fields[":action"] == ["file_upload"]
    assert result.fields["classifiers"] == ["A :: B", "C :: D"]
    assert result.first("description") == "ünïcode\r\n\r\nwith lines"
    assert result.first("missing") is None
    assert result.file is not None
    received = result.file
    assert (received.field, received.filename, received.size) == (
        "content",
        "hello-1.0.tar.gz",
        len(PAYLOAD),
    )
    assert received.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert received.md5 is None
    assert received.blake2_256 == hashlib.blake2b(PAYLOAD, digest_size=32).hexdigest()
    os.close(received.fd)  # still open: finish() hands it over
    assert received.path.read_bytes() == PAYLOAD


# ---------------------------------------------------------------- form tests


def test_whole_body(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    form.feed(TWINE_LIKE)
    check_twine_like(form)


def test_byte_by_byte(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    for index in range(len(TWINE_LIKE)):
        form.feed(TWINE_LIKE[index : index + 1])
    check_twine_like(form)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(min_value=1, max_value=700), max_size=40))
def test_random_chunks(tmp_path_factory: pytest.TempPathFactory, sizes: list[int]) -> None:
    form, _ = new_form(tmp_path_factory.mktemp("chunks"))
    feed_in(form, TWINE_LIKE, sizes)
    check_twine_like(form)


def test_every_split_point_of_an_email_built_body(tmp_path: Path) -> None:
    """A body made by the ``email`` package (another writer), split in two at every byte."""
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    from email.policy import HTTP

    message = MIMEMultipart("form-data", boundary="emailBoundary0123")
    text = MIMEText("hello", "plain", "utf-8")
    text.replace_header("Content-Transfer-Encoding", "8bit")
    text.set_payload(b"hello")
    text.add_header("Content-Disposition", "form-data", name="name")
    message.attach(text)
    app = MIMEApplication(b"\x00\x01zip\r\n--emailBoundary012", _encoder=lambda part: None)
    app.add_header("Content-Disposition", "form-data", name="content", filename="hello-1.0.zip")
    message.attach(app)
    raw = message.as_bytes(policy=HTTP)
    data = raw[raw.index(b"--emailBoundary0123") :]
    payload = b"\x00\x01zip\r\n--emailBoundary012"
    for split in range(len(data) + 1):
        files = TempFiles(tmp_path / str(split))
        (tmp_path / str(split)).mkdir()
        form = StreamingForm(b"emailBoundary0123", FormLimits(), files)
        form.feed(data[:split])
        form.feed(data[split:])
        result = form.finish()
        assert result.fields == {"name": ["hello"]}
        assert result.file is not None
        os.close(result.file.fd)
        assert result.file.path.read_bytes() == payload, split


def test_boundary_of() -> None:
    assert boundary_of(b"multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of(b'Multipart/Form-Data; charset=utf-8; boundary="a b:c"') == b"a b:c"
    assert boundary_of(b"application/json") is None
    assert boundary_of(b"multipart/form-data") is None
    assert boundary_of(b"multipart/mixed; boundary=abc") is None
    assert boundary_of(None) is None
    assert boundary_of(b"multipart/form-data; boundary=" + b"x" * 300) is None


def test_field_with_content_type_is_a_field(tmp_path: Path) -> None:
    form, files = new_form(tmp_path)
    form.feed(body(field("summary", "s", content_type="text/plain")))
    result = form.finish()
    assert result.fields == {"summary": ["s"]} and result.file is None
    assert files.created == []


TWO_FILES = file_part("content", "a.zip", b"1") + file_part("content", "b.zip", b"2")


@pytest.mark.parametrize(
    ("limits", "parts", "code"),
    [
        (FormLimits(max_field_size=10), [field("description", "x" * 11)], 413),
        (FormLimits(max_fields_size=15), [field("a", "x" * 8), field("b", "y" * 8)], 413),
        (FormLimits(max_file_size=100), [file_part("content", "a.zip", b"z" * 101)], 413),
        (FormLimits(max_fields=3), [field(f"f{i}", "v") for i in range(4)], 400),
        (FormLimits(max_fields=3), [field(f"f{i}", "v") for i in range(3)] + [TWO_FILES], 400),
    ],
)
def test_limits(tmp_path: Path, limits: FormLimits, parts: list[bytes], code: int) -> None:
    form, files = new_form(tmp_path, limits)
    form.feed(body(*parts))
    with pytest.raises(FormError) as caught:
        form.finish()
    assert caught.value.code == code
    assert "\n" not in caught.value.message
    assert all(not path.exists() for path in files.created)


def test_exact_limits_pass(tmp_path: Path) -> None:
    limits = FormLimits(max_field_size=10, max_file_size=100, max_fields=2)
    form, _ = new_form(tmp_path, limits)
    form.feed(body(field("a", "x" * 10), file_part("content", "a.zip", b"z" * 100)))
    result = form.finish()
    assert result.file is not None and result.file.size == 100
    os.close(result.file.fd)


def test_oversized_part_header(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    form.feed(body(field("a" * 20000, "v")))
    with pytest.raises(FormError) as caught:
        form.finish()
    assert caught.value.code == 400


def test_truncated_body_removes_nothing_until_abort(tmp_path: Path) -> None:
    form, files = new_form(tmp_path)
    form.feed(TWINE_LIKE[:-30])
    with pytest.raises(FormError) as caught:
        form.finish()
    assert (caught.value.code, caught.value.message) == (400, "the multipart body is truncated")
    assert all(not path.exists() for path in files.created)
    form.abort()


def test_empty_body(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    with pytest.raises(FormError, match="truncated"):
        form.finish()


def test_two_files(tmp_path: Path) -> None:
    form, files = new_form(tmp_path)
    form.feed(body(file_part("content", "a.zip", b"1" * 5000), file_part("content", "b.zip", b"2")))
    with pytest.raises(FormError) as caught:
        form.finish()
    assert (caught.value.code, caught.value.message) == (400, "more than one file in the form")
    assert len(files.created) == 1 and not files.created[0].exists()


@pytest.mark.parametrize("filename", ["../x", "a/b", "a\\b", "a\x00b", "..", ".", "", "tab\there"])
def test_bad_filenames(tmp_path: Path, filename: str) -> None:
    form, files = new_form(tmp_path)
    form.feed(body(file_part("content", filename, b"data")))
    with pytest.raises(FormError) as caught:
        form.finish()
    assert caught.value.code == 400
    assert files.created == []


def test_windows_path_is_cut_to_its_base_name(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    form.feed(body(file_part("content", "C:\\\\dist\\\\hello-1.0.zip", b"data")))
    result = form.finish()
    assert result.file is not None and result.file.filename == "hello-1.0.zip"
    os.close(result.file.fd)


def test_non_utf8_field(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    form.feed(body(field("summary", b"\xff\xfe")))
    with pytest.raises(FormError, match="UTF-8") as caught:
        form.finish()
    assert caught.value.code == 400


def test_garbage_after_boundary_is_ignored_once_failed(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    form.feed(b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\n")
    assert form.error is not None and form.error.code == 400
    form.feed(b"more data")  # ignored, never raises
    with pytest.raises(FormError):
        form.finish()


def test_abort_removes_the_file(tmp_path: Path) -> None:
    form, files = new_form(tmp_path)
    form.feed(TWINE_LIKE[: TWINE_LIKE.index(b"almost")])
    assert len(files.created) == 1 and files.created[0].exists()
    form.abort()
    form.abort()
    assert not files.created[0].exists()


def test_abort_after_finish_leaves_the_callers_file(tmp_path: Path) -> None:
    form, _ = new_form(tmp_path)
    form.feed(TWINE_LIKE)
    result = form.finish()
    form.abort()
    assert result.file is not None and result.file.path.exists()
    os.fstat(result.file.fd)  # still open
    os.close(result.file.fd)


def test_create_file_failure_is_a_500(tmp_path: Path) -> None:
    def broken() -> tuple[Path, int]:
        raise OSError(28, "No space left on device")

    form = StreamingForm(BOUNDARY, FormLimits(), broken)
    form.feed(TWINE_LIKE)  # never raises
    with pytest.raises(FormError, match="No space left") as caught:
        form.finish()
    assert caught.value.code == 500


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    form, _ = new_form(tmp_path)
    form.feed(TWINE_LIKE)
    monkeypatch.undo()
    check_twine_like(form)


def test_write_error_is_a_500(tmp_path: Path) -> None:
    def read_only() -> tuple[Path, int]:
        path = tmp_path / "ro"
        path.write_bytes(b"")
        return path, os.open(path, os.O_RDONLY)

    form = StreamingForm(BOUNDARY, FormLimits(), read_only)
    form.feed(TWINE_LIKE)
    assert form.error is not None and form.error.code == 500
    assert not (tmp_path / "ro").exists()


# ---------------------------------------------------------------- archives

METADATA = b"""\
Metadata-Version: 2.1
Name: hello
Version: 1.0
Summary: demo package
Home-page: UNKNOWN
Keywords: a,b
Platform: UNKNOWN
Classifier: Programming Language :: Python :: 3
Classifier: License :: OSI Approved :: MIT License
Requires-Python: >=3.8
Requires-Dist: attrs>=23
Requires-Dist: pytest; extra == "test"
Provides-Extra: test
Project-URL: Source, http://localhost/hello
License-File: LICENSE
X-Custom: ignored

A long description.
"""


def make_wheel(
    path: Path, metadata: bytes = METADATA, dist_info: str = "hello-1.0.dist-info"
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("hello/__init__.py", "")
        if dist_info:
            archive.writestr(f"{dist_info}/METADATA", metadata)
            archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\n")
            archive.writestr(f"{dist_info}/RECORD", "")
    return path


def make_sdist(path: Path, metadata: bytes | None = METADATA, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        members = {"hello-1.0/setup.py": b"", "hello-1.0/hello.egg-info/PKG-INFO": b"Name: x\n"}
        if metadata is not None:
            members["hello-1.0/PKG-INFO"] = metadata
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_metadata_keys() -> None:
    assert len(METADATA_KEYS) == 31 and len(set(METADATA_KEYS)) == 31
    assert set(METADATA_KEYS) >= LIST_KEYS and len(LIST_KEYS) == 14


def test_archive_extensions() -> None:
    assert len(ARCHIVE_EXTENSIONS) == 11
    assert has_archive_extension("hello-1.0.tar.gz")
    assert has_archive_extension("Hello-1.0-py3-none-any.WHL")
    assert has_archive_extension("hello-1.0.tar.bz2")
    assert not has_archive_extension("hello-1.0.tar")
    assert not has_archive_extension("whl")


def test_wheel(tmp_path: Path) -> None:
    path = make_wheel(tmp_path / "hello-1.0-py3-none-any.whl")
    info = inspect_distribution(path, path.name)
    assert (info.name, info.version, info.core_metadata) == ("hello", "1.0", METADATA)
    meta = info.metadata
    assert meta["requires_dist"] == ["attrs>=23", 'pytest; extra == "test"']
    assert meta["classifiers"][0] == "Programming Language :: Python :: 3"
    assert meta["home_page"] == ""
    assert meta["platform"] == []
    assert meta["keywords"] == "a,b"
    assert meta["project_urls"] == ["Source, http://localhost/hello"]
    assert meta["provides_extras"] == ["test"]
    assert meta["license_file"] == ["LICENSE"]
    assert meta["requires_python"] == ">=3.8"
    assert meta["description"].strip() == "A long description."
    assert set(meta) <= set(METADATA_KEYS) and "author" not in meta


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2"])
def test_tar_sdist(tmp_path: Path, mode: str) -> None:
    suffix = ".tar.gz" if mode == "w:gz" else ".tar.bz2"
    path = make_sdist(tmp_path / f"hello-1.0{suffix}", mode=mode)
    info = inspect_distribution(path, path.name)
    assert (info.name, info.version, info.core_metadata) == ("hello", "1.0", None)
    assert info.metadata["summary"] == "demo package"


def test_zip_sdist_and_plain_zip(tmp_path: Path) -> None:
    path = tmp_path / "hello-1.0.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello-1.0/PKG-INFO", METADATA)
    assert inspect_distribution(path, path.name).version == "1.0"
    plain = tmp_path / "plain-1.0.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("readme.txt", "hi")
    assert inspect_distribution(plain, plain.name) == DistributionInfo(None, None, {}, None)


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("hello-1.0-py3-none-any.whl", b"not a zip at all", "not a valid wheel: File is not a zip"),
        ("hello-1.0.tar.gz", b"not a tar at all", "not a valid sdist"),
        ("hello-1.0.egg", b"not a zip", "not a valid egg"),
        ("hello-1.0.zip", b"PK\x03\x04garbage", "not a valid zip file"),
        ("hello-1.0.tar.gz", b"", "hello-1.0.tar.gz is empty"),
    ],
)
def test_not_archives(tmp_path: Path, filename: str, content: bytes, message: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(BadArchive, match=message) as caught:
        inspect_distribution(path, filename)
    assert "\n" not in str(caught.value)


def test_other_extensions_are_taken_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "hello-1.0.exe"
    path.write_bytes(b"MZ")
    assert inspect_distribution(path, path.name).name is None


def test_wheel_without_dist_info(tmp_path: Path) -> None:
    path = make_wheel(tmp_path / "hello-1.0-py3-none-any.whl", dist_info="")
    with pytest.raises(BadArchive, match=r"no \.dist-info"):
        inspect_distribution(path, path.name)


def test_wheel_with_two_dist_infos(tmp_path: Path) -> None:
    path = make_wheel(tmp_path / "hello-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other-1.0.dist-info/METADATA", METADATA)
    with pytest.raises(BadArchive, match="more than one"):
        inspect_distribution(path, path.name)


def test_wheel_metadata_too_large(tmp_path: Path) -> None:
    path = make_wheel(tmp_path / "hello-1.0-py3-none-any.whl", metadata=METADATA + b"x" * 5000)
    with pytest.raises(BadArchive, match="too large"):
        inspect_distribution(path, path.name, max_metadata_size=4096)


def test_sdist_without_pkg_info(tmp_path: Path) -> None:
    path = make_sdist(tmp_path / "hello-1.0.tar.gz", metadata=None)
    with pytest.raises(BadArchive, match="no PKG-INFO"):
        inspect_distribution(path, path.name)


def test_truncated_sdist(tmp_path: Path) -> None:
    path = make_sdist(tmp_path / "hello-1.0.tar.gz")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(BadArchive):
        inspect_distribution(path, path.name)


def test_metadata_from_form_and_merge(tmp_path: Path) -> None:
    form = metadata_from_form(
        {
            "name": ["hello"],
            "version": ["1.0"],
            "summary": ["from the form"],
            "author": ["UNKNOWN"],
            "classifiers": ["A", "B"],
            "requires_dist": ["attrs"],
            "project_urls": ["Home, http://localhost/"],
            "sha256_digest": ["ignored"],
            ":action": ["file_upload"],
        }
    )
    assert form == {
        "name": "hello",
        "version": "1.0",
        "summary": "from the form",
        "author": "",
        "classifiers": ["A", "B"],
        "project_urls": ["Home, http://localhost/"],
        "requires_dist": ["attrs"],
    }
    info = inspect_distribution(make_wheel(tmp_path / "hello-1.0-py3-none-any.whl"), "h.whl")
    merged = merged_metadata(form, info)
    assert merged["summary"] == "demo package"  # the file wins
    assert merged["author"] == ""  # only the form has it
    assert merged["requires_dist"] == ["attrs>=23", 'pytest; extra == "test"']


# ---------------------------------------------------------------- doc zips

LIMITS = DocLimits(max_total_size=1 << 20, max_files=50, max_ratio=200)


def make_zip(
    path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_unpack_and_replace(tmp_path: Path) -> None:
    destination = tmp_path / "docs" / "hello" / "1.0"
    first = make_zip(tmp_path / "a.zip", {"index.html": b"<p>one</p>", "sub/page.html": b"x"})
    assert unpack_doc_zip(first, destination, LIMITS) == 2
    assert (destination / "index.html").read_bytes() == b"<p>one</p>"
    assert stat.S_IMODE((destination / "sub" / "page.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((destination / "sub").stat().st_mode) == 0o755
    second = make_zip(tmp_path / "b.zip", {"sub/": b"", "index.html": b"two"})
    assert unpack_doc_zip(second, destination, LIMITS) == 1
    assert (destination / "index.html").read_bytes() == b"two"
    assert not (destination / "sub" / "page.html").exists()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["1.0"]  # nothing left over


def test_zip_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    chunk = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("zeros.html", "w") as member,
    ):
        for _ in range(100):
            member.write(chunk)
    assert path.stat().st_size < 1 << 20
    big = DocLimits(max_total_size=1 << 30)
    with pytest.raises(BadDocZip, match="compressed suspiciously well"):
        check_doc_zip(path, big)
    with pytest.raises(BadDocZip, match="more than"):
        check_doc_zip(path, DocLimits(max_total_size=50 << 20, max_ratio=1 << 30))


def test_lying_sizes_are_counted_while_extracting(tmp_path: Path) -> None:
    """A member whose directory entry understates its size never gets past the real count."""
    path = make_zip(tmp_path / "lie.zip", {"a.html": b"a" * 4000}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size (offset 24 in the entry) to 10.
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    destination = tmp_path / "out"
    with pytest.raises(BadDocZip):
        unpack_doc_zip(path, destination, DocLimits(max_total_size=100))
    assert not destination.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize(
    "name",
    ["../evil.html", "/etc/passwd", "a/../../evil", "a\\b.html", "C:/x", "./a", "a//b"],
)
def test_traversal_names(tmp_path: Path, name: str) -> None:
    # (zipfile itself cuts a name at its first NUL, so no NUL case here.)
    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("ok.html"), b"ok")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo would clean it; a hostile writer does not
        archive.writestr(info, b"evil")
    with pytest.raises(BadDocZip):
        check_doc_zip(path, LIMITS)  # from the directory alone
    with pytest.raises(BadDocZip):
        unpack_doc_zip(path, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.html").exists()


def test_symlink_member(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("link.html")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(BadDocZip, match="symbolic link"):
        check_doc_zip(path, LIMITS)


def test_device_member(tmp_path: Path) -> None:
    path = tmp_path / "dev.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("null")
        info.external_attr = (stat.S_IFCHR | 0o666) << 16
        archive.writestr(info, "")
    with pytest.raises(BadDocZip, match="not a regular file"):
        check_doc_zip(path, LIMITS)


def test_too_many_files(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "many.zip", {f"p{i}.html": b"" for i in range(51)})
    with pytest.raises(BadDocZip, match="more than 50 files"):
        check_doc_zip(path, LIMITS)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicates_and_clashes(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.html", b"1")
        archive.writestr("a.html", b"2")
    with pytest.raises(BadDocZip, match="twice"):
        check_doc_zip(path, LIMITS)
    clash = make_zip(tmp_path / "clash.zip", {"a": b"file", "a/b.html": b"under a file"})
    with pytest.raises(BadDocZip, match="clashes"):
        unpack_doc_zip(clash, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"nope")
    with pytest.raises(BadDocZip, match="not a valid zip"):
        check_doc_zip(path, LIMITS)
