"""Running ``wrk`` (Debian's package) with a Lua ``done`` hook that prints JSON totals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devpid_bench.http import LoadResult

MARKER = "BENCH_WRK_RESULT "

#: wrk calls done() once, after the run, with the merged statistics of all threads;
#: every script this package gives wrk ends with it.
DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "timeout": %d, "status": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %f}\\n',
    @MARKER@, summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
""".replace("@MARKER@", json.dumps(MARKER))


def totals(output: str) -> dict[str, Any] | None:
    """What the done() hook printed in ``output``, or None when it printed nothing."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            found: dict[str, Any] = json.loads(line[len(MARKER) :])
            return found
    return None


def ensure_wrk(notes: list[str]) -> str | None:
    """Path of ``wrk``; install it from Debian's packages when missing and root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        notes.append("wrk missing and not root: using the pure-Python load generator")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        try:
            subprocess.run(argv, env=env, capture_output=True, timeout=300, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            notes.append(f"`{' '.join(argv)}` failed ({exc}): using the pure-Python load generator")
            return None
    return shutil.which("wrk")


def write_script(directory: Path) -> Path:
    path = directory / "bench_done.lua"
    path.write_text(DONE_HOOK)
    return path


def run_wrk(
    wrk: str,
    script: Path,
    url: str,
    connections: int,
    duration: float,
    headers: Mapping[str, str],
) -> LoadResult:
    argv = [
        wrk,
        f"-t{min(connections, 2)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 90)
    found = totals(result.stdout)
    if found is None:
        raise RuntimeError(
            f"wrk printed no result (exit {result.returncode}):\n"
            f"{result.stdout[-1000:]}{result.stderr[-1000:]}"
        )
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration=found["duration_us"] / 1e6,
        requests=found["requests"],
        bytes=found["bytes"],
        p50_ms=found["p50_us"] / 1000,
        p99_ms=found["p99_us"] / 1000,
        errors=sum(found[k] for k in ("connect", "read", "write", "timeout", "status")),
    )
