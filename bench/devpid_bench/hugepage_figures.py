"""A project page of 200,000 files (issue 17): devpid's peak memory, and its warm page time
against nginx sending the same bytes.

A local upstream serves one synthetic page (``tests.fixtures.hugepage``: 200,000
links with hashes, core metadata, sizes, upload times, requires-python, some
yanked, some with provenance; ~100 MB of PEP 691 JSON). One devpid fetches it as
pip does (PEP 691 JSON, gzip), then as HTML, plain JSON and gzip HTML, and one
file from it (its sha256 checked). Figures:

- devpid's peak RSS (``VmHWM``) after all that, in MB (goal: at most 200); the
  detail has its RSS before the page, and how long the first (cold) request took:
  fetching, parsing, storing and rendering the page;
- the warm JSON page, gzipped (~20 MB), as pip fetches it: devpid's median time
  against an nginx (``worker_processes 1``, ``sendfile on``) sending the very
  same bytes from a static file, both fetched by the same Python client in
  alternating order (goal: at most 1.5 times nginx's).

Not quick, it also makes a stage over root/pypi that holds the project and gets
its merged page (JSON and HTML): the peak RSS after that is a figure too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from devpid_bench.goals import Figure
from devpid_bench.staticnginx import static_nginx
from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.hugepage import write_huge_project
from tests.fixtures.upstream import UpstreamProcess

LINKS = 200_000
PROJECT = "huge"
PAGE = f"/root/pypi/+simple/{PROJECT}/"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
#: What pip sends.
PIP_ACCEPT = f"{JSON_V1}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
RSS_GOAL_MB = 200.0
WARM_GOAL = 1.5


def _timed_get(url: str, **headers: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    answer = http_get(url, timeout=300, **headers)
    elapsed = time.perf_counter() - started
    if answer.status != 200:
        raise RuntimeError(f"GET {url}: {answer.status} {answer.body[:200]!r}")
    return elapsed, answer.body


def _stage_page(devpid: DevpidProcess, workdir: Path) -> None:
    """A stage over root/pypi holding the project too (whitelisted): its merged page."""
    from tests.test_nginx import PASSWORD, basic_auth, build_wheel, json_call, upload

    url = devpid.url
    json_call(url, "PUT", "/bench", {"password": PASSWORD})
    config = {"bases": "root/pypi", "mirror_whitelist": [PROJECT]}
    json_call(url, "PUT", "/bench/dev", config, Authorization=basic_auth("bench"))
    wheel = build_wheel(workdir, PROJECT, "999.0")
    if upload(f"{url}/bench/dev/", wheel, "bench", PROJECT, "999.0").status != 200:
        raise RuntimeError("the upload to the stage failed")
    page = f"{url}/bench/dev/+simple/{PROJECT}/"
    _, body = _timed_get(page, Accept=PIP_ACCEPT, Accept_Encoding="gzip")
    if len(json.loads(gzip.decompress(body))["files"]) != LINKS + 1:
        raise RuntimeError("the stage's merged page does not have every link")
    _timed_get(page, Accept="text/html")


def figures(quick: bool = True) -> list[Figure]:
    rounds = 5 if quick else 15
    rss_name = f"page of {LINKS:,} links fetched, stored, served as JSON/HTML, gzip/plain, a file"
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hugepage-")))
        real = write_huge_project(workdir / "upstream", PROJECT, LINKS)
        upstream = stack.enter_context(UpstreamProcess.start(workdir / "upstream"))
        devpid = stack.enter_context(
            DevpidProcess.start(workdir / "serverdir", upstream.simple_url)
        )
        idle = devpid.peak_rss_kib() / 1024
        page = devpid.url + PAGE
        cold, zipped = _timed_get(page, Accept=PIP_ACCEPT, Accept_Encoding="gzip")
        document = json.loads(gzip.decompress(zipped))
        if len(document["files"]) != LINKS:
            raise RuntimeError(f"the page has {len(document['files'])} links, not {LINKS}")
        html, _ = _timed_get(page, Accept="text/html")
        _timed_get(page, Accept=JSON_V1)
        _timed_get(page, Accept="text/html", Accept_Encoding="gzip")
        entry = next(e for e in document["files"] if e["filename"] == real[0])
        _, content = _timed_get(devpid.url + entry["url"])
        if hashlib.sha256(content).hexdigest() != entry["hashes"]["sha256"]:
            raise RuntimeError("the file from the page does not match its hash")
        peak = devpid.peak_rss_kib() / 1024
        found = [
            Figure(
                rss_name + ": devpid peak RSS",
                peak,
                RSS_GOAL_MB,
                False,
                "MB",
                f"{idle:.0f} MB before the page; first (cold) JSON request {cold:.1f} s, "
                f"first HTML {html:.1f} s; JSON page {len(zipped) / 1e6:.1f} MB gzipped",
            )
        ]
        static = workdir / "static"
        static.mkdir()
        (static / "page.json").write_bytes(zipped)
        nginx = stack.enter_context(static_nginx(workdir, static, JSON_V1, gzipped=True)).url
        if _timed_get(f"{nginx}/page.json")[1] != zipped:
            raise RuntimeError("nginx sent other bytes")
        times: dict[str, list[float]] = {"devpid": [], "nginx": []}
        urls = {"devpid": page, "nginx": f"{nginx}/page.json"}
        headers = {"Accept": PIP_ACCEPT, "Accept_Encoding": "gzip"}
        for round_ in range(rounds):
            for who in ("devpid", "nginx") if round_ % 2 == 0 else ("nginx", "devpid"):
                elapsed, body = _timed_get(urls[who], **headers)
                if len(body) != len(zipped):
                    raise RuntimeError(f"{who} sent {len(body)} bytes, not {len(zipped)}")
                times[who].append(elapsed * 1000)
        mine, theirs = statistics.median(times["devpid"]), statistics.median(times["nginx"])
        found.append(
            Figure(
                f"warm JSON page of {LINKS:,} links, gzip ({len(zipped) / 1e6:.0f} MB), "
                "devpid / nginx",
                mine / theirs if theirs else None,
                WARM_GOAL,
                False,
                "x",
                f"devpid {mine:.0f} ms, nginx {theirs:.0f} ms (medians of {rounds})",
            )
        )
        if not quick:
            _stage_page(devpid, workdir)
            found.append(
                Figure(
                    rss_name + ", and a stage's merged page: devpid peak RSS",
                    devpid.peak_rss_kib() / 1024,
                    RSS_GOAL_MB,
                    False,
                    "MB",
                )
            )
    return found
