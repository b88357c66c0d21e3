"""Issue 3: several devpid processes acting as one cache.

Two devpid processes share one serverdir and one Redis (a redis-server of the
benchmark's own, on a free port) and mirror the rate-limited upstream. Two
nginx fronts, written from the same template, listen on a port each: one
balances over both processes, the other has only the first in its upstream
block, so the 1-process and 2-process figures pay for the same proxy hop.

- cached page req/s and p99 through each front, and straight to the first
  process ("direct") for context; the CPU each process used meanwhile;
- upstream GETs when ``cluster_clients`` clients ask for one cold file at the
  same moment: all of them to one process, or half to each (straight to the
  processes, so the split is exact).

Two more processes of the same cluster listen on one port with ``reuseport:``
(``SO_REUSEPORT``): the kernel spreads the connections, no proxy in between.
Their page req/s ("2 port") compare with one process asked straight
("direct"): the same comparison without nginx's CPU on the same 2 cores.

nginx gets ``NGINX_WORKERS`` = 1 worker in both runs: one worker proxies far
more requests than a Python process serves, and on a 2-core machine a second
worker would only take CPU from the devpid processes (and wrk).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs

from devpid.ops.genconfig import Deployment, render_nginx
from devpid_bench.cpu import OTHERS_LIMIT, CpuMeter, children
from devpid_bench.http import PIP_ACCEPT, fetch
from devpid_bench.measure import (
    Bench,
    Mirror,
    check,
    concurrent_cold,
    each,
    note_page_errors,
    warm_page,
)
from devpid_bench.procs import (
    BenchError,
    ProcessGroup,
    Server,
    Upstream,
    devpid_help,
    free_port,
    start_devpid,
    wait_for_http,
    wait_for_log_line,
)
from devpid_bench.repository import Blob, ClusterFiles
from tests.fixtures.ports import free_consecutive_ports

NGINX = "/usr/sbin/nginx"
NGINX_WORKERS = 1
TABLE = "cluster"

#: The top level around the http-level file ``devpid gen-config`` writes, as an
#: installation's nginx.conf would include it. Access logging is off for every
#: front alike: the figures compare devpid, not log writing.
NGINX_WRAPPER = """\
user root;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {include};
}}
"""

#: nginx serving the serverdir's committed files directly: the baseline for cached files.
NGINX_STATIC = """\
server {{
    listen 127.0.0.1:{port};
    location / {{
        root {files};
        types {{ }}
        default_type application/octet-stream;
    }}
}}
"""
FRONT_TABLE = "front"


@attrs.frozen
class Cluster:
    """The two devpid processes and the nginx fronts, as mirrors of the same index."""

    processes: tuple[Mirror, Mirror]
    one: Mirror  # nginx (devpid gen-config's file) -> the first process
    two: Mirror  # nginx (devpid gen-config's file, 2 workers) -> both, round-robin
    static: Server  # nginx serving the serverdir's files itself, nothing else
    shared_port: Mirror  # two more processes listening on one port (reuseport:)
    shared_port_pids: tuple[int, int]

    @property
    def fronts(self) -> dict[str, Mirror]:
        """Column of the table -> where the page load goes."""
        return {
            "direct": self.processes[0],
            "1 proc": self.one,
            "2 procs": self.two,
            "2 port": self.shared_port,
        }

    def devpid_pids(self, column: str) -> list[int]:
        """The devpid processes that serve a column's load."""
        if column == "2 port":
            return list(self.shared_port_pids)
        return [m.server.child.pid for m in self.processes]


