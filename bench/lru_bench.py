"""LRU bookkeeping's cost on the cached-file path (issue 15): req/s with and without it.

    python bench/lru_bench.py            # 5 rounds of 8 s per setting
    python bench/lru_bench.py --quick    # 3 rounds of 4 s: about a minute

One warmed serverdir (a local upstream's 64 small wheels, all cached), then
devpid started on it alternately:

- ``plain``: without ``--cache-max-size``: nothing is recorded;
- ``lru``: with ``--cache-max-size 1T``, so large that nothing is ever evicted:
  every hit notes its path and time in a dict, a thread writes the atimes
  every 10 s, the evictor checks the size every 60 s (no walk: under the limit).

Each round runs ``wrk`` (a Lua script rotating through every file's URL, so
the bookkeeping sees many paths) against a fresh process of each setting,
after a warm-up run; the order alternates between rounds so drift on a
shared machine hits both alike. Printed: req/s of every run, the medians,
and ``lru/plain`` (goal: at least 0.95, a cost of at most 5 %).

Small files (about 9 KB) make the per-request cost, which the bookkeeping
adds to, the largest part of a request: the worst case for it. Everything is
on 127.0.0.1; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures

from devpid_bench import rotating

from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, build_repository
from tests.fixtures.upstream import UpstreamProcess

PROJECTS = [f"lru-p{i:02d}" for i in range(64)]
JSON_PAGE = "application/vnd.pypi.simple.v1+json"
SETTINGS = {"plain": (), "lru": ("--cache-max-size", "1T")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 s")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = args.seconds or (4 if args.quick else 8)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("lru_bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="devpid-lru-bench-"))
    try:
        extra = [Dist(project, "1.0", "wheel", blob_size=8000) for project in PROJECTS]
        repository = build_repository(workdir / "repo", extra=extra)
        serverdir = workdir / "serverdir"
        results: dict[str, list[float]] = {name: [] for name in SETTINGS}
        with UpstreamProcess.start(repository.root) as upstream:
            with DevpidProcess.start(serverdir, upstream.simple_url, name="warm") as devpid:
                paths = []
                for project in PROJECTS:
                    answer = devpid.get(f"/root/pypi/+simple/{project}/", Accept=JSON_PAGE)
                    path = urlsplit(json.loads(answer.body)["files"][0]["url"]).path
                    assert http_get(devpid.url + path).status == 200
                    paths.append(path)
            script = rotating.write_script(workdir / "rotate.lua", paths)
            print(
                f"{len(paths)} cached wheels of ~9 KB; wrk -t1 -c{args.connections} "
                f"-d{seconds}s, {rounds} rounds"
            )
            for round_number in range(rounds):
                order = list(SETTINGS) if round_number % 2 == 0 else list(reversed(SETTINGS))
                for name in order:
                    options = SETTINGS[name]
                    with DevpidProcess.start(
                        serverdir, upstream.simple_url, *options, name=name
                    ) as devpid:
                        rotating.run(wrk, script, devpid.url, 1, args.connections)  # warm-up
                        result = rotating.run(wrk, script, devpid.url, seconds, args.connections)
                        if name == "lru":
                            cache = devpid.status()["cache"]
                            assert cache["eviction"]["files"] == 0, cache
                    if result["errors"] or result["bad"]:
                        raise SystemExit(f"lru_bench: errors in the {name} run: {result}")
                    results[name].append(result["rps"])
                    print(
                        f"round {round_number + 1} {name:>5}: {result['rps']:8.0f} req/s "
                        f"(p99 {result['p99_us'] / 1000:.1f} ms)",
                        flush=True,
                    )
        plain = statistics.median(results["plain"])
        lru = statistics.median(results["lru"])
        ratio = lru / plain
        print(f"median plain: {plain:.0f} req/s")
        print(f"median lru:   {lru:.0f} req/s")
        verdict = "within" if ratio >= 0.95 else "OVER"
        print(f"lru/plain: {ratio:.3f} (cost {100 * (1 - ratio):+.1f}%, {verdict} the 5% goal)")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
