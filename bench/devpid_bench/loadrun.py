"""load.py's runs: the connection load (with and without slowloris) and the soak.

``Harness`` holds what every run needs (devpid, the upstream, wrk, the sampler of
devpid's RSS and descriptors, the verifier) and measures around each run: CPU,
run-queue waits, listen-queue overflows, and devpid's own request times from its
access log. ``connection_load`` and ``soak`` return plain dicts (saved as JSON);
``loadreport`` turns them into rows and goal lines.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from devpid_bench import paced, procinfo, procs, repository
from devpid_bench.accesslog import LogWindow
from devpid_bench.cpu import OTHERS_LIMIT, CpuMeter, schedstat
from devpid_bench.paced import PacedResult, Target, WrkRun
from devpid_bench.procinfo import ProcessSampler, Sample, kib_to_mb
from devpid_bench.session import say
from devpid_bench.slowloris import SlowLoris
from devpid_bench.soak import CachedFile, ColdFetcher, Verifier

MB = 1e6

P99_GOAL_MS = 100.0

#: devpid keeps up to this many idle connections to the upstream (tap.py's pool).
UPSTREAM_POOL = 16

PAGE_SHARE, FILE_SHARE, COLD_SHARE = 0.80, 0.15, 0.05

COLD_PREFIX = "load-cold"


@attrs.frozen
class Settings:
    quick: bool
    connections: int  # keep-alive connections of the connection-load runs
    slowloris: int
    rate: float  # req/s offered by all the connections together in the paced runs
    load_seconds: float  # each paced run
    unpaced_seconds: float  # each unpaced run
    soak_seconds: float
    soak_rate: float  # fetches/s in the soak: pages + files + cold fetches
    soak_connections: int  # wrk's keep-alive connections in the soak
    cold_size: int  # bytes of each cold file
    upstream_rate: int  # bytes/s of each upstream file body during the soak
    upstream_delay: float  # seconds the upstream waits before each answer during the soak
    sample_interval: float
    warmup: float  # seconds between opening the connections and the first request
    drip_interval: float  # seconds between two bytes of a dripping slowloris socket

    @property
    def page_connections(self) -> int:
        """Connections for pages in the connection load; the rest ask for files."""
        return round(self.connections * PAGE_SHARE / (PAGE_SHARE + FILE_SHARE))

    @property
    def cold_rate(self) -> float:
        return self.soak_rate * COLD_SHARE

    @property
    def cold_projects(self) -> int:
        return int(self.cold_rate * self.soak_seconds * 1.1) + 20


@attrs.frozen
class Warm:
    """What was cached before the load: wrk's targets and the verifier's checks."""

    page_targets: list[Target]
    file_targets: list[Target]
    page_urls: list[str]
    files: list[CachedFile]


@attrs.frozen
class Phase:
    """What one load run measured."""

    name: str
    wrk: dict[str, PacedResult]
    cpu: dict[str, float]
    others: list[str]  # the busiest processes outside the run, when others used a lot
    server: dict[str, Any]  # devpid's access-log times by kind (accesslog.LogWindow.read)
    listen_overflows: int | None
    samples: list[Sample]
    verifier_checks: int
    verifier_failures: list[str]
    seconds: float

    @property
    def errors(self) -> int:
        return sum(r.error_count for r in self.wrk.values()) + len(self.verifier_failures)

    def peak(self, what: str) -> float | None:
        values = [
            v
            for v in (s.fds if what == "fds" else kib_to_mb(s.rss_kib) for s in self.samples)
            if v is not None
        ]
        return max(values) if values else None


@attrs.define
class Meters:
    """What ``Harness.phase`` measures around a run."""

    cpu: CpuMeter
    listen_overflows: int | None = None  # machine-wide, see procinfo.listen_overflows


@attrs.define
class Harness:
    settings: Settings
    group: procs.ProcessGroup
    wrk: str
    workdir: Path
    server: procs.Server
    upstream: procs.Upstream
    sampler: ProcessSampler
    verifier: Verifier
    idle_timeout: float | None  # devpid's --idle-timeout default, when it has one

    @property
    def pid(self) -> int:
        return self.server.child.pid

    def access_log(self) -> LogWindow:
        assert self.server.child.log_path is not None
        cold = (COLD_PREFIX, COLD_PREFIX.replace("-", "_"))  # pages, files
        return LogWindow(self.server.child.log_path, cold).open()

    @contextmanager
    def phase(self, name: str) -> Iterator[Meters]:
        """Label the samples and checks of a run with ``name``; yield its CPU meter.

        The meter's ``percent`` also gets devpid's run-queue waits: ``devpid_wait``,
        the time devpid was runnable but had no CPU, in % of the run, and
        ``devpid_wait_ms``, the mean of that wait per time it got a CPU.
        """
        self.sampler.phase = self.verifier.phase = name
        self.sampler.sample()
        cpu = CpuMeter(pids={"devpid": [self.pid], "upstream": [self.upstream.child.pid]})
        before = schedstat(self.pid)
        overflows = procinfo.listen_overflows()
        meters = Meters(cpu)
        started = time.monotonic()
        with cpu:
            yield meters
        after = schedstat(self.pid)
        overflows_after = procinfo.listen_overflows()
        if overflows is not None and overflows_after is not None:
            meters.listen_overflows = overflows_after - overflows
        if before is not None and after is not None:
            waited = after - before
            elapsed = time.monotonic() - started
            cpu.percent["devpid_wait"] = 100 * waited.wait_ns / 1e9 / elapsed
            cpu.percent["devpid_wait_ms"] = waited.wait_ns / 1e6 / max(1, waited.slices)
        self.sampler.sample()
        self.sampler.phase = self.verifier.phase = "between"

    def wrk_runs(
        self,
        tag: str,
        warm: Warm,
        connections: tuple[int, int],
        per_connection_rate: float | None,
        warmup: float,
    ) -> list[WrkRun]:
        """A wrk run for pages and one for files, paced at ``per_connection_rate`` (or not)."""
        delay = 1000.0 / per_connection_rate if per_connection_rate else None
        runs = []
        for kind, targets, count, seed in (
            ("pages", warm.page_targets, connections[0], 1),
            ("files", warm.file_targets, connections[1], 2),
        ):
            script = paced.write_script(
                self.workdir / f"{tag}-{kind}.lua", targets, delay, seed, int(warmup * 1000), count
            )
            runs.append(WrkRun(f"wrk-{tag}-{kind}", script, count, bool(delay), warmup))
        return runs

    def load(self, name: str, warm: Warm, paced_run: bool, seconds: float) -> Phase:
        s = self.settings
        connections = (s.page_connections, s.connections - s.page_connections)
        rate = s.rate / s.connections if paced_run else None
        runs = self.wrk_runs(name, warm, connections, rate, s.warmup)
        started = time.monotonic()
        window = self.access_log()
        with self.phase(name) as meters:
            got = paced.run_together(self.group, self.wrk, self.server.url, runs, seconds)
        cpu = meters.cpu
        checks, failures = self.verifier.tally(name)
        phase = Phase(
            name=name,
            wrk={r.name.rsplit("-", 1)[1]: got[r.name] for r in runs},
            cpu=dict(cpu.percent),
            others=list(cpu_busiest(cpu)),
            server=window.read(),
            listen_overflows=meters.listen_overflows,
            samples=self.sampler.samples_in(name),
            verifier_checks=checks,
            verifier_failures=failures,
            seconds=time.monotonic() - started,
        )
        pages, files = phase.wrk["pages"], phase.wrk["files"]
        say(
            f"  {name}: {pages.requests_per_second + files.requests_per_second:,.0f} req/s, "
            f"page p99 {pages.p99_ms:.1f} ms, file p99 {files.p99_ms:.1f} ms, "
            f"{phase.errors} errors, devpid {phase.cpu.get('devpid', 0):.0f}% of a core, "
            f"peak {phase.peak('fds'):.0f} fds"
        )
        return phase

    def wait_for_fds(self, at_most: int, timeout: float) -> int | None:
        """Poll devpid's open descriptors until they are ``at_most`` or fewer."""
        deadline = time.monotonic() + timeout
        count = procinfo.fd_count(self.pid)
        while count is not None and count > at_most and time.monotonic() < deadline:
            time.sleep(0.5)
            count = procinfo.fd_count(self.pid)
        return count


