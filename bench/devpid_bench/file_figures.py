"""Cached files by ``os.sendfile`` (issue 17): devpid against nginx on the same file, in one run.

One ~16.9 MB wheel of random bytes on a local upstream, fetched once through a
devpid (which caches it; its sha256 checked), then served from that cache both
by devpid and by an nginx (``worker_processes 1``, ``sendfile on``,
``access_log off``) whose bare ``root`` is the directory devpid committed it to:
the same bytes from the same page cache. ``wrk`` fetches it with 1 and with 8
connections from each, the order alternating between rounds so drift on a
shared machine hits both alike; the figures are the medians' ratios
devpid / nginx (goal: at least 0.9), with every round's MB/s in the detail.

A last, short run per server gives wrk a Lua ``response()`` hook that counts
every answer that is not a 200 with the whole file: any truncated or
interleaved body is a figure of its own (goal: none). It runs apart from the
timed runs because handing each body to Lua costs wrk a copy of it.

On a busy machine the MB/s move with everything else running; the CPU time
each server's process spent per GB sent (``/proc/PID/stat``, devpid's process
and nginx's one worker, over the same timed runs) moves far less, and is a
figure too.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from devpid_bench.goals import Figure
from devpid_bench.repository import Blob, write_blob, write_root_index
from devpid_bench.staticnginx import NGINX, have_nginx, static_nginx
from devpid_bench.wrk import MARKER, run_wrk, write_script
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.ports import wait_until
from tests.fixtures.upstream import UpstreamProcess

WRK = "/usr/bin/wrk"
PROJECT = "devpid-sendfile-bench"
SIZE = 16_900_000
GOAL = 0.9
#: devpid's CPU per byte sent against nginx's (about 2.5 with sendfile, 7.5 without).
CPU_GOAL = 3.5
CONNECTIONS = (1, 8)
JSON_PAGE = "application/vnd.pypi.simple.v1+json"

#: wrk's ``response()`` hook: counts answers that are not a 200 with the whole file.
CHECK_HOOK = """
-- Each wrk thread has a Lua state of its own: done() sums their globals by thread:get.
local expected = @SIZE@
good, bad = 0, 0
local threads = {}
setup = function(thread) table.insert(threads, thread) end
response = function(status, headers, body)
  if status == 200 and #body == expected then good = good + 1 else bad = bad + 1 end
