"""``kill -9`` during twenty cold downloads, then a restart: nothing partial or wrong survives.

Real processes throughout: the fixture upstream (rate-limited per connection, so
transfers are in flight), ``twistd -n devpid``, and ``devpid fsck`` as a
subprocess to verify the serverdir.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.ports import wait_until
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck import run_fsck
from tests.test_streaming import file_path_of, raw_get

pytestmark = pytest.mark.integration

#: Twenty wheels from 30 KB to 2.9 MB: at RATE the first few are done within a second,
#: the largest take ten.
CRASH_DISTS = [
    Dist("devpid-crash", f"1.{n}", "wheel", blob_size=30_000 + n * 150_000) for n in range(20)
]
RATE = 300_000


@pytest.fixture(scope="module")
def crash_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return build_repository(tmp_path_factory.mktemp("crash-repo"), extra=CRASH_DISTS)


@pytest.fixture(scope="module")
def crash_upstream(crash_repository: Repository) -> Iterator[UpstreamProcess]:
    with UpstreamProcess.start(crash_repository.root) as process:
        yield process


def files_under(serverdir: Path) -> tuple[list[Path], list[Path]]:
    """(committed files, temporary files) under ``+files/``."""
    found = [p for p in (serverdir / "+files").rglob("*") if p.is_file()]
    partials = [p for p in found if p.name.endswith(".devpid-partial")]
    return [p for p in found if p not in partials], partials


def fsck_json(serverdir: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = run_fsck(serverdir, "--json")
    assert not result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("committed_before_kill", [2, 10])
def test_kill_9_during_twenty_cold_downloads_leaves_nothing_partial_or_wrong(
    tmp_path: Path,
    crash_upstream: UpstreamProcess,
    crash_repository: Repository,
    committed_before_kill: int,
) -> None:
    serverdir = tmp_path / "serverdir"
    crash_upstream.control()
    devpid = DevpidProcess.start(serverdir, crash_upstream.simple_url)
    try:
        urls = {d.filename: file_path_of(devpid, d.project, d.filename) for d in CRASH_DISTS}
        crash_upstream.control(rate=RATE)
        with ThreadPoolExecutor(len(urls)) as pool:
            fetches = {name: pool.submit(raw_get, devpid, url, 60) for name, url in urls.items()}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                committed, partials = files_under(serverdir)
                if len(committed) >= committed_before_kill and len(committed) + len(
                    partials
                ) == len(urls):
                    break
                time.sleep(0.02)
            assert devpid.kill() == -9
            committed, partials = files_under(serverdir)
            # The crash hit while transfers were in flight, some files already in place.
            assert len(committed) >= committed_before_kill, committed
            assert len(partials) >= 5, partials
            for name, fetch in fetches.items():
                try:
                    status, length, body = fetch.result(timeout=60)
                except (OSError, http.client.HTTPException):
                    continue
                if status == 200 and length == len(body):  # a complete answer is a right one
                    assert hashlib.sha256(body).hexdigest() == crash_repository.sha256(name)
    finally:
        devpid.stop()

    # Before the restart, fsck sees exactly the dead process's temporary files.
    status, report = fsck_json(serverdir)
    assert status == 1
    assert {p["kind"] for p in report["problems"]} == {"leftover"}
    assert len(report["problems"]) == len(partials)
    assert report["counts"]["by_hash"] == len(committed)

    crash_upstream.control()
    crash_upstream.reset_stats()
    with DevpidProcess.start(serverdir, crash_upstream.simple_url) as devpid:
        # cleared by the start-up count, in a thread while devpid serves
        cleared = f"removed {len(partials)} partial files left by a crash"
        wait_until(lambda: cleared in devpid.log_text())
        after_restart, partials_left = files_under(serverdir)
        assert partials_left == []
        assert sorted(after_restart) == sorted(committed)
        # While devpid runs, every file there verifies.
        status, report = fsck_json(serverdir)
        assert (status, report["problems"]) == (0, []), report
        assert report["counts"]["by_hash"] == len(committed)
        # Every file is served whole and right; only the missing ones are fetched.
        with ThreadPoolExecutor(len(urls)) as pool:
            fetched = pool.map(lambda url: raw_get(devpid, url), urls.values())
            results = dict(zip(urls, fetched, strict=True))
        for name, (code, length, body) in results.items():
            assert code == 200 and length == len(body), name
            assert hashlib.sha256(body).hexdigest() == crash_repository.sha256(name), name
        gets = crash_upstream.stats()["gets"]
        assert sum(gets.get(f"/files/{n}", 0) for n in urls) == len(urls) - len(committed)
        status, report = fsck_json(serverdir)
        assert (status, report["problems"]) == (0, [])
        assert report["counts"]["by_hash"] == len(urls)
