"""``devpid fsck`` of ``+tmp/``: the staging directories devpid's tools (export, import) leave.

A tool stages its work in ``+tmp/<tool>-<pid>-<nonce>/`` and ``flock``-s the
``.lock`` inside while it runs. On a serverdir a real devpid made (with a
cached file, which an export pins by a hard link), the real ``devpid fsck``
must call a directory whose lock is free a leftover and ``--repair`` remove
it, but leave alone one whose lock a live process holds, until that process
is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck import APP, run_fsck
from tests.test_streaming import file_path_of, raw_get

pytestmark = pytest.mark.integration

#: A tool's staging: makes ``<argv[1]>/export-<its pid>-a1b2c3/``, holds an exclusive flock
#: on the ``.lock`` in it and prints the directory, then runs until its stdin closes.
HOLDER = (
    "import fcntl, os, sys\n"
    "directory = os.path.join(sys.argv[1], f'export-{os.getpid()}-a1b2c3')\n"
    "os.makedirs(directory)\n"
    "fd = os.open(os.path.join(directory, '.lock'), os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print(directory, flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_upstream: UpstreamProcess) -> Path:
    """A stopped devpid's serverdir with one cached file (and its page)."""
    serverdir = tmp_path_factory.mktemp("fsck-leftovers") / "serverdir"
    with DevpidProcess.start(serverdir, shared_upstream.simple_url) as devpid:
        assert raw_get(devpid, file_path_of(devpid, "devpid-demo-app", APP))[0] == 200
    return serverdir


@pytest.fixture
def serverdir(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "serverdir"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def holder(serverdir: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A live export: its staging directory, its ``.lock`` held by a child process."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(serverdir / "+tmp")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process, Path(process.stdout.readline().strip())
    finally:
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        process.wait(timeout=30)


def fsck_json(serverdir: Path, *options: str) -> tuple[int, dict[str, Any]]:
    done = run_fsck(serverdir, "--json", *options)
    return done.returncode, json.loads(done.stdout)


def found(document: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    return sorted(
        (p["severity"], p["kind"], p["path"], p["repaired"]) for p in document["problems"]
    )


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=30)
    return done.pid


def test_leftover_staging_directories_are_removed_and_live_ones_kept(
    serverdir: Path, holder: tuple[subprocess.Popen[str], Path]
) -> None:
    process, live = holder
    (live / "records.jsonl").write_bytes(b"{}\n")
    # An import killed mid-copy: its lock is free (pid 1 runs, but the lock decides).
    crashed = serverdir / "+tmp" / "import-1-abc"
    (crashed / "bundle").mkdir(parents=True)
    (crashed / ".lock").write_bytes(b"")
    (crashed / "bundle" / "records.jsonl").write_bytes(b"{}\n")
    # An export killed after pinning a cached file (a hard link) and before its lock.
    [cached] = [p for p in (serverdir / "+files").rglob(APP)]
    unlocked = serverdir / "+tmp" / f"export-{dead_pid()}-def456"
    unlocked.mkdir()
    os.link(cached, unlocked / APP)
    # Not a tool's: reported, never removed; eviction's lock file: nothing to say.
    stray = serverdir / "+tmp" / "notes.txt"
    stray.write_bytes(b"an operator's")
    (serverdir / "evict.lock").write_bytes(b"")

    done = run_fsck(serverdir)
    assert done.returncode == 0, done.stdout  # warnings only
    lines = done.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines[:-1]) == sorted(
        [
            "warning leftover +tmp/import-1-abc",
            f"warning leftover +tmp/{unlocked.name}",
            "warning unexpected +tmp/notes.txt",
        ]
    ), lines
    assert "1 temporary file being written" in lines[-1], lines  # the live export
    assert lines[-1].endswith(": clean, 3 warnings"), lines
    assert crashed.exists() and unlocked.exists()

    status, document = fsck_json(serverdir, "--repair")
    assert status == 0, document
    assert found(document) == sorted(
        [
            ("warning", "leftover", "+tmp/import-1-abc", True),
            ("warning", "leftover", f"+tmp/{unlocked.name}", True),
            ("warning", "unexpected", "+tmp/notes.txt", False),
        ]
    )
    assert document["counts"]["in_progress"] == 1
    assert not crashed.exists() and not unlocked.exists()
    assert cached.is_file() and stray.exists()  # the pinned file's other name stays
    assert (live / "records.jsonl").exists() and process.poll() is None

    # The export dies: its directory is a leftover now, and goes.
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=30)
    status, document = fsck_json(serverdir, "--repair")
    assert status == 0
    assert ("warning", "leftover", f"+tmp/{live.name}", True) in found(document)
    assert not live.exists()
    stray.unlink()
    status, document = fsck_json(serverdir)
    assert (status, document["problems"]) == (0, []), document
    assert document["counts"]["by_hash"] == 1  # the cached file, untouched


def test_a_link_in_tmp_is_never_followed(serverdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".lock").write_bytes(b"")
    link = serverdir / "+tmp" / "import-1-abc"
    link.parent.mkdir()
    link.symlink_to(outside)
    status, document = fsck_json(serverdir, "--repair")
    assert status == 0
    assert found(document) == [("warning", "unexpected", "+tmp/import-1-abc", False)]
    assert link.is_symlink() and (outside / ".lock").exists()
