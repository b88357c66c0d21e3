"""``devpid import`` refuses damaged bundles, listing what is wrong, the target untouched.

One small bundle is made from a scratch serverdir through devpid's own APIs (root and
root/pypi as the first start makes them, alice, her stage, a version with one file, a
mirror page and file); each test damages a copy (a flipped byte, a missing file, an extra
file, paths that escape, links and devices, a duplicate tar member, a bad header, an
unknown version, a record linking a file the bundle lacks) and imports it with the real
command into a serverdir a devpid already initialised. The serverdir must be byte for byte
as before, and nothing may appear outside it. Last, a disk that fills during the import
(a small tmpfs, when this host lets the test mount one).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from devpid.auth.passwords import hash_password
from devpid.files.store import FileStore
from devpid.private.releases import NewFile, Releases, entrypath
from devpid.private.userconfig import NewUser
from devpid.private_service import open_private_data
from devpid.tools.bundle.format import HEADER, MANIFEST, RECORDS, hash_file
from tests.test_import import make_bundle, make_tar, run_import, tree_listing, write_bundle

pytestmark = pytest.mark.integration

FILENAME = "pkg-1.0.tar.gz"


def _scratch_serverdir(serverdir: Path, file_size: int = 2000, files: int = 1) -> Path:
    serverdir.mkdir(parents=True)
    data = open_private_data(serverdir / "private.sqlite", 1800, "http://127.0.0.1:9/simple/")
    try:
        data.create_user("alice", NewUser(None, None, {}), hash_password("pw"), None)
        data.create_index("alice", "dev", {"bases": "root/pypi"}, "alice")
        releases = Releases(data.database)
        rng = random.Random(file_size)
        for number in range(files):
            content = rng.randbytes(file_size)
            sha256 = hashlib.sha256(content).hexdigest()
            name = FILENAME if number == 0 else f"pkg-1.{number}.tar.gz"
            path = entrypath("alice/dev", sha256, name)
            target = serverdir / "+files" / path
            target.parent.mkdir(parents=True)
            target.write_bytes(content)
            version = "1.0" if number == 0 else f"1.{number}"
            new = NewFile("releasefile", path, sha256, len(content))
            releases.store(
                "alice/dev", "pkg", version, {"name": "pkg", "version": version}, new, "alice", 0
            )
    finally:
        data.database.close()
    write_mirror(serverdir, [("demo-1.0.tar.gz", b"a mirror's file")])
    return serverdir


def write_mirror(serverdir: Path, files: list[tuple[str, bytes]]) -> None:
    """root/pypi's cache of project ``demo``: ``files`` and the page that lists them."""
    links = []
    for name, content in files:
        sha256 = hashlib.sha256(content).hexdigest()
        path = serverdir / "+files" / entrypath("root/pypi", sha256, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        url = f"http://127.0.0.1:9/files/{name}#sha256={sha256}"
        links.append(
            {"filename": name, "url": url, "hashes": {"sha256": sha256}, "size": len(content)}
        )
    page = {"name": "demo", "links": links, "versions": None, "status": None, "serial": None}
    FileStore(serverdir).write_page("root/pypi", "demo", page)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("bad-bundles")
    return make_bundle(_scratch_serverdir(base / "scratch"), base / "bundle")


@pytest.fixture
def bundle(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A serverdir a devpid initialised, with one cached page."""
    serverdir = tmp_path / "target"
    serverdir.mkdir()
    open_private_data(serverdir / "private.sqlite", 1800, "http://127.0.0.1:9/").database.close()
    FileStore(serverdir).write_page("root/pypi", "other", {"project": "other"})
    return serverdir


def stage_file(bundle: Path) -> Path:
    [found] = [p for p in (bundle / "files").rglob(FILENAME)]
    return found


def refused(target: Path, source: Path, *expected: str) -> str:
    """Import ``source`` into ``target``: refused, naming each of ``expected``, untouched."""
    before = tree_listing(target)
    outside = sorted(os.listdir(target.parent))
    done = run_import("--serverdir", target, source)
    assert done.returncode == 1, done.stdout + done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    assert tree_listing(target) == before
    assert sorted(os.listdir(target.parent)) == outside
    return done.stderr


def test_pristine_bundle_imports(bundle: Path, target: Path) -> None:
    """The baseline: the undamaged bundle goes in (so each refusal below is the damage's)."""
    done = run_import("--serverdir", target, bundle)
    assert done.returncode == 0, done.stderr
    assert "records: 5 added" in done.stdout


def test_flipped_byte(bundle: Path, target: Path) -> None:
    path = stage_file(bundle)
    content = bytearray(path.read_bytes())
    content[100] ^= 0x01
    path.write_bytes(bytes(content))
    relative = path.relative_to(bundle).as_posix()
    refused(target, bundle, f"{relative}: damaged", "the bundle is damaged")


def test_missing_file(bundle: Path, target: Path) -> None:
    path = stage_file(bundle)
    path.unlink()
    refused(target, bundle, f"{path.relative_to(bundle).as_posix()}: missing")


def test_extra_file(bundle: Path, target: Path) -> None:
    extra = bundle / "files/alice/dev/+f/fff/0123456789abc/extra-1.0.tar.gz"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"not listed")
    refused(target, bundle, "files/alice/dev/+f/fff/0123456789abc/extra-1.0.tar.gz: not in the")


def test_extra_file_outside_the_layout(bundle: Path, target: Path) -> None:
    (bundle / "notes.txt").write_bytes(b"hello")
    refused(target, bundle, "notes.txt: not part of a bundle")


def _relist(bundle: Path, extra_lines: list[bytes]) -> None:
    """Add lines to the manifest and make the header vouch for it (a forged bundle)."""
    manifest = (bundle / MANIFEST).read_bytes() + b"".join(extra_lines)
    (bundle / MANIFEST).write_bytes(manifest)
    header = json.loads((bundle / HEADER).read_bytes())
    header["manifest_sha256"] = hashlib.sha256(manifest).hexdigest()
    (bundle / HEADER).write_text(json.dumps(header))


def test_manifest_listing_escaping_paths(bundle: Path, target: Path) -> None:
    line = '{"path": "%s", "size": 1, "sha256": "' + "0" * 64 + '"}\n'
    _relist(bundle, [(line % p).encode() for p in ("../evil", "/etc/evil", "files/a\\\\b")])
    refused(target, bundle, "'../evil'", "'/etc/evil'", "not a relative POSIX path")


def test_symlink_in_directory_bundle(bundle: Path, target: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside")
    link = bundle / "files/alice/dev/+f/fff/0123456789abc/link-1.0.tar.gz"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    refused(target, bundle, "link-1.0.tar.gz: a symbolic link")


def test_symlinked_directory_in_directory_bundle(
    bundle: Path, target: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "+f").mkdir(parents=True)
    (bundle / "files/alice/evil").symlink_to(outside)
    refused(target, bundle, "files/alice/evil: a symbolic link")


def _tar_with(bundle: Path, tar_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    make_tar(bundle, tar_path)
    with tarfile.open(tar_path, "a") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return tar_path


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, content: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content if kind == tarfile.REGTYPE else None


def test_tar_escaping_paths(bundle: Path, target: Path, tmp_path: Path) -> None:
    tar = _tar_with(
        bundle,
        tmp_path / "b.tar",
        _member("../evil", content=b"x"),
        _member("/tmp/evil-absolute", content=b"x"),
        _member("files/alice/dev/+f/../../../../evil", content=b"x"),
    )
    refused(target, tar, "../evil: has an empty", "/tmp/evil-absolute: not a relative POSIX path")
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


def test_tar_links_and_devices(bundle: Path, target: Path, tmp_path: Path) -> None:
    name = "files/alice/dev/+f/fff/0123456789abc/"
    tar = _tar_with(
        bundle,
        tmp_path / "b.tar",
        _member(name + "sym-1.0.tar.gz", tarfile.SYMTYPE, link="/etc/passwd"),
        _member(name + "hard-1.0.tar.gz", tarfile.LNKTYPE, link=RECORDS),
        _member(name + "dev-1.0.tar.gz", tarfile.CHRTYPE),
        _member(name + "fifo-1.0.tar.gz", tarfile.FIFOTYPE),
    )
    refused(
        target,
        tar,
        "sym-1.0.tar.gz: a symbolic link",
        "hard-1.0.tar.gz: a hard link",
        "dev-1.0.tar.gz: a character device",
        "fifo-1.0.tar.gz: a FIFO",
    )


def test_tar_duplicate_member(bundle: Path, target: Path, tmp_path: Path) -> None:
    tar = _tar_with(bundle, tmp_path / "b.tar", _member(RECORDS, content=b"{}\n"))
    refused(target, tar, f"{RECORDS}: a member named twice")


def test_not_a_tar(target: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tar" * 100)
    refused(target, junk, "is not an uncompressed tar")


def test_bad_header(bundle: Path, target: Path) -> None:
    (bundle / HEADER).write_bytes(b"{not json")
    refused(target, bundle, f"{HEADER} is not JSON")


def test_missing_header(bundle: Path, target: Path) -> None:
    (bundle / HEADER).unlink()
    refused(target, bundle, f"{HEADER}: missing")


def test_unknown_version(bundle: Path, target: Path) -> None:
    header = json.loads((bundle / HEADER).read_bytes())
    header["version"] = 2
    (bundle / HEADER).write_text(json.dumps(header))
    refused(target, bundle, "bundle format version 2 is not one this devpid reads")


def test_manifest_not_the_headers(bundle: Path, target: Path) -> None:
    with open(bundle / MANIFEST, "ab") as f:
        f.write(b"\n")
    refused(target, bundle, f"{MANIFEST}: sha256")


def _rebuilt(
    bundle: Path, out: Path, drop: str | None = None, records: bytes | None = None
) -> Path:
    """The bundle's files (less ``drop``, with other ``records``) with a fresh manifest."""
    files: dict[str, Path | bytes] = {}
    for path in bundle.rglob("*"):
        relative = path.relative_to(bundle).as_posix()
        if path.is_file() and relative not in (HEADER, MANIFEST) and relative != drop:
            files[relative] = path
    if records is not None:
        files[RECORDS] = records
    return write_bundle(out, files)


def test_record_linking_a_missing_file(bundle: Path, target: Path, tmp_path: Path) -> None:
    drop = stage_file(bundle).relative_to(bundle).as_posix()
    forged = _rebuilt(bundle, tmp_path / "forged", drop=drop)
    refused(target, forged, f"{drop}: not in the bundle (version 'alice/dev/pkg/1.0' links it)")


def test_records_devpid_would_refuse(bundle: Path, target: Path, tmp_path: Path) -> None:
    lines = (bundle / RECORDS).read_bytes().splitlines(keepends=True)
    bad = [
        b'{"kind": "widget", "name": "x", "value": {}}\n',
        b'{"kind": "user", "name": "bad name", "value": {}}\n',
        b'{"kind": "index", "name": "ghost/dev", "value": {"type": "stage"}}\n',
        b'{"kind": "index", "name": "alice/m", "value": {"type": "mirror", '
        b'"mirror_url": "ftp://x"}}\n',
        b"not json\n",
    ]
    forged = _rebuilt(bundle, tmp_path / "forged", records=b"".join(lines + bad))
    refused(
        target,
        forged,
        "unknown kind 'widget'",
        "user 'bad name': username",
        "index ghost/dev: its owner ghost is no user",
        "index alice/m: 'mirror_url' option must be a URL.",
        "not a record",
    )


def test_disk_full_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        big = make_bundle(
            _scratch_serverdir(tmp_path / "scratch", file_size=1_500_000, files=8),
            tmp_path / "bundle",
        )
        assert sum(hash_file(p)[0] for p in big.rglob("*") if p.is_file()) > 8_000_000
        target = mount / "serverdir"
        target.mkdir()
        open_private_data(target / "private.sqlite", 1800, "http://127.0.0.1:9/").database.close()
        before = tree_listing(target)
        done = run_import("--serverdir", target, big)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert lines == [
            f"devpid import: error: no space left on the device of {target}: nothing imported"
        ], done.stderr
        assert tree_listing(target) == before
        assert os.listdir(mount) == ["serverdir"]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
