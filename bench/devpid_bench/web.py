"""The web section (issue 14): devpid's pages for people against devpi-web's, same run.

Each server is started fresh for this section and stopped at its end: a devpid and a
devpi-server with the devpi-web plugin, from a venv of this section's own
(``WEB_VENV``: devpi-web changes what devpi-server answers, so it must not share the
venv the other sections measure). On each, ``alice/dev`` (bases ``root/pypi``) gets the
same private projects, each version a wheel uploaded with a long description (Markdown
for even projects, reST for odd ones), and one mirror project of the local upstream is
fetched once (its simple page and a file) so its page shows a cached file.

Then each page is asked for with a browser's Accept header, sequentially on one
keep-alive ``http.client`` connection: one warm-up request, then ``requests`` timed
ones; p50 and p99 of each. Every devpid answer must be 200 ``text/html``: anything else
fails the section (after the table is filled). See bench/README.md, section "web".
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from devpid_bench import devpi
from devpid_bench.http import file_urls, http_get, percentile
from devpid_bench.private import call, devpi_init, login
from devpid_bench.procs import (
    BenchError,
    ProcessGroup,
    Server,
    Upstream,
    free_port,
    start_devpid,
    wait_for_http,
)
from devpid_bench.report import TABLES, Column, Results, Row
from devpid_bench.session import check_children, say
from devpid_bench.uploads import PASSWORD, USER, Poster, Target, upload_fields, wheel_bytes

#: What a browser sends (Firefox's default for a page).
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
#: Issue 14: "pages render in under 20 ms warm".
GOAL_MS = 20.0
#: devpi-server + devpi-web, apart from the venv of devpi.py (devpi-server alone).
WEB_VENV = Path.home() / ".cache" / "devpid-bench" / "devpi-web-venv"
PREFIX = "web-bench"
MARKER = "web-bench-marker"  # in every description, bold: found rendered on the version page

#: The web table: p50 and p99 of each server, and how many times devpid's p50 devpi-web's is.
TABLES.setdefault(
    "web",
    (
        Column("devpid p50", "devpid p50"),
        Column("devpid p99", "devpid p99"),
        Column("devpi-web p50", "devpi p50"),
        Column("devpi-web p99", "devpi p99"),
        Column("devpi-web/devpid p50", "devpi p50", "devpid p50"),
    ),
)


@attrs.frozen
class WebSettings:
    projects: int
    versions: int
    requests: int


def settings_for(quick: bool) -> WebSettings:
    return WebSettings(
        projects=20 if quick else 50,
        versions=3,
        requests=100 if quick else 200,
    )


# --- the data -------------------------------------------------------------------------------


def project_name(i: int) -> str:
    return f"{PREFIX}-{i:03d}"


def markdown_description(name: str, version: str) -> str:
    """A README as projects write them: headings, a list, code, a table, links."""
    rows = "\n".join(f"| `option_{n}` | {n * 10} | what option {n} does |" for n in range(12))
    changes = "\n".join(
        f"- {version}.{n}: fixed issue {n} in the frobnicator, _again_." for n in range(10)
    )
    return f"""# {name} {version}

**{MARKER}**: a project of the devpid web benchmark, with a README of the usual kind.

## Installing

```
pip install --index-url http://localhost/alice/dev/+simple/ {name}=={version}
```

## Using it

```python
import {name.replace("-", "_")}

def main(argv: list[str]) -> int:
    for arg in argv:
        print(f"{{arg!r}} is {{len(arg)}} characters")
    return 0
```

