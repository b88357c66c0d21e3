"""``devpid fsck`` on stage indexes: files checked against their links, never repaired;
unlinked files and upload temporary files are leftovers.

A real devpid receives two wheels (with their ``.metadata``), a doc zip and a
tox result on alice's stage and is stopped; then ``devpid fsck`` runs on the
serverdir as an operator would, before and after the serverdir is damaged:
a corrupt file, a missing one, an extra one, an upload's leftover temporary
file. The re-reading of the links (a live devpid links and unlinks files
while fsck runs) is tested in process, with the first read made stale.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from devpid.ops.fsck import check
from devpid.ops.fsck.report import Report
from devpid.ops.fsck.stages import StageLinks
from tests.fixtures.upstream import UpstreamProcess
from tests.test_upload_crash import (
    INDEX,
    basic_auth,
    build_wheel,
    fsck_errors,
    links_of,
    multipart,
    start_with_stage,
    upload_request,
)

pytestmark = pytest.mark.integration


@attrs.frozen
class Built:
    """A stopped devpid's serverdir and the entrypaths of what it holds."""

    serverdir: Path
    wheel: str
    other: str
    doczip: str
    toxresult: str

    def path(self, entrypath: str) -> Path:
        return self.serverdir / "+files" / entrypath


def _post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    request.add_header("Authorization", basic_auth())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def _doc_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("index.html", "<html><body>docs</body></html>")
    return buffer.getvalue()


def _entrypath(href: object) -> str:
    return str(href).split("/", 3)[3]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess) -> Path:
    """A serverdir with a stage's files, built once; each test works on a copy."""
    base = tmp_path_factory.mktemp("fsck-stages")
    wheels = [build_wheel(base, "stage-app", "1.0"), build_wheel(base, "stage-lib", "2.0")]
    with start_with_stage(base / "serverdir", shared_upstream) as devpid:
        for wheel in wheels:
            assert upload_request(devpid, wheel) == 200
        fields = {":action": "doc_upload", "name": "stage-app", "version": "1.0"}
        content_type, body = multipart(fields, "stage-app-1.0.doc.zip", _doc_zip())
        assert _post(f"{devpid.url}/{INDEX}/", body, content_type) == 200
        [release] = [link for link in links_of(devpid, "stage-app") if link["rel"] == "releasefile"]
        toxresult = json.dumps({"testenvs": {"py311": {}}}).encode()
        assert _post(str(release["href"]), toxresult, "application/json") == 200
    return base / "serverdir"


@pytest.fixture
def server(built: Path, tmp_path: Path) -> Built:
    serverdir = tmp_path / "serverdir"
    shutil.copytree(built, serverdir)
    files = {
        p.relative_to(serverdir / "+files").as_posix()
        for p in (serverdir / "+files" / INDEX).rglob("*")
        if p.is_file()
    }

    def one(predicate: Any) -> str:
        [found] = [f for f in files if predicate(f)]
        return found

    return Built(
        serverdir,
        wheel=one(lambda f: f.endswith("stage_app-1.0-py3-none-any.whl")),
        other=one(lambda f: f.endswith("stage_lib-2.0-py3-none-any.whl")),
        doczip=one(lambda f: f.endswith(".doc.zip")),
        toxresult=one(lambda f: ".toxresult-" in f),
    )


def problems(report: Report) -> list[tuple[str, str, str, bool]]:
    return sorted(
        (p.severity, p.kind, p.path.rpartition("/")[2], p.repaired) for p in report.problems
    )


def test_a_clean_stage_is_clean(server: Built) -> None:
    status, errors, output = fsck_errors(server.serverdir, "--json")
    result = json.loads(output)
    assert (status, errors, result["problems"]) == (0, [], []), output
    # Two wheels, their .metadata, the doc zip and the tox result: each by its link's sha256.
    assert result["counts"]["by_hash"] == 6
    assert result["counts"]["orphans"] == 0
    assert (server.serverdir / "+docs" / INDEX).is_dir()  # the unpacked docs: not reported


def test_corrupt_and_missing_linked_files_are_errors_never_repaired(server: Built) -> None:
    wheel = server.path(server.wheel)
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    server.path(server.other).unlink()
    metadata = server.path(server.wheel + ".metadata")
    metadata.write_bytes(metadata.read_bytes() + b"Summary: changed\n")
    server.path(server.toxresult).write_bytes(b"{}")

    for options in ((), ("--repair",)):
        status, errors, output = fsck_errors(server.serverdir, *options)
        assert status == 1, output
        assert len(errors) == 4, output
        assert all("not repaired" in line and "[removed]" not in line for line in errors), output
    report = check(server.serverdir, repair=True)
    assert problems(report) == [
        ("error", "corrupt", "stage_app-1.0-py3-none-any.whl", False),
        ("error", "corrupt", "stage_app-1.0-py3-none-any.whl.metadata", False),
        ("error", "corrupt", server.toxresult.rpartition("/")[2], False),
        ("error", "missing", "stage_lib-2.0-py3-none-any.whl", False),
    ]
    [missing] = [p for p in report.problems if p.kind == "missing"]
    assert "stage-lib/2.0" in missing.detail
    assert wheel.exists() and metadata.exists() and server.path(server.toxresult).exists()


