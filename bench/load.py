"""Load and soak devpid on loopback: many keep-alive connections, slowloris, a long mixed run.

Run from anywhere as ``python bench/load.py [--soak-seconds 600] [--connections 1000]
[--slowloris 500] [--quick] [--json FILE]``; see bench/README.md ("load.py") for what
it does and what the figures mean.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench import procinfo, procs, repository, wrk
from devpid_bench.http import PIP_ACCEPT, file_urls, http_get
from devpid_bench.loadreport import context_line, goals, load_rows, soak_rows
from devpid_bench.loadrun import (
    COLD_PREFIX,
    Harness,
    Settings,
    Warm,
    connection_load,
    soak,
)
from devpid_bench.paced import Target
from devpid_bench.procinfo import ProcessSampler, kib_to_mb
from devpid_bench.report import Results, format_table
from devpid_bench.session import (
    add_common_options,
    check_children,
    run_session,
    save_status,
    say,
)
from devpid_bench.soak import CachedFile, Verifier

MiB = 2**20
MB = 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument(
        "--soak-seconds",
        type=float,
        help="length of the soak (default 600, 25 with --quick; 0: no soak)",
    )
    parser.add_argument("--connections", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--slowloris", type=int, default=500, help="default: %(default)s")
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="req/s all connections together offer in the paced runs (default: %(default)s)",
    )
    parser.add_argument(
        "--soak-rate",
        type=float,
        default=400.0,
        help="fetches/s in the soak, 80%% pages, 15%% files, 5%% cold (default: %(default)s)",
    )
    parser.add_argument(
        "--soak-connections", type=int, default=100, help="wrk's in the soak (default: %(default)s)"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run this script, devpid, the upstream and wrk at this niceness (e.g. -10 on a "
        "machine others are using: the figures then show devpid, not the contention; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        help="devpid's listen backlog (--listen tcp:PORT:interface=127.0.0.1:backlog=N); "
        "default: devpid's own --listen default (Twisted's 50)",
    )
    add_common_options(parser)
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    soak = args.soak_seconds if args.soak_seconds is not None else (25.0 if quick else 600.0)
    return Settings(
        quick=quick,
        connections=args.connections,
        slowloris=args.slowloris,
        rate=args.rate,
        load_seconds=4 if quick else 30,
        unpaced_seconds=3 if quick else 15,
        soak_seconds=soak,
        soak_rate=args.soak_rate,
        soak_connections=args.soak_connections,
        cold_size=64 * 1024,
        upstream_rate=256_000,
        upstream_delay=0.05,
        sample_interval=1.0 if quick else 2.0,
        warmup=2.0,
        drip_interval=2.0 if quick else 5.0,
    )


_OPTION = re.compile(r"--([\w-]+)=?\s+(.*?)(?=\n\s*(?:-\w|--)|\n\n|\Z)", re.S)


def option_help(help_text: str) -> dict[str, str]:
    """Every ``--option`` of devpid's help with its help text on one line."""
    return {m.group(1): " ".join(m.group(2).split()) for m in _OPTION.finditer(help_text)}


def option_defaults(options: dict[str, str]) -> dict[str, str]:
    """The ``[default: ...]`` of each option that has one."""
    defaults = {}
    for name, text in options.items():
        default = re.search(r"\[default:\s*([^\]]*)\]", text)
        if default:
            defaults[name] = default.group(1).strip()
    return defaults


def idle_timeout_seconds(defaults: dict[str, str]) -> float | None:
    """The default of ``--idle-timeout`` in seconds (None: no such option, or 0: never)."""
    match = re.fullmatch(r"[\d.]+", defaults.get("idle-timeout", ""))
    value = float(match.group()) if match else 0.0
    return value or None


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "memory_total_mb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MB,
    }


def warm_cache(server: procs.Server, root: Path, projects: Sequence[str], results: Results) -> Warm:
    """Ask for every page (both media types) and file once; check each file's sha256."""
    page_targets, file_targets, page_urls, files = [], [], [], []
    for project in projects:
        url = server.page_url(project)
        ok = True
        for accept in (PIP_ACCEPT, "text/html"):
            status, _, _ = http_get(url, 60, {"Accept": accept})
            ok = ok and status == 200
        if not ok:
            results.problems.append(f"warming: page {project} did not answer 200")
            continue
        path = urlsplit(url).path
        page_urls.append(url)
        page_targets += [Target(path, 3.0, PIP_ACCEPT), Target(path, 1.0, "text/html")]
        for filename, file_url in sorted(file_urls(url).items()):
            upstream_file = root / "files" / filename
            if not upstream_file.is_file():
                continue
            expected = CachedFile(
                file_url, upstream_file.stat().st_size, repository_sha256(upstream_file)
            )
            wrong = expected.check(timeout=120)
            if wrong:
                results.problems.append(f"warming: {filename}: {wrong}")
                continue
            files.append(expected)
            file_targets.append(Target(urlsplit(file_url).path))
    if not page_targets or not file_targets:
        raise procs.BenchError("nothing could be cached: no page or no file to load devpid with")
    return Warm(page_targets, file_targets, page_urls, files)


