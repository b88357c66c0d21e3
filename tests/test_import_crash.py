"""``kill -9`` of ``devpid import`` at random moments, then a rerun: it completes, ``devpid
fsck`` is clean, and the bundle is untouched.

The bundle (made through devpid's own APIs, see test_import_bad.py) holds a stage with
many versions and files and a mirror with many cached files: enough that a real import
takes a good fraction of a second to a few seconds. For each seed the real command runs
into a fresh serverdir and is killed with SIGKILL after a random delay within the time a
whole import took; the serverdir then holds the import whole or nothing of the private
data, and fsck reports nothing worse than leftovers (stage files placed but not linked);
a rerun completes and fsck finds nothing at all.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.devpid_process import devpid_env
from tests.test_import import make_bundle, make_tar, private_records, run_import, tree_listing
from tests.test_import_bad import _scratch_serverdir, write_mirror
from tests.test_upload_crash import fsck_errors

pytestmark = pytest.mark.integration

STAGE_FILES = 120
MIRROR_FILES = 400
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(scratch serverdir, bundle directory, the same as a tar)."""
    base = tmp_path_factory.mktemp("import-crash")
    serverdir = _scratch_serverdir(base / "scratch", file_size=200_000, files=STAGE_FILES)
    rng = random.Random(0)
    write_mirror(
        serverdir, [(f"demo-{n}.0.tar.gz", rng.randbytes(50_000)) for n in range(MIRROR_FILES)]
    )
    bundle = make_bundle(serverdir, base / "bundle")
    return serverdir, bundle, make_tar(bundle, base / "bundle.tar")


def _command(target: Path, source: Path) -> list[str]:
    return [sys.executable, "-m", "devpid.cli", "import", "--serverdir", str(target), str(source)]


def test_kill_import_at_random_points(big: tuple[Path, Path, Path], tmp_path: Path) -> None:
    scratch, bundle, tar = big
    expected = private_records(scratch)
    bundle_listing = tree_listing(bundle)
    tar_sha = tree_listing(tar.parent)[tar.name]
    started = time.monotonic()
    done = run_import("--serverdir", tmp_path / "timed", bundle)
    whole = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    killed_before_the_end = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        source = bundle if seed % 2 else tar
        target = tmp_path / f"target-{seed}"
        process = subprocess.Popen(
            _command(target, source),
            env=devpid_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.1, whole))
        process.send_signal(signal.SIGKILL)
        status = process.wait()
        killed_before_the_end += status == -signal.SIGKILL
        if (target / "private.sqlite").exists():
            records = private_records(target)
            assert records == expected or not any(k == "version" for k, _n, _v in records)
            status_, errors, output = fsck_errors(target)
            assert all(" leftover " in line for line in errors), output
        done = run_import("--serverdir", target, source)
        assert done.returncode == 0, done.stderr
        assert private_records(target) == expected
        status_, errors, output = fsck_errors(target)
        assert status_ == 0 and not errors, output
        assert not (target / "+tmp").exists()
    assert tree_listing(bundle) == bundle_listing
    assert tree_listing(tar.parent)[tar.name] == tar_sha
    # the delays are within a whole import's time: most kills cut one short
    assert killed_before_the_end >= 1
