"""Eviction of mirror files beyond ``--cache-max-size`` (issue 15).

Unit tests of the choice, the walk and the removal on real files in a
temporary directory; the bookkeeping of uses (atimes); the evictor's
scheduling on a memory clock. Then a real devpid with a small limit: the
least recently used mirror files go, files used through HTTP stay, a stage's
file never goes and never counts, ``/+status`` and ``/+metrics`` say so, and
an evicted file comes back as a miss, byte for byte.

Files are "used long ago" by setting their atime and mtime with ``os.utime``
(as a file cached last week would have them): the clock is never faked, and
devpid reads the times the way it always does. While the test sets them up it
holds ``evict.lock`` itself, so no run can see half of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from devpid.files.eviction import (
    LOCK_NAME,
    CachedFile,
    CacheLimit,
    Choice,
    EvictionBusy,
    EvictionLock,
    Unit,
    choose,
    evict,
    scan,
)
from devpid.files.evictor import SOON, EvictionService
from devpid.files.store import FileStore
from devpid.files.usage import UsageLog, apply_uses
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.upstream import UpstreamProcess
from tests.test_private_api import Api
from tests.test_upload_crash import PASSWORD, USER, build_wheel, upload_request

HOUR = 3600.0
JSON_PAGE = "application/vnd.pypi.simple.v1+json"


# -- the choice, in memory ---------------------------------------------------------


def unit(name: str, size: int, last_use: float, busy: bool = False) -> Unit:
    directory = Path("/c/+files/root/pypi/+f/abc") / name
    cached = CachedFile(directory / f"{name}-1.0.tar.gz", size, last_use, (1, hash(name)))
    return Unit("root/pypi", directory, (cached,), busy)


NOW = 1_000_000.0
LIMIT = CacheLimit(max_bytes=1000, grace=600)  # target 900


def names(choice: Choice) -> list[str]:
    return [u.directory.name for u in choice.units]


def test_nothing_is_chosen_within_the_limit() -> None:
    units = [unit("a", 500, NOW - HOUR), unit("b", 500, NOW - HOUR)]
    assert choose(units, 1000, LIMIT, NOW) == Choice([])


def test_the_oldest_go_first_down_to_the_target() -> None:
    units = [
        unit("new", 300, NOW - 2 * HOUR),
        unit("oldest", 100, NOW - 5 * HOUR),
        unit("old", 200, NOW - 4 * HOUR),
        unit("older", 400, NOW - 3 * HOUR),
        unit("x", 200, NOW - 1 * HOUR),
    ]
    # 1200 bytes: 100 + 200 gone is 900, the target.
    assert names(choose(units, 1200, LIMIT, NOW)) == ["oldest", "old"]
    # One byte more: the next oldest goes too.
    assert names(choose(units, 1201, LIMIT, NOW)) == ["oldest", "old", "older"]


def test_recent_busy_and_unflushed_units_stay_even_over_the_limit() -> None:
    units = [
        unit("busy", 500, NOW - 5 * HOUR, busy=True),
        unit("used-here", 500, NOW - 4 * HOUR),
        unit("recent", 500, NOW - 60),
        unit("old", 300, NOW - 3 * HOUR),
    ]
    noted = {str(units[1].files[0].path): NOW - 5}
    chosen = choose(units, 1800, LIMIT, NOW, noted.get)
    assert names(chosen) == ["old"]  # everything else is protected, and still over
    assert chosen.protected == 3


def test_a_unit_is_as_recent_as_its_newest_file() -> None:
    directory = Path("/c/+files/root/pypi/+f/abc/def")
    wheel = CachedFile(directory / "a-1.0-py3-none-any.whl", 700, NOW - 5 * HOUR, (1, 1))
    metadata = CachedFile(directory / "a-1.0-py3-none-any.whl.metadata", 10, NOW - 10, (1, 2))
    both = Unit("root/pypi", directory, (wheel, metadata))
    assert both.size == 710 and both.last_use == NOW - 10
    assert choose([both], 1710, LIMIT, NOW) == Choice([], protected=1)


# -- walking and removing real files ------------------------------------------------


def put(root: Path, relpath: str, size: int, used: float) -> Path:
    path = root / "+files" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (used, used))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> dict[str, Path]:
    now = time.time()
    return {
        "oldest": put(
            tmp_path, "root/pypi/+f/aaa/1111111111111/a-1.0-py3-none-any.whl", 400, now - 9 * HOUR
        ),
        "oldest.metadata": put(
            tmp_path,
            "root/pypi/+f/aaa/1111111111111/a-1.0-py3-none-any.whl.metadata",
            10,
            now - 9 * HOUR,
        ),
        "old": put(tmp_path, "other/mirror/+f/bbb/2222222222222/b-1.0.tar.gz", 300, now - 8 * HOUR),
        "downloading": put(
            tmp_path, "root/pypi/+f/ccc/3333333333333/c-1.0.tar.gz", 300, now - 7 * HOUR
        ),
        "partial": put(
            tmp_path,
            "root/pypi/+f/ccc/3333333333333/c-1.0.tar.gz.metadata.123-abcdef.devpid-partial",
            5,
            now - 7 * HOUR,
        ),
        "newer": put(tmp_path, "root/pypi/+f/ddd/4444444444444/d-1.0.tar.gz", 300, now - 2 * HOUR),
        "recent": put(tmp_path, "root/pypi/+f/eee/5555555555555/e-1.0.tar.gz", 300, now - 60),
        "stage": put(
            tmp_path, "alice/dev/+f/fff/6666666666666/f-1.0.tar.gz", 5000, now - 99 * HOUR
        ),
    }


MIRRORS = ("root/pypi", "other/mirror")


def test_scan_counts_the_mirrors_only(tmp_path: Path, cache: dict[str, Path]) -> None:
    found = scan(tmp_path / "+files", MIRRORS)
    assert found.index_bytes == {"root/pypi": 1310, "other/mirror": 300}
    busy = [u for u in found.units if u.busy]
    assert [u.directory.name for u in busy] == ["3333333333333"]


def test_evict_removes_the_oldest_mirror_units_and_nothing_else(
    tmp_path: Path, cache: dict[str, Path]
) -> None:
    heard: list[str] = []
    limit = CacheLimit(max_bytes=1200, grace=600)  # 1610 bytes: down to 1080
    report = evict(
        tmp_path / "+files", MIRRORS, limit, removed=lambda item: heard.append(item.path.name)
    )
    gone = {name for name, path in cache.items() if not path.exists()}
    # The oldest unit (wheel and metadata: the metadata first), then the next oldest;
    # the one being downloaded is older but busy.
    assert gone == {"oldest", "oldest.metadata", "old"}
    assert heard == [
        "a-1.0-py3-none-any.whl.metadata",
        "a-1.0-py3-none-any.whl",
        "b-1.0.tar.gz",
    ]
    assert (report.files, report.bytes) == (3, 710)
    assert (report.bytes_before, report.bytes_after) == (1610, 900)
    assert report.index_bytes == {"root/pypi": 900, "other/mirror": 0}
    # A second run finds the cache within its limit.
    again = evict(tmp_path / "+files", MIRRORS, limit)
    assert (again.files, again.bytes_before) == (0, 900)


def test_dry_run_lists_and_removes_nothing(tmp_path: Path, cache: dict[str, Path]) -> None:
    limit = CacheLimit(max_bytes=1200, grace=600)
    report = evict(tmp_path / "+files", MIRRORS, limit, dry_run=True)
    assert all(path.exists() for path in cache.values())
    assert sorted(item.path.name for item in report.removed) == [
        "a-1.0-py3-none-any.whl",
        "a-1.0-py3-none-any.whl.metadata",
        "b-1.0.tar.gz",
    ]
    assert report.bytes_after == 900


def test_a_file_noted_in_memory_stays(tmp_path: Path, cache: dict[str, Path]) -> None:
    limit = CacheLimit(max_bytes=1200, grace=600)
    # Used in this process, not yet written to its atime: protected all the same.
    noted = {str(cache["old"]): time.time()}
    report = evict(tmp_path / "+files", MIRRORS, limit, last_noted=noted.get)
    assert cache["old"].exists() and not cache["oldest"].exists()
    assert not cache["newer"].exists()  # the next oldest went instead
    assert report.files == 3


def test_a_file_used_or_replaced_after_the_walk_stays(
    tmp_path: Path, cache: dict[str, Path]
) -> None:
    limit = CacheLimit(max_bytes=300, grace=600)  # everything old goes, but...
    replaced = cache["newer"]

    def meanwhile(item: Any) -> None:
        if item.path.name.endswith(".metadata"):  # the first removal
            os.utime(cache["old"])  # used by another process just now
            replaced.unlink()
            replaced.write_bytes(b"n" * 300)  # fetched again: another inode
            os.utime(replaced, (1.0, 1.0))

    report = evict(tmp_path / "+files", MIRRORS, limit, removed=meanwhile)
    assert not cache["oldest"].exists()
    assert cache["old"].exists() and replaced.read_bytes() == b"n" * 300
    assert (report.files, report.kept) == (2, 2)


def test_grace_zero_evicts_even_recent_files(tmp_path: Path, cache: dict[str, Path]) -> None:
    report = evict(tmp_path / "+files", MIRRORS, CacheLimit(max_bytes=1 << 20, grace=0))
    assert report.files == 0  # within the limit: nothing, however old
    report = evict(tmp_path / "+files", MIRRORS, CacheLimit(max_bytes=100, grace=0))
    left = sorted(name for name, path in cache.items() if path.exists())
    assert left == ["downloading", "partial", "stage"]
    assert report.bytes_after == 300


def test_the_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    first = EvictionLock(tmp_path)
    first.acquire()
    with pytest.raises(EvictionBusy):
        EvictionLock(tmp_path).acquire()
    first.release()
    with EvictionLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()


# -- uses ---------------------------------------------------------------------------


def test_uses_set_the_atime_keep_the_mtime_and_never_go_back(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.utime(path, (1000.0, 2000.0))
    log = UsageLog()
    log.note(str(path), 5000.0)
    log.note(str(tmp_path / "gone"), 5000.0)
    assert log.last_noted(str(path)) == 5000.0 and len(log) == 2
    assert apply_uses(log.take()) == 1
    assert len(log) == 0
    st = os.stat(path)
    assert (st.st_atime, st.st_mtime) == (5000.0, 2000.0)
    assert apply_uses({str(path): 3000.0}) == 0  # an older use never moves it back
    assert os.stat(path).st_atime == 5000.0


# -- the evictor's timers, on a memory clock ----------------------------------------


def _inline(function: Any) -> Deferred[Any]:
    return maybeDeferred(function)


def test_the_evictor_runs_soon_after_a_commit_takes_the_cache_over(tmp_path: Path) -> None:
    clock = Clock()
    files = FileStore(tmp_path)
    files.prepare()
    long_ago = time.time() - 9 * HOUR
    put(tmp_path, "root/pypi/+f/aaa/1111111111111/a-1.0.tar.gz", 600, long_ago)
    evictor = EvictionService(
        files,
        CacheLimit(1000, grace=600),
        lambda: ["root/pypi"],
        clock,
        _inline,
        interval=60,
        measure_disk=lambda path: 0,  # the real disk's other writers must not count here
    )
    files.prepare()
    evictor.startService()
    clock.advance(0)
    assert evictor.runs == 0  # 600 bytes: not even walked
    final = tmp_path / "+files/root/pypi/+f/bbb/2222222222222/b-1.0.tar.gz"
    final.parent.mkdir(parents=True)
    partial = files.partial_path(final)
    partial.write_bytes(b"y" * 500)
    files.commit(partial, final)  # 1100 bytes now
    assert evictor.status()["pending_uses"] == 1
    clock.advance(SOON)
    assert evictor.runs == 1
    status = evictor.status()
    assert (status["files"], status["bytes"]) == (1, 600)
    assert status["last_run"]["bytes_after"] == 500
    assert status["pending_uses"] == 0  # the run wrote the uses first
    assert files.mirror_bytes(["root/pypi"]) == 500
    assert final.exists() and os.stat(final).st_atime > long_ago
    # Held by another process: the check skips, counted as busy.
    put(tmp_path, "root/pypi/+f/ccc/3333333333333/c-1.0.tar.gz", 600, long_ago)
    files.index_bytes["root/pypi"] = 1100
    with EvictionLock(tmp_path):
        clock.advance(60)
    assert (evictor.runs, evictor.busy) == (1, 1)
    clock.advance(60)
    assert evictor.runs == 2 and evictor.evicted_files == 2
    stopped = evictor.stopService()
    assert stopped.called


# -- a real devpid ------------------------------------------------------------------

PROJECTS = [f"evict-p{i:02d}" for i in range(12)]
BLOB = 100_000
MAX_SIZE = 1 << 20  # 1M: a little more than ten of the twelve wheels


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    extra = [Dist(project, "1.0", "wheel", blob_size=BLOB) for project in PROJECTS]
    return build_repository(tmp_path_factory.mktemp("evict-repo"), extra=extra)


@pytest.fixture(scope="module")
def evict_upstream(repository: Repository) -> Iterator[UpstreamProcess]:
    with UpstreamProcess.start(repository.root) as process:
        yield process


def file_url(devpid: DevpidProcess, project: str) -> str:
    answer = devpid.get(f"/root/pypi/+simple/{project}/", Accept=JSON_PAGE)
    assert answer.status == 200, answer
    url = str(json.loads(answer.body)["files"][0]["url"])
    return url if url.startswith("http") else devpid.url + url


def cached_path(devpid: DevpidProcess, url: str) -> Path:
    """Where the file at ``url`` is cached: its path under ``+files/`` is the URL's."""
    return devpid.serverdir / "+files" / urlsplit(url).path.lstrip("/")


