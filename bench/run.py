"""Benchmark devpid against devpi-server, both mirroring the same local upstream.

Run from anywhere as ``python bench/run.py [--quick] [--skip-devpi] [--json FILE]``, or
``--cluster-only`` for issue 3 alone, ``--private-only`` for devpi's JSON API alone, or
``--uploads-only`` for uploads, merged pages and private installs alone (issue 13), or
``--web-only`` for the pages for people against devpi-web's (issue 14); see
bench/README.md for what it measures and how.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench import cluster, devpi, measure, private, procs, repository, uploads, web, wrk
from devpid_bench.report import Results, format_table
from devpid_bench.session import (
    add_common_options,
    check_children,
    run_session,
    save_status,
    say,
)

MiB = 2**20
RATE = 10_000_000  # bytes/s of the rate-limited upstream
BIG_FILE = 16 * MiB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs and a 100 MiB instead of a 1 GiB file (a few minutes)",
    )
    parser.add_argument("--skip-devpi", action="store_true", help="measure devpid only")
    parser.add_argument(
        "--skip-devpid", action="store_true", help="measure devpi only (to check the harness)"
    )
    parser.add_argument(
        "--cluster-only",
        action="store_true",
        help="only the cluster section: 2 devpid processes behind nginx (issue 3)",
    )
    parser.add_argument(
        "--private-only",
        action="store_true",
        help="only the private section: logins, authenticated reads, index round trips, start-up",
    )
    parser.add_argument(
        "--uploads-only",
        action="store_true",
        help="only the uploads section: twine, a big upload, merged pages, pip (issue 13)",
    )
    parser.add_argument(
        "--web-only",
        action="store_true",
        help="only the web section: devpid's pages against devpi-web's, warm (issue 14)",
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the pure-Python load generator, not wrk"
    )
    parser.add_argument(
        "--devpi-venv",
        type=Path,
        default=devpi.DEFAULT_VENV,
        help="venv for devpi-server and devpi-client, created when missing (default: %(default)s)",
    )
    add_common_options(parser)
    return parser.parse_args(argv)


def settings_for(quick: bool) -> measure.Settings:
    return measure.Settings(
        quick=quick,
        load_seconds=3 if quick else 10,
        file_connections=4,
        cold_repeats=1 if quick else 3,
        pip_runs=3,
        huge_clients=10,
        herd_clients=20,
        cluster_clients=50,
        cluster_connections=50,
    )


def start_devpids(
    group: procs.ProcessGroup, workdir: Path, fast_up: procs.Upstream, slow_up: procs.Upstream
) -> tuple[measure.Mirror, measure.Mirror]:
    """One devpid per upstream, each with its own serverdir: (fast, rate-limited)."""
    procs.devpid_help()  # a BenchError saying why when devpid cannot start
    fast = procs.start_devpid(group, "devpid", workdir / "devpid-serverdir", fast_up)
    slow = procs.start_devpid(group, "devpid-slow", workdir / "devpid-slow-serverdir", slow_up)
    say(f"devpid: {fast.url}, {slow.url} (rate-limited upstream)")
    return measure.Mirror(fast), measure.Mirror(slow)


def start_devpi(
    venv: Path,
    group: procs.ProcessGroup,
    workdir: Path,
    fast_up: procs.Upstream,
    slow_up: procs.Upstream,
    results: Results,
) -> tuple[measure.Mirror, measure.Mirror]:
    """One devpi-server: root/pypi mirrors the fast upstream, root/slow the rate-limited one."""
    setup: list[str] = results.meta["devpi_setup"]
    say(f"devpi venv: {venv}")
    bin_dir = devpi.ensure_venv(venv, setup)
    results.meta["devpi_server_version"] = devpi.devpi_version(bin_dir)
    mirrors = {"root/pypi": fast_up.simple_url, "root/slow": slow_up.simple_url}
    server = devpi.start_devpi(group, bin_dir, workdir, mirrors, setup)
    say(f"devpi-server: {server.url} (root/pypi fast, root/slow rate-limited)")
    return measure.Mirror(server), measure.Mirror(server, "root/slow")


def run(args: argparse.Namespace, workdir: Path, results: Results) -> None:
    settings = settings_for(args.quick)
    huge_size = 100 * MiB if args.quick else 1024 * MiB
    setup: list[str] = []
    results.meta.update(
        quick=args.quick,
        python=sys.version.split()[0],
        machine=f"{platform.machine()}, {platform.node()}",
        settings=attrs.asdict(settings),
        rate_limited_upstream_bytes_per_s=RATE,
        big_file_bytes=BIG_FILE,
        huge_file_bytes=huge_size,
        devpi_setup=setup,
    )
    group = procs.ProcessGroup(log_dir=workdir)
    try:
        notes: list[str] = []
        wrk_path = None if args.no_wrk else wrk.ensure_wrk(notes)
        results.problems.extend(notes)
        wrk_script = wrk.write_script(workdir)

        say("building the upstream repository")
        root = workdir / "upstream-root"
        started = time.monotonic()
        if args.private_only:
            page_project = repository.write_small_blobs(root, "bench-private", 1, 4096)[0].project
            repository.write_root_index(root)
            fast_up = procs.start_upstream(group, "upstream-fast", root)
            say(f"upstream: {fast_up.url}")
            run_private(args, workdir, fast_up, page_project, results, wrk_path, wrk_script)
            check_children(group, results)
            return
        if args.uploads_only:
            requirements, _ = repository.build_base(root, args.corpus, MiB)
            repository.write_root_index(root)
            fast_up = procs.start_upstream(group, "upstream-fast", root)
            say(f"upstream: {fast_up.url}")
            run_uploads(args, workdir, fast_up, root, requirements, results, wrk_path, wrk_script)
            check_children(group, results)
            return
        if args.web_only:
            requirements, _ = repository.build_base(root, args.corpus, MiB)
            repository.write_root_index(root)
            fast_up = procs.start_upstream(group, "upstream-fast", root)
            say(f"upstream: {fast_up.url}")
            run_web(args, workdir, fast_up, requirements[0], results)
            check_children(group, results)
            return
        if args.cluster_only:
            cluster_files = repository.build_cluster(root, args.corpus, BIG_FILE)
        else:
            repo = repository.build(root, args.corpus, BIG_FILE, settings.cold_repeats, huge_size)
            cluster_files = repo.cluster
        say(f"  built in {time.monotonic() - started:.1f}s")

        fast_up = procs.start_upstream(group, "upstream-fast", root)
        slow_up = procs.start_upstream(group, "upstream-slow", root)
        slow_up.set_rate(RATE)
        say(f"upstreams: {fast_up.url} (fast), {slow_up.url} (rate {RATE / 1e6:.0f} MB/s)")

        fast: dict[str, measure.Mirror] = {}
        slow: dict[str, measure.Mirror] = {}
        if not args.skip_devpid and not args.cluster_only:
            try:
                fast["devpid"], slow["devpid"] = start_devpids(group, workdir, fast_up, slow_up)
            except procs.BenchError as exc:
                results.problems.append(f"devpid not measured: {exc}")
        if not args.skip_devpi and not args.cluster_only:
            try:
                fast["devpi"], slow["devpi"] = start_devpi(
                    args.devpi_venv, group, workdir, fast_up, slow_up, results
                )
            except procs.BenchError as exc:
                results.problems.append(f"devpi-server not measured: {exc}")
        if not fast and not args.cluster_only:
            raise procs.BenchError("no server to measure")

        bench = measure.Bench(
            settings=settings,
            results=results,
            fast=fast,
            slow=slow,
            fast_upstream=fast_up,
            slow_upstream=slow_up,
            wrk=wrk_path,
            wrk_script=wrk_script,
            workdir=workdir,
        )
        steps: list[tuple[str, Callable[[], None]]] = []
        if not args.cluster_only:
            page_project = repo.requirements[0]
            steps += [
                ("cached project page", lambda: measure.cached_page(bench, page_project)),
                ("cached big file", lambda: measure.cached_file(bench, repo.warm)),
                (
                    "cold file via the rate-limited upstream",
                    lambda: measure.cold_file(bench, repo.cold, RATE),
                ),
                ("concurrent cold requests", lambda: measure.herd(bench, repo.herd)),
                ("pip install", lambda: measure.pip_install(bench, repo.requirements)),
                ("peak RSS", lambda: measure.peak_rss(bench, repo.huge)),
            ]
            steps.append(
                (
                    "private: devpi's JSON API",
                    lambda: run_private(
                        args, workdir, fast_up, page_project, results, wrk_path, wrk_script
                    ),
                )
            )
            steps.append(
                (
                    "uploads: uploads, merged pages, private installs",
                    lambda: run_uploads(
                        args,
                        workdir,
                        fast_up,
                        root,
                        repo.requirements,
                        results,
                        wrk_path,
                        wrk_script,
                    ),
                )
            )
            steps.append(
                (
                    "web: devpid's pages against devpi-web's",
                    lambda: run_web(args, workdir, fast_up, repo.requirements[0], results),
                )
            )
        if not args.skip_devpid:
            steps.append(
                (
                    "cluster: 2 devpid processes, one Redis, behind nginx",
                    lambda: cluster.measure_cluster(bench, group, cluster_files),
                )
            )
        for name, step in steps:
            say(name)
            step()
        if "devpid" in fast:
            save_status(fast["devpid"].server.url, results)
        check_children(group, results)
    finally:
        group.close()


def run_private(
    args: argparse.Namespace,
    workdir: Path,
    upstream: procs.Upstream,
    project: str,
    results: Results,
    wrk_path: str | None,
    wrk_script: Path,
) -> None:
    """The private section (devpid_bench/private.py)."""
    run_section(
        "private",
        args.private_only,
        results,
        lambda: private.measure_private(
            workdir, upstream, project, results, **section_options(args, wrk_path, wrk_script)
        ),
    )


def run_uploads(
    args: argparse.Namespace,
    workdir: Path,
    upstream: procs.Upstream,
    root: Path,
    requirements: list[str],
    results: Results,
    wrk_path: str | None,
    wrk_script: Path,
) -> None:
    """The uploads section (devpid_bench/uploads.py)."""
    run_section(
        "uploads",
        args.uploads_only,
        results,
        lambda: uploads.measure_uploads(
            workdir,
            upstream,
            root,
            requirements,
            results,
            **section_options(args, wrk_path, wrk_script),
        ),
    )


def run_web(
    args: argparse.Namespace,
    workdir: Path,
    upstream: procs.Upstream,
    mirror_project: str,
    results: Results,
) -> None:
    """The web section (devpid_bench/web.py); devpi-web has a venv of its own."""
    run_section(
        "web",
        args.web_only,
        results,
        lambda: web.measure_web(
            workdir,
            upstream,
            mirror_project,
            results,
            quick=args.quick,
            with_devpi=not args.skip_devpi,
            skip_devpid=args.skip_devpid,
        ),
    )


def section_options(
    args: argparse.Namespace, wrk_path: str | None, wrk_script: Path
) -> dict[str, Any]:
    """What every section with servers of its own takes from the command line."""
    return {
        "quick": args.quick,
        "wrk": wrk_path,
        "wrk_script": wrk_script,
        "devpi_venv": None if args.skip_devpi else args.devpi_venv,
        "skip_devpid": args.skip_devpid,
    }


def run_section(name: str, alone: bool, results: Results, measure: Callable[[], None]) -> None:
    """A section with servers of its own: run alone, a failure to start them is the run's
    failure; in the full run, it is a problem seen, and the run goes on."""
    try:
        measure()
    except procs.BenchError as exc:
        if alone:
            raise
        results.problems.append(f"{name} section stopped: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results()
    return run_session(
        "devpid-bench-",
        lambda workdir: run(args, workdir, results),
        results,
        lambda: print(format_table(results)),
        args.json,
        args.keep,
        stopped="benchmark stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
