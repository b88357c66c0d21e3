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
from devpid_bench.http import PIP_ACCEPT, fetch, file_urls, http_get
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
from devpid_bench.procinfo import ProcessSampler, rss_mb
from devpid_bench.report import Results, format_table
from devpid_bench.session import run_session, say
from devpid_bench.soak import CachedFile, Verifier

MiB = 2**20
MB = 1e6


CORPUS = procs.REPO_ROOT.parent / "shared" / "corpus"


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
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=CORPUS,
        help="real distributions to serve, used when present (default: %(default)s)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, serverdir)"
    )
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


def devpid_help() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "devpid", "--help"],
        cwd=procs.REPO_ROOT,
        env=procs.repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def idle_timeout_option(help_text: str) -> str | None:
    """``--idle-timeout``'s help line (with its default) when devpid has it, else None."""
    match = re.search(r"--idle-timeout=?\s+(.*?)(?=\n\s*(?:-\w|--)|\n\n|\Z)", help_text, re.S)
    return " ".join(match.group(1).split()) if match else None


def option_defaults(help_text: str) -> dict[str, str]:
    """Every ``--option=`` of devpid's help with its ``[default: ...]``, when it has one."""
    defaults = {}
    for match in re.finditer(r"--([\w-]+)=\s+(.*?)(?=\n\s*(?:-\w|--)|\n\n|\Z)", help_text, re.S):
        default = re.search(r"\[default:\s*([^\]]*)\]", " ".join(match.group(2).split()))
        if default:
            defaults[match.group(1)] = default.group(1).strip()
    return defaults


def idle_timeout_seconds(option: str | None) -> float | None:
    """The default of ``--idle-timeout`` in seconds (None: no such option, or 0: never)."""
    match = re.search(r"\[default: ([\d.]+)\]", option or "")
    value = float(match.group(1)) if match else 0.0
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
            got = fetch(file_url, timeout=120, want_hash=True)
            if got.status != 200 or got.size != expected.size or got.sha256 != expected.sha256:
                results.problems.append(
                    f"warming: {filename}: status {got.status}, {got.size} bytes, {got.error}"
                )
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
        help_text = devpid_help()
        if "--listen" not in help_text:
            raise procs.BenchError(f"`twist devpid --help` failed:\n{help_text[-800:]}")
        idle = idle_timeout_option(help_text)
        results.meta["devpid_idle_timeout_option"] = idle or "absent"
        defaults = option_defaults(help_text)
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
        listen = [] if args.backlog is None else ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        if listen:
            listen[1] += f":backlog={args.backlog}"  # the last --listen wins
        server = procs.start_devpid(
            group, "devpid", workdir / "serverdir", upstream, listen, port=port
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
            results,
            wrk_path,
            workdir,
            server,
            upstream,
            sampler,
            verifier,
            idle_timeout_seconds(idle),
        )
        results.meta["devpid_idle"] = {
            "rss_mb": rss_mb(sampler.sample()),
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
        try:
            _, _, body = http_get(server.url + "+status", timeout=10)
            results.details["devpid_status"] = body.decode(errors="replace")[:5000]
        except OSError as exc:
            results.problems.append(f"devpid /+status: {exc}")
        for child in list(group.children):
            if not child.alive():
                results.problems.append(f"{child.name} exited early with {child.popen.returncode}")
        scan_log(server.child, results)
    finally:
        if verifier is not None:
            verifier.stop()
        if sampler is not None:
            sampler.stop()
        group.close()


def scan_log(child: procs.Child, results: Results) -> None:
    """Count tracebacks and unhandled errors in devpid's log."""
    if child.log_path is None:
        return
    lines = child.log_path.read_text(errors="replace").splitlines()
    bad = [i for i, line in enumerate(lines) if "Traceback" in line or "Unhandled" in line]
    results.details["devpid_log_lines"] = len(lines)
    results.details["devpid_log_tracebacks"] = len(bad)
    if bad:
        first = "\n      ".join(lines[bad[0] : bad[0] + 12])
        results.problems.append(
            f"devpid log has {len(bad)} traceback/unhandled lines; first:\n      {first}"
        )


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
