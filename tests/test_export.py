"""``devpid export`` against a real, running devpid: what a bundle holds, and that it holds it
consistently.

One devpid (module scope) with alice's stage ``alice/dev`` (bases ``root/pypi``): two wheels
uploaded (one of them, ``stage-app``, then gets a doc zip and a tox result), an API token,
a deleted version (a tombstone), and a mirror cache filled by ``pip install devpid-demo-app``
through devpid (the app's wheel and its dependency ``devpid-demo-lib``) plus a page and file
fetched by hand outside that closure (``devpid-demo-sdist``).

Each bundle written is checked by ``verify`` below, an independent reading of the format
(docs/bundle-format.md): header, manifest and every sha256, no extra file, every path
allowed, every link of every version record present with its sha256 and size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from devpid.tools.bundle import export as export_module
from devpid.tools.bundle.export import Exporter, Progress
from devpid.tools.bundle.format import (
    HEADER,
    MANIFEST,
    RECORDS,
    BundleError,
    Header,
    parse_manifest,
    path_problem,
)
from tests.conftest import pip_install
from tests.fixtures.devpid_process import DevpidProcess, devpid_env, http_get
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck_stages import _doc_zip, _post
from tests.test_upload_crash import (
    INDEX,
    Wheel,
    basic_auth,
    build_wheel,
    fsck_errors,
    links_of,
    multipart,
    start_with_stage,
    upload_request,
)

pytestmark = pytest.mark.integration


# -- an independent reading of a bundle -------------------------------------------------------


@attrs.frozen
class Bundle:
    """A bundle's files, read from a directory or a tar: path -> bytes (small test bundles)."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, path: Path) -> Bundle:
        files: dict[str, bytes] = {}
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                assert not item.is_symlink(), item
                if item.is_file():
                    files[item.relative_to(path).as_posix()] = item.read_bytes()
                else:
                    assert item.is_dir(), item
        else:
            with tarfile.open(path, "r:") as archive:
                for info in archive:
                    assert info.isreg(), info.name
                    assert info.name not in files, f"{info.name} twice"
                    extracted = archive.extractfile(info)
                    assert extracted is not None
                    files[info.name] = extracted.read()
        return cls(files)

    @property
    def header(self) -> Header:
        return Header.from_bytes(self.files[HEADER])

    @property
    def manifest(self) -> dict[str, tuple[int, str]]:
        return {e.path: (e.size, e.sha256) for e in parse_manifest(self.files[MANIFEST])}

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.files[RECORDS].splitlines()]

    def record(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [r["value"] for r in self.records if r["kind"] == kind and r["name"] == name]
        return found[0] if found else None

    def paths(self, prefix: str) -> set[str]:
        return {p for p in self.files if p.startswith(prefix)}


def verify(path: Path) -> Bundle:
    """Read the bundle at ``path`` and assert everything the format requires of it."""
    bundle = Bundle.read(path)
    problems: list[str] = []
    try:
        header = bundle.header
        entries = parse_manifest(bundle.files[MANIFEST])
    except (KeyError, BundleError) as e:
        raise AssertionError(f"{path}: {e}") from None
    manifest = bundle.files[MANIFEST]
    if hashlib.sha256(manifest).hexdigest() != header.manifest_sha256:
        problems.append("manifest sha256 differs from the header's")
    if [e.path for e in entries] != sorted(e.path for e in entries):
        problems.append("manifest not sorted")
    listed = {e.path: e for e in entries}
    for name in set(bundle.files) - set(listed) - {HEADER, MANIFEST}:
        problems.append(f"{name}: not in the manifest")
    for entry in entries:
        data = bundle.files.get(entry.path)
        if path_problem(entry.path) is not None:
            problems.append(f"{entry.path}: {path_problem(entry.path)}")
        if data is None:
            problems.append(f"{entry.path}: missing")
        elif len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            problems.append(f"{entry.path}: size or sha256 differs")
    if header.counts["files"] != len(entries):
        problems.append("counts.files differs")
    if header.counts["bytes"] != sum(e.size for e in entries):
        problems.append("counts.bytes differs")
    kinds = [r["kind"] for r in bundle.records]
    order = ["user", "index", "token", "version", "tombstone"]
    if kinds != sorted(kinds, key=order.index):
        problems.append("records out of order")
    if header.counts["records"] != len(kinds):
        problems.append("counts.records differs")
    linked: set[str] = set()
    for record in bundle.records:
        if record["kind"] != "version":
            continue
        for link in record["value"].get("+links", []):
            linked.add("files/" + link["entrypath"])
            found = listed.get("files/" + link["entrypath"])
            if found is None:
                problems.append(f"{record['name']} links {link['entrypath']}: not in the bundle")
            elif (found.size, found.sha256) != (link["size"], link["hashes"]["sha256"]):
                problems.append(f"{link['entrypath']}: differs from its link")
    for name in bundle.paths("files/"):
        base = name.removesuffix(".metadata")
        if base not in linked:
            problems.append(f"{name}: no version links it")
    assert problems == [], problems
    return bundle


# -- the server --------------------------------------------------------------------------------


@attrs.frozen
class Site:
    devpid: DevpidProcess
    base: Path
    wheels: list[Wheel]

    @property
    def serverdir(self) -> Path:
        return self.devpid.serverdir


def export(site: Site, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "devpid.cli", "export", "--serverdir", str(site.serverdir)]
    return subprocess.run(
        [*command, *options, str(out)],
        env=devpid_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def export_json(site: Site, out: Path, *options: str) -> dict[str, Any]:
    done = export(site, out, "--json", *options)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def private_rows(serverdir: Path) -> list[tuple[Any, ...]]:
    uri = f"file:{serverdir / 'private.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT kind, name, value, serial FROM records ORDER BY kind, name")
        return list(rows)


def token_create(serverdir: Path, user: str) -> None:
    command = [sys.executable, "-m", "devpid.cli", "token", "--serverdir", str(serverdir)]
    done = subprocess.run(
        [*command, "create", user], env=devpid_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def delete(devpid: DevpidProcess, path: str) -> int:
    request = urllib.request.Request(devpid.url + path, method="DELETE")
    request.add_header("Authorization", basic_auth())
    request.add_header("Accept", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess
) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("export")
    wheels = [
        build_wheel(base, "stage-app", "1.0"),
        build_wheel(base, "stage-lib", "2.0", blob_size=300_000),
        build_wheel(base, "stage-gone", "0.1"),
    ]
    with start_with_stage(base / "serverdir", shared_upstream) as devpid:
        for wheel in wheels:
            assert upload_request(devpid, wheel) == 200
        fields = {":action": "doc_upload", "name": "stage-app", "version": "1.0"}
        content_type, body = multipart(fields, "stage-app-1.0.doc.zip", _doc_zip())
        assert _post(f"{devpid.url}/{INDEX}/", body, content_type) == 200
        [release] = [link for link in links_of(devpid, "stage-app") if link["rel"] == "releasefile"]
        toxresult = json.dumps({"testenvs": {"py311": {}}}).encode()
        assert _post(str(release["href"]), toxresult, "application/json") == 200
        assert delete(devpid, f"/{INDEX}/stage-gone/0.1") == 200
        token_create(devpid.serverdir, "alice")
        installed = pip_install(devpid.simple_url, base / "target", "devpid-demo-app")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        for path in ("/root/pypi/+simple/devpid-demo-sdist/", "/root/pypi/+simple/"):
            assert http_get(devpid.url + path).status == 200
        page = http_get(devpid.url + "/root/pypi/+simple/devpid-demo-sdist/").body.decode()
        href = page.split('href="', 1)[1].split('"', 1)[0].split("#", 1)[0]
        assert http_get(href if href.startswith("http") else devpid.url + href).status == 200
        yield Site(devpid, base, wheels)


# -- what a bundle holds -----------------------------------------------------------------------


def test_dir_and_tar_bundles_hold_the_private_data_with_the_same_manifest(
    site: Site, tmp_path: Path
) -> None:
    before = private_rows(site.serverdir)
    as_dir = export_json(site, tmp_path / "bundle")
    as_tar = export_json(site, tmp_path / "bundle.tar")
    directory, tar = verify(tmp_path / "bundle"), verify(tmp_path / "bundle.tar")
    assert directory.files[MANIFEST] == tar.files[MANIFEST]
    assert as_dir["files"] == as_tar["files"] == len(directory.manifest)
    assert (as_dir["kind"], as_tar["kind"]) == ("directory", "tar")
    # the tar's members in the order of the format: records, stage files, manifest, header
    with tarfile.open(tmp_path / "bundle.tar") as archive:
        names = archive.getnames()
    assert names[0] == RECORDS and names[-2:] == [MANIFEST, HEADER]
    assert not (tmp_path / "bundle.tar.partial").exists()
    assert not (tmp_path / "bundle" / ".export-journal.jsonl").exists()

    header = directory.header
    assert header.mirror == "none" and header.source["kind"] == "devpid"
    assert header.source["serial"] == max(row[3] for row in before)
    assert directory.paths("mirror/") == set()
    alice = directory.record("user", "alice")
    assert alice is not None and alice["pwhash"].startswith("$argon2")
    assert directory.record("index", INDEX) is not None
    assert directory.record("index", "root/pypi") is not None
    [token] = [r["value"] for r in directory.records if r["kind"] == "token"]
    assert token["user"] == "alice" and "digest" in token
    assert directory.record("version", f"{INDEX}/stage-gone/0.1") is None
    assert any(r["kind"] == "tombstone" for r in directory.records)
    app = directory.record("version", f"{INDEX}/stage-app/1.0")
    assert app is not None
    rels = sorted(link["rel"] for link in app["+links"])
    assert rels == ["doczip", "releasefile", "toxresult"]
    names_in = {p.rpartition("/")[2] for p in directory.paths("files/")}
    assert {"stage_app-1.0-py3-none-any.whl", "stage_app-1.0-py3-none-any.whl.metadata"} <= names_in
    assert "stage_gone-0.1-py3-none-any.whl" not in names_in
    for wheel in site.wheels[:2]:
        [path] = [p for p in directory.paths("files/") if p.endswith(wheel.filename)]
        assert hashlib.sha256(directory.files[path]).hexdigest() == wheel.sha256
    # the source: nothing written, nothing left behind
    assert private_rows(site.serverdir) == before
    assert list((site.serverdir / "+tmp").iterdir()) == []


def test_a_second_run_on_a_complete_bundle_does_nothing_unless_forced(
    site: Site, tmp_path: Path
) -> None:
    for out in (tmp_path / "b", tmp_path / "b.tar"):
        export_json(site, out)
        again = export_json(site, out)
        assert again["already_complete"] is True
        text = export(site, out)
        assert text.returncode == 0 and "complete bundle already" in text.stdout
        forced = export_json(site, out, "--force")
        assert forced["already_complete"] is False and forced["written"] == forced["files"]
        verify(out)


def _mirror_files(bundle: Bundle) -> set[str]:
    return {p.rpartition("/")[2] for p in bundle.paths("mirror/files/")}


def _mirror_pages(bundle: Bundle) -> set[str]:
    return {p.rpartition("/")[2] for p in bundle.paths("mirror/pages/")}


def test_mirror_all_none_and_a_requirements_closure(site: Site, tmp_path: Path) -> None:
    cached = {
        p.name
        for p in (site.serverdir / "+files" / "root" / "pypi").rglob("*")
        if p.is_file() and not p.name.endswith(".devpid-partial")
    }
    assert (
        "devpid_demo_sdist-0.1.tar.gz" in cached
        and "devpid_demo_lib-2.0-py3-none-any.whl" in cached
    )
    everything = export_json(site, tmp_path / "all.tar", "--mirror", "all")
    bundle = verify(tmp_path / "all.tar")
    assert bundle.header.mirror == "all"
    assert _mirror_files(bundle) == cached
    assert {"devpid-demo-app.json", "devpid-demo-lib.json", "devpid-demo-sdist.json"} <= (
        _mirror_pages(bundle)
    )
    assert "+projects.json" in _mirror_pages(bundle)
    for path, data in bundle.files.items():
        if path.startswith("mirror/"):
            source = site.serverdir / ("+files" if "/files/" in path else "+pages")
            assert (source / path.split("/", 2)[2]).read_bytes() == data
    assert everything["mirror_files"] == len(cached)

    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# what the air-gapped site needs\ndevpid-demo-app\nnot-cached-at-all>=1\n"
    )
    closure = export_json(site, tmp_path / "closure", "--mirror", str(requirements))
    bundle = verify(tmp_path / "closure")
    assert bundle.header.mirror == "requirements"
    # the app and, through its wheel's metadata, its dependency: not the unrelated sdist
    files = _mirror_files(bundle)
    assert "devpid_demo_app-1.0-py3-none-any.whl" in files
    assert "devpid_demo_lib-2.0-py3-none-any.whl" in files
    assert not any(name.startswith("devpid_demo_sdist") for name in files)
    assert _mirror_pages(bundle) == {"devpid-demo-app.json", "devpid-demo-lib.json"}
    assert closure["unmatched"] == ["not-cached-at-all>=1"]
    text = export(site, tmp_path / "closure2", "--mirror", str(requirements))
    assert "1 requirements matched nothing cached: not-cached-at-all>=1" in text.stdout


def test_errors_are_one_line_and_fail(site: Site, tmp_path: Path) -> None:
    done = export(site, tmp_path / "out", "--serverdir", str(tmp_path / "nowhere"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "no serverdir" in done.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "out.tar", blocker / "out"):
        done = export(site, out)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    stranger = tmp_path / "notmine"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    done = export(site, stranger)
    assert done.returncode == 1 and "not empty" in done.stderr
    assert (stranger / "precious.txt").read_text() == "keep me"
    done = export(site, tmp_path / "x", "--mirror", str(tmp_path / "missing.txt"))
    assert done.returncode == 2


# -- consistency while devpid works --------------------------------------------------------------


def test_a_delete_after_the_snapshot_takes_another_snapshot(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first snapshot still links a version that is deleted (and its file removed)
    before the files are pinned: the export notices the missing file, takes a new snapshot,
    and the version is wholly out."""
    wheel = build_wheel(tmp_path, "stage-racy", "1.0")
    assert upload_request(site.devpid, wheel) == 200
    real = export_module.read_snapshot
    calls: list[int] = []

    def read_then_delete(serverdir: Path, records: Path) -> Any:
        snapshot = real(serverdir, records)
        if not calls:
            assert delete(site.devpid, f"/{INDEX}/stage-racy/1.0") == 200
        calls.append(snapshot.serial)
        return snapshot

    monkeypatch.setattr(export_module, "read_snapshot", read_then_delete)
    summary = Exporter(site.serverdir, tmp_path / "bundle").run()
    assert summary.snapshots == 2 and calls[1] > calls[0]
    bundle = verify(tmp_path / "bundle")
    assert bundle.record("version", f"{INDEX}/stage-racy/1.0") is None
    assert not any("stage_racy" in p for p in bundle.files)


def test_exports_while_devpid_serves_uploads_and_deletes(site: Site, tmp_path: Path) -> None:
    stop = threading.Event()
    errors: list[str] = []
    wheels = [build_wheel(tmp_path, "stage-busy", f"1.{n}", blob_size=50_000) for n in range(40)]

    def churn() -> None:
        for n, wheel in enumerate(wheels):
            if stop.is_set():
                return
            if upload_request(site.devpid, wheel) != 200:
                errors.append(f"upload {wheel.filename}")
            if n % 2 and delete(site.devpid, f"/{INDEX}/stage-busy/1.{n - 1}") != 200:
                errors.append(f"delete 1.{n - 1}")

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        serials = []
        for n in range(6):
            out = tmp_path / (f"b{n}.tar" if n % 2 else f"b{n}")
            summary = export_json(site, out, "--mirror", "all")
            bundle = verify(out)  # every linked file there, with its link's hash
            serials.append(summary["serial"])
            versions = {r["name"] for r in bundle.records if r["kind"] == "version"}
            busy = {p for p in bundle.paths("files/") if "stage_busy" in p}
            assert len(busy) == 2 * len({v for v in versions if "stage-busy" in v})
    finally:
        stop.set()
        worker.join(timeout=60)
    assert errors == []
    assert serials == sorted(serials) and serials[-1] > serials[0]
    assert fsck_errors(site.serverdir)[:2] == (0, [])


# -- interruptions -----------------------------------------------------------------------------


class _InterruptAfter(Progress):
    def __init__(self, files: int) -> None:
        self.left = files

    def file_done(self, reused: bool, size: int) -> None:
        if not reused:
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt


@pytest.mark.parametrize("name", ["bundle", "bundle.tar"])
def test_an_interrupted_export_resumes_after_the_records_changed(
    site: Site, tmp_path: Path, name: str
) -> None:
    """Ctrl-C after a few files; then a new upload changes the records (records.jsonl, the
    tar's first member, is no longer wanted); the rerun keeps the files still wanted."""
    out = tmp_path / name
    with pytest.raises(KeyboardInterrupt):
        Exporter(site.serverdir, out, "all", progress=_InterruptAfter(4)).run()
    assert not (tmp_path / "bundle" / HEADER).exists() and not (tmp_path / "bundle.tar").exists()
    wheel = build_wheel(tmp_path, "stage-later", "1.0")
    assert upload_request(site.devpid, wheel) == 200
    summary = Exporter(site.serverdir, out, "all").run()
    assert summary.reused == 3  # the first four less records.jsonl
    bundle = verify(out)
    assert bundle.record("version", f"{INDEX}/stage-later/1.0") is not None
    assert list((site.serverdir / "+tmp").iterdir()) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_points_then_a_rerun_completes(
    site: Site, tmp_path: Path, seed: int
) -> None:
    """SIGKILL while the export writes (once as a directory, once as a tar, when the output
    reaches a size drawn from the seed); the rerun completes, keeps what was written, the
    bundle verifies, and the serverdir is as it was."""
    rng = random.Random(seed)
    big = [
        build_wheel(tmp_path, f"stage-big{seed}", f"{n}.0", blob_size=8_000_000) for n in range(4)
    ]
    for wheel in big:
        assert upload_request(site.devpid, wheel) == 200
    before = private_rows(site.serverdir)
    for out in (tmp_path / "bundle", tmp_path / "bundle.tar"):
        written = out.with_name(out.name + ".partial") if out.suffix == ".tar" else out
        threshold = rng.randrange(0, 30_000_000)
        command = [sys.executable, "-m", "devpid.cli", "export", "--mirror", "all"]
        command += ["--serverdir", str(site.serverdir), str(out)]
        process = subprocess.Popen(command, env=devpid_env(), stdout=subprocess.DEVNULL)
        while process.poll() is None and _size_of(written) < threshold:
            pass
        process.kill()
        assert process.wait() == -signal.SIGKILL  # killed before it could finish
        assert not (out / HEADER).exists() and not (tmp_path / "bundle.tar").exists()
        done = export(site, out, "--json", "--mirror", "all")
        assert done.returncode == 0, done.stderr
        if threshold > 1_000_000:  # records.jsonl and more were written: kept
            assert json.loads(done.stdout)["reused"] >= 1, (threshold, done.stdout)
        verify(out)
        assert not (site.serverdir / "+tmp").exists() or not list(
            (site.serverdir / "+tmp").iterdir()
        )
    assert private_rows(site.serverdir) == before
    assert fsck_errors(site.serverdir)[:2] == (0, [])


def _size_of(path: Path) -> int:
    if path.is_file():
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0
    total = 0
    for directory, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(directory, name)).st_size
    return total
