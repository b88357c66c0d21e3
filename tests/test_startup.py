"""Start-up on a big serverdir: devpid serves at once, and what it now does after
listening (counting the cache, clearing a crash's leftovers, the stage files' sweep,
the evictor's first check) still ends up right.

The serverdir (tests/fixtures/big_serverdir.py) holds 20,000 cached projects, 2,000
cached files and 2,000 private releases, plus what a crash leaves: temporary files of
a dead process and a stage file nothing links. How fast devpid is ready is measured by
bench/startup_bench.py, not here (no timed assertions).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import devpid.files.census as census_module
from devpid.files.census import Census
from devpid.files.store import FileStore
from tests.fixtures.big_serverdir import STAGE, STAGE_PASSWORD, BigServerdir, build
from tests.fixtures.browser import Release, upload
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.ports import free_consecutive_ports, wait_until

PROJECTS, FILES, RELEASES = 20_000, 2_000, 2_000
#: A token of a process that cannot be running (pids stop far below).
DEAD = "99999999-abcdef"


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> BigServerdir:
    return build(tmp_path_factory.mktemp("startup") / "serverdir", PROJECTS, FILES, RELEASES)


@pytest.fixture
def serverdir(big: BigServerdir, tmp_path: Path) -> Iterator[BigServerdir]:
    """A copy of the big serverdir (hard links: fast, and eviction unlinks only the
    copy's names) with a crash's leftovers in it."""
    copy = tmp_path / "serverdir"
    for directory, _dirs, names in os.walk(big.path):
        target = copy / os.path.relpath(directory, big.path)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = os.path.join(directory, name)
            if name.endswith(".sqlite"):
                (target / name).write_bytes(Path(source).read_bytes())
            else:
                os.link(source, target / name)
    yield BigServerdir(copy, **{k: v for k, v in big.to_json().items()})


def upstream_nobody_answers() -> str:
    return f"http://127.0.0.1:{free_consecutive_ports(1)}/simple/"


def leave_crash_leftovers(serverdir: Path) -> dict[str, Path]:
    """A dead process's download and page temporary files, and a stage file (with the
    right layout) that no version links: what a crash between the steps leaves."""
    files = serverdir / "+files" / "root" / "pypi" / "+f" / "abc" / "0123456789abc"
    files.mkdir(parents=True)
    download = files / f"gone-1.0.tar.gz.{DEAD}.devpid-partial"
    download.write_bytes(b"half a download")
    page = serverdir / "+pages" / "root" / "pypi" / f"proj-000001.json.{DEAD}.devpid-partial"
    page.write_text("{")
    content = b"an upload whose transaction never committed"
    sha = hashlib.sha256(content).hexdigest()
    orphan = serverdir / "+files" / STAGE / "+f" / sha[:3] / sha[3:16] / "orphan-1.0.tar.gz"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(content)
    return {"download": download, "page": page, "orphan": orphan}


def start(serverdir: Path, *options: str) -> DevpidProcess:
    # A year's expiry: the cached pages are fresh, the upstream is never asked.
    return DevpidProcess.start(
        serverdir, upstream_nobody_answers(), "--cache-expiry", "31536000", *options
    )


def check_answers(devpid: DevpidProcess, big: BigServerdir) -> None:
    """A cached page, a cached file, a stage page and a stage file, each right."""
    assert devpid.get("/+status?check=1").status == 200
    for n in (0, big.files - 1):
        page = devpid.get(
            f"/root/pypi/+simple/proj-{n:06d}/", Accept="application/vnd.pypi.simple.v1+json"
        )
        assert page.status == 200
        links = json.loads(page.body)["files"]
        path, content = big.mirror_file(n)
        assert links[0]["filename"] == path.rsplit("/", 1)[1]
        answer = devpid.get(path)
        assert answer.status == 200 and answer.body == content
        assert answer.headers["x-devpid-cache"] == "hit"
    for n in (0, big.releases - 1):
        project, _version, path, content = big.stage_release(n)
        page = devpid.get(f"/{STAGE}/+simple/{project}/")
        assert page.status == 200 and path.rsplit("/", 1)[1].encode() in page.body
        answer = devpid.get(path)
        assert answer.status == 200 and answer.body == content


def counted(devpid: DevpidProcess) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        cache: dict[str, Any] = devpid.status()["cache"]
        return None if cache["counting"] else cache

    result: dict[str, Any] = wait_until(done, timeout=60)
    return result


@pytest.mark.integration
def test_a_big_serverdir_answers_at_once_and_is_counted_right(
    serverdir: BigServerdir,
) -> None:
    leftovers = leave_crash_leftovers(serverdir.path)
    with start(serverdir.path) as devpid:
        # what answers first: nothing waits for the count
        check_answers(devpid, serverdir)
        cache = counted(devpid)
        assert cache["projects"] == PROJECTS
        assert cache["mirror_bytes"] == serverdir.mirror_bytes
        # every file but the orphan, which the sweep removed (before or after the count)
        assert cache["files"] == serverdir.file_count
        assert cache["bytes"] == serverdir.file_bytes
        wait_until(lambda: not leftovers["orphan"].exists())
        assert not leftovers["download"].exists() and not leftovers["page"].exists()
        log = devpid.log_text()
        assert "removed 2 partial files left by a crash" in log
        assert "removed 1 files of stage indexes nothing links" in log
        assert "counted the cache in" in log
        check_answers(devpid, serverdir)


def files_on_disk(serverdir: Path) -> tuple[int, int]:
    """What a count of ``+files/`` must find: committed files and their bytes."""
    sizes = [
        p.stat().st_size
        for p in (serverdir / "+files").rglob("*")
        if p.is_file() and not p.name.endswith(".devpid-partial")
    ]
    return len(sizes), sum(sizes)


@pytest.mark.integration
def test_an_upload_while_counting_is_counted_once(serverdir: BigServerdir, tmp_path: Path) -> None:
    """An upload lands while the count runs (the count of 22,000 files takes a while):
    once it is over, the counts are what is on disk, the upload's files too."""
    with start(serverdir.path) as devpid:
        release = Release("late", "1.0", summary="uploaded while counting")
        auth = "Basic " + base64.b64encode(f"alice:{STAGE_PASSWORD}".encode()).decode()
        answer = upload(f"{devpid.url}/{STAGE}/", auth, release, tmp_path)
        assert answer.status == 200, answer.body
        cache = counted(devpid)
        files, size = files_on_disk(serverdir.path)
        assert files == serverdir.file_count + 2  # the wheel and its .metadata
        assert (cache["files"], cache["bytes"]) == (files, size)


