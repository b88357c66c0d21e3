"""``wrk`` rotating through a list of paths, each thread from its own place in the list,
with the answers that were not 200 counted, and its totals printed as one JSON line.

Used by the benches that compare devpid with itself under two settings
(``lru_bench``, ``lockdown_bench``, ``replica_bench``). Importable both as
``devpid_bench.rotating`` and, with ``bench/`` on ``sys.path``, on its own.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

MARKER = "BENCH_ROTATING "

_LUA = """
local paths = {@PATHS@}
local counter = 0
local threads = {}
@HEADERS@

function setup(thread)
  thread:set("offset", #threads * @STEP@)
  table.insert(threads, thread)
end

function init(args)
  counter = offset
  bad = 0
end

function request()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total_bad = 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format('@MARKER@{"requests": %d, "duration_us": %d, "errors": %d, '
    .. '"bad": %d, "p99_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status, total_bad,
    latency:percentile(99)))
end
"""


def write_script(
    path: Path,
    paths: Sequence[str],
    headers: Mapping[str, str] | None = None,
    step: int = 13,
) -> Path:
    """The rotating script at ``path``: GETs of ``paths`` with ``headers`` on each;
    thread ``n`` starts at ``n * step``."""
    sent = "\n".join(
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}"
        for name, value in (headers or {}).items()
    )
    path.write_text(
        _LUA.replace("@PATHS@", ", ".join(json.dumps(p) for p in paths))
        .replace("@HEADERS@", sent)
        .replace("@STEP@", str(step))
        .replace("@MARKER@", MARKER)
    )
    return path


def run(
    wrk: str, script: Path, url: str, seconds: int, connections: int, threads: int = 1
) -> dict[str, float]:
    """One wrk run of ``script``: its totals, with ``rps`` added."""
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        raise SystemExit(f"wrk printed no totals: {done.stdout}{done.stderr}")
    result: dict[str, float] = json.loads(lines[0][len(MARKER) :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result
