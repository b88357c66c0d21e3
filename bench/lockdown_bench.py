"""The lockdown's cost (issue 16): cached-page and cached-file req/s with ``--require-auth``
against without, in the same run.

    python bench/lockdown_bench.py            # 3 rounds of 6 s per setting and workload
    python bench/lockdown_bench.py --quick    # 2 rounds of 3 s: about a minute

One warmed serverdir (a local upstream's 64 small wheels and their pages, all
cached; root with a password, alice with a password and an API token), then devpid
started on it with each setting in turn:

- ``open``: no ``--require-auth``, no credentials sent: the gate lets everything in
  without working out who asks;
- ``password``: ``--require-auth``, every request with ``Authorization: Basic
  alice:<password>``: argon2 once, then ``PasswordChecker``'s memory (an HMAC and a
  dict lookup) per request;
- ``token``: ``--require-auth``, every request with ``Basic __token__:<API token>``:
  a SHA-256 and a constant-time compare per request.

Each round runs ``wrk`` (a Lua script rotating through every page or file URL)
against a fresh process of each setting, after a warm-up run; the order
alternates between rounds so drift on a shared machine hits all alike. Printed:
req/s of every run, the medians, and ``open / locked`` per workload and kind of
credentials (goal: at most 1.3). Everything is on 127.0.0.1; every process
started is stopped at the end.

On a machine shared with other work, req/s drift by more than the lockdown
costs; so the same three settings are also measured in this process, on the
memory reactor (``tests/fixtures/app.py``, the whole HTTP stack without
sockets): the CPU time (``time.process_time``, which other processes' load does
not change) per cached-file request, and its ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures

from devpid_bench import rotating

from tests.fixtures.app import MemoryDevpid, populate
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import Dist, build_repository
from tests.fixtures.lockdown import ALICE_PASSWORD, basic, lock_down
from tests.fixtures.upstream import UpstreamProcess

PROJECTS = [f"lockdown-p{i:02d}" for i in range(64)]
JSON_PAGE = "application/vnd.pypi.simple.v1+json"
GOAL = 1.3


def script(directory: Path, name: str, paths: list[str], accept: str, auth: str | None) -> Path:
    headers = {"Accept": accept, **({"Authorization": auth} if auth else {})}
    return rotating.write_script(directory / f"{name}.lua", paths, headers)


def warm(serverdir: Path, upstream: UpstreamProcess) -> tuple[list[str], list[str], str]:
    """Cache every page and file; make the people. Returns (pages, files, alice's token)."""
    pages, files = [], []
    with DevpidProcess.start(serverdir, upstream.simple_url, name="warm") as devpid:
        for project in PROJECTS:
            page = f"/root/pypi/+simple/{project}/"
            answer = devpid.get(page, Accept=JSON_PAGE)
            path = urlsplit(json.loads(answer.body)["files"][0]["url"]).path
            assert http_get(devpid.url + path).status == 200
            pages.append(page)
            files.append(path)
        token = lock_down(devpid.url).token
    return pages, files, token


def _memory_request(
    server: MemoryDevpid, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.0", "Host: localhost", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    exchange = server.send("\r\n".join(lines).encode() + b"\r\n\r\n" + body, max_seconds=0)
    return exchange.raw


def in_process(workdir: Path, rounds: int, requests: int) -> dict[str, float]:
    """CPU microseconds per cached-file request, by setting (medians of ``rounds``)."""
    serverdir = workdir / "memory-serverdir"
    [cached] = populate(serverdir, "hello", {"hello-1.0-py3-none-any.whl": b"x" * 9000}, {})
    server = MemoryDevpid.start(serverdir)
    json_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    made = _memory_request(
        server, "PUT", "/alice", {**json_headers, "Authorization": basic("root", "")},
        json.dumps({"password": ALICE_PASSWORD}).encode(),
    )  # fmt: skip
    alice = basic("alice", ALICE_PASSWORD)
    answer = _memory_request(
        server, "POST", "/alice/+tokens", {**json_headers, "Authorization": alice}, b"{}"
    )
    token = json.loads(answer.partition(b"\r\n\r\n")[2])["result"]["token"]
    server.stop()
    assert b" 201 " in made[:20], made[:300]
    settings = {
        "open": ({}, {}),
        "password": ({"require-auth": "1"}, {"Authorization": alice}),
        "token": ({"require-auth": "1"}, {"Authorization": basic("__token__", token)}),
    }
    results: dict[str, list[float]] = {name: [] for name in settings}
    for number in range(rounds):
        order = list(settings) if number % 2 == 0 else list(reversed(settings))
        for name in order:
            options, headers = settings[name]
            server = MemoryDevpid.start(serverdir, **options)
            try:
                for _ in range(100):  # warm: argon2 once, pages compiled
                    raw = _memory_request(server, "GET", cached.path, headers)
                    assert raw.startswith(b"HTTP/1.0 200 "), raw[:300]
                started = time.process_time()
                for _ in range(requests):
                    _memory_request(server, "GET", cached.path, headers)
                results[name].append((time.process_time() - started) / requests * 1e6)
            finally:
                server.stop()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.seconds or (3 if args.quick else 6)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("lockdown_bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="devpid-lockdown-bench-"))
    try:
        extra = [Dist(project, "1.0", "wheel", blob_size=8000) for project in PROJECTS]
        repository = build_repository(workdir / "repo", extra=extra)
        serverdir = workdir / "serverdir"
        with UpstreamProcess.start(repository.root) as upstream:
            pages, files, token = warm(serverdir, upstream)
            credentials = {
                "open": None,
                "password": basic("alice", ALICE_PASSWORD),
                "token": basic("__token__", token),
            }
            workloads = {"page": (pages, JSON_PAGE), "file": (files, "*/*")}
            scripts = {
                (setting, workload): script(workdir, f"{setting}-{workload}", paths, accept, auth)
                for setting, auth in credentials.items()
                for workload, (paths, accept) in workloads.items()
            }
            results: dict[tuple[str, str], list[float]] = {key: [] for key in scripts}
            print(
                f"{len(pages)} cached PEP 691 pages and ~9 KB wheels; wrk -t1 "
                f"-c{args.connections} -d{seconds}s, {rounds} rounds"
            )
            for number in range(rounds):
                order = list(credentials) if number % 2 == 0 else list(reversed(credentials))
                for setting in order:
                    options = () if setting == "open" else ("--require-auth",)
                    with DevpidProcess.start(
                        serverdir, upstream.simple_url, *options, name=setting
                    ) as devpid:
                        for workload in workloads:
                            lua = scripts[(setting, workload)]
                            rotating.run(wrk, lua, devpid.url, 1, args.connections)  # warm-up
                            result = rotating.run(wrk, lua, devpid.url, seconds, args.connections)
                            if result["errors"] or result["bad"]:
                                raise SystemExit(
                                    f"lockdown_bench: errors in {setting}/{workload}: {result}"
                                )
                            results[(setting, workload)].append(result["rps"])
                            p99 = result["p99_us"] / 1000
                            print(
                                f"round {number + 1} {setting:>8} {workload}: "
                                f"{result['rps']:8.0f} req/s (p99 {p99:.1f} ms)",
                                flush=True,
                            )
                        if setting != "open":
                            refused = devpid.get(pages[0])
                            assert refused.status == 401, refused.status
        cpu = in_process(workdir, rounds=max(3, rounds), requests=2000)
        print(f"in process, CPU per cached-file request: open {cpu['open']:.0f} us")
        for setting in ("password", "token"):
            print(
                f"in process, CPU per cached-file request: {setting} {cpu[setting]:.0f} us  "
                f"{setting}/open: {cpu[setting] / cpu['open']:.3f}"
            )
        worst = 0.0
        for workload in workloads:
            plain = statistics.median(results[("open", workload)])
            print(f"median {workload} open:     {plain:8.0f} req/s")
            for setting in ("password", "token"):
                locked = statistics.median(results[(setting, workload)])
                cost = plain / locked
                worst = max(worst, cost)
                print(
                    f"median {workload} {setting + ':':<9} {locked:8.0f} req/s  "
                    f"open/{setting}: {cost:.3f}"
                )
        verdict = "within" if worst <= GOAL else "OVER"
        print(f"worst cost {worst:.3f}x ({verdict} the {GOAL}x goal)")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