def cpu_busiest(cpu: CpuMeter) -> list[str]:
    """The busiest other processes, when together they used more than OTHERS_LIMIT of a core.

    (``others`` itself also holds the kernel's work for the loopback traffic, which
    no process is charged with: at thousands of req/s, tens of % of a core.)
    """
    if sum(share for _, share in cpu.busiest) <= OTHERS_LIMIT:
        return []
    return [f"{share:.0f}% {command}" for command, share in cpu.busiest]


def wait_for_idle_timeout(h: Harness, loris: SlowLoris, opened: float) -> bool:
    """Keep the slowloris sockets until devpid's idle timeout (+15 s) has passed, if it has one.

    Not with --quick (the default timeout is longer than the whole smoke run), nor
    when the timeout is over 2 minutes: the run's length must stay bounded.
    """
    if h.idle_timeout is None or h.settings.quick or h.idle_timeout > 120:
        return False
    until = opened + h.idle_timeout + 15
    say(f"  waiting up to {max(0.0, until - time.monotonic()):.0f} s for devpid's idle timeout")
    while time.monotonic() < until and loris.still_open() > 0:
        time.sleep(1.0)
    summary = loris.summary()
    say(
        f"  slowloris: {summary['closed_by_server']} of {summary['opened']} closed by devpid "
        f"after {summary['closed_after_s_min']}-{summary['closed_after_s_max']} s"
    )
    return True