- fast: *very*
- small: `{len(name)}` characters of name
- documented: see [the docs](http://localhost/docs/{name}/) and the [changes](#changes)

| option | default | meaning |
|---|---:|---|
{rows}

## Changes

{changes}

> The frobnicator now frobs less, and **faster**.
"""


def rest_description(name: str, version: str) -> str:
    """The same README in reStructuredText: sections, literal blocks, a table, links."""
    title = f"{name} {version}"
    rows = "\n".join(
        f"   * - ``option_{n}``\n     - {n * 10}\n     - option {n}" for n in range(12)
    )
    changes = "\n".join(
        f"- {version}.{n}: fixed issue {n} in the frobnicator, *again*." for n in range(10)
    )
    return f"""{"=" * len(title)}
{title}
{"=" * len(title)}

**{MARKER}**: a project of the devpid web benchmark, with a README of the usual kind.

Installing
----------

::

    pip install --index-url http://localhost/alice/dev/+simple/ {name}=={version}

Using it
--------

.. code-block:: python

    import {name.replace("-", "_")}

    def main(argv):
        for arg in argv:
            print(repr(arg), len(arg))
        return 0

- fast: *very*
- small: ``{len(name)}`` characters of name
- documented: see `the docs <http://localhost/docs/{name}/>`_

.. list-table::
   :header-rows: 1

   * - option
     - default
     - meaning
{rows}

Changes
-------

{changes}

    The frobnicator now frobs less, and **faster**.
"""


def release_forms(settings: WebSettings) -> list[tuple[list[tuple[str, str]], str, bytes]]:
    """The uploads, the same for both servers: one wheel per version, with its README."""
    forms = []
    for i in range(settings.projects):
        name = project_name(i)
        markdown = i % 2 == 0
        for v in range(settings.versions):
            version = f"1.{v}"
            text = (markdown_description if markdown else rest_description)(name, version)
            fields = [
                *upload_fields(name, version, "bdist_wheel"),
                ("description", text),
                ("description_content_type", "text/markdown" if markdown else "text/x-rst"),
                ("keywords", "bench web devpid"),
            ]
            filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
            forms.append((fields, filename, wheel_bytes(name, version)))
    return forms


# --- the servers ----------------------------------------------------------------------------


def run_logged(log: list[str], argv: Sequence[str], timeout: float) -> str:
    """Run ``argv`` (saved in ``log``); its output; a BenchError saying why when it fails."""
    log.append(" ".join(argv))
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"
        )
    return done.stdout


def ensure_web_venv(venv: Path, log: list[str]) -> Path:
    """``venv`` with devpi-server, devpi-client and devpi-web (installed when missing)."""
    bin_dir = devpi.ensure_venv(venv, log)
    python = str(bin_dir / "python")
    check = subprocess.run([python, "-c", "import devpi_web"], capture_output=True, timeout=60)
    if check.returncode != 0:
        run_logged(log, [str(bin_dir / "pip"), "install", "--quiet", "devpi-web"], 900)
    return bin_dir


def versions_of(bin_dir: Path) -> str:
    code = (
        "import importlib.metadata as m; "
        "print(', '.join(p + ' ' + m.version(p) for p in ('devpi-server', 'devpi-web')))"
    )
    return run_logged([], [str(bin_dir / "python"), "-c", code], 60).strip()


def start_devpi_web(
    group: ProcessGroup, bin_dir: Path, here: Path, upstream: Upstream, log: list[str]
) -> Server:
    """devpi-server with devpi-web (picked up as a plugin) and its defaults (the whoosh
    indexer included); ``root/pypi`` made as a mirror of the local upstream."""
    serverdir = here / "devpi-web-serverdir"
    devpi_init(bin_dir, serverdir)
    port = free_port()
    argv = devpi.server_argv(bin_dir, port, serverdir)
    log += [
        f"{bin_dir / 'devpi-init'} --serverdir {serverdir} --root-passwd '' --no-root-pypi",
        " ".join(argv),
        f'PUT /root/pypi {{"type": "mirror", "mirror_url": "{upstream.simple_url}"}}',
    ]
    child = group.start("devpi-web", argv, cwd=here)
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(child, url + "+api", timeout=120.0)
    call(
        url,
        "PUT",
        "/root/pypi",
        {"type": "mirror", "mirror_url": upstream.simple_url},
        root_auth(url),
    )
    return Server(child=child, url=url)


def root_auth(url: str) -> dict[str, str]:
    token = login(url, "root", "")
    return {"X-Devpi-Auth": base64.b64encode(f"root:{token}".encode()).decode()}


def fill(target: Target, forms: Sequence[tuple[list[tuple[str, str]], str, bytes]]) -> float:
    """alice, alice/dev and the uploads; the seconds the uploads took."""
    url = target.server.url
    call(url, "PUT", f"/{USER}", {"password": PASSWORD}, root_auth(url))
    target.token = login(url, USER, PASSWORD)
    call(url, "PUT", f"/{USER}/dev", {"type": "stage", "bases": "root/pypi"}, target.auth)
    poster = Poster(url, target.auth)
    started = time.perf_counter()
    try:
        for fields, filename, data in forms:
            status, answer = poster.post(f"/{USER}/dev/", fields, filename, data)
            if status != 200:
                raise BenchError(f"{target.label}: POST /{USER}/dev/ {filename}: {status} {answer}")
    finally:
        poster.close()
    return time.perf_counter() - started


def cache_mirror_project(server: Server, project: str) -> str:
    """Fetch ``project``'s simple page and its first file through ``server``; the file."""
    files = file_urls(server.page_url(project))
    if not files:
        raise BenchError(f"{server.url}root/pypi/+simple/{project}/ lists no file")
    filename = sorted(files)[0]
    status, _, _ = http_get(files[filename], 120)
    if status != 200:
        raise BenchError(f"GET {files[filename]} answered {status}")
    return filename


def settle(server: Server, timeout: float = 60.0) -> None:
    """Wait until devpi-server has processed its events (devpi-web indexes in them), so
    the timed requests do not share the CPU with indexing; then a second more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = http_get(server.url + "+status", 10, {"Accept": "application/json"})
        if status == 200:
            info = json.loads(body).get("result", {})
            if info.get("event-serial") == info.get("serial"):
                break
        time.sleep(0.5)
    time.sleep(1.0)


# --- the timing -----------------------------------------------------------------------------


@attrs.frozen
class Timing:
    times: list[float]  # seconds, sorted
    status: int
    content_type: str
    body: bytes  # the last answer's
    reconnects: int

    @property
    def p50_ms(self) -> float:
        return percentile(self.times, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.times, 99) * 1000


def time_page(url: str, path: str, requests: int) -> Timing:
    """One warm-up GET of ``path``, then ``requests`` timed ones, on one keep-alive
    connection (opened again, untimed, when the server closes it)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the benchmark only talks to loopback URLs, not {url}")
    headers = {"Accept": HTML_ACCEPT}
    conn: http.client.HTTPConnection | None = None
    times: list[float] = []
    reconnects = -1
    status, content_type, body = 0, "", b""
    try:
        for n in range(requests + 1):
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                conn.connect()
                reconnects += 1
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            spent = time.perf_counter() - started
            status, content_type = response.status, response.getheader("Content-Type", "")
            if n:
                times.append(spent)
            if status != 200:
                break  # an error page is no figure: one is enough to say so
            if response.will_close:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()
    return Timing(sorted(times), status, content_type, body, reconnects)


@attrs.frozen
class Page:
    label: str
    path: str
    must_hold: tuple[str, ...] = ()  # text the page must hold (devpid: failure when not)


def pages(mirror_project: str) -> list[Page]:
    rendered = (f"<strong>{MARKER}</strong>",)  # the description, rendered
    first, second = project_name(0), project_name(1)
    return [
        Page("root /", "/", (f"/{USER}/dev",)),
        Page(f"index /{USER}/dev", f"/{USER}/dev", (first, second)),
        Page("project page", f"/{USER}/dev/{first}", ("1.0", "1.2")),
        Page("version page (Markdown)", f"/{USER}/dev/{first}/1.2", rendered),
        Page("version page (reST)", f"/{USER}/dev/{second}/1.2", rendered),
        Page("mirror project page", f"/root/pypi/{mirror_project}", (mirror_project,)),
        Page("/+status", "/+status"),
    ]


def check(timing: Timing, page: Page) -> str:
    """What is wrong with the last answer ('' when a 200 HTML page holding its texts)."""
    if timing.status != 200 or not timing.content_type.startswith("text/html"):
        return f"{timing.status} {timing.content_type!r}: {page_text(timing.body)!r}"
    text = timing.body.decode("utf-8", "replace")
    missing = [must for must in page.must_hold if must not in text]
    return f"200, but {missing} not in the page" if missing else ""


def page_text(body: bytes, size: int = 200) -> str:
    """The start of what a page says (its ``main`` when it has one), without the tags."""
    text = body.decode("utf-8", "replace")
    main = re.search(r"<main\b.*?</main>", text, re.DOTALL | re.IGNORECASE)
    text = (
        main.group(0) if main else re.sub(r"<(script|style)\b.*?</\1>", "", text, flags=re.DOTALL)
    )
    return " ".join(re.sub(r"<[^>]*>", " ", text).split())[:size]


def measure_pages(
    results: Results,
    targets: Mapping[str, Target],
    mirror_project: str,
    requests: int,
    details: dict[str, Any],
) -> list[str]:
    """A row per page; what devpid answered wrong (empty when all was right)."""
    failures: list[str] = []
    for n, page in enumerate(pages(mirror_project)):
        row = results.row(f"web_page_{n}", f"{page.label} ({page.path})", "ms", False, "web")
        for label, target in targets.items():
            try:
                timing = time_page(target.server.url, page.path, requests)
            except (OSError, http.client.HTTPException) as exc:
                row.errors[label] = f"GET {page.path}: {type(exc).__name__}: {exc}"
                if label == "devpid":
                    failures.append(row.errors[label])
                continue
            details[f"{label} {page.path}"] = {
                "status": timing.status,
                "content_type": timing.content_type,
                "bytes": len(timing.body),
                "reconnects": timing.reconnects,
                "ms": [round(t * 1000, 3) for t in timing.times],
            }
            problem = check(timing, page)
            if problem:
                row.errors[label] = f"GET {page.path}: {problem}"
                if label == "devpid":
                    failures.append(row.errors[label])
            if timing.status == 200:
                row.values[f"{label} p50"] = timing.p50_ms
                row.values[f"{label} p99"] = timing.p99_ms
        note_goal(row, requests)
        say(
            f"web: {row.label}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.values.items() if v)
        )
    return failures


def note_goal(row: Row, requests: int) -> None:
    notes = []
    p50, p99 = row.values.get("devpid p50"), row.values.get("devpid p99")
    if p50 is not None and p99 is not None:
        met = "met" if p50 < GOAL_MS else f"NOT MET by {p50 - GOAL_MS:.1f} ms"
        notes.append(f"goal devpid < {GOAL_MS:.0f} ms warm (p50): {met}")
        if p99 >= GOAL_MS:
            notes.append(f"p99 {p99 - GOAL_MS:.1f} ms over")
    row.note = "; ".join(notes)


# --- the section ------------------------------------------------------------------------------


def measure_web(
    workdir: Path,
    upstream: Upstream,
    mirror_project: str,
    results: Results,
    *,
    quick: bool,
    with_devpi: bool,
    skip_devpid: bool = False,
    venv: Path = WEB_VENV,
) -> None:
    """Start a devpid and (``with_devpi``) a devpi-server with devpi-web, fill both the
    same way, time their pages, stop them. ``mirror_project`` is on ``upstream``."""
    settings = settings_for(quick)
    here = workdir / "web"
    here.mkdir(exist_ok=True)
    details: dict[str, Any] = {}
    results.details["web"] = details
    results.meta["web_settings"] = attrs.asdict(settings)
    own = ProcessGroup(log_dir=here)
    try:
        targets: dict[str, Target] = {}
        if not skip_devpid:
            targets["devpid"] = Target(
                "devpid", start_devpid(own, "devpid-web", here / "devpid-serverdir", upstream)
            )
        if with_devpi:
            setup: list[str] = results.meta.setdefault("devpi_web_setup", [])
            try:
                bin_dir = ensure_web_venv(venv, setup)
                results.meta["devpi_web_versions"] = versions_of(bin_dir)
                targets["devpi"] = Target(
                    "devpi", start_devpi_web(own, bin_dir, here, upstream, setup)
                )
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                results.problems.append(f"web: devpi-web not measured, devpid alone: {exc}")
        if not targets:
            raise BenchError("web: no server to measure")
        say(f"web: servers {', '.join(f'{t.label} {t.server.url}' for t in targets.values())}")
        forms = release_forms(settings)
        for label, target in list(targets.items()):
            say(f"web: {label}: {len(forms)} uploads to /{USER}/dev, {mirror_project} cached")
            try:
                details[f"fill {label} s"] = fill(target, forms)
                details[f"cached {label}"] = cache_mirror_project(target.server, mirror_project)
            except (BenchError, OSError, KeyError, ValueError) as exc:
                if label == "devpid":
                    raise BenchError(f"web: devpid could not be filled: {exc}") from exc
                results.problems.append(f"web: {label} not measured: {exc}")
                del targets[label]
        if "devpi" in targets:
            settle(targets["devpi"].server)
        failures = measure_pages(results, targets, mirror_project, settings.requests, details)
        check_children(own, results)
        if failures:
            raise BenchError("web: devpid's pages are wrong:\n  " + "\n  ".join(failures))
    finally:
        own.close()
