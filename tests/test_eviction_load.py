"""Eviction under load: ``wrk`` on cached files while a small ``--cache-max-size`` evicts them.

Forty mirror wheels of forty different sizes (about 1.6 MB in all) behind a
1 MiB limit with ``--evict-grace 0``: a file may go the moment after it was
used, so eviction runs all through the load, removing files that clients are
reading and that the next request fetches again. wrk rotates through every
file's URL; its Lua ``response()`` hook counts any status but 200 and any body
whose length is not one of the forty sizes. Afterwards every file is fetched
with urllib and checked against its sha256.

The bounds asserted:

- no socket error, no status but 200, no body of a wrong length, no wrong byte;
- eviction did evict during the load, and the evicted files were fetched
  again (misses);
- every run seen during the load ended with the cache within the limit,
  except for the files used after that run started, each at most the largest
  file: a use newer than the run's start protects a file even with a grace of
  0, whether seen when choosing (``protected``, which also counts files being
  downloaded) or just before removing it (``kept``):
  ``bytes_after <= limit + (kept + protected) * largest``;
- once the load stops, the next run brings the cache within the limit:
  the mirror's committed bytes on disk ``<= --cache-max-size``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devpid.files.eviction import scan
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, Repository, build_repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

PROJECTS = [f"load-p{i:02d}" for i in range(40)]
LIMIT = 1 << 20
JSON_PAGE = "application/vnd.pypi.simple.v1+json"
MARKER = "EVICTION_LOAD "
WRK_SECONDS = 4

LUA = """
local paths = {@PATHS@}
local sizes = {@SIZES@}
local threads = {}
local counter = 0

function setup(thread)
  thread:set("offset", #threads * 7)
  table.insert(threads, thread)
end

function init(args)
  counter = offset
  bad_status = 0
  bad_length = 0
  misses = 0
  responses = 0
end

function request()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    bad_status = bad_status + 1
  elseif not sizes[#body] then
    bad_length = bad_length + 1
  end
  local cache = headers["X-Devpid-Cache"] or headers["x-devpid-cache"]
  if cache == "miss" then
    misses = misses + 1
  end
end

function done(summary, latency, requests)
  local totals = {bad_status = 0, bad_length = 0, misses = 0, responses = 0}
  for _, thread in ipairs(threads) do
    for key, _ in pairs(totals) do
      totals[key] = totals[key] + thread:get(key)
    end
  end
  local e = summary.errors
  io.write(string.format(
    '@MARKER@{"requests": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, '
    .. '"status": %d, "bad_status": %d, "bad_length": %d, "misses": %d, "responses": %d}\\n',
    summary.requests, e.connect, e.read, e.write, e.timeout, e.status,
    totals.bad_status, totals.bad_length, totals.misses, totals.responses))
end
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    # Forty sizes, 20 KB to 59 KB, each its own: a body's length says which file it is.
    extra = [
        Dist(project, "1.0", "wheel", blob_size=20_000 + i * 1009)
        for i, project in enumerate(PROJECTS)
    ]
    return build_repository(tmp_path_factory.mktemp("load-repo"), extra=extra)


@pytest.fixture(scope="module")
def load_upstream(repository: Repository) -> Iterator[UpstreamProcess]:
    with UpstreamProcess.start(repository.root) as process:
        yield process


def wrk_script(directory: Path, paths: list[str], sizes: list[int]) -> Path:
    assert len(set(sizes)) == len(sizes)
    text = (
        LUA.replace("@PATHS@", ", ".join(json.dumps(p) for p in paths))
        .replace("@SIZES@", ", ".join(f"[{size}] = true" for size in sizes))
        .replace("@MARKER@", MARKER)
    )
    script = directory / "rotate.lua"
    script.write_text(text)
    return script


def mirror_bytes(serverdir: Path) -> int:
    return scan(serverdir / "+files", ["root/pypi"]).total


def test_wrk_on_cached_files_while_eviction_runs(
    tmp_path: Path, load_upstream: UpstreamProcess, repository: Repository
) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (Debian's package: apt-get install wrk)")
    options = ("--cache-max-size", "1M", "--evict-interval", "0.2", "--evict-grace", "0")
    with DevpidProcess.start(tmp_path / "serverdir", load_upstream.simple_url, *options) as devpid:
        paths, sizes, digests = [], [], {}
        for project in PROJECTS:
            page = json.loads(devpid.get(f"/root/pypi/+simple/{project}/", Accept=JSON_PAGE).body)
            path = urlsplit(page["files"][0]["url"]).path
            filename = path.rsplit("/", 1)[1]
            paths.append(path)
            sizes.append(repository.path(filename).stat().st_size)
            digests[path] = repository.sha256(filename)
            assert http_get(devpid.url + path).status == 200  # cached, over the limit soon
        largest = max(sizes)
        assert sum(sizes) > LIMIT + largest

        # Every run's outcome, as /+status shows the last one, all through the load.
        runs: dict[float, dict[str, Any]] = {}
        load_over = threading.Event()

        def watch() -> None:
            while not load_over.is_set():
                last = devpid.status()["cache"]["eviction"]["last_run"]
                if last is not None:
                    runs[last["timestamp"]] = last
                time.sleep(0.02)

        script = wrk_script(tmp_path, paths, sizes)
        command = [wrk, "-t2", "-c8", f"-d{WRK_SECONDS}s", "--timeout", "10s", "-s", str(script)]
        watcher = threading.Thread(target=watch)
        evicted_before = devpid.status()["cache"]["eviction"]["files"]
        watcher.start()
        try:
            done = subprocess.run(
                [*command, devpid.url],
                capture_output=True,
                text=True,
                timeout=WRK_SECONDS + 60,
            )
        finally:
            load_over.set()
            watcher.join()
        [line] = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
        result = json.loads(line[len(MARKER) :])
        errors = {key: result[key] for key in ("connect", "read", "write", "timeout", "status")}
        assert errors == dict.fromkeys(errors, 0), done.stdout
        assert (result["bad_status"], result["bad_length"]) == (0, 0), result
        assert result["responses"] == result["requests"] > 100
        evicted = devpid.status()["cache"]["eviction"]["files"] - evicted_before
        assert evicted > 0 and result["misses"] > 0  # files went, and came back as misses
        worst = max(runs.values(), key=lambda run: run["bytes_after"])
        print(f"wrk: {result}; evicted {evicted} files in {len(runs)} runs seen; worst: {worst}")

        assert runs
        for run in runs.values():
            assert run["bytes_after"] <= LIMIT + (run["kept"] + run["protected"]) * largest, run

        deadline = time.monotonic() + 30
        while mirror_bytes(devpid.serverdir) > LIMIT and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mirror_bytes(devpid.serverdir) <= LIMIT

        for path, digest in digests.items():
            answer = http_get(devpid.url + path)
            assert answer.status == 200
            assert hashlib.sha256(answer.body).hexdigest() == digest, path
        assert "Traceback" not in devpid.log_text()
