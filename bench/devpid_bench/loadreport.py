"""load.py's tables and goal lines, from what ``loadrun`` measured."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from devpid_bench.loadrun import MB, P99_GOAL_MS, UPSTREAM_POOL, Phase, Settings
from devpid_bench.paced import PacedResult
from devpid_bench.procinfo import kib_to_mb
from devpid_bench.report import Results

ACCESS_NOTE = "from parsed request to answer sent, devpid's access log"


def _values(
    results: Results,
    table: str,
    key: str,
    label: str,
    unit: str,
    better: bool | None,
    note: str = "",
) -> dict[str, float | None]:
    """A new row of ``table`` (its key prefixed with the table's name): its values to fill."""
    new = results.row(f"{table}_{key}", label, unit, better, table=table)
    new.note = note
    return new.values


def load_rows(
    results: Results, s: Settings, phases: dict[str, Phase], details: dict[str, Any]
) -> None:
    def row(
        key: str,
        label: str,
        unit: str,
        better: bool | None,
        value: Callable[[Phase], float | None],
        note: str = "",
    ) -> None:
        values = _values(results, "load", key, label, unit, better, note)
        for name, phase in phases.items():
            values[name] = value(phase)

    def pages(phase: Phase) -> PacedResult:
        return phase.wrk["pages"]

    def files(phase: Phase) -> PacedResult:
        return phase.wrk["files"]

    offered = f"{s.connections} conn, {s.rate / s.connections:g} req/s each, exponential gaps"
    goal = f"goal <= {P99_GOAL_MS:.0f} ms (paced)"
    # a table, one row a line:
    # fmt: off
    row("offered", "offered load", "req/s", None, lambda p: s.rate if pages(p).paced else None,
        f"{offered}; unpaced: closed loop")
    row("answered", "answered", "req/s", True,
        lambda p: pages(p).requests_per_second + files(p).requests_per_second,
        f"runs of {s.load_seconds:g} s (paced), {s.unpaced_seconds:g} s (unpaced)")
    row("page_p50", "cached page p50", "ms", False, lambda p: pages(p).p50_ms)
    row("page_p99", "cached page p99", "ms", False, lambda p: pages(p).p99_ms, goal)
    row("page_max", "cached page max", "ms", False, lambda p: pages(p).max_ms)
    row("file_p99", "cached file p99", "ms", False, lambda p: files(p).p99_ms, goal)
    row("file_max", "cached file max", "ms", False, lambda p: files(p).max_ms)
    row("errors", "errors", "count", False, lambda p: p.errors,
        "wrk (connect/read/write/timeout/status)")
    row("checks", "content checks, meanwhile", "count", None, lambda p: p.verifier_checks,
        "status, length, sha256")
    row("fds", "devpid open fds, peak", "count", None, lambda p: p.peak("fds"))
    row("server_page_p99", "devpid-side page p99", "ms", False,
        lambda p: p.server.get("page", {}).get("p99_ms"), ACCESS_NOTE)
    row("server_file_p99", "devpid-side file p99", "ms", False,
        lambda p: p.server.get("file", {}).get("p99_ms"), ACCESS_NOTE)
    row("cpu", "devpid CPU", "% core", None, lambda p: p.cpu.get("devpid"))
    row("others", "CPU of others + kernel", "% core", None, lambda p: p.cpu.get("others"),
        "busy CPU not used by devpid, upstream, wrk, this script")
    row("wait", "devpid waiting for a CPU", "% time", False, lambda p: p.cpu.get("devpid_wait"),
        "runnable, not running (schedstat)")
    row("wait_ms", "  per wake-up, mean", "ms", False, lambda p: p.cpu.get("devpid_wait_ms"))
    row("overflows", "listen queue overflows", "count", False, lambda p: p.listen_overflows,
        "connects dropped for a full accept queue, whole machine (/proc/net/netstat)")
    row("rss", "devpid RSS, peak", "MB", False, lambda p: p.peak("rss"))
    # fmt: on
    for name, phase in phases.items():
        if phase.others:
            results.problems.append(
                f"{name}: other processes were busy (top 3: {'; '.join(phase.others)}): "
                "its latencies say as much about the machine as about devpid"
            )
    during = details.get("slowloris_during_load")
    after = details.get("slowloris")
    if during and after:
        first, last = after["closed_after_s_min"], after["closed_after_s_max"]
        closed = "none" if first is None else f"all {first:.0f}-{last:.0f} s after opening"
        if details.get("idle_timeout_waited"):
            note = f"of {during['opened']}; {after['still_open']} after waiting for the idle "
            note += f"timeout; closed by devpid: {closed}"
        else:
            note = f"of {during['opened']}; not kept until an idle timeout"
        label = "slowloris still open after the runs"
        still = _values(results, "load", "slowloris_open", label, "count", None, note)
        still["unpaced+slowloris"] = during["still_open"]


def goals(results: Results, s: Settings, load: dict[str, Any], soaked: dict[str, Any]) -> None:
    lines: list[str] = []

    def judge(ok: bool, what: str) -> None:
        lines.append(f"{'met    ' if ok else 'NOT MET'}  {what}")
        if not ok:
            results.problems.append(f"goal not met: {what}")

    phases = load.get("phases", {})
    for name in ("paced", "paced+slowloris"):
        if name not in phases:
            continue
        wrk_runs = phases[name]["wrk"]
        p99 = max(r["p99_ms"] for r in wrk_runs.values())
        errors = sum(sum(r["errors"].values()) for r in wrk_runs.values()) + len(
            phases[name]["verifier_failures"]
        )
        judge(
            p99 <= P99_GOAL_MS and errors == 0,
            f"{name}: {s.connections} conn at {s.rate:g} req/s, cached p99 {p99:.1f} ms "
            f"(<= {P99_GOAL_MS:.0f}), {errors} errors",
        )
    if soaked:
        start_rss = soaked["start"]["rss_kib"] * 1024 / MB
        growth = soaked["rss_second_half_growth_mb"]
        allowed = max(5.0, 0.05 * start_rss)
        judge(
            growth is not None and growth <= allowed,
            f"soak RSS flat: second-half growth {growth if growth is None else round(growth, 1)}"
            f" MB (<= {allowed:.0f}); start {start_rss:.0f} MB, "
            f"end {soaked['end']['rss_kib'] * 1024 / MB:.0f} MB",
        )
        start_fds, end_fds = soaked["start"]["fds"], soaked["end"]["fds"]
        judge(
            end_fds <= start_fds + UPSTREAM_POOL,
            f"soak fds: start {start_fds}, end {end_fds} (end <= start + {UPSTREAM_POOL})",
        )
        judge(soaked["error_total"] == 0, f"soak errors: {soaked['errors']}")
    results.details["goals"] = lines


def context_line(meta: dict[str, Any]) -> str:
    box = meta.get("machine", {})
    return (
        f"machine: {box.get('cpus')} CPUs ({box.get('cpu_model')}), everything on 127.0.0.1; "
        f"niceness {meta.get('niceness')}; devpid: Max open files {meta.get('devpid_nofile')}, "
        f"epoll {meta.get('devpid_epoll')}, listen backlog {meta.get('devpid_listen_backlog')}, "
        f"limits (defaults) {meta.get('devpid_limits')}"
    )


def soak_rows(results: Results, soaked: dict[str, Any]) -> None:
    """The ``soak`` table from what ``loadrun.soak`` returned."""
    row = partial(_values, results, "soak")

    start, end = soaked["start"], soaked["end"]
    pages, files, cold = soaked["wrk"]["pages"], soaked["wrk"]["files"], soaked["cold"]
    cpu = soaked["cpu"]
    rss = row(
        "rss",
        "devpid RSS",
        "MB",
        False,
        "run: growth over the second half (median of last 10% - of 40-50%)",
    )
    rss.update(
        start=kib_to_mb(start["rss_kib"]),
        peak=soaked["rss_peak_mb"],
        end=kib_to_mb(end["rss_kib"]),
        run=soaked["rss_second_half_growth_mb"],
    )
    fds = row(
        "fds",
        "devpid open fds",
        "count",
        False,
        f"start/end idle; devpid keeps <= {UPSTREAM_POOL} upstream conns",
    )
    fds.update(start=start["fds"], peak=soaked["fds_peak"], end=end["fds"])
    row("pages", "cached page requests", "count", None)["run"] = pages["requests"]
    row("files", "cached file requests", "count", None)["run"] = files["requests"]
    row("cold", "cold fetches (page + file)", "count", None)["run"] = cold["fetches"]
    total = pages["requests"] + files["requests"] + cold["fetches"]
    row("rate", "fetches", "per s", None)["run"] = total / soaked["seconds"]
    row("page_p99", "cached page p99", "ms", False)["run"] = pages["p99_ms"]
    row("file_p99", "cached file p99", "ms", False)["run"] = files["p99_ms"]
    cold_p99 = row("cold_p99", "cold fetch p99 (page + file)", "s", False)
    cold_p99["run"] = cold["page_plus_file_p99_s"]
    sha = row("sha", "sha256 checks (cold + sampled)", "count", None)
    sha["run"] = cold["fetches"] + soaked["verifier"]["checks"] // 2
    errors = row(
        "errors",
        "errors",
        "count",
        False,
        "wrk (connect/read/write/timeout/status) + cold + sampled checks",
    )
    errors["run"] = soaked["error_total"]
    row("overflows", "listen queue overflows", "count", False)["run"] = soaked["listen_overflows"]
    row("cpu", "devpid CPU", "% core", None)["run"] = cpu.get("devpid")
    row("others", "CPU of others + kernel", "% core", None)["run"] = cpu.get("others")
    row("wait", "devpid waiting for a CPU", "% time", False)["run"] = cpu.get("devpid_wait")
    for kind in ("page", "file", "cold"):
        if kind in soaked["server"]:
            label = f"devpid-side {kind} p99"
            row(f"server_{kind}_p99", label, "ms", False)["run"] = soaked["server"][kind]["p99_ms"]
    if soaked["others"]:
        results.problems.append(
            f"soak: other processes were busy (top 3: {'; '.join(soaked['others'])})"
        )
