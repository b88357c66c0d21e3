"""Content negotiation (PEP 691) and rendering pages as PEP 503 HTML / PEP 691 JSON."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urljoin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devpid.simple.model import HTML_V1, JSON_V1, TEXT_HTML, Link, ProjectPage, ProjectStatus
from devpid.simple.parse import parse_project_html, parse_project_json, parse_project_list
from devpid.simple.render import (
    CONTENT_TYPES,
    LinkRenderer,
    NotAcceptable,
    negotiate,
    render_project_list,
    render_project_page,
)

#: What pip sends (pip/_internal/index/collector.py).
PIP_ACCEPT = f"{JSON_V1}, {HTML_V1}; q=0.1, text/html; q=0.01"
#: What uv sends (uv-client's MediaType::accepts).
UV_ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, text/html;q=0.01"

URLS = LinkRenderer("", "root/pypi")
OUTSIDE = LinkRenderer("http://localhost:8080/pypi", "root/pypi")
PAGE_URL = "http://127.0.0.1:3141/root/pypi/+simple/demo/"

SHA_WHEEL = "0123456789abcdef" * 4
SHA_SDIST = "f" * 64
META_SHA = "fedcba9876543210" * 4
TRICKY_PYTHON = ">=3.8, <4, !=3.9.* & \"x\" 'y'"


def _page(
    status: ProjectStatus | None = None, versions: tuple[str, ...] | None = None
) -> ProjectPage:
    return ProjectPage(
        name="demo",
        links=(
            Link(
                filename="demo-1.0-py3-none-any.whl",
                url="http://127.0.0.1:9/files/demo-1.0-py3-none-any.whl",
                hashes={"sha256": SHA_WHEEL, "md5": "b" * 32},
                size=1234,
                requires_python=TRICKY_PYTHON,
                yanked='broken <b>"build"</b> & more',
                core_metadata={"sha256": META_SHA},
                upload_time="2024-01-02T03:04:05Z",
            ),
            Link(
                filename="demo-1.0.tar.gz",
                url="http://127.0.0.1:9/files/demo-1.0.tar.gz",
                hashes={"sha256": SHA_SDIST},
                size=99,
                yanked=True,
            ),
            Link(
                filename="demo-2.0-py3-none-any.whl",
                url="http://127.0.0.1:9/files/demo-2.0-py3-none-any.whl",
                core_metadata=True,
            ),
            Link(
                filename="demo-2.0+local.zip",
                url="http://127.0.0.1:9/files/demo-2.0%2Blocal.zip",
                hashes={"sha256": SHA_SDIST},
            ),
        ),
        versions=versions,
        status=status,
        serial=1234,
    )


def _json(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


# -- negotiation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, JSON_V1),
        (UV_ACCEPT, JSON_V1),
        # The same ranges in another order.
        (f"text/html;q=0.01, {HTML_V1};q=0.2, {JSON_V1}", JSON_V1),
        (TEXT_HTML, TEXT_HTML),
        ("text/html; charset=utf-8", TEXT_HTML),
        ("TEXT/HTML", TEXT_HTML),
        (HTML_V1, HTML_V1),
        (JSON_V1, JSON_V1),
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        ("*/*", TEXT_HTML),
        ("text/*", TEXT_HTML),
        ("application/*", HTML_V1),
        (None, TEXT_HTML),
        ("", TEXT_HTML),
        ("   ", TEXT_HTML),
        # Quality decides, not position or substring.
        (f"{JSON_V1};q=0.1, text/html", TEXT_HTML),
        (f"{JSON_V1};q=0.5, {HTML_V1};q=0.6", HTML_V1),
        # Browsers: HTML.
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", TEXT_HTML),
        # A specific range beats a wildcard that matches the same type.
        (f"*/*;q=0.1, {JSON_V1}", JSON_V1),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (f"{JSON_V1};q=0, text/html", TEXT_HTML),
        (f"{JSON_V1};q=0, */*", TEXT_HTML),
        (f"application/*, {HTML_V1};q=0", JSON_V1),
        (f"*/*, text/html;q=0, {HTML_V1};q=0", JSON_V1),
        (f"{JSON_V1}; q=0.0, {HTML_V1}; q=0.000, text/html;q=0.001", TEXT_HTML),
    ],
)
def test_negotiate_q_zero_excludes(accept: str, expected: str) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "image/png, text/plain",
        "text/html;q=0",
        f"{JSON_V1};q=0, {HTML_V1};q=0, text/html;q=0",
        "*/*;q=0",
        "text/html;q=abc",
        "garbage",
        ",,,;;;",
        ";q=1",
        "/",
        "text/html;q",
        "application/vnd.pypi.simple.v2+json",
    ],
)
def test_negotiate_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate(accept)
    assert "\n" not in str(caught.value)


def test_negotiate_nan_quality_is_invalid() -> None:
    assert negotiate(f"{JSON_V1};q=nan, text/html;q=0.5") == TEXT_HTML


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", JSON_V1),
        ("JSON", JSON_V1),
        (" html ", TEXT_HTML),
        ("html", TEXT_HTML),
        (JSON_V1, JSON_V1),
        (HTML_V1, HTML_V1),
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
    ],
)
def test_negotiate_format_parameter_wins_over_accept(fmt: str, expected: str) -> None:
    assert negotiate("application/json", fmt) == expected
    assert negotiate(PIP_ACCEPT, fmt) == expected
    assert negotiate(None, fmt) == expected


@pytest.mark.parametrize("fmt", ["unknown", "xml", "application/json", "jsonx"])
def test_negotiate_unknown_format(fmt: str) -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate(PIP_ACCEPT, fmt)
    assert fmt in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.none() | st.text(max_size=12))
def test_negotiate_garbage_only_raises_not_acceptable(accept: str, fmt: str | None) -> None:
    try:
        chosen = negotiate(accept, fmt)
    except NotAcceptable:
        return
    assert chosen in CONTENT_TYPES


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [JSON_V1, HTML_V1, TEXT_HTML, "*/*", "text/*", "application/*", "image/png"]
            ),
            st.none() | st.sampled_from(["0", "0.01", "0.1", "0.5", "1", "1.0", "x", "-1", "2"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_negotiate_structured_headers(ranges: list[tuple[str, str | None]]) -> None:
    header = ", ".join(media if q is None else f"{media};q={q}" for media, q in ranges)

    def quality(raw: str | None) -> float:
        try:
            return min(max(float(raw), 0.0), 1.0) if raw is not None else 1.0
        except ValueError:
            return 0.0

    def specificity(media: str, offered: str) -> int:
        if media == offered:
            return 2
        if media == offered.split("/")[0] + "/*":
            return 1
        return 0 if media == "*/*" else -1

    # RFC 9110: each offered type gets the quality of the most specific range matching it.
    qualities = {}
    for offered in CONTENT_TYPES:
        matches = [(specificity(m, offered), quality(q)) for m, q in ranges]
        matches = [match for match in matches if match[0] >= 0]
        if matches:
            qualities[offered] = max(matches)[1]
    best = max(qualities.values(), default=0.0)
    if best <= 0:
        with pytest.raises(NotAcceptable):
            negotiate(header)
    else:
        assert qualities[negotiate(header)] == best


# -- project pages: JSON -------------------------------------------------------


def test_render_json_is_pep_691() -> None:
    page = _page()
    data = _json(render_project_page(page, JSON_V1, URLS))
    assert data["meta"] == {"api-version": "1.1", "_last-serial": 1234}
    assert data["name"] == "demo"
    files = {entry["filename"]: entry for entry in data["files"]}
    assert list(files) == [link.filename for link in page.links]

    wheel = files["demo-1.0-py3-none-any.whl"]
    assert wheel == {
        "filename": "demo-1.0-py3-none-any.whl",
        "url": f"/root/pypi/+f/{SHA_WHEEL[:3]}/{SHA_WHEEL[3:16]}/demo-1.0-py3-none-any.whl",
        "hashes": {"sha256": SHA_WHEEL, "md5": "b" * 32},
        "size": 1234,
        "upload-time": "2024-01-02T03:04:05Z",
        "requires-python": TRICKY_PYTHON,
        "yanked": 'broken <b>"build"</b> & more',
        "core-metadata": {"sha256": META_SHA},
        "dist-info-metadata": {"sha256": META_SHA},
    }
    sdist = files["demo-1.0.tar.gz"]
    assert sdist["url"] == "/root/pypi/+f/fff/fffffffffffff/demo-1.0.tar.gz"
    assert sdist["yanked"] is True
    assert sdist["core-metadata"] is False
    assert sdist["dist-info-metadata"] is False
    assert sdist["requires-python"] is None
    assert "upload-time" not in sdist

    no_hash = files["demo-2.0-py3-none-any.whl"]
    # no sha256: devpi's +e URL, named by the upstream's directory
    assert no_hash["url"] == "/root/pypi/+e/http_127.0.0.1_9_files/demo-2.0-py3-none-any.whl"
    assert no_hash["hashes"] == {}
    assert no_hash["core-metadata"] is True
    assert no_hash["dist-info-metadata"] is True
    assert no_hash["yanked"] is False
    assert "size" not in no_hash

    # Without explicit versions, they come from the file names.
    assert data["versions"] == ["1.0", "2.0", "2.0+local"]
    assert "project-status" not in data


def test_render_json_every_url_is_under_the_prefix() -> None:
    page = _page()
    data = _json(render_project_page(page, JSON_V1, URLS))
    for entry, link in zip(data["files"], page.links, strict=True):
        assert entry["url"] == f"/root/pypi/{link.url_path}"
        assert "127.0.0.1:9" not in entry["url"]


def test_render_json_versions_and_status() -> None:
    page = _page(status=ProjectStatus("quarantined", "malware"), versions=("0.1", "1.0", "2.0"))
    data = _json(render_project_page(page, JSON_V1, URLS))
    assert data["meta"]["api-version"] == "1.4"
    assert data["versions"] == ["0.1", "1.0", "2.0"]
    assert data["project-status"] == {"status": "quarantined", "reason": "malware"}

    page = _page(status=ProjectStatus("archived"))
    data = _json(render_project_page(page, JSON_V1, URLS))
    assert data["meta"]["api-version"] == "1.4"
    assert data["project-status"] == {"status": "archived"}


def test_render_json_without_serial() -> None:
    page = ProjectPage("demo", ())
    data = _json(render_project_page(page, JSON_V1, URLS))
    assert data == {"meta": {"api-version": "1.1"}, "name": "demo", "files": [], "versions": []}


def test_render_json_parses_back() -> None:
    page = _page(status=ProjectStatus("deprecated", "use other"), versions=("1.0", "2.0"))
    body = render_project_page(page, JSON_V1, URLS)
    parsed = parse_project_json("demo", body, PAGE_URL)
    assert parsed.versions == page.versions
    assert parsed.status == page.status
    for original, back in zip(page.links, parsed.links, strict=True):
        assert back.filename == original.filename
        assert back.url == urljoin(PAGE_URL, URLS.file_url(original))
        assert back.hashes == original.hashes
        assert back.size == original.size
        assert back.requires_python == original.requires_python
        assert back.yanked == original.yanked
        assert back.core_metadata == original.core_metadata
        assert back.upload_time == original.upload_time


# -- project pages: HTML ---------------------------------------------------


@pytest.mark.parametrize("media_type", [TEXT_HTML, HTML_V1])
def test_render_html_round_trips(media_type: str) -> None:
    page = _page(status=ProjectStatus("quarantined", 'a "reason" <with> & stuff'))
    body = render_project_page(page, media_type, URLS)
    text = body.decode("utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert '<meta name="pypi:repository-version" content="1.4">' in text
    # Nothing from the page leaks into the markup unescaped.
    assert "<b>" not in text
    assert "<with>" not in text
    assert '"x"' not in text

    parsed = parse_project_html("demo", body, PAGE_URL)
    assert parsed.status == page.status
    assert [link.filename for link in parsed.links] == [link.filename for link in page.links]
    for original, back in zip(page.links, parsed.links, strict=True):
        assert back.url == urljoin(PAGE_URL, URLS.file_url(original))
        assert back.sha256 == original.sha256
        assert back.requires_python == original.requires_python
        assert back.yanked == original.yanked
        assert back.metadata_sha256 == original.metadata_sha256
        assert (back.core_metadata is False) == (original.core_metadata is False)
    # The sha256 fragment names the file's storage directory, so devpid's URL
    # parses back to the same relpath.
    for original, back in zip(page.links, parsed.links, strict=True):
        if original.sha256:
            assert back.relpath == original.relpath


def test_render_html_core_metadata_spellings() -> None:
    page = _page()
    text = render_project_page(page, TEXT_HTML, URLS).decode("utf-8")
    assert f'data-core-metadata="sha256={META_SHA}"' in text
    assert f'data-dist-info-metadata="sha256={META_SHA}"' in text
    assert 'data-core-metadata="true"' in text
    assert 'data-dist-info-metadata="true"' in text
    assert '<meta name="pypi:repository-version" content="1.1">' in text
    assert "pypi:project-status" not in text


def test_render_html_yanked_without_reason_is_an_empty_attribute() -> None:
    page = ProjectPage("demo", (Link("demo-1.0.tar.gz", "http://127.0.0.1/x", yanked=True),))
    text = render_project_page(page, TEXT_HTML, URLS).decode("utf-8")
    assert 'data-yanked=""' in text


def test_outside_url_prefix_makes_absolute_links() -> None:
    page = _page()
    data = _json(render_project_page(page, JSON_V1, OUTSIDE))
    for entry, link in zip(data["files"], page.links, strict=True):
        assert entry["url"] == f"http://localhost:8080/pypi/root/pypi/{link.url_path}"

    body = render_project_page(page, TEXT_HTML, OUTSIDE)
    # Absolute links do not depend on where the page was fetched from.
    parsed = parse_project_html("demo", body, "http://127.0.0.1:1/elsewhere/")
    assert [link.url for link in parsed.links] == [
        f"http://localhost:8080/pypi/root/pypi/{link.url_path}" for link in page.links
    ]


def test_link_renderer_urls() -> None:
    link = _page().links[0]
    assert URLS.file_url(link) == f"/root/pypi/+f/{link.relpath}"
    assert URLS.project_url("demo") == "/root/pypi/+simple/demo/"
    assert OUTSIDE.project_url("demo") == "http://localhost:8080/pypi/root/pypi/+simple/demo/"


@pytest.mark.parametrize("media_type", [JSON_V1, TEXT_HTML, HTML_V1])
def test_select_filters_links(media_type: str) -> None:
    page = _page()

    def wheels_only(link: Link) -> Link | None:
        return link if link.filename.endswith(".whl") else None

    body = render_project_page(page, media_type, URLS, select=wheels_only)
    if media_type == JSON_V1:
        data = _json(body)
        filenames = [entry["filename"] for entry in data["files"]]
        # Versions derived from what is shown.
        assert data["versions"] == ["1.0", "2.0"]
    else:
        filenames = [link.filename for link in parse_project_html("demo", body, PAGE_URL).links]
    assert filenames == ["demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"]

    nothing = render_project_page(page, media_type, URLS, select=lambda link: None)
    if media_type == JSON_V1:
        assert _json(nothing)["files"] == []
    else:
        assert parse_project_html("demo", nothing, PAGE_URL).links == ()


def test_render_is_deterministic() -> None:
    page = _page(status=ProjectStatus("archived"))
    for media_type in (JSON_V1, TEXT_HTML):
        assert render_project_page(page, media_type, URLS) == render_project_page(
            page, media_type, URLS
        )


# -- project lists -----------------------------------------------------------

NAMES = ("attrs", "charset-normalizer", "zope-interface")


def test_render_project_list_json() -> None:
    body = render_project_list(NAMES, JSON_V1, URLS)
    assert _json(body) == {
        "meta": {"api-version": "1.1"},
        "projects": [{"name": name} for name in NAMES],
    }
    assert parse_project_list(body, JSON_V1) == NAMES


@pytest.mark.parametrize("media_type", [TEXT_HTML, HTML_V1])
def test_render_project_list_html(media_type: str) -> None:
    body = render_project_list(NAMES, media_type, URLS)
    text = body.decode("utf-8")
    assert '<meta name="pypi:repository-version" content="1.1">' in text
    for name in NAMES:
        assert f'<a href="/root/pypi/+simple/{name}/">{name}</a>' in text
    assert parse_project_list(body, media_type) == NAMES


def test_render_project_list_outside_url() -> None:
    text = render_project_list(["demo"], TEXT_HTML, OUTSIDE).decode("utf-8")
    assert '<a href="http://localhost:8080/pypi/root/pypi/+simple/demo/">demo</a>' in text


@pytest.mark.parametrize("media_type", [JSON_V1, TEXT_HTML])
def test_render_empty_project_list(media_type: str) -> None:
    body = render_project_list([], media_type, URLS)
    assert parse_project_list(body, media_type) == ()