@pytest.mark.integration
def test_eviction_waits_for_the_count_then_evicts(serverdir: BigServerdir) -> None:
    limit = 4 << 20
    assert serverdir.mirror_bytes > limit
    with start(
        serverdir.path, "--cache-max-size", "4M", "--evict-grace", "0", "--evict-interval", "1"
    ) as devpid:
        check_answers(devpid, serverdir)

        def evicted() -> dict[str, Any] | None:
            cache: dict[str, Any] = devpid.status()["cache"]
            run = cache["eviction"]["last_run"]
            return cache if run is not None and run["files"] else None

        cache = wait_until(evicted, timeout=60)
        assert cache["mirror_bytes"] <= limit * 0.9
        on_disk = sum(
            p.stat().st_size for p in (serverdir.path / "+files" / "root" / "pypi").rglob("*.whl")
        )
        assert cache["mirror_bytes"] == on_disk


# -- the census's exactness, in memory ------------------------------------------------


def _file(store: FileStore, directory: str, name: str, size: int) -> Path:
    path = store.files_root / "root" / "pypi" / "+f" / directory / "0000000000000" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_changes_during_the_walk_are_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits and removals behind the walk and ahead of it, made between two of its
    directories: the result equals a fresh count of the disk."""
    store = FileStore(tmp_path)
    store.prepare_layout()
    behind = _file(store, "aaa", "behind.whl", 100)
    ahead = _file(store, "ccc", "ahead.whl", 300)
    _file(store, "bbb", "middle.whl", 200)
    walk = census_module._sorted_walk
    changed = threading.Event()

    def walking(root: Path, problems: list[tuple[str, str]]) -> Iterator[Any]:
        for directory, key, names in walk(root, problems):
            yield directory, key, names
            if directory.endswith("bbb/0000000000000") and not changed.is_set():
                changed.set()  # the walk is past aaa and bbb, not yet at ccc
                for name, where in (("new-behind.whl", "aaa"), ("new-ahead.whl", "ccc")):
                    partial = _file(store, where, name + ".part", 10)
                    store.commit(partial, partial.with_name(name))
                store.remove_file(behind)
                store.remove_file(ahead)
                store.write_page("root/pypi", "zzz", {"name": "zzz", "links": []})

    monkeypatch.setattr(census_module, "_sorted_walk", walking)
    store.census.begin()
    store.finish_count(store.census.walk())
    assert changed.is_set()
    during = (store.counts, dict(store.index_bytes))
    monkeypatch.setattr(census_module, "_sorted_walk", walk)
    fresh = FileStore(tmp_path)
    fresh.prepare()
    assert during == (fresh.counts, dict(fresh.index_bytes))
    assert (fresh.counts.files, fresh.counts.bytes, fresh.counts.pages) == (3, 220, 1)


def test_without_a_walk_changes_count_at_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    partial = _file(store, "aaa", "a.whl.part", 10)
    store.commit(partial, partial.with_name("a.whl"))
    assert (store.counts.files, store.counts.bytes, store.index_bytes) == (
        1,
        10,
        {"root/pypi": 10},
    )
    assert isinstance(store.census, Census) and not store.census.running
