"""``devpid import`` end to end: bundles made from a real devpid's serverdir, imported into a
fresh serverdir and served with ``--offline``; ``--merge`` into a serverdir a devpid is
serving; idempotency.

The bundles are built here with ``devpid.tools.bundle.format`` (``make_bundle``) from a
stopped devpid's serverdir: alice's stage with a wheel (and its ``.metadata``), a doc zip
and a tox result uploaded over HTTP, and root/pypi's cache of ``devpid-demo-lib`` filled by
a real ``pip download`` through it. ``devpid import`` runs as a user runs it (``python -m
devpid.cli import``), and a real ``twistd -n devpid --offline`` then serves the result to
pip. Round trips through ``devpid export`` are tested when it exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from devpid.tools.bundle.format import (
    HEADER,
    MANIFEST,
    RECORD_KINDS,
    RECORDS,
    Header,
    ManifestEntry,
    hash_file,
    manifest_bytes,
    record_line,
)
from tests.conftest import pip_install
from tests.fixtures.devpid_process import DevpidProcess, devpid_env
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck_stages import _doc_zip, _post
from tests.test_private_api import Api
from tests.test_upload_crash import (
    INDEX,
    PASSWORD,
    USER,
    build_wheel,
    links_of,
    multipart,
    start_with_stage,
    upload_request,
)

pytestmark = pytest.mark.integration

# -- building bundles (shared with test_import_bad.py and test_import_crash.py) -----------


def private_records(serverdir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    db = sqlite3.connect(f"file:{serverdir / 'private.sqlite'}?mode=rw", uri=True)
    try:
        rows = db.execute("SELECT kind, name, value FROM records").fetchall()
    finally:
        db.close()
    return sorted(
        ((str(k), str(n), json.loads(v)) for k, n, v in rows),
        key=lambda r: (RECORD_KINDS.index(r[0]), r[1]),
    )


def event_count(serverdir: Path) -> int:
    db = sqlite3.connect(f"file:{serverdir / 'private.sqlite'}?mode=rw", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


def write_bundle(out: Path, files: dict[str, Path | bytes], mirror: str = "all") -> Path:
    """A bundle directory at ``out`` holding ``files`` (bundle path -> source file or bytes)."""
    out.mkdir(parents=True)
    entries = []
    for path, content in sorted(files.items()):
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
        size, sha256 = hash_file(target)
        entries.append(ManifestEntry(path, size, sha256))
    manifest = manifest_bytes(entries)
    (out / MANIFEST).write_bytes(manifest)
    header = Header(
        created="2026-12-04T17:00:00Z",
        devpid="test",
        source={"kind": "devpid", "version": "test", "uuid": "0" * 32, "serial": 0},
        mirror=mirror,
        counts={
            "records": len((files.get(RECORDS) or b"").splitlines())
            if isinstance(files.get(RECORDS), bytes)
            else 0,
            "files": len(entries),
            "bytes": sum(e.size for e in entries),
        },
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
    )
    (out / HEADER).write_bytes(header.encoded())
    return out


def make_bundle(serverdir: Path, out: Path, mirror: bool = True) -> Path:
    """A bundle of a stopped devpid's serverdir: every record, every linked stage file (and
    its ``.metadata``), and with ``mirror`` every mirror index's pages and files."""
    records = private_records(serverdir)
    files: dict[str, Path | bytes] = {
        RECORDS: b"".join(record_line(k, n, v) for k, n, v in records)
    }
    mirrors = [n for k, n, v in records if k == "index" and v.get("type") == "mirror"]
    for kind, _name, value in records:
        if kind != "version":
            continue
        for link in value.get("+links", []):
            source = serverdir / "+files" / link["entrypath"]
            files["files/" + link["entrypath"]] = source
            side = source.with_name(source.name + ".metadata")
            if side.exists():
                files["files/" + link["entrypath"] + ".metadata"] = side
    for index in mirrors if mirror else ():
        for root, prefix in (("+pages", "mirror/pages/"), ("+files", "mirror/files/")):
            base = serverdir / root
            for path in sorted((base / index).rglob("*")):
                if path.is_file() and not path.name.endswith(".devpid-partial"):
                    files[prefix + path.relative_to(base).as_posix()] = path
    return write_bundle(out, files)


