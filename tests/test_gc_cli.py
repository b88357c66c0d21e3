"""``devpid gc`` on a real serverdir: dry run, the run, the lock, and ``kill -9``.

The serverdir is filled once through a real devpid (twelve mirror wheels, a
wheel's ``.metadata``, a stage's upload), then each test works on a copy whose
files were last used hours ago, p00 the longest ago (their atimes and mtimes
set as a file cached long ago has them; no clock is faked).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest

from devpid.files.eviction import LOCK_NAME, EvictionLock, scan
from tests.fixtures.devpid_process import DevpidProcess, devpid_env, http_get
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck import run_fsck
from tests.test_private_api import Api
from tests.test_upload_crash import PASSWORD, USER, build_wheel, upload_request

pytestmark = pytest.mark.integration

PROJECTS = [f"gc-p{i:02d}" for i in range(12)]
BLOB = 100_000
LIMIT = "1M"
LIMIT_BYTES = 1 << 20
TARGET = int((1 << 20) * 0.9)
HOUR = 3600.0
JSON_PAGE = "application/vnd.pypi.simple.v1+json"


@attrs.frozen
class Built:
    serverdir: Path
    #: Each project's wheel, relative to the serverdir.
    wheels: dict[str, str]
    stage_file: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("gc")
    extra = [Dist(project, "1.0", "wheel", blob_size=BLOB) for project in PROJECTS]
    repository: Repository = build_repository(base / "repo", extra=extra)
    serverdir = base / "serverdir"
    wheels = {}
    with (
        UpstreamProcess.start(repository.root) as upstream,
        DevpidProcess.start(serverdir, upstream.simple_url) as devpid,
    ):
        api = Api(devpid)
        assert api.call("PUT", f"/{USER}", {"password": PASSWORD}).status == 201
        api.login(USER, PASSWORD)
        assert api.call("PUT", f"/{USER}/dev", {"bases": "root/pypi"}).status == 200
        assert upload_request(devpid, build_wheel(base, "gc-stage", "1.0", blob_size=BLOB)) == 200
        for project in PROJECTS:
            page = devpid.get(f"/root/pypi/+simple/{project}/", Accept=JSON_PAGE)
            path = urlsplit(json.loads(page.body)["files"][0]["url"]).path
            assert http_get(devpid.url + path).status == 200
            wheels[project] = "+files" + path
        # p00's metadata too: it goes with its wheel.
        assert http_get(devpid.url + wheels["gc-p00"][len("+files") :] + ".metadata").status == 200
    [stage_file] = (serverdir / "+files/alice/dev").rglob("*.whl")
    return Built(serverdir, wheels, stage_file.relative_to(serverdir).as_posix())


@pytest.fixture
def serverdir(built: Built, tmp_path: Path) -> Path:
    """A copy of the built serverdir, every file last used hours ago (p00 the longest)."""
    copy = tmp_path / "serverdir"
    shutil.copytree(built.serverdir, copy)
    long_ago = time.time() - 10 * HOUR
    for i, project in enumerate(PROJECTS):
        wheel = copy / built.wheels[project]
        for path in wheel.parent.iterdir():
            os.utime(path, (long_ago + i * 60, long_ago + i * 60))
    os.utime(copy / built.stage_file, (long_ago - HOUR, long_ago - HOUR))
    return copy


def gc_command(serverdir: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "devpid.cli", "gc", "--serverdir", str(serverdir), *options]


def run_gc(serverdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gc_command(serverdir, *options),
        env=devpid_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def mirror_bytes(serverdir: Path) -> int:
    return scan(serverdir / "+files", ["root/pypi"]).total


def expected_removals(serverdir: Path, built: Built) -> list[str]:
    """The projects an eviction down to the target removes, oldest first."""
    total = mirror_bytes(serverdir)
    gone = []
    for project in PROJECTS:
        if total <= TARGET:
            break
        directory = (serverdir / built.wheels[project]).parent
        gone.append(project)
        total -= sum(p.stat().st_size for p in directory.iterdir())
    return gone


def present(serverdir: Path, built: Built) -> list[str]:
    return [p for p in PROJECTS if (serverdir / built.wheels[p]).exists()]


def assert_fsck_clean(serverdir: Path) -> None:
    done = run_fsck(serverdir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dry_run_lists_what_would_go_and_removes_nothing(serverdir: Path, built: Built) -> None:
    before = mirror_bytes(serverdir)
    expected = expected_removals(serverdir, built)
    assert len(expected) >= 2
    done = run_gc(serverdir, "--cache-max-size", LIMIT, "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    listed = [line for line in lines if line.startswith("would remove ")]
    # p00's metadata, then its wheel, then one line per other wheel.
    assert len(listed) == len(expected) + 1
    assert listed[0].startswith(f"would remove {built.wheels['gc-p00']}.metadata (")
    for line, project in zip(listed[1:], expected, strict=True):
        assert line.startswith(f"would remove {built.wheels[project]} (")
        assert "bytes, last used 20" in line
    assert lines[-1].startswith(f"mirror cache (1 mirror index): {before} bytes, limit 1048576")
    assert f"would remove {len(listed)} files" in lines[-1]
    assert present(serverdir, built) == PROJECTS
    assert not (serverdir / LOCK_NAME).exists()  # a dry run takes no lock

    as_json = json.loads(run_gc(serverdir, "--cache-max-size", LIMIT, "-n", "--json").stdout)
    assert as_json["dry_run"] is True and as_json["mirrors"] == ["root/pypi"]
    assert as_json["bytes_before"] == before
    assert as_json["files"] == len(listed)
    assert as_json["bytes_after"] == before - as_json["bytes"] <= TARGET
    assert [item["path"] for item in as_json["removed"]][1:] == [built.wheels[p] for p in expected]


def test_gc_evicts_the_oldest_mirror_files_and_leaves_a_clean_serverdir(
    serverdir: Path, built: Built, tmp_path: Path
) -> None:
    expected = expected_removals(serverdir, built)
    config = tmp_path / "devpid.ini"
    config.write_text(f"[devpid]\nserverdir = {serverdir}\ncache-max-size = {LIMIT}\n")
    done = subprocess.run(
        [sys.executable, "-m", "devpid.cli", "gc", "-c", str(config)],
        env=devpid_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[:-1]] == ["removed"] * (
        len(expected) + 1
    )
    assert present(serverdir, built) == [p for p in PROJECTS if p not in expected]
    assert (serverdir / built.stage_file).is_file()
    assert mirror_bytes(serverdir) <= TARGET
    assert_fsck_clean(serverdir)
    again = run_gc(serverdir, "--cache-max-size", LIMIT)
    assert again.returncode == 0
    assert again.stdout.strip().endswith("within the limit, nothing to remove")


def test_a_stage_file_is_never_evicted_though_it_is_the_oldest(
    serverdir: Path, built: Built
) -> None:
    done = run_gc(serverdir, "--cache-max-size", LIMIT, "--json")
    assert done.returncode == 0
    removed = [item["path"] for item in json.loads(done.stdout)["removed"]]
    assert removed and all(path.startswith("+files/root/pypi/") for path in removed)
    assert (serverdir / built.stage_file).is_file()


def test_gc_refuses_while_another_process_evicts(serverdir: Path, built: Built) -> None:
    with EvictionLock(serverdir):
        done = run_gc(serverdir, "--cache-max-size", LIMIT)
    assert done.returncode == 1
    assert "is evicting" in done.stderr and LOCK_NAME in done.stderr
    assert present(serverdir, built) == PROJECTS


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ((), "no --cache-max-size given"),
        (("--cache-max-size", "lots"), "--cache-max-size must be a size"),
        (("--cache-max-size", LIMIT, "--grace", "-1"), "--grace must be at least 0"),
        (("--cache-max-size", LIMIT, "extra"), "unexpected argument"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(
    serverdir: Path, options: tuple[str, ...], mentions: str
) -> None:
    done = run_gc(serverdir, *options)
    assert done.returncode == 2
    assert mentions in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_kill_9_at_any_point_leaves_whole_files_and_the_next_run_completes(
    serverdir: Path, built: Built
) -> None:
    expected = expected_removals(serverdir, built)
    # Killed just after its first removal: certainly in the middle of the run.
    process = subprocess.Popen(
        gc_command(serverdir, "--cache-max-size", LIMIT),
        env=devpid_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert first.startswith("removed ")
    assert_fsck_clean(serverdir)
    # Then at random points (start-up, the walk, the removals, the end).
    rng = random.Random(15)
    for _ in range(3):
        process = subprocess.Popen(
            gc_command(serverdir, "--cache-max-size", LIMIT),
            env=devpid_env(),
            stdout=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_fsck_clean(serverdir)
    # The lock died with its holder: the next run takes it and completes. A killed
    # run may already have brought the cache under the limit (how far it got before
    # the signal depends on the machine): then there is nothing left to do.
    over_limit = mirror_bytes(serverdir) > LIMIT_BYTES
    done = run_gc(serverdir, "--cache-max-size", LIMIT)
    assert done.returncode == 0, done.stderr
    if over_limit:
        assert mirror_bytes(serverdir) <= TARGET, done.stdout
        assert present(serverdir, built) == [p for p in PROJECTS if p not in expected]
    else:
        assert "within the limit, nothing to remove" in done.stdout
        # whatever the killed runs removed, they removed oldest first
        gone = [p for p in PROJECTS if p not in present(serverdir, built)]
        assert gone and gone == expected[: len(gone)]
    assert (serverdir / built.stage_file).is_file()
    assert_fsck_clean(serverdir)