def mirror_bytes_on_disk(serverdir: Path) -> int:
    found = scan(serverdir / "+files", ["root/pypi"])
    return found.total


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Any]:
    """Holds a serverdir's evict.lock as another process would: ``hold(serverdir)``."""
    held: list[int] = []

    def hold(serverdir: Path) -> None:
        fd = os.open(serverdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)

    def release() -> None:
        while held:
            os.close(held.pop())

    hold.release = release  # type: ignore[attr-defined]
    try:
        yield hold
    finally:
        release()


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def eviction(devpid: DevpidProcess) -> dict[str, Any]:
    return dict(devpid.status()["cache"]["eviction"])


def metric_values(devpid: DevpidProcess) -> dict[str, float]:
    text = devpid.get("/+metrics").body.decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("devpid_cache_", "devpid_evict"))
    }


@pytest.mark.integration
def test_least_recently_used_mirror_files_go_stage_files_never(
    tmp_path: Path, evict_upstream: UpstreamProcess, repository: Repository, held_lock: Any
) -> None:
    serverdir = tmp_path / "serverdir"
    options = ("--cache-max-size", "1M", "--evict-interval", "0.2")
    with DevpidProcess.start(serverdir, evict_upstream.simple_url, *options) as devpid:
        # A stage with a file bigger than the whole limit, used long ago.
        api = Api(devpid)
        assert api.call("PUT", f"/{USER}", {"password": PASSWORD}).status == 201
        api.login(USER, PASSWORD)
        assert api.call("PUT", f"/{USER}/dev", {"bases": "root/pypi"}).status == 200
        stage_wheel = build_wheel(tmp_path, "stage-big", "1.0", blob_size=1_500_000)
        assert upload_request(devpid, stage_wheel) == 200
        [stage_file] = [p for p in (serverdir / "+files/alice/dev").rglob("*.whl")]

        urls = {project: file_url(devpid, project) for project in PROJECTS}
        for url in urls.values():
            answer = http_get(url)
            assert answer.status == 200 and answer.headers["x-devpid-cache"] == "miss"
        paths = {project: cached_path(devpid, url) for project, url in urls.items()}
        assert all(path.is_file() for path in paths.values())
        sizes = {project: path.stat().st_size for project, path in paths.items()}
        total = sum(sizes.values())
        assert total > MAX_SIZE
        # All just downloaded: within the grace period, so nothing went.
        wait_for(lambda: eviction(devpid)["runs"] >= 2, "two eviction runs")
        assert all(path.is_file() for path in paths.values())
        assert eviction(devpid)["files"] == 0
    # Stopped: its last uses are written. Now each file was last used hours ago, p00 the
    # longest ago; the stage's file longer still.
    long_ago = time.time() - 10 * HOUR
    for i, project in enumerate(PROJECTS):
        os.utime(paths[project], (long_ago + i * 60, long_ago + i * 60))
    os.utime(stage_file, (long_ago - HOUR, long_ago - HOUR))
    held_lock(serverdir)  # no run before the hits below
    with DevpidProcess.start(serverdir, evict_upstream.simple_url, *options) as devpid:
        urls = {project: devpid.url + urlsplit(url).path for project, url in urls.items()}
        # p00 and p01, the oldest, used now through HTTP: their use is written to the atime.
        # (A HEAD and a conditional GET: neither reads the file, so the kernel's own
        # atime rules cannot be what keeps them.)
        head = http_get(urls["evict-p00"], method="HEAD")
        etag = http_get(urls["evict-p01"], method="HEAD").headers["etag"]
        not_modified = http_get(urls["evict-p01"], If_None_Match=etag)
        assert (head.status, not_modified.status) == (200, 304)
        assert head.headers["x-devpid-cache"] == not_modified.headers["x-devpid-cache"] == "hit"
        wait_for(
            lambda: all(paths[p].stat().st_atime > time.time() - 60 for p in PROJECTS[:2]),
            "the hits' atimes",
        )
        wait_for(lambda: eviction(devpid)["busy"] > 0, "a run finding the lock held")
        assert eviction(devpid)["runs"] == 0
        held_lock.release()
        wait_for(lambda: eviction(devpid)["runs"] >= 1, "a run after the release")

        # Oldest first among p02..p11, until the cache is at 90% of the limit.
        expected_gone = []
        left = total
        for project in PROJECTS[2:]:
            if left <= int(MAX_SIZE * 0.9):
                break
            expected_gone.append(project)
            left -= sizes[project]
        gone = [p for p in PROJECTS if not paths[p].exists()]
        assert gone == expected_gone and len(gone) >= 2
        assert stage_file.is_file()  # never counted, never evicted
        assert mirror_bytes_on_disk(serverdir) == left <= MAX_SIZE * 0.9

        # /+status and /+metrics say so.
        cache = devpid.status()["cache"]
        status = cache["eviction"]
        assert cache["max_bytes"] == MAX_SIZE == status["max_bytes"]
        assert cache["mirror_bytes"] == left
        assert status["files"] == len(gone)
        assert status["bytes"] == total - left
        assert status["last_error"] is None
        assert status["last_run"]["bytes_after"] == left
        metrics = metric_values(devpid)
        assert metrics["devpid_cache_max_bytes"] == MAX_SIZE
        assert metrics["devpid_cache_mirror_bytes"] == left
        assert metrics["devpid_evicted_files_total"] == len(gone)
        assert metrics["devpid_evicted_bytes_total"] == total - left
        assert metrics["devpid_eviction_runs_total"] >= 1
        assert metrics["devpid_eviction_busy_total"] >= 1
        assert metrics["devpid_eviction_last_run_duration_seconds"] >= 0

        # An evicted file is a miss again, byte for byte.
        evicted = gone[0]
        answer = http_get(urls[evicted])
        assert answer.status == 200 and answer.headers["x-devpid-cache"] == "miss"
        filename = urls[evicted].rsplit("/", 1)[1]
        assert hashlib.sha256(answer.body).hexdigest() == repository.sha256(filename)
        assert "evicted" in devpid.log_text()


@pytest.mark.integration
def test_without_a_limit_nothing_is_recorded_or_evicted(
    tmp_path: Path, evict_upstream: UpstreamProcess
) -> None:
    with DevpidProcess.start(tmp_path / "serverdir", evict_upstream.simple_url) as devpid:
        url = file_url(devpid, PROJECTS[0])
        assert http_get(url).status == 200
        path = cached_path(devpid, url)
        os.utime(path, (1000.0, 1000.0))
        assert http_get(url, method="HEAD").headers["x-devpid-cache"] == "hit"
        cache = devpid.status()["cache"]
        assert cache["max_bytes"] is None and cache["eviction"] is None
        assert cache["mirror_bytes"] == path.stat().st_size
        assert path.stat().st_atime == 1000.0  # no bookkeeping without a limit
        assert "devpid_cache_max_bytes" not in metric_values(devpid)
