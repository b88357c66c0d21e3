"""A real Chromium against a real ``twistd -n devpid``, and the data the pages show.

One devpid (package scope) in front of a local upstream serving the demo
repository. Alice has ``alice/dev`` (bases ``root/pypi``) with two private
releases whose descriptions render (Markdown and reST), and ``alice/xss`` with a
release whose every free-text field carries script that would set
``window.__xss``. A demo project's wheel is fetched through the mirror first, so
``root/pypi`` has a cached project with a cached and a listed file.

Each test gets a fresh browser context and a :class:`WatchedPage` that records
console errors, uncaught page errors and any request to another host (those are
also aborted); the test fails at teardown if any were seen.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest

from tests.fixtures.browser import (
    SCREENSHOTS,
    Release,
    basic,
    browser_unavailable,
    chromium_executable,
    put_json,
    request,
    upload,
)
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Repository
from tests.fixtures.upstream import UpstreamProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Response, Route

ALICE = basic("alice", "alice-secret")
MIRROR_PROJECT = "devpid-demo-lib"
#: The file fetched through the mirror before the tests: cached; the others are listed.
CACHED_FILE = "devpid_demo_lib-2.0-py3-none-any.whl"

MARKDOWN_DOCS = """\
# Acme Docs Manual

Acme docs writes *emphasised* documentation and **strong** claims.

## Installing

    pip install acme-docs
"""
REST_DOCS = """\
Acme Docs, the reST edition
===========================

Acme docs writes *emphasised* documentation.

Installing
----------

Run ``pip install acme-docs``.
"""
DOCS_MD = Release(
    "acme-docs",
    "1.0",
    summary="Documentation tooling for Acme",
    description=MARKDOWN_DOCS,
    content_type="text/markdown",
    keywords="docs,acme,writing",
    classifiers=(
        "Programming Language :: Python :: 3",
        "Topic :: Documentation",
        "License :: OSI Approved :: MIT License",
    ),
    author="Alice Acme",
    home_page="http://localhost/acme-docs",
    license="MIT",
)
DOCS_REST = attrs.evolve(DOCS_MD, version="2.0", description=REST_DOCS, content_type="text/x-rst")

#: Each would set ``window.__xss`` if the browser ran it (see the XSS test's sanity check).
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_SVG = '"><svg onload=window.__xss=1>'
XSS_HOVER = '<b onmouseover="window.__xss=1">hover me</b>'
XSS_LINK = '<a href="javascript:window.__xss=1">x</a>'
XSS_JS_URL = "javascript:window.__xss=1"
XSS_MARKDOWN = f"""\
# Probe heading

{XSS_SCRIPT}

{XSS_IMG}

[click](javascript:window.__xss=1)

{XSS_LINK}

{XSS_SVG}

<div onmouseover="window.__xss=1">hover me</div>

<iframe src="javascript:window.__xss=1"></iframe>

<form action="javascript:window.__xss=1"><button>go</button></form>
"""
XSS_REST = f"""\
Probe heading
=============

`click <javascript:window.__xss=1>`_ and `another <{XSS_JS_URL}>`__

.. image:: javascript:window.__xss=1

{XSS_SCRIPT}

{XSS_IMG}

{XSS_SVG}
"""
XSS_REST_RAW = f"""\
Probe heading
=============

.. raw:: html

   {XSS_SCRIPT}
   {XSS_HOVER}
