"""The measurements, each for every server that is running.

A measurement that fails for one server records the error in its row and goes
on; nothing here waits without a timeout.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from devpid_bench import procinfo
from devpid_bench.http import (
    PIP_ACCEPT,
    Fetch,
    LoadResult,
    fetch,
    fetch_all,
    file_urls,
    http_get,
    python_load,
)
from devpid_bench.procs import Server, Upstream
from devpid_bench.report import Results, Row
from devpid_bench.repository import Blob
from devpid_bench.wrk import run_wrk

MB = 1e6


@attrs.frozen
class Mirror:
    """One server's mirror index of one upstream."""

    server: Server
    index: str = "root/pypi"

    @property
    def simple_url(self) -> str:
        return self.server.simple_url(self.index)

    def page_url(self, project: str) -> str:
        return self.server.page_url(project, self.index)

    def file_url(self, project: str, filename: str) -> str:
        """The server's URL for ``filename``, read from its page of ``project``."""
        urls = file_urls(self.page_url(project))
        if filename not in urls:
            raise RuntimeError(f"{filename} not on {self.page_url(project)}: {sorted(urls)}")
        return urls[filename]


@attrs.frozen
class Settings:
    quick: bool
    load_seconds: float
    file_connections: int
    cold_repeats: int
    pip_runs: int
    huge_clients: int
    herd_clients: int
    cluster_clients: int
    cluster_connections: int


@attrs.define
class Bench:
    """Everything the measurements need: settings, servers, files and the load tool."""

    settings: Settings
    results: Results
    fast: dict[str, Mirror]  # server label -> its mirror of the fast upstream
    slow: dict[str, Mirror]  # server label -> its mirror of the rate-limited upstream
    fast_upstream: Upstream
    slow_upstream: Upstream
    wrk: str | None
    wrk_script: Path
    workdir: Path

    def load(self, url: str, connections: int, accept: str | None) -> LoadResult:
        headers = {"Accept": accept} if accept else {}
        if self.wrk:
            return run_wrk(
                self.wrk, self.wrk_script, url, connections, self.settings.load_seconds, headers
            )
        return python_load(url, connections, self.settings.load_seconds, headers)


def each(row: Row, labels: Sequence[str], measure: Callable[[str], float | None]) -> None:
    """Fill ``row`` for each label, recording an exception as that label's error."""
    for label in labels:
        try:
            row.values[label] = measure(label)
        except Exception as exc:  # a failed measurement is a result too
            row.values[label] = None
            row.errors[label] = f"{type(exc).__name__}: {exc}"[:500]


def check(results: Results, what: str, got: Fetch, blob: Blob | None) -> None:
    """Raise when ``got`` failed; note a wrong length or sha256 of ``blob`` as a problem."""
    if got.error or got.status != 200:
        raise RuntimeError(f"{what}: status {got.status}, {got.error or 'no error text'}")
    if blob is not None and got.size != blob.size:
        results.problems.append(f"{what}: got {got.size} bytes, expected {blob.size}")
    if blob is not None and got.sha256 is not None and got.sha256 != blob.sha256:
        results.problems.append(f"{what}: sha256 {got.sha256} differs from the upstream file")


def failed_fetches(
    results: Results, who: str, what: str, fetches: Sequence[Fetch], blob: Blob
) -> list[Fetch]:
    """The fetches of ``blob`` that failed or came short, noted as one problem of ``who``."""
    bad = [f for f in fetches if f.error or f.status != 200 or f.size != blob.size]
    if bad:
        results.problems.append(
            f"{who}: {len(bad)} of {len(fetches)} {what} failed or were short "
            f"(first: status {bad[0].status}, {bad[0].size} bytes, {bad[0].error})"
        )
    return bad


def note_page_errors(results: Results, who: str, load: LoadResult, where: str = "") -> None:
    """Note the errors of a page load run as a problem of ``who``; raise when none succeeded."""
    if load.errors:
        results.problems.append(
            f"{who}: {load.errors} errors in {load.requests} page requests{where}"
        )
    if load.requests == 0:
        raise RuntimeError("no request completed")


def concurrent_cold(
    bench: Bench, who: str, blob: Blob, urls: Sequence[str], clients: int
) -> tuple[int, dict[str, Any]]:
    """``clients`` GET ``blob`` at the same moment (in turn from ``urls``) through the
    rate-limited upstream: how many GETs of it the upstream served, and what they saw."""
    upstream = bench.slow_upstream
    path = f"/files/{blob.filename}"
    before = upstream.process.stats()
    started = time.monotonic()
    fetches = fetch_all([urls[i % len(urls)] for i in range(clients)], timeout=300)
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # let a server's own background download show in the counts
    after = upstream.process.stats()
    gets, ranged = (
        after.get(k, {}).get(path, 0) - before.get(k, {}).get(path, 0) for k in ("gets", "ranges")
    )
    bad = failed_fetches(bench.results, who, "concurrent cold GETs", fetches, blob)
    return gets, {
        "seconds": elapsed,
        "ok": clients - len(bad),
        "ranged_gets": ranged,
        "failures": [attrs.asdict(f) for f in bad][:5],
    }