def make_tar(bundle: Path, tar_path: Path) -> Path:
    """The bundle as an uncompressed tar, members at its root, header last."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
        names.remove(HEADER)
        for name in [*names, HEADER]:
            tar.add(bundle / name, arcname=name, recursive=False)
    return tar_path


def run_import(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``devpid import`` run for real, as a user runs it."""
    command = [sys.executable, "-m", "devpid.cli", "import", *map(str, args)]
    return subprocess.run(
        command, env=devpid_env(), capture_output=True, text=True, timeout=timeout
    )


def import_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    done = run_import("--json", *args)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def tree_listing(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a directory, a link's target."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "link " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# -- a source devpid ----------------------------------------------------------------------


def _fill_source(devpid: DevpidProcess, base: Path) -> None:
    wheel = build_wheel(base, "acme-tool", "1.0")
    assert upload_request(devpid, wheel) == 200
    fields = {":action": "doc_upload", "name": "acme-tool", "version": "1.0"}
    content_type, body = multipart(fields, "acme-tool-1.0.doc.zip", _doc_zip())
    assert _post(f"{devpid.url}/{INDEX}/", body, content_type) == 200
    [release] = [link for link in links_of(devpid, "acme-tool") if link["rel"] == "releasefile"]
    toxresult = json.dumps({"testenvs": {"py311": {}}}).encode()
    assert _post(str(release["href"]), toxresult, "application/json") == 200
    # the mirror cache: a real install through root/pypi
    done = pip_install(devpid.simple_url, base / "warm", "devpid-demo-lib==2.0")
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess) -> Path:
    """A stopped devpid's serverdir with alice's stage and a mirror cache."""
    base = tmp_path_factory.mktemp("import-source")
    with start_with_stage(base / "serverdir", shared_upstream) as devpid:
        _fill_source(devpid, base)
    return base / "serverdir"