def test_unlinked_files_and_upload_leftovers_are_removed_by_repair(server: Built) -> None:
    wheel = server.path(server.wheel)
    extra = wheel.with_name("stage_app-1.1-py3-none-any.whl")  # a crash's: never linked
    extra.write_bytes(b"PK not linked")
    elsewhere = server.serverdir / "+files" / INDEX / "+f" / "abc" / "0123456789abc" / "x-1.zip"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"nothing links me")
    uploads = server.serverdir / "+files" / "+uploads"
    uploads.mkdir(exist_ok=True)
    partial = uploads / "upload-3.4242-abcdef.devpid-partial"
    partial.write_bytes(b"half a body")

    status, errors, output = fsck_errors(server.serverdir)
    assert status == 1, output
    assert sorted(line.split(":")[0] for line in errors) == sorted(
        f"error leftover {p.relative_to(server.serverdir).as_posix()}"
        for p in (extra, elsewhere, partial)
    ), output
    assert extra.exists() and partial.exists()

    status, errors, output = fsck_errors(server.serverdir, "--repair")
    assert status == 0, output
    assert len(errors) == 3 and all(line.endswith("[removed]") for line in errors), output
    assert not extra.exists() and not elsewhere.exists() and not partial.exists()
    assert wheel.exists()
    assert fsck_errors(server.serverdir)[:2] == (0, [])


@pytest.fixture
def flocked() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def test_files_whose_writer_holds_them_are_in_progress(server: Built, flocked: list[int]) -> None:
    """An upload put in place but not yet linked, and one still arriving: left alone."""
    placed = server.path(server.wheel).with_name("stage_app-1.2-py3-none-any.whl")
    partial = server.serverdir / "+files" / "+uploads" / "upload-7.4242-abcdef.devpid-partial"
    partial.parent.mkdir(exist_ok=True)
    for path in (placed, partial):
        path.write_bytes(b"being written")
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        flocked.append(fd)
    report = check(server.serverdir, repair=True)
    assert problems(report) == []
    assert report.counts.in_progress == 2
    assert placed.exists() and partial.exists()


def test_a_metadata_file_beside_a_wheel_without_core_metadata_is_a_leftover(
    server: Built,
) -> None:
    doc_metadata = server.path(server.doczip + ".metadata")
    doc_metadata.write_bytes(b"Name: stage-app\n")
    report = check(server.serverdir)
    assert problems(report) == [("error", "leftover", doc_metadata.name, False)]


def test_links_are_read_again_before_blaming_a_live_devpid(
    server: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked after fsck's first read (an upload), unlinked after it (a delete): not errors."""
    real = StageLinks.read(server.serverdir)
    deleted = server.path(server.other)
    deleted.unlink()
    stale = StageLinks(
        real.stages,
        {
            path: linked
            for path, linked in real.files.items()
            if not path.startswith(server.wheel)  # the wheel and its .metadata: "new"
        },
    )
    now = StageLinks(
        real.stages, {path: linked for path, linked in real.files.items() if path != server.other}
    )
    reads = iter([stale, now])
    monkeypatch.setattr(StageLinks, "read", classmethod(lambda cls, serverdir: next(reads)))
    report = check(server.serverdir, repair=True)
    assert problems(report) == []
    assert server.path(server.wheel).exists()
    # All but the deleted file, the wheel and its .metadata once the links were read again.
    assert report.counts.by_hash == 5


def test_corrupt_size_is_reported_with_its_link(server: Built) -> None:
    path = server.path(server.doczip)
    path.write_bytes(path.read_bytes() + b"tail")
    report = check(server.serverdir)
    [problem] = report.problems
    assert (problem.severity, problem.kind) == ("error", "corrupt")
    assert "its link says" in problem.detail and "stage-app/1.0" in problem.detail
    assert hashlib.sha256(path.read_bytes()).hexdigest()  # still there


def test_unreadable_private_data_leaves_stage_files_to_the_page_checks(server: Built) -> None:
    """No links to go by: nothing of a stage is called missing or removed; orphans at most."""
    (server.serverdir / "private.sqlite").write_bytes(b"not sqlite at all " * 200)
    for name in ("private.sqlite-wal", "private.sqlite-shm"):
        (server.serverdir / name).unlink(missing_ok=True)
    report = check(server.serverdir, repair=True)
    kinds = {(p.severity, p.kind) for p in report.problems}
    assert kinds == {("warning", "unchecked"), ("warning", "orphan"), ("error", "private")}
    assert report.counts.orphans == 6
    assert server.path(server.wheel).exists()