def connection_load(h: Harness, warm: Warm) -> tuple[dict[str, Phase], dict[str, Any]]:
    """The four runs; their ``Phase`` by name, and everything else seen (for the JSON)."""
    s = h.settings
    details: dict[str, Any] = {}
    phases: dict[str, Phase] = {}
    idle_fds = procinfo.fd_count(h.pid) or 0
    details["idle_fds_before"] = idle_fds
    say(
        f"connection load: {s.connections} keep-alive connections "
        f"({s.page_connections} pages, {s.connections - s.page_connections} files)"
    )
    phases["paced"] = h.load("paced", warm, True, s.load_seconds)
    phases["unpaced"] = h.load("unpaced", warm, False, s.unpaced_seconds)
    h.wait_for_fds(idle_fds + UPSTREAM_POOL, 15)

    first_page = urlsplit(warm.page_urls[0]).path
    port = urlsplit(h.server.url).port or 80
    loris = SlowLoris("127.0.0.1", port, s.slowloris, first_page, s.drip_interval)
    try:
        before = procinfo.fd_count(h.pid) or 0
        say(f"opening {s.slowloris} slowloris connections")
        opened = time.monotonic()
        loris.open()
        say(f"  opened in {time.monotonic() - opened:.1f} s")
        time.sleep(2.0)
        held = (procinfo.fd_count(h.pid) or 0) - before
        details["slowloris_fds_held_by_devpid"] = held
        say(f"  devpid holds {held} more descriptors; {loris.still_open()} still open")
        phases["paced+slowloris"] = h.load("paced+slowloris", warm, True, s.load_seconds)
        phases["unpaced+slowloris"] = h.load("unpaced+slowloris", warm, False, s.unpaced_seconds)
        details["slowloris_during_load"] = loris.summary()
        details["idle_timeout_waited"] = wait_for_idle_timeout(h, loris, opened)
        details["slowloris"] = loris.summary()
        say(f"  slowloris: {details['slowloris']}")
    finally:
        loris.close()
    details["idle_fds_after"] = h.wait_for_fds(idle_fds + UPSTREAM_POOL, 15)
    details["phases"] = {name: attrs.asdict(phase) for name, phase in phases.items()}
    return phases, details