@pytest.fixture(scope="module")
def bundle(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(source, tmp_path_factory.mktemp("import-bundle") / "bundle")


@pytest.fixture
def upstream_gone() -> str:
    """An upstream URL nobody listens on: offline serving must not need it."""
    return "http://127.0.0.1:9/simple/"


def _serve_and_install(serverdir: Path, tmp_path: Path, upstream: str) -> None:
    with DevpidProcess.start(serverdir, upstream, "--offline") as served:
        done = pip_install(f"{served.url}/{INDEX}/+simple/", tmp_path / "t1", "acme-tool")
        assert done.returncode == 0, done.stderr + done.stdout
        done = pip_install(served.simple_url, tmp_path / "t2", "devpid-demo-lib==2.0")
        assert done.returncode == 0, done.stderr + done.stdout
        api = Api(served)
        api.login(USER, PASSWORD)  # the exported password hash works
        doc = served.get(f"/{INDEX}/acme-tool/1.0/+doc/index.html")
        assert doc.status == 200 and b"docs" in doc.body


# -- the tests ---------------------------------------------------------------------------


def test_import_directory_into_fresh_serverdir_serves_offline(
    bundle: Path, source: Path, tmp_path: Path, upstream_gone: str
) -> None:
    before = tree_listing(bundle)
    target = tmp_path / "target"
    status, summary = import_json("--serverdir", target, bundle)
    assert status == 0, summary
    assert summary["status"] == "imported"
    assert summary["records"] == {
        "added": len(private_records(source)),
        "same": 0,
        "conflicting": 0,
    }
    assert summary["files"]["placed"] > 4 and summary["pages"]["written"] >= 1
    assert private_records(target) == private_records(source)
    assert event_count(target) == 1
    assert not (target / "+tmp").exists()
    assert tree_listing(bundle) == before  # the source is untouched
    fsck = subprocess.run(
        [sys.executable, "-m", "devpid.cli", "fsck", "--serverdir", str(target)],
        env=devpid_env(),
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, fsck.stdout
    _serve_and_install(target, tmp_path, upstream_gone)


def test_import_tar_then_again_is_idempotent(bundle: Path, source: Path, tmp_path: Path) -> None:
    tar = make_tar(bundle, tmp_path / "bundle.tar")
    target = tmp_path / "target"
    status, first = import_json("--serverdir", target, tar)
    assert status == 0 and first["status"] == "imported", first
    assert private_records(target) == private_records(source)
    listing = tree_listing(target)
    for args in (("--merge",), ()):
        status, again = import_json("--serverdir", target, *args, tar)
        assert status == 0, again
        assert again["status"] == "already-present"
        assert again["records"]["added"] == 0 and again["files"]["placed"] == 0
        assert again["bytes"]["copied"] == 0
        assert event_count(target) == 1
    human = run_import("--serverdir", target, "--merge", tar)
    assert human.returncode == 0 and "already present" in human.stdout
    assert tree_listing(target) == listing


def test_import_into_initialised_serverdir_replaces_root(
    bundle: Path, source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    init = subprocess.run(
        [sys.executable, "-m", "devpid.cli", "init", "--serverdir", str(target)],
        env=devpid_env(),
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    status, summary = import_json("--serverdir", target, bundle)
    assert status == 0, summary
    assert private_records(target) == private_records(source)


def test_import_refuses_a_serverdir_in_use_without_merge(
    bundle: Path, source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    shutil.copytree(source, target)
    (target / "private.sqlite-wal").unlink(missing_ok=True)
    db = sqlite3.connect(target / "private.sqlite")
    db.execute(
        "UPDATE records SET value = json_set(value, '$.title', 'changed') "
        "WHERE kind = 'index' AND name = ?",
        (INDEX,),
    )
    db.commit()
    db.close()
    listing = tree_listing(target)
    done = run_import("--serverdir", target, bundle)
    assert done.returncode == 1
    assert "--merge" in done.stderr and f"index {INDEX}" in done.stderr
    assert tree_listing(target) == listing


def test_merge_into_a_served_serverdir(
    bundle: Path, source: Path, tmp_path: Path, upstream: UpstreamProcess
) -> None:
    """A devpid serves the target while the bundle is merged in: conflicts refuse it, then
    --keep-existing imports the rest and the running devpid serves the new stage at once."""
    with DevpidProcess.start(tmp_path / "target", upstream.simple_url) as served:
        api = Api(served)
        assert api.call("PUT", "/bob", {"password": "bobpw"}).status == 201
        assert api.call("PUT", f"/{USER}", {"password": "other"}).status == 201
        assert served.get(f"/{INDEX}/+simple/").status == 404
        listing = tree_listing(served.serverdir / "+files")
        events = event_count(served.serverdir)

        status, refused = import_json("--serverdir", served.serverdir, "--merge", bundle)
        assert status == 1 and refused["status"] == "refused", refused
        assert f"user {USER}: differs in the target" in refused["problems"]
        assert "user root: differs in the target" in refused["problems"]
        assert event_count(served.serverdir) == events
        assert tree_listing(served.serverdir / "+files") == listing

        done = run_import("--serverdir", served.serverdir, "--merge", "--keep-existing", bundle)
        assert done.returncode == 3, done.stderr
        assert f"user {USER}: differs in the target" in done.stdout
        assert event_count(served.serverdir) == events + 1
        page = served.get(f"/{INDEX}/+simple/acme-tool/")
        assert page.status == 200 and b"acme_tool-1.0-py3-none-any.whl" in page.body
        # alice keeps the target's password; bob is untouched
        Api(served).login(USER, "other")
        Api(served).login("bob", "bobpw")

        status, again = import_json(
            "--serverdir", served.serverdir, "--merge", "--keep-existing", bundle
        )
        assert status == 3 and again["records"]["added"] == 0, again
        assert event_count(served.serverdir) == events + 1


def _wait_for_export() -> None:
    if not Path(__file__).resolve().parents[1].joinpath("devpid/cli/export.py").exists():
        pytest.skip("devpid export (devpid/cli/export.py) is not there yet")


def test_round_trip_through_devpid_export(source: Path, tmp_path: Path, upstream_gone: str) -> None:
    _wait_for_export()
    out = tmp_path / "exported.tar"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "devpid.cli",
            "export",
            "--serverdir",
            str(source),
            "--mirror",
            "all",
            str(out),
        ],
        env=devpid_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    target = tmp_path / "target"
    status, summary = import_json("--serverdir", target, out)
    assert status == 0, summary
    assert private_records(target) == private_records(source)
    _serve_and_install(target, tmp_path, upstream_gone)
