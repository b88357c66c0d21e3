"""Browsing devpid's pages in Chromium: indexes, projects, versions, search, refresh, status.

The selectors are the page contract of the web interface (``docs`` of issue 14):
``a.index``, ``a.project``, ``a.version``, ``div#description``, ``table#files``,
``input#search-query``, ``li.hit a.hit-link``, ``button#refresh-button``,
``p#flash``, ``svg.chart``, ``section#health``.
"""

from __future__ import annotations

import re
import urllib.parse

import pytest

from tests.browser.conftest import (
    CACHED_FILE,
    DOCS_MD,
    DOCS_REST,
    MIRROR_PROJECT,
    Site,
    WatchedPage,
)
from tests.fixtures.browser import browser_unavailable, request

if (_reason := browser_unavailable()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import expect

pytestmark = pytest.mark.integration


def _path(web: WatchedPage) -> str:
    return urllib.parse.urlsplit(web.page.url).path


def test_browse_a_private_release_and_a_mirror_project(web: WatchedPage) -> None:
    page = web.page
    web.goto("/")
    page.locator('table#indexes a.index[href="/alice/dev"]').click()
    assert _path(web) == "/alice/dev"
    expect(page.locator("dl#config")).to_be_visible()
    page.locator(f'table#projects a.project[href="/alice/dev/{DOCS_MD.project}"]').click()
    assert _path(web) == f"/alice/dev/{DOCS_MD.project}"
    expect(page.locator("table#versions tr.version a.version")).to_have_count(2)
    web.screenshot("project")

    # Markdown, rendered: headings and emphasis are elements, no markup is left
    page.locator("tr.version a.version", has_text=DOCS_MD.version).click()
    assert _path(web) == f"/alice/dev/{DOCS_MD.project}/{DOCS_MD.version}"
    description = page.locator("div#description")
    expect(description.locator("h1, h2").first).to_have_text("Acme Docs Manual")
    expect(description.locator("em")).to_have_text("emphasised")
    expect(description.locator("strong")).to_have_text("strong")
    expect(description).not_to_contain_text("# Acme")
    expect(description).not_to_contain_text("*emphasised*")
    expect(page.locator("table#files")).to_contain_text(DOCS_MD.filename)
    expect(page.locator("dl#metadata")).to_contain_text("Topic :: Documentation")
    web.screenshot("version")

    # reST, rendered too
    page.go_back()
    page.locator("tr.version a.version", has_text=DOCS_REST.version).click()
    assert _path(web) == f"/alice/dev/{DOCS_REST.project}/{DOCS_REST.version}"
    expect(description.locator("h1, h2").first).to_have_text("Acme Docs, the reST edition")
    expect(description.locator("em")).to_have_text("emphasised")
    expect(description).not_to_contain_text("=====")
    expect(page.locator("table#files")).to_contain_text(DOCS_REST.filename)

    # the mirror: its cached project lists the fetched wheel as cached, the rest as listed
    page.locator("a#home").click()
    page.locator('table#indexes a.index[href="/root/pypi"]').click()
    assert _path(web) == "/root/pypi"
    page.locator(f'table#projects a.project[href="/root/pypi/{MIRROR_PROJECT}"]').click()
    assert _path(web) == f"/root/pypi/{MIRROR_PROJECT}"
    files = page.locator("table#files")
    expect(files.locator("tr.cached")).to_have_count(1)
    expect(files.locator("tr.cached")).to_contain_text(CACHED_FILE)
    expect(files.locator("tr.listed").first).to_be_visible()
    web.screenshot("mirror-project")


def test_search_finds_and_links_the_project(web: WatchedPage) -> None:
    page = web.page
    web.goto("/")
    query = page.locator("input#search-query")
    # typing asks /+search's JSON for suggestions (search-as-you-type)
    with page.expect_response(
        lambda r: "/+search?" in r.url and r.request.resource_type == "fetch"
    ) as suggested:
        query.press_sequentially(DOCS_MD.project)
    assert suggested.value.ok, suggested.value.status
    query.press("Enter")
    page.wait_for_url(re.compile(r"/\+search\?"))
    hit = page.locator("ol#results li.hit a.hit-link", has_text=DOCS_MD.project).first
    expect(hit).to_have_attribute("href", f"/alice/dev/{DOCS_MD.project}")
    hit.click()
    assert _path(web) == f"/alice/dev/{DOCS_MD.project}"
    expect(page.locator("table#versions")).to_be_visible()

    # a mirror's project is found by its name, and nonsense finds nothing
    web.goto(f"/+search?query={MIRROR_PROJECT}")
    mirror_hit = page.locator("li.hit a.hit-link", has_text=MIRROR_PROJECT).first
    expect(mirror_hit).to_have_attribute("href", f"/root/pypi/{MIRROR_PROJECT}")
    web.goto("/+search?query=zzqqxxnothing")
    expect(page.locator("p#no-results")).to_be_visible()
    expect(page.locator("li.hit")).to_have_count(0)


def test_refresh_a_mirror_project_and_refuse_cross_site_posts(web: WatchedPage, site: Site) -> None:
    page = web.page
    web.goto(f"/root/pypi/{MIRROR_PROJECT}")
    expect(page.locator("p#flash")).to_have_count(0)
    form = page.locator("form#refresh")
    action = urllib.parse.urljoin(page.url, form.get_attribute("action") or "")
    token = form.locator("input[name=csrf_token]").get_attribute("value")
    assert token

    page.locator("button#refresh-button").click()
    page.wait_for_load_state()
    assert _path(web) == f"/root/pypi/{MIRROR_PROJECT}"
    expect(page.locator("p#flash")).to_be_visible()
    expect(page.locator("table#files")).to_be_visible()

    # another site's form post: no token; the token without its cookie; all of it but
    # from another origin
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    assert cookies
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    evil = {"Origin": "http://evil.example", **form_type}
    with_token = f"csrf_token={token}".encode()
    attempts = (
        ("no token, other origin", b"", evil),
        ("token without cookie", with_token, form_type),
        ("token and cookie, other origin", with_token, {**evil, "Cookie": cookies}),
    )
    for label, body, headers in attempts:
        answer = request(action, "POST", body, headers)
        assert answer.status == 403, (label, answer.status, answer.body[:200])


def test_status_page(web: WatchedPage) -> None:
    page = web.page
    response = web.goto("/+status")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    expect(page.locator("section#health")).to_be_visible()
    for section in ("poller", "store", "workers"):
        expect(page.locator(f"section#{section}")).to_be_visible()
    assert page.locator("svg.chart").count() >= 4
    web.screenshot("status")


def test_the_watcher_sees_what_the_pages_must_never_do(web: WatchedPage) -> None:
    """The teardown checks can fail: a foreign request, a console error, an uncaught error."""
    web.page.set_content(
        '<!doctype html><img src="http://example.invalid/tracker.png">'
        "<script>console.error('logged')</script><script>throw new Error('boom')</script>"
    )  # returns once loaded: the image failed, both scripts ran
    problems = web.problems()
    assert problems["requests to other hosts"] == ["http://example.invalid/tracker.png"]
    assert any("logged" in error for error in problems["console errors"]), problems
    assert any("boom" in error for error in problems["page errors"]), problems
    web.console_errors.clear()
    web.external_requests.clear()
    web.page_errors.clear()
