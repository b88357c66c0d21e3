"""``devpid fsck`` on a serverdir filled by a real devpid, then damaged in many ways."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devpid import cli
from devpid.cli.fsck import main
from devpid.files.store import FileStore
from devpid.ops.fsck import EXIT_CLEAN, EXIT_PROBLEMS, EXIT_USAGE, Checker, Report, check
from devpid.simple.model import Link, ProjectPage
from tests.conftest import BIG_FILE_SIZE
from tests.fixtures.devpid_process import DevpidProcess, devpid_env
from tests.fixtures.distbuilder import Repository
from tests.fixtures.upstream import UpstreamProcess
from tests.test_streaming import BIG, file_path_of, raw_get, wait_until

integration = pytest.mark.integration
APP = "devpid_demo_app-1.0-py3-none-any.whl"
APP_METADATA = APP + ".metadata"
SDIST = "devpid_demo_lib-2.0.tar.gz"


def run_fsck(serverdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``devpid fsck`` as a real process, as an operator (or a crash test) runs it."""
    command = [sys.executable, "-m", "devpid.cli", "fsck", "--serverdir", str(serverdir)]
    return subprocess.run(
        [*command, *options], env=devpid_env(), capture_output=True, text=True, timeout=120
    )


def kinds(report: Report) -> list[tuple[str, str, str]]:
    return sorted((p.severity, p.kind, Path(p.path).name) for p in report.problems)


@pytest.fixture
def cached(devpid: DevpidProcess) -> dict[str, tuple[str, Path]]:
    """Three files and a wheel's metadata fetched through devpid: name -> (URL path, file)."""
    urls = {
        APP: file_path_of(devpid, "devpid-demo-app", APP),
        SDIST: file_path_of(devpid, "devpid-demo-lib", SDIST),
    }
    urls[APP_METADATA] = urls[APP] + ".metadata"
    found = {}
    for name, url in urls.items():
        status, _, _ = raw_get(devpid, url)
        assert status == 200, name
        found[name] = (url, devpid.serverdir / "+files" / url.lstrip("/"))
        assert found[name][1].is_file()
    return found


# -- a healthy cache ------------------------------------------------------------------


@integration
def test_a_cache_filled_by_devpid_verifies(
    devpid: DevpidProcess, cached: dict[str, tuple[str, Path]]
) -> None:
    report = check(devpid.serverdir)
    assert report.problems == []
    assert report.exit_status == EXIT_CLEAN
    counts = report.counts
    assert (counts.files, counts.by_hash, counts.orphans, counts.pages) == (3, 3, 0, 2)
    # The command, as a process, while devpid runs.
    result = run_fsck(devpid.serverdir)
    assert result.returncode == 0, result.stdout + result.stderr
    [summary] = result.stdout.splitlines()
    assert summary.startswith("devpid fsck: ") and "3 verified by hash" in summary
    assert summary.endswith(": clean, 0 warnings")


# -- damaged files ------------------------------------------------------------------------


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1)


def append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0")


@integration
@pytest.mark.parametrize(
    ("name", "damage", "detail"),
    [
        (APP, flip_a_byte, "sha256 "),
        (SDIST, truncate, " bytes, its page says "),
        (APP, append, " bytes, its page says "),
        (APP_METADATA, flip_a_byte, "sha256 "),
        (APP_METADATA, append, "sha256 "),
    ],
    ids=["flipped", "truncated", "appended", "metadata-flipped", "metadata-appended"],
)
def test_a_damaged_file_is_reported_removed_by_repair_and_fetched_again(
    devpid: DevpidProcess,
    demo_repository: Repository,
    cached: dict[str, tuple[str, Path]],
    name: str,
    damage: object,
    detail: str,
) -> None:
    url, path = cached[name]
    assert callable(damage)
    damage(path)
    report = check(devpid.serverdir)
    [problem] = report.problems
    assert (problem.severity, problem.kind) == ("error", "corrupt")
    assert problem.path == path.relative_to(devpid.serverdir).as_posix()
    assert detail in problem.detail
    assert not problem.repaired and path.exists()
    assert report.exit_status == EXIT_PROBLEMS
    assert run_fsck(devpid.serverdir).returncode == EXIT_PROBLEMS

    repaired = check(devpid.serverdir, repair=True)
    assert [p.repaired for p in repaired.problems] == [True]
    assert repaired.exit_status == EXIT_CLEAN
    assert not path.exists()
    assert check(devpid.serverdir).problems == []
    # The next request fetches a good copy.
    status, _, body = raw_get(devpid, url)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == demo_repository.sha256(name)
    after = check(devpid.serverdir)
    assert after.problems == [] and after.counts.by_hash == 3