def warm_page(results: Results, who: str, url: str, project: str, times: int) -> None:
    """GET a page ``times`` times (the first fills the cache); note the first failure."""
    for _ in range(times):
        try:
            status, _, _ = http_get(url, 60, {"Accept": PIP_ACCEPT})
        except OSError as exc:
            results.problems.append(f"{who}: warming {project} page: {exc}")
            return
        if status != 200:
            results.problems.append(f"{who}: page {project} answered {status}")
            return


# --- cached project page ------------------------------------------------------------


def cached_page(bench: Bench, project: str) -> None:
    labels = list(bench.fast)
    for label, mirror in bench.fast.items():  # the first GET fills the cache, the rest settle it
        warm_page(bench.results, label, mirror.page_url(project), project, 5)
    details: dict[str, Any] = {}
    bench.results.details["cached_page"] = details
    for connections in (1, 50):
        rps = bench.results.row(
            f"page_rps_c{connections}", f"cached page, {connections} conn", "req/s", True
        )
        p99 = bench.results.row(
            f"page_p99_c{connections}", f"cached page p99, {connections} conn", "ms", False
        )
        loads: dict[str, LoadResult] = {}

        def run(label: str, c: int = connections, loads: dict[str, LoadResult] = loads) -> float:
            load = bench.load(bench.fast[label].page_url(project), c, PIP_ACCEPT)
            loads[label] = load
            note_page_errors(bench.results, label, load, f" at {c} conn")
            return load.requests_per_second

        each(rps, labels, run)
        for label in labels:
            if label in loads:
                p99.values[label] = loads[label].p99_ms
            else:
                p99.errors[label] = rps.errors.get(label, "not measured")
        details[f"c{connections}"] = {k: attrs.asdict(v) for k, v in loads.items()}
        tool = next(iter(loads.values())).tool if loads else "?"
        rps.note = p99.note = f"{tool}, {bench.settings.load_seconds:.0f}s, {project}"


# --- cached big file ----------------------------------------------------------------


def cached_file(bench: Bench, blob: Blob) -> None:
    connections = bench.settings.file_connections
    row = bench.results.row(
        "file_mbps", f"cached {blob.size / 2**20:.0f} MiB file, {connections} conn", "MB/s", True
    )
    details: dict[str, Any] = {}
    bench.results.details["cached_file"] = details

    def url_for(label: str) -> str:
        if label == "upstream":
            return bench.fast_upstream.file_url(blob.filename)
        url = bench.fast[label].file_url(blob.project, blob.filename)
        check(
            bench.results,
            f"{label} warming {blob.filename}",
            fetch(url, timeout=120, want_hash=True),
            blob,
        )
        return url

    def run(label: str) -> float:
        load = bench.load(url_for(label), connections, None)
        details[label] = attrs.asdict(load)
        if load.errors:
            bench.results.problems.append(f"{label}: {load.errors} errors fetching {blob.filename}")
        if load.bytes == 0:
            raise RuntimeError("no byte received")
        return load.megabytes_per_second

    each(row, [*bench.fast, "upstream"], run)
    tool = details[next(iter(details))]["tool"] if details else "?"
    row.note = f"{tool}, {bench.settings.load_seconds:.0f}s; upstream = the fixture serving it"


# --- cold file through the rate-limited upstream -------------------------------------


def cold_file(bench: Bench, blobs: Sequence[Blob], rate: int) -> None:
    size = blobs[0].size / 2**20
    ttfb = bench.results.row(
        "cold_ttfb", f"cold {size:.0f} MiB TTFB @{rate / MB:.0f} MB/s", "ms", False
    )
    total = bench.results.row(
        "cold_total", f"cold {size:.0f} MiB total @{rate / MB:.0f} MB/s", "s", False
    )
    seen: dict[str, list[dict[str, Any]]] = {}
    bench.results.details["cold_file"] = seen

    def run(label: str) -> float:
        runs = seen.setdefault(label, [])
        for blob in blobs:
            if label == "upstream":
                url = bench.slow_upstream.file_url(blob.filename)
            else:
                url = bench.slow[label].file_url(blob.project, blob.filename)
            got = fetch(url, timeout=120, want_hash=True)
            check(bench.results, f"{label} cold {blob.filename}", got, blob)
            runs.append(attrs.asdict(got))
        return float(statistics.median(r["ttfb"] for r in runs)) * 1000

    each(ttfb, [*bench.slow, "upstream"], run)
    for label, runs in seen.items():
        if label not in ttfb.errors:
            total.values[label] = statistics.median(r["total"] for r in runs)
        else:
            total.errors[label] = ttfb.errors[label]
    repeats = f"median of {len(blobs)}" if len(blobs) > 1 else "1 run"
    ttfb.note = f"first body byte; {repeats}"
    if ttfb.values.get("devpid") is not None and ttfb.values.get("upstream") is not None:
        diff = ttfb.values["devpid"] - ttfb.values["upstream"]  # type: ignore[operator]
        ttfb.note += f"; devpid - upstream = {diff:+.1f} ms"
    total.note = repeats