def start_redis(group: ProcessGroup, workdir: Path) -> str:
    """A redis-server of our own on a free loopback port, nothing saved; its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError("redis-server not found")
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = group.start("redis-cluster", [*argv, "--dir", str(workdir)])
    wait_for_log_line(child, "Ready to accept connections", timeout=30)
    return f"redis://127.0.0.1:{port}/0"


def start_nginx(group: ProcessGroup, workdir: Path, name: str, include: str) -> Server:
    """nginx in the foreground with its own prefix directory around ``include``."""
    if not os.access(NGINX, os.X_OK):
        raise BenchError(f"{NGINX} not found")
    prefix = workdir / name
    prefix.mkdir()
    (prefix / "devpid.conf").write_text(include)
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_WRAPPER.format(workers=NGINX_WORKERS, dir=prefix, include=prefix / "devpid.conf")
    )
    port = int(include.split("listen 127.0.0.1:", 1)[1].split(";", 1)[0])
    child = group.start(
        name,
        [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
         "-g", "daemon off;"],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(child, url, timeout=30, any_status=True)
    return Server(child=child, url=url)


def devpid_front(serverdir: Path, first_port: int, workers: int) -> str:
    """The nginx file ``devpid gen-config`` writes for ``workers`` workers from ``first_port``."""
    deployment = Deployment(
        twistd=("twistd",),
        serverdir=str(serverdir),
        user="root",
        port=first_port,
        workers=workers,
        nginx_port=free_port(),
        nginx_address="127.0.0.1",
        server_names=("localhost",),
    )
    return render_nginx(deployment)


def start_cluster(group: ProcessGroup, workdir: Path, upstream: Upstream) -> Cluster:
    devpid_help()  # a BenchError saying why when devpid cannot start
    redis = start_redis(group, workdir)
    serverdir = workdir / "cluster-serverdir"
    first = free_consecutive_ports(2)  # gen-config's workers listen on consecutive ports
    servers = [
        start_devpid(
            group,
            f"devpid-cluster-{n}",
            serverdir,
            upstream,
            ["--redis", redis],
            port=first + n - 1,
        )
        for n in (1, 2)
    ]
    one = start_nginx(group, workdir, "nginx-1", devpid_front(serverdir, first, 1))
    two = start_nginx(group, workdir, "nginx-2", devpid_front(serverdir, first, 2))
    static_conf = NGINX_STATIC.format(port=free_port(), files=serverdir / "+files")
    static = start_nginx(group, workdir, "nginx-static", static_conf)
    port = free_port()
    on_one_port = [
        start_devpid(
            group,
            f"devpid-port-{n}",
            serverdir,
            upstream,
            ["--redis", redis],
            shared_port=port,
        )
        for n in (1, 2)
    ]
    a, b = (Mirror(s) for s in servers)
    return Cluster(
        processes=(a, b),
        one=Mirror(one),
        two=Mirror(two),
        static=static,
        shared_port=Mirror(on_one_port[0]),
        shared_port_pids=(on_one_port[0].child.pid, on_one_port[1].child.pid),
    )


def versions() -> dict[str, str]:
    found = {}
    for name, argv in {"nginx": [NGINX, "-v"], "redis": ["redis-server", "--version"]}.items():
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            found[name] = (result.stdout + result.stderr).strip()
        except OSError as exc:
            found[name] = str(exc)
    return found


# --- the measurements -----------------------------------------------------------------------


def measure_cluster(bench: Bench, group: ProcessGroup, files: ClusterFiles) -> None:
    """Start the cluster on the rate-limited upstream, then measure pages and cold GETs."""
    bench.results.meta["cluster"] = {
        "nginx_workers": NGINX_WORKERS,
        "cpus": os.cpu_count(),
        **versions(),
    }
    try:
        cluster = start_cluster(group, bench.workdir, bench.slow_upstream)
    except BenchError as exc:
        bench.results.problems.append(f"cluster not measured: {exc}")
        return
    cached_page(bench, cluster, files.page_project)
    cold_herd(bench, cluster, files)
    cached_file_via_nginx(bench, cluster, files.one)


def cached_page(bench: Bench, cluster: Cluster, project: str) -> None:
    connections = bench.settings.cluster_connections
    for label, mirror in {**cluster.fronts, "process 2": cluster.processes[1]}.items():
        # the first GET fills the shared cache; later ones reach both processes
        warm_page(bench.results, f"cluster {label}", mirror.page_url(project), project, 10)
    rows = bench.results
    rps = rows.row("cluster_page_rps", f"cached page, {connections} conn", "req/s", True, TABLE)
    p99 = rows.row("cluster_page_p99", f"cached page p99, {connections} conn", "ms", False, TABLE)
    cpu = rows.row("cluster_devpid_cpu", "devpid CPU during the load", "% core", None, TABLE)
    per_core = rows.row("cluster_rps_per_core", "req/s per devpid core", "req/s", True, TABLE)
    machine = rows.row("cluster_machine_cpu", "machine CPU busy", "%", None, TABLE)
    details: dict[str, Any] = {}
    bench.results.details["cluster_page"] = details
    nginx_pids = [m.server.child.pid for m in (cluster.one, cluster.two)]

    def run(column: str) -> float:
        pids = {f"devpid-{n}": [pid] for n, pid in enumerate(cluster.devpid_pids(column), 1)}
        pids["nginx"] = [p for n in nginx_pids for p in children(n)]
        with CpuMeter(pids) as meter:
            load = bench.load(cluster.fronts[column].page_url(project), connections, PIP_ACCEPT)
        details[column] = {
            "load": attrs.asdict(load),
            "cpu_percent": meter.percent,
            "busiest_others": meter.busiest,
        }
        note_page_errors(bench.results, f"cluster {column}", load)
        if meter.percent["others"] > OTHERS_LIMIT:
            bench.results.problems.append(
                f"cluster {column}: other processes used {meter.percent['others']:.0f}% of a core "
                "during the load: its req/s are low and the 2/1 ratio unreliable; busiest: "
                + ("; ".join(f"{cmd} ({share:.0f}%)" for cmd, share in meter.busiest) or "?")
            )
        devpid_cpu = meter.percent["devpid-1"] + meter.percent["devpid-2"]
        p99.values[column] = load.p99_ms
        cpu.values[column] = devpid_cpu
        if devpid_cpu:
            per_core.values[column] = load.requests_per_second * 100 / devpid_cpu
        machine.values[column] = meter.percent["machine"]
        return load.requests_per_second

    each(rps, list(cluster.fronts), run)
    tool = next(iter(details.values()))["load"]["tool"] if details else "?"
    rps.note = (
        f"{tool}, {bench.settings.load_seconds:.0f}s, {project}; goal 2/1 >= 1.7x; "
        "2 port: reuseport, no nginx"
    )
    workers = f"{NGINX_WORKERS} worker" + ("s" if NGINX_WORKERS > 1 else "")
    p99.note = f"nginx: {workers}, keep-alive to the processes"
    cpu.note = "sum over the processes, 100 = one core busy"
    per_core.note = "2/1 near 1: the processes scale with the CPU they get"
    shares = {
        what: "/".join(f"{d['cpu_percent'][key]:.0f}" for d in details.values())
        for what, key in (("nginx", "nginx"), ("wrk", "bench"), ("others", "others"))
    }
    machine.note = f"of {os.cpu_count()} CPUs; % of a core, {'/'.join(details)}: " + ", ".join(
        f"{what} {share}" for what, share in shares.items()
    )


def cold_herd(bench: Bench, cluster: Cluster, files: ClusterFiles) -> None:
    clients = bench.settings.cluster_clients
    row = bench.results.row(
        "cluster_herd_gets", f"upstream GETs, {clients} concurrent cold", "GETs", False, TABLE
    )
    details: dict[str, Any] = {}
    bench.results.details["cluster_herd"] = details
    cases = {
        "1 proc": (files.one, cluster.processes[:1]),
        "2 procs": (files.two, cluster.processes),
    }

    def run(column: str) -> float:
        blob, mirrors = cases[column]
        urls = [m.file_url(blob.project, blob.filename) for m in mirrors]
        who = f"cluster {column}"
        gets, details[column] = concurrent_cold(bench, who, blob, urls, clients)
        for url in urls:  # each process now serves the whole file, hash and all
            check(bench.results, f"cluster {column} {url}", fetch(url, 120, want_hash=True), blob)
        return float(gets)

    each(row, list(cases), run)
    size = files.two.size / 2**20
    row.note = (
        f"{size:.0f} MiB via the rate-limited upstream; 2 procs: half the clients each; goal 1"
    )


def cached_file_via_nginx(bench: Bench, cluster: Cluster, blob: Blob) -> None:
    """A cached file's MB/s from devpid, through gen-config's nginx file, and from nginx alone.

    Through the generated file nginx finds the file under ``+files/`` (``try_files``) and
    sends it itself; "nginx static" is a bare ``root`` over the same directory.
    """
    connections = bench.settings.file_connections
    row = bench.results.row(
        "front_file_mbps",
        f"cached {blob.size / 2**20:.0f} MiB file, {connections} conn",
        "MB/s",
        True,
        FRONT_TABLE,
    )
    details: dict[str, Any] = {}
    bench.results.details["front_file"] = details
    path = cluster.one.file_url(blob.project, blob.filename).split("/", 3)[3]
    urls = {
        "devpid": cluster.processes[0].server.url + path,
        "via nginx": cluster.one.server.url + path,
        "nginx static": cluster.static.url + path,
    }

    def run(column: str) -> float:
        check(bench.results, f"front {column}", fetch(urls[column], 120, want_hash=True), blob)
        load = bench.load(urls[column], connections, None)
        details[column] = attrs.asdict(load)
        if load.errors:
            bench.results.problems.append(f"front {column}: {load.errors} errors")
        if load.bytes == 0:
            raise RuntimeError("no byte received")
        return load.megabytes_per_second

    each(row, list(urls), run)
    tool = details[next(iter(details))]["tool"] if details else "?"
    row.note = f"{tool}, {bench.settings.load_seconds:.0f}s; goal via nginx/static >= 0.95x"
