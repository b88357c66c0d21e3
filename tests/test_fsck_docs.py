"""``devpid fsck`` of ``+docs/``: unpacked docs against the doc zips their versions link.

A real devpid receives doc zips for two versions on alice's stage over HTTP
(``:action=doc_upload``, as ``devpi upload --with-docs`` sends them), serves a
page of each (so both are unpacked), deletes one version, and is stopped. Each
test works on a copy of that serverdir, damaged as a crash, a hand edit or an
import would leave it, and runs the real ``devpid fsck`` on it; after
``--repair`` a devpid started on the copy serves the docs again, unpacked
afresh from the doc zip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import attrs
import pytest

from devpid.private.database import PrivateDatabase, Transaction
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck import run_fsck
from tests.test_upload_crash import INDEX, basic_auth, multipart, start_with_stage

pytestmark = pytest.mark.integration

PROJECT = "docs-app"
#: The doc zip of version 1.0: a page, a page in a subdirectory, a stylesheet.
DOCS = {
    "index.html": b"<html><body>docs-app 1.0</body></html>",
    "sub/page.html": b"<html><body>a page below</body></html>",
    "style.css": b"body { color: black; }\n",
}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def _send(devpid: DevpidProcess, method: str, path: str, body: bytes = b"", **headers: str) -> int:
    request = urllib.request.Request(devpid.url + path, data=body or None, method=method)
    request.add_header("Authorization", basic_auth())
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def _upload_docs(devpid: DevpidProcess, version: str, members: dict[str, bytes]) -> None:
    fields = {":action": "doc_upload", "name": PROJECT, "version": version}
    content_type, body = multipart(fields, f"{PROJECT}-{version}.doc.zip", _zip(members))
    assert _send(devpid, "POST", f"/{INDEX}/", body, Content_Type=content_type) == 200


def _doc_page(devpid: DevpidProcess, version: str, page: str) -> tuple[int, bytes]:
    answer = devpid.get(f"/{INDEX}/{PROJECT}/{version}/+doc/{page}")
    return answer.status, answer.body


@attrs.frozen
class Built:
    """A stopped devpid's serverdir with docs unpacked for 1.0, and a deleted version's."""

    serverdir: Path
    #: The unpacked docs of 2.0, saved before 2.0 was deleted (devpid removed them).
    deleted_docs: Path

    @property
    def version_dir(self) -> Path:
        return self.serverdir / "+docs" / INDEX / PROJECT / "1.0"

    @property
    def unpacked(self) -> Path:
        [directory] = self.version_dir.iterdir()
        return directory


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess) -> Built:
    base = tmp_path_factory.mktemp("fsck-docs")
    serverdir = base / "serverdir"
    with start_with_stage(serverdir, shared_upstream) as devpid:
        _upload_docs(devpid, "1.0", DOCS)
        _upload_docs(devpid, "2.0", {"index.html": b"<html><body>2.0</body></html>"})
        for version in ("1.0", "2.0"):
            shutil.rmtree(serverdir / "+docs" / INDEX / PROJECT / version)
            assert _doc_page(devpid, version, "")[0] == 200  # unpacked again on demand
        [deleted] = (serverdir / "+docs" / INDEX / PROJECT / "2.0").iterdir()
        shutil.copytree(deleted, base / deleted.name)
        assert _send(devpid, "DELETE", f"/{INDEX}/{PROJECT}/2.0", Accept="application/json") == 200
    return Built(serverdir, base / deleted.name)


@pytest.fixture
def server(built: Built, tmp_path: Path) -> Built:
    serverdir = tmp_path / "serverdir"
    shutil.copytree(built.serverdir, serverdir, symlinks=True)
    return Built(serverdir, built.deleted_docs)


def fsck(serverdir: Path, *options: str) -> tuple[int, list[str]]:
    """The real ``devpid fsck``: its exit status and its output's lines."""
    done = run_fsck(serverdir, *options)
    assert not done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


def fsck_json(serverdir: Path, *options: str) -> tuple[int, dict[str, Any]]:
    done = run_fsck(serverdir, "--json", *options)
    return done.returncode, json.loads(done.stdout)


