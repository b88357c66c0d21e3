"""How long devpid takes to be ready to serve, on a big serverdir and on an empty one.

The big serverdir (tests/fixtures/big_serverdir.py) holds 100,000 cached projects,
10,000 cached files and 10,000 private releases (in ``private.sqlite`` and on disk).
It takes about a minute to write, so it is kept between runs under the temporary
directory, keyed by ``VERSION`` (raise it when the builder changes what it writes).

**Ready** is the time from starting ``twistd -n devpid`` until all of these answered
200 with the right content: ``/+status?check=1``, a cached project page (JSON), a
cached file (its bytes), a stage's project page (naming the release) and the
release's file. Polled every 5 ms, each on a new connection, from the moment the
process is started (a refused connection is "not yet").

Python's bytecode is cached for the devpid process (``PYTHONPYCACHEPREFIX`` under the
bench directory; one start before the measured ones compiles it), as it is for an
installed devpid; a checkout run with ``PYTHONDONTWRITEBYTECODE`` compiles every
module at each start instead.

Figures: the median time to ready on the big serverdir (goal: under a second), and
its ratio to the same on an empty serverdir, measured in the same run (what the data
costs; the empty start is mostly imports).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from devpid_bench.goals import Figure
from tests.fixtures.big_serverdir import STAGE, BigServerdir, cached
from tests.fixtures.devpid_process import devpid_env, twistd_command
from tests.fixtures.ports import free_consecutive_ports

#: Raised whenever tests/fixtures/big_serverdir.py writes something else.
VERSION = 1
PROJECTS, FILES, RELEASES = 100_000, 10_000, 10_000
READY_GOAL = 1.0
#: Give up on a start after this long (it is then reported as not ready).
START_TIMEOUT = 60.0
POLL = 0.005

Check = tuple[str, Callable[[bytes], bool]]


def bench_directory() -> Path:
    return Path(tempfile.gettempdir()) / f"devpid-bench-startup-v{VERSION}"


def big_serverdir() -> BigServerdir:
    return cached(bench_directory() / "big", PROJECTS, FILES, RELEASES)


def checks_for(big: BigServerdir | None) -> list[Check]:
    """What must answer 200 (and what its body must hold) for devpid to be ready."""
    found: list[Check] = [("/+status?check=1", lambda body: json.loads(body)["healthy"])]
    if big is None:
        return found
    n = big.files // 2
    path, content = big.mirror_file(n)
    filename = path.rsplit("/", 1)[1].encode()
    found.append((f"/root/pypi/+simple/proj-{n:06d}/", lambda body: filename in body))
    found.append((path, lambda body: body == content))
    project, _version, release_path, release = big.stage_release(big.releases // 2)
    release_name = release_path.rsplit("/", 1)[1].encode()
    found.append((f"/{STAGE}/+simple/{project}/", lambda body: release_name in body))
    found.append((release_path, lambda body: body == release))
    return found


def _get(port: int, path: str) -> tuple[int, bytes] | None:
    """One GET on a new connection; None while nothing listens."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except ConnectionRefusedError:
        return None
    finally:
        connection.close()


def environment() -> dict[str, str]:
    env = devpid_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(bench_directory() / "pycache")
    return env


def time_to_ready(serverdir: Path, checks: list[Check], log: Path) -> tuple[float | None, float]:
    """Seconds from start until every check passed (None: it never did), and the CPU
    seconds the process had used by then."""
    port = free_consecutive_ports(2)  # and the next one: the upstream nobody answers at
    command = [*twistd_command(), "-n", "--pidfile=", "--logfile", str(log), "devpid"]
    command += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--serverdir", str(serverdir)]
    # nothing listens there; a year's expiry keeps the cached pages fresh
    command += ["--upstream", f"http://127.0.0.1:{port + 1}/simple/"]
    command += ["--cache-expiry", "31536000"]
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        pending = list(checks)
        while pending and time.monotonic() - started < START_TIMEOUT:
            if process.poll() is not None:
                return None, 0.0
            path, right = pending[0]
            answer = _get(port, path)
            if answer is None:
                time.sleep(POLL)
                continue
            status, body = answer
            if status != 200 or not right(body):
                return None, 0.0  # answered wrong: not a matter of waiting
            pending.pop(0)
        ready = None if pending else time.monotonic() - started
        return ready, _cpu_seconds(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(rounds: int) -> dict[str, list[tuple[float | None, float]]]:
    big = big_serverdir()
    empty = bench_directory() / "empty"
    logs = bench_directory() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[tuple[float | None, float]]] = {"big": [], "empty": []}
    # a first start of each compiles the bytecode (and lets the page cache hold the files)
    for serverdir, checks in ((big.path, checks_for(big)), (empty, checks_for(None))):
        shutil.rmtree(empty, ignore_errors=True)
        time_to_ready(serverdir, checks, logs / "warm-up.log")
    for _ in range(rounds):  # alternating: drift on a shared machine hits both alike
        shutil.rmtree(empty, ignore_errors=True)  # empty: created at each start
        results["empty"].append(time_to_ready(empty, checks_for(None), logs / "empty.log"))
        results["big"].append(time_to_ready(big.path, checks_for(big), logs / "big.log"))
    return results


def _median(values: list[tuple[float | None, float]]) -> float | None:
    ready = [v for v, _ in values]
    if any(v is None for v in ready):
        return None
    return statistics.median(v for v in ready if v is not None)


def _shown(values: list[tuple[float | None, float]]) -> str:
    return ", ".join("n/a" if v is None else f"{v:.3f}s (cpu {cpu:.2f}s)" for v, cpu in values)


def figures(quick: bool = True) -> list[Figure]:
    results = measure(3 if quick else 5)
    big, empty = _median(results["big"]), _median(results["empty"])
    size = f"{PROJECTS:,} projects, {FILES:,} files, {RELEASES:,} releases"
    ratio = "n/a" if big is None or empty is None else f"{big / empty:.2f}x"
    return [
        Figure(
            f"start-up: ready to serve with {size}",
            big,
            READY_GOAL,
            higher_is_better=False,
            unit="s",
            detail=f"each start: {_shown(results['big'])}; an empty serverdir: "
            f"{_shown(results['empty'])}; big / empty {ratio}",
        ),
    ]