# --- thundering herd ------------------------------------------------------------------


def herd(bench: Bench, blob: Blob) -> None:
    clients = bench.settings.herd_clients
    row = bench.results.row("herd_gets", f"upstream GETs, {clients} concurrent cold", "GETs", False)
    details: dict[str, Any] = {}
    bench.results.details["herd"] = details

    def run(label: str) -> float:
        url = bench.slow[label].file_url(blob.project, blob.filename)
        gets, details[label] = concurrent_cold(bench, label, blob, [url], clients)
        return float(gets)

    each(row, list(bench.slow), run)
    row.note = f"{blob.size / 2**20:.0f} MiB file via the rate-limited upstream; 1 is ideal"


# --- pip install ------------------------------------------------------------------------


def pip_install(bench: Bench, requirements: Sequence[str]) -> None:
    row = bench.results.row("pip_warm", f"warm pip install {' '.join(requirements)}", "s", False)
    details: dict[str, Any] = {}
    bench.results.details["pip_install"] = details
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("PIP_") and "PROXY" not in k.upper()
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"

    def once(index_url: str) -> float:
        target = Path(tempfile.mkdtemp(prefix="pip-target-", dir=bench.workdir))
        argv = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--quiet",
            "--index-url",
            index_url,
            "--target",
            str(target),
            *requirements,
        ]
        started = time.perf_counter()
        try:
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        finally:
            elapsed = time.perf_counter() - started
            shutil.rmtree(target, ignore_errors=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip exited {result.returncode}: {result.stderr[-800:]}")
        return elapsed

    def run(label: str) -> float:
        if label == "upstream":
            index_url = bench.fast_upstream.simple_url
        else:
            index_url = bench.fast[label].simple_url
        warm = once(index_url)
        times = [once(index_url) for _ in range(bench.settings.pip_runs)]
        details[label] = {"index_url": index_url, "warm_up": warm, "runs": times}
        return statistics.median(times)

    each(row, [*bench.fast, "upstream"], run)
    row.note = f"median of {bench.settings.pip_runs} after 1 warm-up; --target, --no-cache-dir"


# --- peak memory while streaming a huge file ---------------------------------------------


def peak_rss(bench: Bench, blob: Blob) -> None:
    clients = bench.settings.huge_clients
    size = f"{blob.size / 2**30:.0f} GiB" if blob.size >= 2**30 else f"{blob.size / 2**20:.0f} MiB"
    row = bench.results.row("peak_rss", f"peak RSS, cold {size} to {clients} clients", "MB", False)
    details: dict[str, Any] = {}
    bench.results.details["peak_rss"] = details
    timeout = 120 + clients * blob.size / (20 * MB)

    def run(label: str) -> float:
        mirror = bench.fast[label]
        pid = mirror.server.child.pid
        url = mirror.file_url(blob.project, blob.filename)
        baseline = procinfo.status_kib(pid, "VmRSS") or 0
        reset = procinfo.reset_peak(pid)
        before = bench.fast_upstream.gets(blob.filename)
        started = time.monotonic()
        with procinfo.ProcessSampler(pid, interval=0.05) as sampler:
            fetches = fetch_all([url] * clients, timeout=timeout)
        elapsed = time.monotonic() - started
        hwm = procinfo.status_kib(pid, "VmHWM") if reset else None
        sampled_kib = sampler.peak_rss_kib()
        peak_kib = max(sampled_kib, hwm or 0)
        bad = failed_fetches(bench.results, label, f"clients of {blob.filename}", fetches, blob)
        details[label] = {
            "baseline_rss_mb": baseline * 1024 / MB,
            "sampled_peak_mb": sampled_kib * 1024 / MB,
            "vmhwm_mb": None if hwm is None else hwm * 1024 / MB,
            "seconds": elapsed,
            "aggregate_mb_per_s": sum(f.size for f in fetches) / elapsed / MB,
            "upstream_gets": bench.fast_upstream.gets(blob.filename) - before,
            "ok": clients - len(bad),
        }
        return peak_kib * 1024 / MB

    each(row, list(bench.fast), run)
    row.note = "VmHWM reset before; " + ", ".join(
        f"{k} base {v['baseline_rss_mb']:.0f} MB, {v['aggregate_mb_per_s']:.0f} MB/s out"
        for k, v in details.items()
    )
