"""Replicas (issue 16): replication lag, and reads spread over a primary and two replicas.

    python bench/replica_bench.py            # 200 uploads; 3 rounds of 8 s of reads per setup
    python bench/replica_bench.py --quick    # 50 uploads; 2 rounds of 4 s: about 40 s

One primary and two replicas, each a ``twistd -n devpid`` with its own serverdir
(tests/fixtures/replicas.py), on 127.0.0.1.

**(a) Lag.** 200 small wheels are uploaded to the primary one after another, as
fast as it takes them; a thread watches both replicas' serverdirs for each file.
A file's lag is from the primary's answer to the upload until the file is in
place (verified, renamed) on *both* replicas. Printed: p50, p99 and the worst;
goal p99 under 1 s.

**(b) Reads.** nginx (plain ``proxy_pass``, no files from disk, so every read
reaches a devpid) in front of the primary alone, and in front of the primary
and both replicas (round-robin, keep-alive); ``wrk`` rotates through the
stage's simple pages (PEP 691 JSON) and its files. Printed: req/s of each
setup (median of the rounds, alternating order) and three/one. Each devpid is
one single-threaded process, so the ratio is bounded by the cores free for
them beside nginx and wrk.

Every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures

from devpid_bench import rotating

from tests.fixtures.nginx import Nginx, nginx_path
from tests.fixtures.ports import free_consecutive_ports
from tests.fixtures.replicas import Replicated
from tests.test_nginx import build_wheel, create_stage, upload


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_lag(cluster: Replicated, workdir: Path, count: int) -> list[float]:
    base = cluster.primary.url
    create_stage(base, "alice", bases="")
    wheels = [build_wheel(workdir, f"lag-p{n:03d}", "1.0", blob_size=4000) for n in range(count)]
    paths = []
    for wheel in wheels:
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        paths.append(Path("+files/alice/dev/+f", sha[:3], sha[3:16], wheel.name))
    acknowledged: dict[int, float] = {}
    arrived: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        roots = [replica.serverdir for replica in cluster.replicas]
        while not done.is_set():
            for number in list(acknowledged):
                if number not in arrived and all((r / paths[number]).exists() for r in roots):
                    arrived[number] = time.monotonic()
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    for number, wheel in enumerate(wheels):
        project = wheel.name.split("-")[0].replace("_", "-")
        answer = upload(f"{base}/alice/dev/", wheel, "alice", project, "1.0")
        assert answer.status == 200, answer
        acknowledged[number] = time.monotonic()
    uploaded = time.monotonic() - started
    deadline = time.monotonic() + 60
    while len(arrived) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    watcher.join()
    if len(arrived) < count:
        raise SystemExit(f"replica_bench: only {len(arrived)} of {count} files arrived in 60 s")
    print(f"{count} uploads in {uploaded:.1f} s ({count / uploaded:.0f}/s), all on both replicas")
    return [arrived[n] - acknowledged[n] for n in range(count)]


def nginx_conf(path: Path, ports: dict[str, tuple[int, list[str]]]) -> None:
    parts = []
    for name, (port, servers) in ports.items():
        members = "".join(f"        server {url.removeprefix('http://')};\n" for url in servers)
        parts.append(
            f"upstream {name} {{\n{members}        keepalive 64;\n}}\n"
            f"server {{\n    listen 127.0.0.1:{port};\n    access_log off;\n"
            '    proxy_http_version 1.1;\n    proxy_set_header Connection "";\n'
            "    proxy_set_header Host $host;\n"
            f"    location / {{ proxy_pass http://{name}; }}\n}}\n"
        )
    path.write_text("".join(parts))


def run_wrk(wrk: str, script: Path, url: str, seconds: int, connections: int) -> float:
    result = rotating.run(wrk, script, url, seconds, connections, threads=2)
    if result["errors"] or result["bad"]:
        raise SystemExit(f"replica_bench: errors in a wrk run: {result}")
    return result["rps"]


def measure_reads(
    cluster: Replicated, workdir: Path, rounds: int, seconds: int, connections: int
) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None or nginx_path() is None:
        raise SystemExit("replica_bench: the reads need wrk and nginx (apt-get install wrk nginx)")
    primary = cluster.primary
    projects = json.loads(
        primary.get("/alice/dev/+simple/", Accept="application/vnd.pypi.simple.v1+json").body
    )["projects"]
    paths = []
    for project in projects[:50]:
        name = project["name"]
        paths.append(f"/alice/dev/+simple/{name}/")
        page = primary.get(
            f"/alice/dev/+simple/{name}/", Accept="application/vnd.pypi.simple.v1+json"
        )
        paths.append(json.loads(page.body)["files"][0]["url"].partition("#")[0])
    script = rotating.write_script(
        workdir / "reads.lua", paths, {"Accept": "application/vnd.pypi.simple.v1+json"}, step=7
    )
    port = free_consecutive_ports(2)
    everyone = [primary.url, *(r.url for r in cluster.replicas)]
    setups = {"one": (port, [primary.url]), "three": (port + 1, everyone)}
    conf = workdir / "reads-nginx.conf"
    nginx_conf(conf, setups)
    results: dict[str, list[float]] = {name: [] for name in setups}
    with Nginx.start(workdir / "nginx", conf, port + 1):
        for listen, _ in setups.values():  # warm every process's page memory
            run_wrk(wrk, script, f"http://127.0.0.1:{listen}", 1, connections)
        for number in range(rounds):
            order = list(setups) if number % 2 == 0 else list(reversed(setups))
            for name in order:
                rps = run_wrk(
                    wrk, script, f"http://127.0.0.1:{setups[name][0]}", seconds, connections
                )
                results[name].append(rps)
                print(f"round {number + 1} {name:>5}: {rps:8.0f} req/s", flush=True)
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 uploads, 2 rounds of 4 s")
    parser.add_argument("--uploads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    count = args.uploads or (50 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.seconds or (4 if args.quick else 8)
    workdir = Path(tempfile.mkdtemp(prefix="devpid-replica-bench-"))
    cluster = Replicated.start(workdir, replicas=2)
    try:
        lags = measure_lag(cluster, workdir, count)
        p99 = percentile(lags, 0.99)
        print(
            f"lag: p50 {1000 * percentile(lags, 0.5):.0f} ms, p99 {1000 * p99:.0f} ms, "
            f"worst {1000 * max(lags):.0f} ms ({'within' if p99 < 1 else 'OVER'} the 1 s goal)"
        )
        reads = measure_reads(cluster, workdir, rounds, seconds, args.connections)
        print(f"median one:   {reads['one']:.0f} req/s (nginx -> the primary)")
        print(f"median three: {reads['three']:.0f} req/s (nginx -> primary + 2 replicas)")
        print(f"three/one: {reads['three'] / reads['one']:.2f}")
    finally:
        cluster.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