@integration
def test_repair_through_the_command_line_and_json(
    devpid: DevpidProcess, cached: dict[str, tuple[str, Path]]
) -> None:
    _, path = cached[SDIST]
    flip_a_byte(path)
    result = run_fsck(devpid.serverdir, "--repair", "--json")
    assert result.returncode == EXIT_CLEAN, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert (document["errors"], document["unrepaired"], document["exit_status"]) == (1, 0, 0)
    [problem] = document["problems"]
    assert problem["kind"] == "corrupt" and problem["repaired"] is True
    assert problem["path"].endswith("/" + SDIST)
    assert not path.exists()


# -- temporary files ----------------------------------------------------------------------


@integration
def test_leftover_partials_are_errors_but_one_being_written_is_left_alone(
    devpid: DevpidProcess, cached: dict[str, tuple[str, Path]]
) -> None:
    _, app = cached[APP]
    stray = app.with_name(f"{APP}.999999-abcdef.devpid-partial")
    stray.write_bytes(b"half a file")
    unnamed = app.parent / "other.whl.devpid-partial"
    unnamed.write_bytes(b"")
    written = app.with_name(f"{SDIST}.{os.getpid()}-123456.devpid-partial")
    fd = os.open(written, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live devpid holds the file it writes
        os.write(fd, b"in progress")
        report = check(devpid.serverdir)
        assert kinds(report) == [
            ("error", "leftover", stray.name),
            ("error", "leftover", unnamed.name),
        ]
        assert report.counts.in_progress == 1
        repaired = check(devpid.serverdir, repair=True)
        assert all(p.repaired for p in repaired.problems)
        assert repaired.exit_status == EXIT_CLEAN
        assert not stray.exists() and not unnamed.exists()
        assert written.exists()
        assert check(devpid.serverdir).problems == []
    finally:
        os.close(fd)
    # Once its writer is gone, it is a leftover too.
    assert kinds(check(devpid.serverdir)) == [("error", "leftover", written.name)]


@integration
def test_repair_beside_a_running_download_leaves_it_alone(
    devpid: DevpidProcess, upstream: UpstreamProcess, demo_repository: Repository
) -> None:
    url = file_path_of(devpid, "devpid-demo-big", BIG)
    upstream.control(rate=BIG_FILE_SIZE / 3)  # about three seconds
    files = devpid.serverdir / "+files"
    with ThreadPoolExecutor(1) as pool:
        fetch = pool.submit(raw_get, devpid, url)
        assert wait_until(lambda: any(files.rglob("*.devpid-partial")))
        result = run_fsck(devpid.serverdir, "--repair", "--json")
        assert result.returncode == EXIT_CLEAN, result.stdout + result.stderr
        document = json.loads(result.stdout)
        assert document["problems"] == []
        assert document["counts"]["in_progress"] == 1
        status, length, body = fetch.result(timeout=30)
    assert status == 200 and length == len(body)
    assert hashlib.sha256(body).hexdigest() == demo_repository.sha256(BIG)
    report = check(devpid.serverdir)
    assert report.problems == [] and report.counts.by_hash == 1


def test_page_partials_follow_devpids_own_rule(tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    files.prepare()
    pages = tmp_path / "+pages" / "root" / "pypi"
    pages.mkdir(parents=True)
    mine = pages / f"demo.json.{files.identity.token}.devpid-partial"
    mine.write_text("{")
    old = pages / f"old.json.{files.identity.token}.devpid-partial"
    old.write_text("{")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    report = check(tmp_path)
    assert kinds(report) == [("error", "leftover", old.name)]
    assert report.counts.in_progress == 1
    assert check(tmp_path, repair=True).exit_status == EXIT_CLEAN
    assert mine.exists() and not old.exists()


# -- pages, orphans, strays -------------------------------------------------------------


@integration
def test_an_unreadable_page_is_an_error_and_its_files_orphans(
    devpid: DevpidProcess, upstream: UpstreamProcess, cached: dict[str, tuple[str, Path]]
) -> None:
    page = devpid.serverdir / "+pages" / "root" / "pypi" / "devpid-demo-lib.json"
    page.write_text('{"name": "devpid-demo-lib", "links": [', encoding="utf-8")
    report = check(devpid.serverdir)
    assert kinds(report) == [
        ("error", "bad-page", page.name),
        ("warning", "orphan", SDIST),
    ]
    orphan = next(p for p in report.problems if p.kind == "orphan")
    assert "its sha256 matches the hash in its path" in orphan.detail
    assert report.exit_status == EXIT_PROBLEMS
    repaired = check(devpid.serverdir, repair=True)
    assert repaired.exit_status == EXIT_CLEAN
    assert not page.exists()
    # A devpid that has not the page in memory fetches it again, and the sdist is listed again.
    devpid.stop()
    with DevpidProcess.start(devpid.serverdir, upstream.simple_url) as again:
        assert again.get("/root/pypi/+simple/devpid-demo-lib/").status == 200
        assert check(again.serverdir).problems == []


@integration
def test_orphans_and_unexpected_files_are_warnings_that_repair_leaves(
    devpid: DevpidProcess, cached: dict[str, tuple[str, Path]]
) -> None:
    (devpid.serverdir / "+pages" / "root" / "pypi" / "devpid-demo-app.json").unlink()
    files = devpid.serverdir / "+files"
    garbage = files / "root" / "pypi" / "+f" / "000" / "0000000000000" / "devpid_x-1.0.tar.gz"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"not what its path says")
    readme = files / "README"
    readme.write_text("hello")
    shallow = files / "root" / "pypi" / "+f" / "abc" / "x.whl"
    shallow.parent.mkdir()
    shallow.write_text("misplaced")
    odd_name = garbage.with_name("..hidden")
    odd_name.write_text("odd")
    outside = devpid.serverdir.parent / "outside.whl"
    outside.write_text("not in the serverdir")
    link = garbage.with_name("devpid_x-2.0.tar.gz")
    link.symlink_to(outside)
    linked_dir = files / "root" / "linked"
    linked_dir.symlink_to(devpid.serverdir.parent)

    report = check(devpid.serverdir)
    assert kinds(report) == [
        ("warning", "orphan", APP),
        ("warning", "orphan", APP_METADATA),
        ("warning", "orphan", "devpid_x-1.0.tar.gz"),
        ("warning", "unexpected", "..hidden"),
        ("warning", "unexpected", "README"),
        ("warning", "unexpected", "devpid_x-2.0.tar.gz"),
        ("warning", "unexpected", "linked"),
        ("warning", "unexpected", "x.whl"),
    ]
    details = {Path(p.path).name: p.detail for p in report.problems}
    assert "its sha256 matches the hash in its path" in details[APP]
    assert "cannot be verified" in details[APP_METADATA]
    assert "does not match the hash in its path" in details["devpid_x-1.0.tar.gz"]
    assert "symbolic link" in details["linked"]
    assert report.exit_status == EXIT_CLEAN
    assert report.counts.orphans == 3
    repaired = check(devpid.serverdir, repair=True)
    assert not any(p.repaired for p in repaired.problems)
    for path in (garbage, readme, shallow, odd_name, cached[APP][1], outside):
        assert path.exists(), path
    assert link.is_symlink() and linked_dir.is_symlink()


# -- links the upstream gave no sha256 for ----------------------------------------------


def write_cached(store: FileStore, link: Link, content: bytes) -> Path:
    h = link.storage_hash
    path = store.file_path("root/pypi", h[:3], h[3:16], link.filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    files = FileStore(tmp_path / "serverdir")
    files.prepare()
    yield files


def test_what_each_kind_of_link_lets_fsck_check(store: FileStore) -> None:
    content = b"an old distribution"
    base = "http://upstream.test/files/"
    hashed = Link("demo-1.0.tar.gz", base + "demo-1.0.tar.gz", {"sha256": _sha256(content)})
    sized = Link("demo-1.1.tar.gz", base + "demo-1.1.tar.gz", size=len(content))
    bare = Link("demo-1.2.tar.gz", base + "demo-1.2.tar.gz")
    md5 = Link("demo-1.3.tar.gz", base + "demo-1.3.tar.gz", {"md5": _md5(content)})
    wrong_md5 = Link("demo-1.4.tar.gz", base + "demo-1.4.tar.gz", {"md5": _md5(b"other")})
    short = Link("demo-1.5.tar.gz", base + "demo-1.5.tar.gz", size=len(content) + 1)
    links = (hashed, sized, bare, md5, wrong_md5, short)
    store.write_page("root/pypi", "demo", ProjectPage("demo", links).to_json())
    for link in links:
        write_cached(store, link, content)
    report = check(store.serverdir)
    assert kinds(report) == [
        ("error", "corrupt", "demo-1.4.tar.gz"),
        ("error", "corrupt", "demo-1.5.tar.gz"),
    ]
    details = {Path(p.path).name: p.detail for p in report.problems}
    assert details["demo-1.4.tar.gz"].startswith(f"md5 {_md5(content)}, its page says")
    assert details["demo-1.5.tar.gz"] == f"{len(content)} bytes, its page says {len(content) + 1}"
    counts = report.counts
    assert (counts.files, counts.by_hash, counts.by_length, counts.not_verifiable) == (6, 2, 1, 1)
    assert "1 by length only, 1 not verifiable" in report.summary()


def test_a_page_replaced_while_checking_is_read_again(store: FileStore) -> None:
    old, new = b"an old release", b"a new release"
    first = Link("demo-1.0.tar.gz", "http://upstream.test/a", {"sha256": _sha256(old)})
    second = Link("demo-2.0.tar.gz", "http://upstream.test/b", {"sha256": _sha256(new)})
    store.write_page("root/pypi", "demo", ProjectPage("demo", (first,)).to_json())
    checker = Checker(store.serverdir)
    assert checker._expected("root/pypi", "demo", first.relpath) is not None
    assert checker._expected("root/pypi", "demo", second.relpath) is None
    # A running devpid fetches a newer page, then the new file, while fsck runs.
    store.write_page("root/pypi", "demo", ProjectPage("demo", (first, second)).to_json())
    write_cached(store, first, old)
    write_cached(store, second, new)
    report = checker.check()
    assert report.problems == []
    assert report.counts.by_hash == 2


def test_fifos_do_not_block_and_io_errors_are_not_repaired(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"a distribution"
    link = Link("demo-1.0.tar.gz", "http://upstream.test/a", {"sha256": _sha256(content)})
    store.write_page("root/pypi", "demo", ProjectPage("demo", (link,)).to_json())
    path = write_cached(store, link, content)
    os.mkfifo(path.with_name("demo-2.0.tar.gz"))
    os.mkfifo(path.with_name("demo-3.0.tar.gz.1-abcdef.devpid-partial"))
    page = store.page_path("root/pypi", "demo")

    def failing(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hashlib, "file_digest", failing)
    monkeypatch.setattr(json, "load", failing)
    report = check(store.serverdir, repair=True)
    assert kinds(report) == [
        ("error", "unreadable", "demo-1.0.tar.gz"),
        ("error", "unreadable", "demo.json"),
        ("warning", "unexpected", "demo-2.0.tar.gz"),
        ("warning", "unexpected", "demo-3.0.tar.gz.1-abcdef.devpid-partial"),
    ]
    assert {p.detail for p in report.problems if p.kind == "unreadable"} == {
        "cannot read it: Input/output error"
    }
    assert report.exit_status == EXIT_PROBLEMS
    assert path.exists() and page.exists()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -- the command line --------------------------------------------------------------------


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--serverdir", str(tmp_path / "missing")]) == EXIT_USAGE
    assert main(["--bogus"]) == EXIT_USAGE
    assert main(["--serverdir", str(tmp_path), "extra"]) == EXIT_USAGE
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"devpid fsck: error: no serverdir at {tmp_path / 'missing'}",
        "devpid fsck: error: option --bogus not recognized (see: devpid fsck --help)",
        "devpid fsck: error: unexpected argument 'extra' (see: devpid fsck --help)",
    ]
    with pytest.raises(SystemExit) as raised:
        cli.main(["fsck", "--help"])
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: devpid fsck ")


def test_the_serverdir_from_a_config_file(
    store: FileStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = tmp_path / "devpid.ini"
    ini.write_text(f"[devpid]\nserverdir = {store.serverdir}\n", encoding="utf-8")
    (store.files_root / "x.devpid-partial").write_bytes(b"")
    with pytest.raises(SystemExit) as raised:
        cli.main(["fsck", "--config", str(ini)])
    assert raised.value.code == EXIT_PROBLEMS
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "error leftover +files/x.devpid-partial: a temporary file no process is writing (a crash's)"
    )
    assert lines[1].endswith(": 1 error, 0 warnings")
    assert main(["--config", str(ini), "--repair"]) == EXIT_CLEAN
    assert capsys.readouterr().out.splitlines()[0].endswith("[removed]")
    ini.write_text("[devpid]\nnot-a-key = 1\n", encoding="utf-8")
    assert main(["--config", str(ini)]) == EXIT_USAGE


def test_an_empty_serverdir_is_clean(tmp_path: Path) -> None:
    report = check(tmp_path)
    assert report.problems == [] and report.exit_status == EXIT_CLEAN
    assert report.to_json()["counts"]["files"] == 0