end
done = function(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format('%s{"good": %d, "bad": %d}\\n', @MARKER@, g, b))
end
"""


def _check_script(directory: Path) -> Path:
    path = directory / "check_length.lua"
    hook = CHECK_HOOK.replace("@SIZE@", str(SIZE)).replace("@MARKER@", json.dumps(MARKER))
    path.write_text(hook)
    return path


def _check_lengths(url: str, script: Path, connections: int, duration: int) -> tuple[int, int]:
    """(good, bad) answers of a wrk run that checks each one's status and length."""
    argv = [WRK, f"-t{min(connections, 2)}", f"-c{connections}", f"-d{duration}s"]
    argv += ["--timeout", "30s", "-s", str(script), url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    for line in result.stdout.splitlines():
        if line.startswith(MARKER):
            found = json.loads(line[len(MARKER) :])
            return int(found["good"]), int(found["bad"])
    raise RuntimeError(f"wrk printed no result: {result.stdout[-500:]}{result.stderr[-500:]}")


def _cache(devpid: DevpidProcess, blob: Blob) -> tuple[str, Path]:
    """Fetch the file once through devpid: (its URL path, where devpid committed it)."""
    page = json.loads(devpid.get(f"/root/pypi/+simple/{PROJECT}/", Accept=JSON_PAGE).body)
    path = urlsplit(page["files"][0]["url"]).path
    digest = hashlib.sha256()
    request = urllib.request.Request(devpid.url + path)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as answer:
        while chunk := answer.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != blob.sha256:
        raise RuntimeError("devpid sent the file with a wrong sha256")
    found = wait_until(lambda: list((devpid.serverdir / "+files").rglob(blob.filename)), 20)
    if not found:
        raise RuntimeError("the file was not committed to the cache")
    # A second GET is a hit: the sendfile path, checked once more.
    answer2 = http_get(devpid.url + path)
    if answer2.headers.get("x-devpid-cache") != "hit" or len(answer2.body) != SIZE:
        raise RuntimeError("the second GET was not a whole cache hit")
    if hashlib.sha256(answer2.body).hexdigest() != blob.sha256:
        raise RuntimeError("the cache hit had a wrong sha256")
    return path, found[0]


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ratio(name: str, ours: list[float], theirs: list[float]) -> Figure:
    mine, nginx = statistics.median(ours), statistics.median(theirs)
    detail = (
        f"devpid {mine:,.0f} MB/s [{', '.join(f'{v:,.0f}' for v in ours)}], "
        f"nginx {nginx:,.0f} MB/s [{', '.join(f'{v:,.0f}' for v in theirs)}]"
    )
    return Figure(name, mine / nginx if nginx else None, GOAL, True, detail=detail)


def figures(quick: bool = True) -> list[Figure]:
    rounds, seconds = (5, 2) if quick else (7, 5)
    names = {
        c: f"cached 16.9 MB wheel, {c} connection{'s' * (c > 1)}, devpid / nginx"
        for c in CONNECTIONS
    }
    if not (have_nginx() and os.access(WRK, os.X_OK)):
        why = f"needs {NGINX} and {WRK}"
        return [Figure(names[c], None, GOAL, True, detail=why) for c in CONNECTIONS]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="file-bench-")))
        root = workdir / "upstream"
        blob = write_blob(root, PROJECT, SIZE, b"sendfile")
        write_root_index(root)
        upstream = stack.enter_context(UpstreamProcess.start(root))
        devpid = stack.enter_context(
            DevpidProcess.start(workdir / "serverdir", upstream.simple_url)
        )
        path, cached = _cache(devpid, blob)
        served = stack.enter_context(static_nginx(workdir, cached.parent))
        nginx, nginx_worker = served.url, served.worker_pid
        urls = {"devpid": devpid.url + path, "nginx": f"{nginx}/{blob.filename}"}
        if http_get(urls["nginx"]).body != http_get(urls["devpid"]).body:
            raise RuntimeError("nginx and devpid sent different bytes")
        pids = {"devpid": devpid.process.pid, "nginx": nginx_worker}
        script = write_script(workdir)
        speeds: dict[tuple[str, int], list[float]] = {}
        cpu = dict.fromkeys(urls, 0.0)
        sent = dict.fromkeys(urls, 0)
        for round_ in range(rounds):
            order = ["devpid", "nginx"] if round_ % 2 == 0 else ["nginx", "devpid"]
            for connections in CONNECTIONS:
                for server in order:
                    before = _cpu_seconds(pids[server])
                    result = run_wrk(WRK, script, urls[server], connections, seconds, {})
                    cpu[server] += _cpu_seconds(pids[server]) - before
                    sent[server] += result.bytes
                    speeds.setdefault((server, connections), []).append(result.megabytes_per_second)
        found = [_ratio(names[c], speeds[("devpid", c)], speeds[("nginx", c)]) for c in CONNECTIONS]
        per_gb = {server: cpu[server] / (sent[server] / 1e9) for server in urls}
        found.append(
            Figure(
                "cached 16.9 MB wheel, CPU seconds per GB sent, devpid / nginx",
                per_gb["devpid"] / per_gb["nginx"] if per_gb["nginx"] else None,
                CPU_GOAL,
                False,
                detail=f"devpid {per_gb['devpid']:.3f} s/GB, nginx {per_gb['nginx']:.3f} s/GB: "
                "each process's own CPU, which other load on the machine changes least",
            )
        )
        check = _check_script(workdir)
        bad = {server: _check_lengths(url, check, 8, 2) for server, url in urls.items()}
        good_devpid, bad_devpid = bad["devpid"]
        found.append(
            Figure(
                "cached 16.9 MB wheel under wrk, 8 connections: answers not 200 + whole file",
                float(bad_devpid) if good_devpid else None,
                0,
                False,
                unit="",
                detail=f"devpid {good_devpid} whole, {bad_devpid} not; "
                f"nginx {bad['nginx'][0]} whole, {bad['nginx'][1]} not",
            )
        )
        return found
