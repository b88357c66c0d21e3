"""The p99 of a cached project page at 50 connections (issue 17): devpid, devpi-server and nginx.

One local upstream (tests/fixtures/distbuilder's demo projects served by
tests/fixtures/upstream), a ``twistd -n devpid`` logging to a file as deployed
(the access log on), and devpi-server 6 mirroring the same upstream
(bench/devpid_bench/devpi.py: its throwaway venv is made once and reused, and its
creation is not part of the timing; ``--no-root-pypi``, the mirror created
pointing at the loopback upstream). The page is warmed on both with pip's
``Accept``; nginx (``worker_processes 1``) serves devpid's body as a static file,
the floor a Python server is compared against.

Then ``wrk -t2 -c50`` in rounds, the servers in turn (the order alternating), and
the figures from the medians of the rounds:

- devpid's p99 in ms (goal: at most 15), nginx's beside it in the detail;
- devpid's req/s over devpi's (goal: at least 4).

With 50 requests always in flight the mean latency is 50 / req/s, so devpid's
throughput bounds its p99 as much as its pauses do (docs/performance.md).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from devpid_bench import devpi
from devpid_bench.goals import Figure
from devpid_bench.http import PIP_ACCEPT, LoadResult
from devpid_bench.procs import ProcessGroup
from devpid_bench.staticnginx import have_nginx, static_nginx
from devpid_bench.wrk import run_wrk, write_script
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.distbuilder import build_repository
from tests.fixtures.upstream import UpstreamProcess

WRK = "/usr/bin/wrk"
PROJECT = "devpid-demo-lib"
CONNECTIONS = 50
P99_GOAL_MS = 15.0
RATIO_GOAL = 4.0


def _warm(url: str) -> bytes:
    """GET the page a few times (the first fills the cache); its body."""
    body = b""
    for _ in range(5):
        answer = http_get(url, accept=PIP_ACCEPT)
        if answer.status != 200:
            raise RuntimeError(f"{url} answered {answer.status}")
        body = answer.body
    return body


def _start_devpi(workdir: Path, upstream: UpstreamProcess, group: ProcessGroup) -> str:
    """devpi-server's page URL (its venv made first if missing, not timed by the figures)."""
    log: list[str] = []
    bin_dir = devpi.ensure_venv(devpi.DEFAULT_VENV, log)
    server = devpi.start_devpi(group, bin_dir, workdir, {"root/pypi": upstream.simple_url}, log)
    return server.page_url(PROJECT)


def _rounds(
    urls: dict[str, str], script: Path, rounds: int, seconds: int
) -> dict[str, list[LoadResult]]:
    runs: dict[str, list[LoadResult]] = {name: [] for name in urls}
    headers = {"Accept": PIP_ACCEPT}
    for url in urls.values():  # one short run each first: connections and caches settle
        run_wrk(WRK, script, url, CONNECTIONS, 1, headers)
    for round_ in range(rounds):
        order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
        for name in order:
            runs[name].append(run_wrk(WRK, script, urls[name], CONNECTIONS, seconds, headers))
    return runs


def _shown(loads: list[LoadResult]) -> str:
    return ", ".join(f"{run.requests_per_second:,.0f} req/s p99 {run.p99_ms:.1f}" for run in loads)


def figures(quick: bool = True) -> list[Figure]:
    rounds, seconds = (3, 4) if quick else (5, 10)
    p99_name = f"cached page p99, {CONNECTIONS} connections, devpid (ms)"
    ratio_name = f"cached page req/s, {CONNECTIONS} connections, devpid / devpi"
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p99-bench-")))
        repo = build_repository(workdir / "upstream")
        upstream = UpstreamProcess.start(repo.root)
        stack.callback(upstream.stop)
        devpid = stack.enter_context(DevpidProcess.start(workdir / "devpid", upstream.simple_url))
        urls = {"devpid": f"{devpid.simple_url}{PROJECT}/"}
        body = _warm(urls["devpid"])
        content_type = http_get(urls["devpid"], accept=PIP_ACCEPT).headers["content-type"]
        static = workdir / "static"
        static.mkdir()
        (static / "page").write_bytes(body)
        served = stack.enter_context(static_nginx(workdir, static, content_type))
        urls["nginx"] = f"{served.url}/page"
        devpi_problem = ""
        group = ProcessGroup(log_dir=workdir)
        stack.callback(group.close)
        try:
            urls["devpi"] = _start_devpi(workdir, upstream, group)
            _warm(urls["devpi"])
        except Exception as exc:  # devpi not installable here: devpid's figure still stands
            devpi_problem = f"devpi-server not measured: {exc}"[:300]
            urls.pop("devpi", None)
        runs = _rounds(urls, write_script(workdir), rounds, seconds)
        p99 = {name: statistics.median(run.p99_ms for run in loads) for name, loads in runs.items()}
        rps = {
            name: statistics.median(load.requests_per_second for load in loads)
            for name, loads in runs.items()
        }
        errors = sum(load.errors for loads in runs.values() for load in loads)
        detail = f"nginx p99 {p99['nginx']:.1f} ms; devpid rounds: {_shown(runs['devpid'])}"
        if errors:
            detail += f"; {errors} wrk errors"
        found = [Figure(p99_name, p99["devpid"], P99_GOAL_MS, False, unit="ms", detail=detail)]
        if "devpi" in runs:
            found.append(
                Figure(
                    ratio_name,
                    rps["devpid"] / rps["devpi"] if rps["devpi"] else None,
                    RATIO_GOAL,
                    True,
                    detail=f"devpid {rps['devpid']:,.0f} req/s, devpi {rps['devpi']:,.0f} "
                    f"req/s (p99 {p99['devpi']:.1f} ms), nginx {rps['nginx']:,.0f} req/s",
                )
            )
        else:
            found.append(Figure(ratio_name, None, RATIO_GOAL, True, detail=devpi_problem))
        return found


def have_tools() -> bool:
    """Whether wrk and nginx are where this bench expects them."""
    return shutil.which(WRK) is not None and have_nginx()