"""
XSS_MD = Release(
    "xss-probe",
    "1.0",
    summary=f"{XSS_SCRIPT} {XSS_SVG} {XSS_HOVER} {XSS_IMG}",
    description=XSS_MARKDOWN,
    content_type="text/markdown",
    keywords=f"xss,{XSS_SVG},{XSS_SCRIPT}",
    classifiers=(f"Topic :: {XSS_SCRIPT}", f"Framework :: {XSS_IMG}"),
    author=XSS_IMG,
    home_page=XSS_JS_URL,
    project_urls=(f"Homepage, {XSS_JS_URL}", f"Docs, {XSS_SVG}"),
    license=XSS_LINK,
)
XSS_RST = attrs.evolve(XSS_MD, version="2.0", description=XSS_REST, content_type="text/x-rst")
XSS_RST_RAW = attrs.evolve(
    XSS_MD, version="3.0", description=XSS_REST_RAW, content_type="text/x-rst"
)
XSS_INDEX_CONFIG = {"bases": "root/pypi", "title": XSS_SCRIPT, "description": XSS_IMG}


@attrs.frozen
class Site:
    server: DevpidProcess
    upstream: UpstreamProcess

    @property
    def url(self) -> str:
        return self.server.url


def _populate(server: DevpidProcess, dists: Path) -> None:
    answer = put_json(f"{server.url}/alice", {"password": "alice-secret"})
    assert answer.status == 201, answer
    for index, config in (("dev", {"bases": "root/pypi"}), ("xss", XSS_INDEX_CONFIG)):
        answer = put_json(f"{server.url}/alice/{index}", config, ALICE)
        assert answer.status in (200, 201), answer
    for index, releases in (
        ("dev", (DOCS_MD, DOCS_REST)),
        ("xss", (XSS_MD, XSS_RST, XSS_RST_RAW)),
    ):
        for release in releases:
            answer = upload(f"{server.url}/alice/{index}/", ALICE, release, dists)
            assert answer.status == 200, answer
    _cache_through_mirror(server)


def _cache_through_mirror(server: DevpidProcess) -> None:
    """Fetch one demo wheel through ``root/pypi``: its project then has cached files."""
    page_url = f"{server.url}/root/pypi/+simple/{MIRROR_PROJECT}/"
    page = request(page_url, headers={"Accept": "text/html"})
    assert page.status == 200, page
    hrefs = re.findall(r'href="([^"#]+)', page.body.decode())
    [href] = [h for h in hrefs if h.endswith("/" + CACHED_FILE)]
    answer = request(urllib.parse.urljoin(page_url, href))
    assert answer.status == 200 and answer.body[:2] == b"PK", answer.status


@pytest.fixture(scope="package")
def site(demo_repository: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    reason = browser_unavailable()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("browser")
    with (
        UpstreamProcess.start(demo_repository.root) as upstream,
        DevpidProcess.start(base / "serverdir", upstream.simple_url) as server,
    ):
        _populate(server, base / "dists")
        yield Site(server, upstream)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    reason = browser_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_executable(), headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _is_local(url: str, origin: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return f"{parts.scheme}://{parts.netloc}" == origin


@attrs.define
class WatchedPage:
    """A page that remembers what must never happen on devpid's pages."""

    page: Page
    origin: str
    console_errors: list[str] = attrs.Factory(list)
    page_errors: list[str] = attrs.Factory(list)
    external_requests: list[str] = attrs.Factory(list)
    #: Console errors a test expects, by a predicate on the message.
    allowed: list[Callable[[ConsoleMessage], bool]] = attrs.Factory(list)

    def attach(self) -> None:
        self.page.on("console", lambda message: self._console(message))
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.context.route(
            lambda url: not _is_local(url, self.origin), lambda route: self._external(route)
        )

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(allow(message) for allow in self.allowed):
            self.console_errors.append(f"{message.text} ({message.location.get('url')})")

    def _external(self, route: Route) -> None:
        self.external_requests.append(route.request.url)
        route.abort()

    def goto(self, path: str) -> Response:
        response = self.page.goto(self.origin + path)
        assert response is not None, path
        return response

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def problems(self) -> dict[str, list[str]]:
        found = {
            "console errors": self.console_errors,
            "page errors": self.page_errors,
            "requests to other hosts": self.external_requests,
        }
        return {kind: items for kind, items in found.items() if items}


@pytest.fixture
def web(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[WatchedPage]:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    watched = WatchedPage(context.new_page(), site.url)
    watched.attach()
    try:
        yield watched
    finally:
        try:
            if watched.page.url.startswith(site.url):
                watched.screenshot(re.sub(r"[^\w.-]", "_", request.node.name))
        finally:
            context.close()
    assert not watched.problems(), watched.problems()
