"""Search bench (issue 14): devpid's name index on 700,000 synthetic names.

    python bench/search_bench.py            # 700,000 names, ~200 queries, HTTP and peer too
    python bench/search_bench.py --quick    # the same, fewer repetitions: a few minutes
    python bench/search_bench.py --skip-http --skip-peer

(a) In process: the time to build the index, RSS before and after (VmRSS), and
p50/p99 of one search over a mix of queries (exact, prefix, substring, typo,
no match), each a full ``SearchCatalog.search`` over one mirror whose cached
project list holds the names, on a memory clock (the slices' yields cost
nothing here; on a reactor they are a turn each).

(b) Over HTTP, when ``/+search`` answers JSON: ``python -m twisted devpid`` from this
tree against a local upstream (``tests.fixtures.upstream``) serving the
700,000-name ``/simple/`` page; the first search starts the list's fetch, the
bench waits until the names are indexed, then measures the same mix.

(c) A peer, devpi-server + devpi-web in a throwaway venv, on a smaller upstream
(``--peer-names``, 20,000 by default): the time until a name is searchable after
the mirror is created, and query p50, against devpid on the same upstream.
Skipped with a message when it cannot be installed.

Everything listens on 127.0.0.1; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from devpid.files.store import FileStore
from devpid.mirror.pages import CachedPage
from devpid.search import SearchCatalog, SearchResult

WORDS = [
    "data",
    "api",
    "http",
    "json",
    "web",
    "async",
    "test",
    "tools",
    "client",
    "server",
    "flask",
    "django",
    "py",
    "core",
    "utils",
    "auth",
    "cache",
    "queue",
    "redis",
    "sql",
    "orm",
    "cli",
    "config",
    "log",
    "metrics",
    "trace",
    "image",
    "audio",
    "video",
    "text",
    "nlp",
    "ml",
    "torch",
    "graph",
    "plot",
    "geo",
    "time",
    "date",
    "crypto",
    "hash",
    "zip",
    "tar",
    "net",
    "dns",
    "mail",
    "sms",
    "aws",
    "gcp",
    "azure",
    "k8s",
    "docker",
    "ansible",
    "lint",
    "format",
    "type",
    "check",
    "mock",
    "fake",
    "fixture",
    "bench",
    "profile",
    "stream",
    "event",
    "bus",
    "grpc",
    "proto",
    "schema",
    "model",
    "view",
    "form",
    "admin",
    "rest",
    "socket",
    "pool",
    "retry",
]
PREFIXES = ("", "", "", "py", "django", "flask", "types", "pytest", "sphinxcontrib", "odoo")


def synthetic_names(count: int, seed: int = 14) -> list[str]:
    """``count`` distinct, deterministic names shaped like real ones."""
    rng = random.Random(seed)
    names: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        parts = [rng.choice(WORDS) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))]
        prefix = rng.choice(PREFIXES)
        if prefix:
            parts.insert(0, prefix)
        if rng.random() < 0.3:
            parts.append(str(rng.randint(0, 999)))
        separator = rng.choice(("-", "-", "_", ".", ""))
        name = separator.join(parts)
        if rng.random() < 0.2:
            name = name.title()
        normalised = re.sub(r"[-_.]+", "-", name).lower()
        if normalised not in names:
            names.add(normalised)
            out.append(name)
    return out


def query_mix(names: list[str], count: int, seed: int = 7) -> list[tuple[str, str]]:
    """(kind, query): exact names, prefixes, substrings, one-typo names, no-match words."""
    rng = random.Random(seed)
    queries: list[tuple[str, str]] = []
    kinds = ("exact", "prefix", "substring", "typo", "none")
    for i in range(count):
        kind = kinds[i % len(kinds)]
        name = rng.choice(names).lower().replace("_", "-").replace(".", "-")
        if kind == "exact":
            q = name
        elif kind == "prefix":
            q = name[: max(3, len(name) // 2)]
        elif kind == "substring":
            q = rng.choice(WORDS) + "-" + rng.choice(WORDS)
        elif kind == "typo":
            j = rng.randrange(len(name) - 1)
            q = name[:j] + name[j + 1] + name[j] + name[j + 2 :]
        else:
            q = "zq" + "".join(rng.choice("xyzvw") for _ in range(6))
        queries.append((kind, q))
    return queries


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- (a) in process ----------------------------------------------------------------------


class _Mirror:
    def __init__(self, names: tuple[str, ...], files: FileStore) -> None:
        self.name = "root/pypi"
        self.files = files
        self._page = CachedPage(names, '"bench"', None, 0.0)

    async def cached(self, project: str) -> CachedPage | None:
        return self._page

    async def project_list(self) -> CachedPage:
        return self._page


def _run(clock: Clock, d: Deferred[Any]) -> Any:
    while not d.called:
        clock.advance(0)
    out: list[Any] = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def in_process(names: list[str], queries: list[tuple[str, str]], rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="devpid-search-bench-"))
    try:
        files = FileStore(tmp)
        files.prepare()
        as_tuple = tuple(names)
        rss_before = rss_mb()
        clock = Clock()
        catalog = SearchCatalog(
            None, {"root/pypi": _Mirror(as_tuple, files)}, lambda f: succeed(f()), clock
        )
        started = time.perf_counter()
        first: SearchResult = _run(clock, Deferred.fromCoroutine(catalog.search("warm")))
        build = time.perf_counter() - started
        from devpid.mirror.pages import release_freed_memory

        release_freed_memory()
        rss_after = rss_mb()
        timings: dict[str, list[float]] = {}
        found: dict[str, int] = {}
        for _ in range(rounds):
            for kind, q in queries:
                t = time.perf_counter()
                result: SearchResult = _run(clock, Deferred.fromCoroutine(catalog.search(q)))
                timings.setdefault(kind, []).append(time.perf_counter() - t)
                found[kind] = found.get(kind, 0) + (1 if result.hits else 0)
        every = [x for v in timings.values() for x in v]
        return {
            "names": catalog.status()["root/pypi"]["names"],
            "build_s": build,
            "first_total": first.total,
            "rss_before_mb": rss_before,
            "rss_after_mb": rss_after,
            "index_rss_mb": rss_after - rss_before,
            "p50_ms": statistics.median(every) * 1000,
            "p99_ms": percentile(every, 99) * 1000,
            "by_kind": {
                k: {
                    "p50_ms": statistics.median(v) * 1000,
                    "p99_ms": percentile(v, 99) * 1000,
                    "with_hits": f"{found[k]}/{len(v)}",
                }
                for k, v in timings.items()
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def slice_lengths(names: list[str], queries: list[tuple[str, str]]) -> dict[str, float]:
    """How long a search holds the reactor between two yields (real clock), over the mix.

    The first search, which builds the index (in a thread on a real reactor,
    inline here), is left out.
    """
    from devpid.search.catalog import Slicer

    gaps: list[float] = []
    original = Slicer.checkpoint

    async def timed(self: Slicer) -> None:
        gaps.append(time.monotonic() - self._since)
        await original(self)

    files_dir = Path(tempfile.mkdtemp(prefix="devpid-search-bench-"))
    try:
        files = FileStore(files_dir)
        files.prepare()
        clock = Clock()
        catalog = SearchCatalog(
            None, {"root/pypi": _Mirror(tuple(names), files)}, lambda f: succeed(f()), clock
        )
        _run(clock, Deferred.fromCoroutine(catalog.search("warm")))
        Slicer.checkpoint = timed  # type: ignore[method-assign]
        try:
            for _, q in queries:
                _run(clock, Deferred.fromCoroutine(catalog.search(q)))
        finally:
            Slicer.checkpoint = original  # type: ignore[method-assign]
        return {
            "slice_p50_ms": statistics.median(gaps) * 1000,
            "slice_p99_ms": percentile(gaps, 99) * 1000,
            "slice_max_ms": max(gaps) * 1000,
            "slices": len(gaps),
        }
    finally:
        shutil.rmtree(files_dir, ignore_errors=True)


# -- (b) over HTTP and (c) the peer ---------------------------------------------------------


def write_upstream(root: Path, names: list[str]) -> None:
    """A repository the upstream fixture serves: only the project list."""
    simple = root / "simple"
    simple.mkdir(parents=True)
    (root / "files").mkdir()
    body = "".join(f'<a href="{n}/">{n}</a>\n' for n in names)
    (simple / "index.html").write_text(
        f"<!DOCTYPE html><html><body>\n{body}</body></html>\n", encoding="utf-8"
    )
    (simple / "index.json").write_text(
        json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"name": n} for n in names]})
    )


def get_json(url: str, timeout: float = 120.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def timed_queries(search: Callable[[str], Any], queries: list[tuple[str, str]]) -> list[float]:
    out = []
    for _, q in queries:
        t = time.perf_counter()
        search(q)
        out.append(time.perf_counter() - t)
    return out


def devpid_over_http(
    workdir: Path, names: list[str], queries: list[tuple[str, str]], name: str
) -> dict[str, Any]:
    from devpid_bench.procs import ProcessGroup, start_devpid, start_upstream

    procs = ProcessGroup(workdir)
    try:
        root = workdir / f"upstream-{name}"
        write_upstream(root, names)
        upstream = start_upstream(procs, f"upstream-{name}", root)
        server = start_devpid(procs, f"devpid-{name}", workdir / f"serverdir-{name}", upstream)
        base = server.url + "+search?query="
        status, _ = get_json(base + "x")
        if status in (404, 405) or status >= 500:
            return {"skipped": f"/+search answered {status}: the route is not wired yet"}
        probe = names[len(names) // 2].lower().replace("_", "-").replace(".", "-")
        started = time.perf_counter()
        deadline = started + 300
        while time.perf_counter() < deadline:
            status, body = get_json(base + urllib.parse.quote(probe))
            hits = (body or {}).get("result", {}).get("hits", [])
            if status == 200 and any(h.get("kind") == "exact" for h in hits):
                break
            time.sleep(0.2)
        else:
            return {"skipped": f"{probe!r} never became searchable within 300 s"}
        ready = time.perf_counter() - started
        timings = timed_queries(lambda q: get_json(base + urllib.parse.quote(q)), queries)
        return {
            "ready_s": ready,
            "p50_ms": statistics.median(timings) * 1000,
            "p99_ms": percentile(timings, 99) * 1000,
        }
    finally:
        procs.close()


def devpi_web_peer(
    workdir: Path, names: list[str], queries: list[tuple[str, str]], venv: Path
) -> dict[str, Any]:
    from devpid_bench.devpi import start_devpi
    from devpid_bench.procs import BenchError, ProcessGroup, start_upstream

    log: list[str] = []
    bin_dir = venv / "bin"
    try:
        if not (bin_dir / "devpi-server").exists() or not list(
            (venv / "lib").glob("python*/site-packages/devpi_web")
        ):
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run(
                [
                    str(bin_dir / "pip"),
                    "install",
                    "--quiet",
                    "devpi-server",
                    "devpi-web",
                    "devpi-client",
                ],
                check=True,
                timeout=900,
                capture_output=True,
            )
    except (subprocess.SubprocessError, OSError) as e:
        return {"skipped": f"devpi-web could not be installed: {e}"}
    procs = ProcessGroup(workdir)
    try:
        root = workdir / "upstream-peer"
        write_upstream(root, names)
        upstream = start_upstream(procs, "upstream-peer", root)
        started = time.perf_counter()
        server = start_devpi(procs, bin_dir, workdir, {"root/pypi": upstream.simple_url}, log)
        probe = names[len(names) // 2].lower().replace("_", "-").replace(".", "-")

        def search(q: str) -> bytes:
            url = server.url + "+search?query=" + urllib.parse.quote(q)
            request = urllib.request.Request(url, headers={"Accept": "text/html"})
            with urllib.request.urlopen(request, timeout=120) as response:
                body: bytes = response.read()
                return body

        # devpi-web indexes a mirror's names once the list was fetched: ask for it
        urllib.request.urlopen(server.url + "root/pypi/+simple/", timeout=300).read()
        deadline = time.perf_counter() + 240
        while time.perf_counter() < deadline:
            if f"/{probe}".encode() in search(probe):
                break
            time.sleep(0.5)
        else:
            return {"skipped": f"{probe!r} never became searchable on devpi-web within 240 s"}
        ready = time.perf_counter() - started
        timings = timed_queries(search, queries)
        return {
            "ready_s": ready,
            "p50_ms": statistics.median(timings) * 1000,
            "p99_ms": percentile(timings, 99) * 1000,
        }
    except (BenchError, OSError, urllib.error.URLError) as e:
        return {"skipped": f"devpi-web run failed: {e}"}
    finally:
        procs.close()


# -- the report ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--names", type=int, default=700_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="one round of queries, not three")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-names", type=int, default=20_000)
    parser.add_argument("--peer-queries", type=int, default=50)
    parser.add_argument("--devpi-venv", type=Path, default=Path("/tmp/devpid-search-bench-venv"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else 3
    results: dict[str, Any] = {}

    names = synthetic_names(args.names)
    queries = query_mix(names, args.queries)
    print(f"{len(names):,} synthetic names, {len(queries)} queries x {rounds} rounds")
    local = results["in_process"] = in_process(names, queries, rounds)
    results["slices"] = slice_lengths(names, queries)
    print("\n(a) in process, one mirror of", f"{local['names']:,}", "names")
    print(f"  build            {local['build_s']:8.2f} s")
    print(
        f"  RSS              {local['rss_before_mb']:8.1f} MB before, "
        f"{local['rss_after_mb']:.1f} MB after: {local['index_rss_mb']:.1f} MB for the index"
    )
    print(
        f"  query p50        {local['p50_ms']:8.2f} ms   (target < 50 ms: "
        f"{local['p50_ms'] / 50:.2f}x of it)"
    )
    print(f"  query p99        {local['p99_ms']:8.2f} ms")
    sl = results["slices"]
    print(
        f"  reactor held     p50 {sl['slice_p50_ms']:.2f} ms, p99 {sl['slice_p99_ms']:.2f} ms, "
        f"max {sl['slice_max_ms']:.2f} ms over {sl['slices']} slices (limit 10 ms)"
    )
    print(f"  {'kind':10} {'p50 ms':>8} {'p99 ms':>8} {'with hits':>10}")
    for kind, row in local["by_kind"].items():
        print(f"  {kind:10} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['with_hits']:>10}")

    workdir = Path(tempfile.mkdtemp(prefix="devpid-search-bench-"))
    try:
        if not args.skip_http:
            http = results["http"] = devpid_over_http(workdir, names, queries, "big")
            print("\n(b) over HTTP, twist devpid from this tree")
            if "skipped" in http:
                print("  skipped:", http["skipped"])
            else:
                print(f"  names searchable after {http['ready_s']:.2f} s")
                print(f"  query p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms")
        if not args.skip_peer:
            peer_names = synthetic_names(args.peer_names, seed=20)
            peer_queries = query_mix(peer_names, args.peer_queries)
            print(f"\n(c) peer: devpi-server + devpi-web vs devpid, {len(peer_names):,} names")
            mine = results["peer_devpid"] = devpid_over_http(
                workdir, peer_names, peer_queries, "small"
            )
            if "skipped" in mine:
                # no route yet: the in-process numbers on the same names stand in
                print(f"  devpid over HTTP skipped ({mine['skipped']}); in process instead")
                local_small = in_process(peer_names, peer_queries, 1)
                mine = results["peer_devpid"] = {
                    "ready_s": local_small["build_s"],
                    "p50_ms": local_small["p50_ms"],
                    "p99_ms": local_small["p99_ms"],
                    "in_process": True,
                }
            theirs = results["peer_devpi_web"] = devpi_web_peer(
                workdir, peer_names, peer_queries, args.devpi_venv
            )
            for label, row in (("devpid", mine), ("devpi-web", theirs)):
                if "skipped" in row:
                    print(f"  {label:10} skipped: {row['skipped']}")
                else:
                    print(
                        f"  {label:10} searchable after {row['ready_s']:7.2f} s, "
                        f"p50 {row['p50_ms']:7.2f} ms, p99 {row['p99_ms']:7.2f} ms"
                    )
            if "skipped" not in mine and "skipped" not in theirs:
                print(
                    f"  ratio devpid/devpi-web: ready {mine['ready_s'] / theirs['ready_s']:.2f}, "
                    f"p50 {mine['p50_ms'] / theirs['p50_ms']:.2f}"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