def repository_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def run(args: argparse.Namespace, workdir: Path, results: Results) -> None:
    s = settings_for(args)
    own_limits = procinfo.raise_own_nofile(s.connections + s.slowloris + 4096)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # every child inherits it
    results.meta.update(
        settings=attrs.asdict(s),
        machine=machine(),
        own_nofile=own_limits,
        niceness=os.getpriority(os.PRIO_PROCESS, 0),
    )
    group = procs.ProcessGroup(log_dir=workdir)
    sampler: ProcessSampler | None = None
    verifier: Verifier | None = None
    try:
        notes: list[str] = []
        wrk_path = wrk.ensure_wrk(notes)
        if wrk_path is None:
            raise procs.BenchError("load.py needs wrk: " + "; ".join(notes))
        results.meta["wrk"] = subprocess.run(
            [wrk_path, "-v"], capture_output=True, text=True, timeout=10
        ).stdout.split("\n", 1)[0]
        options = option_help(procs.devpid_help())
        idle = options.get("idle-timeout")
        results.meta["devpid_idle_timeout_option"] = idle or "absent"
        defaults = option_defaults(options)
        results.meta["devpid_option_defaults"] = defaults
        results.meta["devpid_limits"] = {
            k: v for k, v in defaults.items() if k.startswith("max-") or k == "idle-timeout"
        }
        say(f"devpid --idle-timeout: {idle or 'absent'}")

        say("building the upstream repository")
        root = workdir / "upstream-root"
        started = time.monotonic()
        repository.build_base(root, args.corpus, 1 * MiB)
        projects = sorted(p.name for p in (root / "simple").iterdir() if p.is_dir())
        cold = repository.write_small_blobs(root, COLD_PREFIX, s.cold_projects, s.cold_size, 5)
        repository.write_root_index(root)
        say(
            f"  {len(projects)} projects to cache, {len(cold)} cold ones, "
            f"in {time.monotonic() - started:.1f}s"
        )

        upstream = procs.start_upstream(group, "upstream", root)
        port = procs.free_port()
        server = procs.start_devpid(
            group, "devpid", workdir / "serverdir", upstream, port=port, backlog=args.backlog
        )
        pid = server.child.pid
        wanted = s.connections + s.slowloris + 512
        limits = procinfo.ensure_nofile(pid, wanted)
        results.meta["devpid_nofile"] = limits
        results.meta["devpid_epoll"] = procinfo.uses_epoll(pid)
        results.meta["devpid_listen_backlog"] = procinfo.listen_backlog(port)
        say(
            f"devpid {server.url} (pid {pid}): Max open files {limits} (needs {wanted}), "
            f"epoll: {results.meta['devpid_epoll']}"
        )
        if limits is None or limits[0] < wanted:
            results.problems.append(f"devpid may open only {limits} files, {wanted} needed")

        say("warming the cache")
        warm = warm_cache(server, root, projects, results)
        say(f"  {len(warm.page_urls)} pages, {len(warm.files)} files cached and checked")
        sampler = ProcessSampler(pid, s.sample_interval).start()
        verifier = Verifier(warm.page_urls, warm.files).start()
        harness = Harness(
            s,
            group,
            wrk_path,
            workdir,
            server,
            upstream,
            sampler,
            verifier,
            idle_timeout_seconds(defaults),
        )
        results.meta["devpid_idle"] = {
            "rss_mb": kib_to_mb(sampler.sample().rss_kib),
            "fds": procinfo.fd_count(pid),
            "fd_kinds": procinfo.fd_kinds(pid),
        }

        phases, load = connection_load(harness, warm)
        results.details["connection_load"] = load
        load_rows(results, s, phases, load)
        soaked = soak(harness, warm, cold) if s.soak_seconds > 0 else {}
        results.details["soak"] = soaked
        if soaked:
            soak_rows(results, soaked)
        goals(results, s, load, soaked)

        results.details["samples"] = sampler.to_json()
        save_status(server.url, results)
        tracebacks = check_children(group, results)
        results.details["devpid_log_tracebacks"] = tracebacks.get("devpid", 0)
    finally:
        if verifier is not None:
            verifier.stop()
        if sampler is not None:
            sampler.stop()
        group.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results()

    def report() -> None:
        print(context_line(results.meta))
        print(format_table(results))
        for line in results.details.get("goals", []):
            print(line)

    return run_session(
        "devpid-load-",
        lambda workdir: run(args, workdir, results),
        results,
        report,
        args.json,
        args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
