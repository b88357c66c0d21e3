"""The upstream's whole project list (issue 17): 700,000 names fetched, served, refreshed, searched.

A local upstream (``tests/fixtures/upstream.py``) serves a synthetic list of
700,000 names (``tests/fixtures/namelists.py``, HTML and PEP 691 JSON);
``twistd -n devpid`` mirrors it with a short ``--cache-expiry``. Measured:

- time until searchable: from a cold start, searches for a listed name are
  asked until one finds it (the first starts the list's fetch, its parsing in a
  child process, and the name index's build in slices on the reactor);
- warm root page: the median of repeated GETs of ``/root/pypi/+simple/`` as
  pip asks (``Accept-Encoding: gzip``), HTML and JSON, after the first;
- worst probe latency during a refresh: once the list expired, the upstream
  serves a longer list and the root page is asked for (fetch, parse, store,
  render), then a search (the name index rebuilt); meanwhile a probe GETs a
  small page every 5 ms on its own connection: its slowest answer says how
  long the reactor was kept from serving;
- peak RSS (``VmHWM``) of the worker at the end.

Every process started is stopped at the end. Timings on a shared machine are
noisy; the probe's worst case above all.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from devpid_bench.goals import Figure
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.namelists import normalise, synthetic_names, write_name_list
from tests.fixtures.upstream import UpstreamProcess

NAMES = 700_000
MORE = 1_000
RSS_GOAL_MB = 150.0
WARM_GOAL_MS = 25.0
PROBE_GOAL_MS = 20.0
JSON_PAGE = "application/vnd.pypi.simple.v1+json"
#: The list's freshness in the run: long enough for the warm GETs, short enough to wait for.
EXPIRY = 8.0
PROBE_PATH = "/+api"


def _connection(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def _get(
    connection: http.client.HTTPConnection, path: str, **headers: str
) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    return response.status, body, (time.perf_counter() - started) * 1000.0


class Probe(threading.Thread):
    """GETs ``path`` every ``interval`` seconds on its own connection; keeps each latency."""

    def __init__(self, url: str, path: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.connection = _connection(url)
        self.path = path
        self.interval = interval
        self.latencies: list[float] = []
        self.stopping = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                status, _, ms = _get(self.connection, self.path)
                if status == 200:
                    self.latencies.append(ms)
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                self.connection.close()
                self.connection = _connection(self.url)
            time.sleep(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.connection.close()


def _search_finds(devpid: DevpidProcess, name: str) -> bool:
    answer = devpid.get(f"/+search?query={name}", Accept="application/json")
    if answer.status != 200:
        return False
    found = json.loads(answer.body)
    hits = found.get("result", found).get("hits", [])
    return any(hit.get("project") == name for hit in hits)


def _warm_ms(connection: http.client.HTTPConnection, rounds: int, **headers: str) -> list[float]:
    times = []
    for _ in range(rounds):
        status, _, ms = _get(connection, "/root/pypi/+simple/", **headers)
        assert status == 200, status
        times.append(ms)
    return times


def _memory(devpid: DevpidProcess) -> str:
    """VmRSS/VmHWM now, in MB."""
    status = Path(f"/proc/{devpid.process.pid}/status").read_text()
    values = dict(line.split(":", 1) for line in status.splitlines() if line.startswith("Vm"))
    rss, hwm = (int(values[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    return f"{rss:.0f}/{hwm:.0f}"


def measure(quick: bool = True, count: int = NAMES) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="devpid-names-bench-"))
    upstream = devpid = None
    try:
        names = synthetic_names(count)
        write_name_list(work / "upstream", names)
        upstream = UpstreamProcess.start(work / "upstream")
        devpid = DevpidProcess.start(
            work / "serverdir",
            upstream.simple_url,
            "--cache-expiry",
            str(EXPIRY),
            "--changelog-interval",
            "0",
        )
        wanted = normalise(names[count // 2])
        memory = {"started": _memory(devpid)}
        started = time.monotonic()
        while not _search_finds(devpid, wanted):
            if time.monotonic() - started > 120:
                raise TimeoutError("the list never became searchable")
            time.sleep(0.05)
        searchable_s = time.monotonic() - started
        memory["searchable"] = _memory(devpid)

        connection = _connection(devpid.url)
        gzip = {"Accept-Encoding": "gzip"}
        rounds = 10 if quick else 40
        _warm_ms(connection, 1, **gzip)  # renders the HTML (the JSON came with the list)
        _warm_ms(connection, 1, Accept=JSON_PAGE, **gzip)
        html_ms = _warm_ms(connection, rounds, **gzip)
        json_ms = _warm_ms(connection, rounds, Accept=JSON_PAGE, **gzip)
        plain_ms = _warm_ms(connection, 3)
        memory["warm"] = _memory(devpid)

        # the same probe with nothing else going on: the machine's own noise
        idle = Probe(devpid.url, PROBE_PATH)
        idle.start()
        time.sleep(2.0)
        idle.stop()
        idle_max = max(idle.latencies) if idle.latencies else None

        # the refresh: a longer list upstream, the old one expired
        write_name_list(work / "upstream", names + synthetic_names(MORE, start=count))
        newest = normalise(synthetic_names(1, start=count + MORE - 1)[0])
        probe = Probe(devpid.url, PROBE_PATH)
        time.sleep(max(0.0, EXPIRY + 0.5 - (time.monotonic() - started)))
        probe.start()
        time.sleep(0.3)
        refresh_started = time.monotonic()
        status, body, refresh_ms = _get(connection, "/root/pypi/+simple/", Accept=JSON_PAGE, **gzip)
        assert status == 200, status
        # counted, not parsed: the bench's own CPU would compete with the worker's
        listed = zlib.decompress(body, 31).count(b'{"name":')
        memory["refreshed"] = _memory(devpid)
        while not _search_finds(devpid, newest):
            if time.monotonic() - refresh_started > 120:
                raise TimeoutError("the new list never became searchable")
            time.sleep(0.05)
        _get(connection, "/root/pypi/+simple/", **gzip)
        time.sleep(0.3)
        memory["reindexed"] = _memory(devpid)
        probe.stop()
        connection.close()
        latencies = sorted(probe.latencies)
        return {
            "names": count,
            "searchable_s": searchable_s,
            "html_ms": html_ms,
            "json_ms": json_ms,
            "plain_ms": plain_ms,
            "refresh_ms": refresh_ms,
            "refresh_listed": listed,
            "probe_max_ms": latencies[-1] if latencies else None,
            "probe_p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
            "probes": len(latencies),
            "idle_probe_max_ms": idle_max,
            "probe_errors": probe.errors,
            "peak_rss_mb": devpid.peak_rss_kib() / 1024.0,
            "memory_rss_hwm_mb": memory,
        }
    finally:
        if devpid is not None:
            devpid.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


def figures(quick: bool = True) -> list[Figure]:
    try:
        found = measure(quick)
    except Exception as e:  # one line, and every figure missing
        reason = f"{type(e).__name__}: {e}"[:200]
        return [
            Figure("700k-name list: worker peak RSS", None, RSS_GOAL_MB, False, "MB", reason),
            Figure("700k-name list: warm root page HTML", None, WARM_GOAL_MS, False, "ms", reason),
            Figure("700k-name list: warm root page JSON", None, WARM_GOAL_MS, False, "ms", reason),
            Figure("700k-name list: worst probe in a refresh", None, PROBE_GOAL_MS, False, "ms"),
        ]
    html = statistics.median(found["html_ms"])
    json_ms = statistics.median(found["json_ms"])
    return [
        Figure(
            "700k-name list: worker peak RSS (VmHWM)",
            found["peak_rss_mb"],
            RSS_GOAL_MB,
            False,
            "MB",
        ),
        Figure(
            "700k-name list: warm root page HTML, gzip (median)",
            html,
            WARM_GOAL_MS,
            False,
            "ms",
            f"max {max(found['html_ms']):.1f} ms; without gzip "
            f"{statistics.median(found['plain_ms']):.1f} ms",
        ),
        Figure(
            "700k-name list: warm root page JSON, gzip (median)",
            json_ms,
            WARM_GOAL_MS,
            False,
            "ms",
            f"max {max(found['json_ms']):.1f} ms",
        ),
        Figure(
            "700k-name list: worst probe latency during a refresh",
            found["probe_max_ms"],
            PROBE_GOAL_MS,
            False,
            "ms",
            f"p99 {found['probe_p99_ms']:.1f} ms of {found['probes']} probes "
            f"(worst with no refresh: {found['idle_probe_max_ms'] or 0:.1f} ms), "
            f"{found['probe_errors']} errors; refresh GET {found['refresh_ms']:.0f} ms, "
            f"{found['refresh_listed']} names listed; searchable from cold in "
            f"{found['searchable_s']:.1f} s",
        ),
    ]


__all__ = ["figures", "measure"]