def soak(h: Harness, warm: Warm, cold: Sequence[repository.Blob]) -> dict[str, Any]:
    """The mixed run on a slowed upstream; what it saw, for ``loadreport.soak_rows``."""
    s = h.settings
    details: dict[str, Any] = {}
    modes = h.upstream.process.control(rate=s.upstream_rate, delay=s.upstream_delay)
    if modes.get("rate") != s.upstream_rate:
        raise procs.BenchError(f"the upstream did not take the slow modes: {modes}")
    details["upstream_modes"] = {"rate": s.upstream_rate, "delay": s.upstream_delay}
    warm_share = PAGE_SHARE + FILE_SHARE
    page_connections = round(s.soak_connections * PAGE_SHARE / warm_share)
    file_connections = max(1, s.soak_connections - page_connections)
    per_connection = s.soak_rate * warm_share / s.soak_connections
    runs = h.wrk_runs("soak", warm, (page_connections, file_connections), per_connection, 0.0)
    say(
        f"soak: {s.soak_seconds:g} s, {s.soak_rate:g} fetches/s: pages {page_connections} conn, "
        f"files {file_connections} conn ({per_connection:.2f} req/s each), "
        f"cold {s.cold_rate:g}/s ({s.cold_size // 1024} KiB files at "
        f"{s.upstream_rate / 1000:g} kB/s, +{s.upstream_delay * 1000:g} ms per answer)"
    )
    start = h.sampler.sample()
    start_kinds = procinfo.fd_kinds(h.pid)
    cold_fetcher = ColdFetcher(h.server.simple_url(), cold, s.cold_rate)
    window = h.access_log()
    with h.phase("soak") as meters:
        cold_fetcher.start()
        try:
            got = paced.run_together(h.group, h.wrk, h.server.url, runs, s.soak_seconds)
        finally:
            unfinished = cold_fetcher.stop(wait=90)
    cpu = meters.cpu
    h.sampler.phase = "after"
    time.sleep(5.0)  # let the last connections close
    end = h.sampler.sample()
    end_kinds = procinfo.fd_kinds(h.pid)
    samples = h.sampler.samples_in("soak")
    checks, failures = h.verifier.tally("soak")
    pages, files = got["wrk-soak-pages"], got["wrk-soak-files"]
    cold_summary = cold_fetcher.summary()
    details.update(
        wrk={"pages": attrs.asdict(pages), "files": attrs.asdict(files)},
        cold=cold_summary,
        cold_workers_unfinished=unfinished,
        verifier={"checks": checks, "failures": failures[:20]},
        cpu=dict(cpu.percent),
        others=cpu_busiest(cpu),
        server=window.read(),
        listen_overflows=meters.listen_overflows,
        fd_kinds={"start": start_kinds, "end": end_kinds},
        start=attrs.asdict(start),
        end=attrs.asdict(end),
    )
    rss_values = [v for v in (kib_to_mb(s.rss_kib) for s in samples) if v is not None]
    fd_values = [s.fds for s in samples if s.fds is not None]
    details["rss_second_half_growth_mb"] = second_half_growth(rss_values)
    errors = pages.error_count + files.error_count + cold_summary["errors"] + len(failures)
    details["errors"] = {
        "wrk_pages": pages.errors,
        "wrk_files": files.errors,
        "cold": cold_summary["errors"],
        "verifier": len(failures),
    }

    details.update(
        rss_peak_mb=max(rss_values, default=None),
        fds_peak=max(fd_values, default=None),
        seconds=s.soak_seconds,
    )
    details["error_total"] = errors
    return details


def second_half_growth(values: Sequence[float]) -> float | None:
    """Median of the last 10% of ``values`` minus the median of those at 40-50%."""
    n = len(values)
    if n < 10:
        return None
    late = values[int(n * 0.9) :]
    middle = values[int(n * 0.4) : max(int(n * 0.5), int(n * 0.4) + 1)]
    return statistics.median(late) - statistics.median(middle)
