"""``devpid warm`` against real processes: a devpid over a local upstream with
platform-specific wheels, warmed for platforms other than this machine's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import installer_env
from tests.fixtures.devpid_process import REPO_ROOT, DevpidProcess
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

LIB = "devpid_demo_lib-2.0-py3-none-any.whl"
LIB_SDIST = "devpid_demo_lib-2.0.tar.gz"
NATIVE_TAGS = {
    "x86_64": "cp312-cp312-manylinux2014_x86_64",
    "aarch64": "cp312-cp312-manylinux2014_aarch64",
    "win": "cp311-cp311-win_amd64",
}
NATIVE = {key: f"native-1.0-{tag}.whl" for key, tag in NATIVE_TAGS.items()}
NATIVE_SDIST = "native-1.0.tar.gz"
AARCH64_312 = ["--platform", "manylinux2014_aarch64", "--python-version", "3.12"]


@pytest.fixture(scope="module")
def native_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    requires = ("devpid-demo-lib>=1.0",)
    extra = [
        *(Dist("native", "1.0", "wheel", requires, wheel_tag=tag) for tag in NATIVE_TAGS.values()),
        Dist("native", "1.0", "sdist", requires),
    ]
    return build_repository(tmp_path_factory.mktemp("native-repo"), extra=extra)


@pytest.fixture(scope="module")
def native_upstream(native_repository: Repository) -> Iterator[UpstreamProcess]:
    with UpstreamProcess.start(native_repository.root) as process:
        yield process


@pytest.fixture
def upstream(native_upstream: UpstreamProcess) -> Iterator[UpstreamProcess]:
    native_upstream.control()
    native_upstream.reset_stats()
    yield native_upstream
    native_upstream.control()


@pytest.fixture
def devpid(tmp_path: Path, upstream: UpstreamProcess) -> Iterator[DevpidProcess]:
    with DevpidProcess.start(tmp_path / "serverdir", upstream.simple_url) as process:
        yield process


def warm(devpid: DevpidProcess, *arguments: str, cwd: Path = REPO_ROOT) -> tuple[int, Any]:
    """Run ``devpid warm --json`` as a user would; (exit status, the summary)."""
    command = [sys.executable, "-m", "devpid.cli", "warm", "--index-url", devpid.simple_url]
    command += ["--json", *arguments]
    done = subprocess.run(
        command, cwd=cwd, env=installer_env(), capture_output=True, text=True, timeout=240
    )
    assert "Traceback" not in done.stderr, done.stderr
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON summary (exit {done.returncode}): {done.stdout}{done.stderr}")
    return done.returncode, summary


def by_outcome(summary: Any, outcome: str) -> set[str]:
    return {f["filename"] for f in summary["files"] if f["outcome"] == outcome}


def cached_path(devpid: DevpidProcess, repo: Repository, filename: str) -> Path:
    digest = repo.sha256(filename)
    return devpid.serverdir / "+files/root/pypi/+f" / digest[:3] / digest[3:16] / filename


def file_gets(upstream: UpstreamProcess) -> dict[str, int]:
    gets: dict[str, int] = upstream.stats()["gets"]
    return {
        path.removeprefix("/files/"): count
        for path, count in gets.items()
        if path.startswith("/files/") and not path.endswith(".metadata")
    }


def test_warm_for_another_platform_then_everything_is_there(
    devpid: DevpidProcess, upstream: UpstreamProcess, native_repository: Repository
) -> None:
    status, summary = warm(devpid, *AARCH64_312, "native")
    assert status == 0, summary
    assert by_outcome(summary, "fetched") == {NATIVE["aarch64"], LIB}
    assert by_outcome(summary, "already") == by_outcome(summary, "failed") == set()
    assert summary["fetched"] == {
        "files": 2,
        "bytes": sum(native_repository.path(f).stat().st_size for f in (NATIVE["aarch64"], LIB)),
    }
    for filename in (NATIVE["aarch64"], LIB):
        cached = cached_path(devpid, native_repository, filename)
        assert cached.read_bytes() == native_repository.path(filename).read_bytes()
    assert file_gets(upstream) == {NATIVE["aarch64"]: 1, LIB: 1}

    status, again = warm(devpid, *AARCH64_312, "native")
    assert status == 0, again
    assert by_outcome(again, "fetched") == set()
    assert by_outcome(again, "already") == {NATIVE["aarch64"], LIB}
    assert {f["cache"] for f in again["files"]} == {"hit"}
    assert file_gets(upstream) == {NATIVE["aarch64"]: 1, LIB: 1}


def test_two_targets_with_sdists_fetch_each_file_once(
    devpid: DevpidProcess, upstream: UpstreamProcess, native_repository: Repository
) -> None:
    status, summary = warm(
        devpid,
        "--target",
        "platform=manylinux2014_x86_64,python=3.12",
        "--target",
        "platform=win_amd64,python=3.11,abi=cp311",
        "--sdists",
        "native",
    )
    assert status == 0, summary
    expected = {NATIVE["x86_64"], NATIVE["win"], LIB, NATIVE_SDIST, LIB_SDIST}
    assert by_outcome(summary, "fetched") == expected
    assert len(summary["files"]) == len(expected)
    assert summary["targets"] == [
        "platform=manylinux2014_x86_64,python=3.12",
        "platform=win_amd64,python=3.11,abi=cp311",
    ]
    assert file_gets(upstream) == dict.fromkeys(expected, 1)
    for filename in expected:
        assert cached_path(devpid, native_repository, filename).is_file()
    assert not cached_path(devpid, native_repository, NATIVE["aarch64"]).exists()


def test_a_missing_requirement_fails_and_the_rest_is_warmed(
    devpid: DevpidProcess, upstream: UpstreamProcess, tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# what the site needs\nnative  # the compiled one\nnothere-at-all\n")
    status, summary = warm(devpid, *AARCH64_312, "-r", str(requirements))
    assert status == 1, summary
    assert by_outcome(summary, "fetched") == {NATIVE["aarch64"], LIB}
    [failure] = summary["resolution_failures"]
    assert failure["requirement"] == "nothere-at-all"
    assert failure["origin"] == f"{requirements}:3"
    assert failure["target"] == "platform=manylinux2014_aarch64,python=3.12"
    assert "No matching distribution found for nothere-at-all" in failure["reason"]
    assert summary["failed"] == {"files": 0, "resolutions": 1}
    assert summary["exit_status"] == 1


def test_a_file_that_fails_is_named_and_the_others_are_fetched(
    devpid: DevpidProcess, upstream: UpstreamProcess
) -> None:
    upstream.control(status=500, status_paths=[f"/files/{NATIVE_SDIST}"])
    status, summary = warm(devpid, *AARCH64_312, "--sdists", "native")
    assert status == 1, summary
    assert by_outcome(summary, "fetched") == {NATIVE["aarch64"], LIB, LIB_SDIST}
    [failed] = [f for f in summary["files"] if f["outcome"] == "failed"]
    assert failed["filename"] == NATIVE_SDIST
    assert failed["error"].startswith("HTTP 5"), failed


def test_text_summary_and_usage_errors(devpid: DevpidProcess, upstream: UpstreamProcess) -> None:
    command = [sys.executable, "-m", "devpid.cli", "warm", "--index-url", devpid.simple_url]
    done = subprocess.run(
        [*command, "native", "nothere-at-all", *AARCH64_312, "--no-progress"],
        cwd=REPO_ROOT,
        env=installer_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("fetched 2 files (")
    assert ", already there 0 (0 B), failed 1 in " in lines[1]
    assert lines[2].startswith(
        "failed: nothere-at-all (command line) for platform=manylinux2014_aarch64"
    )
    assert done.stderr == ""  # no bars when stderr is not a terminal
    wrong_index = devpid.url + "/nobody/nothing/+simple/"
    done = subprocess.run(
        [sys.executable, "-m", "devpid.cli", "warm", "--index-url", wrong_index, "native"],
        cwd=REPO_ROOT,
        env=installer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"devpid warm: error: devpid at {devpid.url} has no index nobody/nothing"
    )