def found(document: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    return sorted(
        (p["severity"], p["kind"], p["path"], p["repaired"]) for p in document["problems"]
    )


def relative(server: Built, path: Path) -> str:
    return path.relative_to(server.serverdir).as_posix()


# -- the tests -------------------------------------------------------------------------


def test_docs_unpacked_by_devpid_are_clean(server: Built) -> None:
    status, document = fsck_json(server.serverdir)
    assert (status, document["problems"]) == (0, []), document
    assert document["counts"]["docs"] == 1  # 1.0's; 2.0 was deleted with its docs
    status, lines = fsck(server.serverdir)
    assert status == 0
    [summary] = lines
    assert "1 unpacked docs" in summary and summary.endswith(": clean, 0 warnings"), summary


def test_damaged_and_stale_docs_are_reported_then_removed_and_unpacked_again(
    server: Built, shared_upstream: UpstreamProcess, tmp_path: Path
) -> None:
    unpacked = server.unpacked
    (unpacked / "sub" / "page.html").unlink()
    style = unpacked / "style.css"
    style.write_bytes(style.read_bytes().replace(b"black", b"white"))  # same size, new bytes
    (unpacked / "extra.html").write_bytes(b"<script>not the uploader's</script>")
    # Stale: another zip's docs for 1.0, and the docs of the deleted 2.0 (a crash's).
    replaced = server.version_dir / "0123456789abcdef"
    shutil.copytree(unpacked, replaced)
    deleted = server.serverdir / "+docs" / INDEX / PROJECT / "2.0" / server.deleted_docs.name
    shutil.copytree(server.deleted_docs, deleted)
    # A link where a version's directory should be: reported, never followed.
    outside = tmp_path / "outside" / "fedcba9876543210"
    outside.mkdir(parents=True)
    (outside / "index.html").write_bytes(b"not devpid's")
    link = server.serverdir / "+docs" / INDEX / PROJECT / "3.0"
    link.symlink_to(outside.parent)

    status, lines = fsck(server.serverdir)
    assert status == 1, lines
    [corrupt] = [line for line in lines if line.startswith("error")]
    assert corrupt.startswith(f"error corrupt {relative(server, unpacked)}: "), corrupt
    assert "sub/page.html is missing" in corrupt
    assert "style.css: CRC-32" in corrupt
    assert "extra.html is not in the zip" in corrupt
    warnings = sorted(line.split(":")[0] for line in lines if line.startswith("warning"))
    assert warnings == sorted(
        [
            f"warning stale {relative(server, replaced)}",
            f"warning stale {relative(server, deleted)}",
            f"warning unexpected {relative(server, link)}",
        ]
    ), lines
    assert lines[-1].endswith(": 1 error, 3 warnings"), lines
    assert unpacked.exists() and replaced.exists() and deleted.exists()

    status, document = fsck_json(server.serverdir, "--repair")
    assert status == 0, document
    assert found(document) == sorted(
        [
            ("error", "corrupt", relative(server, unpacked), True),
            ("warning", "stale", relative(server, deleted), True),
            ("warning", "stale", relative(server, replaced), True),
            ("warning", "unexpected", relative(server, link), False),
        ]
    )
    assert (document["errors"], document["unrepaired"], document["warnings"]) == (1, 0, 3)
    assert not unpacked.exists() and not replaced.exists() and not deleted.exists()
    assert (outside / "index.html").read_bytes() == b"not devpid's" and link.is_symlink()
    assert not [p for p in server.version_dir.parent.rglob(".*")], "left something aside"

    link.unlink()
    status, document = fsck_json(server.serverdir)
    assert (status, document["problems"], document["counts"]["docs"]) == (0, [], 0)
    # devpid unpacks the docs again from the doc zip on the next request.
    with DevpidProcess.start(server.serverdir, shared_upstream.simple_url) as devpid:
        for page, content in DOCS.items():
            assert _doc_page(devpid, "1.0", page) == (200, content)
    assert fsck_json(server.serverdir)[1]["counts"]["docs"] == 1
    assert fsck(server.serverdir)[0] == 0


def _relink_doc_zip(serverdir: Path, content: bytes) -> Path:
    """Link 1.0 to another doc zip behind devpid's back, as an import of an unchecked
    zip would: the bytes put in place, the link changed through the private data."""
    sha256 = hashlib.sha256(content).hexdigest()
    entrypath = f"{INDEX}/+f/{sha256[:3]}/{sha256[3:16]}/{PROJECT}-1.0.doc.zip"
    path = serverdir / "+files" / entrypath
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    database = PrivateDatabase.in_serverdir(serverdir)
    database.open()
    name = f"{INDEX}/{PROJECT}/1.0"
    old: list[str] = []

    def change(tx: Transaction) -> None:
        value = json.loads(json.dumps(tx.get("version", name)))
        [link] = [link for link in value["+links"] if link["rel"] == "doczip"]
        old.append(link["entrypath"])
        link.update(entrypath=entrypath, hashes={"sha256": sha256}, size=len(content))
        tx.put("version", name, value)

    try:
        database.write("relink the doc zip", "root", change)
    finally:
        database.close()
    (serverdir / "+files" / old[0]).unlink()  # not a leftover to report too
    return path


def test_a_doc_zip_devpid_would_not_unpack_is_an_error_never_repaired(server: Built) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("index.html", b"<html></html>")
        zf.writestr("../escape.html", b"outside the docs")
    old_docs = server.unpacked  # no longer 1.0's zip's: stale
    doc_zip = _relink_doc_zip(server.serverdir, buffer.getvalue())

    for options in ((), ("--repair",)):
        status, document = fsck_json(server.serverdir, *options)
        assert status == 1, document
        assert found(document) == [
            ("error", "bad-doczip", relative(server, doc_zip), False),
            ("warning", "stale", relative(server, old_docs), bool(options)),
        ]
        [bad] = [p for p in document["problems"] if p["kind"] == "bad-doczip"]
        assert "leaves the directory" in bad["detail"] and "not repaired" in bad["detail"]
        assert f"{INDEX}/{PROJECT}/1.0" in bad["detail"]
    assert doc_zip.exists() and not old_docs.exists()


def test_a_corrupt_doc_zip_is_reported_once_and_its_docs_left_alone(server: Built) -> None:
    """A doc zip that is not its link's is the stage files' error: no second report."""
    [doc_zip] = (server.serverdir / "+files" / INDEX).rglob("*.doc.zip")
    doc_zip.write_bytes(b"PK not a zip any more")
    (server.unpacked / "index.html").unlink()
    status, document = fsck_json(server.serverdir, "--repair")
    assert status == 1
    assert found(document) == [("error", "corrupt", relative(server, doc_zip), False)]
    assert server.unpacked.is_dir()
    assert os.path.exists(doc_zip)


def test_devpids_temporary_docs_directories_are_leftovers_once_a_minute_old(
    server: Built,
) -> None:
    """Docs being unpacked (``.<sha16>.new-*``) are left alone; a dead unpack's are removed."""
    unpacked = server.unpacked
    name = unpacked.name
    fresh = server.version_dir / f".{name}.new-k2j4x9"
    dead = server.version_dir / f".{name}.new-p0q1r2"
    deleted_stage = server.serverdir / "+docs" / "alice" / ".old.4242-abcdef.deleted"
    for directory in (fresh, dead, deleted_stage / "p" / "1.0" / name):
        shutil.copytree(unpacked, directory)
    an_hour_ago = time.time() - 3600
    for directory in (dead, deleted_stage):
        for path in [directory, *directory.rglob("*")]:
            os.utime(path, (an_hour_ago, an_hour_ago), follow_symlinks=False)

    status, document = fsck_json(server.serverdir, "--repair")
    assert status == 0, document
    assert found(document) == sorted(
        [
            ("warning", "leftover", relative(server, dead), True),
            ("warning", "leftover", relative(server, deleted_stage), True),
        ]
    )
    assert document["counts"]["in_progress"] == 1
    assert fresh.is_dir() and not dead.exists() and not deleted_stage.exists()
