"""Warm bench (issue 15): ``devpid warm`` for two platforms against ``pip download`` twice.

    python bench/warm_bench.py            # flask pytest requests python-dateutil
    python bench/warm_bench.py --quick    # requests only
    python bench/warm_bench.py --local    # a local upstream built with distbuilder

(a) A fresh devpid (serverdir in a temporary directory) with its default upstream,
the index pip is configured with here (read from pip's configuration at run time,
never printed), warmed with ``devpid warm`` for two targets at once:
manylinux2014_x86_64 / CPython 3.12 and win_amd64 / CPython 3.11. Wall time of the
whole command (pip's resolutions through devpid included), then of a second warm
that finds everything cached.

(b) The baseline: ``pip download --no-cache-dir --only-binary=:all: --platform P
--python-version V`` once per target, straight from the same index, into a
temporary directory. Wall time of the two runs together.

It prints both times, the ratio, and the files and bytes each moved. When the
configured index cannot be reached, (a) and (b) run against a local upstream
(``tests.fixtures.upstream``) serving distbuilder's platform-specific wheels, and
the output says so. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for devpid, tests.fixtures

from devpid.config import ConfigError, pip_index  # noqa: E402
from tests.fixtures.devpid_process import DevpidProcess  # noqa: E402
from tests.fixtures.distbuilder import Dist, build_repository  # noqa: E402
from tests.fixtures.upstream import UpstreamProcess  # noqa: E402

REQUIREMENTS = ["flask", "pytest", "requests", "python-dateutil"]
QUICK_REQUIREMENTS = ["requests"]
LOCAL_REQUIREMENTS = ["native", "devpid-demo-app"]
TARGETS = [("manylinux2014_x86_64", "3.12"), ("win_amd64", "3.11")]


def clean_env() -> dict[str, str]:
    """No pip configuration or proxy: both sides see only the index they are given."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PIP_", "UV_")) and "PROXY" not in key.upper()
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@contextmanager
def local_upstream(workdir: Path) -> Iterator[str]:
    """distbuilder's platform wheels (a few MB each) behind the upstream fixture."""
    tags = ["cp312-cp312-manylinux2014_x86_64", "cp311-cp311-win_amd64"]
    extra = [
        Dist("native", "1.0", "wheel", ("devpid-demo-lib>=1.0",), wheel_tag=tag, blob_size=4 << 20)
        for tag in tags
    ]
    repo = build_repository(workdir / "repo", big_file_size=None, extra=extra)
    with UpstreamProcess.start(repo.root) as upstream:
        yield upstream.simple_url


def reachable(devpid: DevpidProcess, project: str) -> bool:
    page = devpid.get(
        f"/root/pypi/+simple/{project}/", Accept="application/vnd.pypi.simple.v1+json"
    )
    return page.status == 200


def run_warm(devpid: DevpidProcess, requirements: list[str]) -> tuple[float, dict[str, Any]]:
    command = [sys.executable, "-m", "devpid.cli", "warm", "--index-url", devpid.simple_url]
    for platform, python in TARGETS:
        command += ["--target", f"platform={platform},python={python}"]
    command += ["--json", "--no-progress", *requirements]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        print(f"devpid warm exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def run_pip_download(
    index_url: str, requirements: list[str], workdir: Path
) -> tuple[float, int, int]:
    """Both targets' ``pip download``; (seconds, files, bytes)."""
    files = size = 0
    started = time.monotonic()
    for number, (platform, python) in enumerate(TARGETS):
        destination = workdir / f"download-{number}"
        command = [sys.executable, "-m", "pip", "download", "--no-cache-dir", "--quiet"]
        command += ["--only-binary=:all:", "--platform", platform, "--python-version", python]
        command += ["--index-url", index_url, "-d", str(destination), *requirements]
        if index_url.startswith("http://"):
            command += ["--trusted-host", index_url.split("/")[2].split(":")[0]]
        done = subprocess.run(command, env=clean_env(), capture_output=True, text=True)
        if done.returncode != 0:
            print(f"pip download exited {done.returncode}: {done.stderr[-2000:]}")
        for path in destination.iterdir():
            files += 1
            size += path.stat().st_size
    return time.monotonic() - started, files, size


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def bench(workdir: Path, requirements: list[str], index_url: str, where: str) -> None:
    with DevpidProcess.start(workdir / "serverdir", index_url) as devpid:
        if not reachable(devpid, requirements[0]):
            raise ConnectionError(f"devpid cannot read {requirements[0]}'s page from {where}")
        warm_seconds, summary = run_warm(devpid, requirements)
        again_seconds, again = run_warm(devpid, requirements)
    pip_seconds, pip_files, pip_bytes = run_pip_download(index_url, requirements, workdir)
    targets = " and ".join(f"{p}/py{v}" for p, v in TARGETS)
    print(f"warm bench: {' '.join(requirements)} for {targets}, upstream: {where}")
    fetched = summary["fetched"]
    print(
        f"  devpid warm (fresh cache):    {warm_seconds:6.2f} s  "
        f"fetched {fetched['files']} files, {megabytes(fetched['bytes'])}; "
        f"failed {summary['failed']}"
    )
    already = again["already"]
    print(
        f"  devpid warm (second, cached): {again_seconds:6.2f} s  "
        f"already there {already['files']} files, fetched {again['fetched']['files']}"
    )
    print(
        f"  pip download x2 (upstream):   {pip_seconds:6.2f} s  "
        f"{pip_files} files, {megabytes(pip_bytes)}"
    )
    print(f"  ratio warm / pip download x2: {warm_seconds / pip_seconds:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="warm requests only")
    parser.add_argument("--local", action="store_true", help="use a local upstream")
    args = parser.parse_args(argv)
    requirements = QUICK_REQUIREMENTS if args.quick else REQUIREMENTS
    workdir = Path(tempfile.mkdtemp(prefix="devpid-warm-bench-"))
    try:
        if not args.local:
            try:
                index_url, source = pip_index()
                bench(workdir / "remote", requirements, index_url, f"the index of {source}")
                return
            except (ConfigError, ConnectionError, OSError) as e:
                print(f"the configured index is not usable ({e}): falling back to a local upstream")
        with local_upstream(workdir) as url:
            bench(workdir / "local", LOCAL_REQUIREMENTS, url, "a local upstream (distbuilder)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
