"""Parsing upstream PEP 503 HTML / PEP 691 JSON pages into devpid's model."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpid.simple.model import (
    FILENAME,
    HTML_V1,
    JSON_V1,
    Link,
    ProjectPage,
    ProjectStatus,
    is_valid_project_name,
    project_of_filename,
)
from devpid.simple.parse import (
    PageParseError,
    parse_project_html,
    parse_project_json,
    parse_project_list,
    parse_project_page,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
BASE = "http://127.0.0.1:8000/simple/demo/"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4
META_SHA = "fedcba9876543210" * 4
RELPATH = re.compile(r"^[0-9a-f]{3}/[0-9a-f]{13}/(?P<filename>[^/]+)$")


def html_page(*anchors: str, head: str = "") -> bytes:
    body = "\n".join(anchors)
    return (
        f"<!DOCTYPE html><html><head>{head}<title>Links for demo</title></head>"
        f"<body><h1>Links for demo</h1>\n{body}\n</body></html>"
    ).encode()


def json_page(files: list[object], **extra: object) -> bytes:
    return json.dumps(
        {"meta": {"api-version": "1.1"}, "name": "demo", "files": files, **extra}
    ).encode()


def one_link(page: ProjectPage) -> Link:
    assert len(page.links) == 1, page.links
    return page.links[0]


def assert_one_line(error: BaseException) -> None:
    message = str(error)
    assert message
    assert "\n" not in message


# -- PEP 503 HTML ----------------------------------------------------------


def test_html_relative_href_is_resolved_against_the_page_url() -> None:
    page = parse_project_html(
        "demo",
        html_page(
            '<a href="../../files/demo-1.0.tar.gz">demo-1.0.tar.gz</a>',
            '<a href="demo-2.0.tar.gz">demo-2.0.tar.gz</a>',
            '<a href="/abs/demo-3.0.tar.gz">demo-3.0.tar.gz</a>',
            '<a href="http://localhost:9000/x/demo-4.0.tar.gz">demo-4.0.tar.gz</a>',
        ),
        BASE,
    )
    assert [link.url for link in page.links] == [
        "http://127.0.0.1:8000/files/demo-1.0.tar.gz",
        "http://127.0.0.1:8000/simple/demo/demo-2.0.tar.gz",
        "http://127.0.0.1:8000/abs/demo-3.0.tar.gz",
        "http://localhost:9000/x/demo-4.0.tar.gz",
    ]
    assert [link.filename for link in page.links] == [
        "demo-1.0.tar.gz",
        "demo-2.0.tar.gz",
        "demo-3.0.tar.gz",
        "demo-4.0.tar.gz",
    ]


def test_html_filename_is_unquoted_from_the_url_path() -> None:
    page = parse_project_html("demo", html_page('<a href="demo-1.0%2Blocal.tar.gz">x</a>'), BASE)
    link = one_link(page)
    assert link.filename == "demo-1.0+local.tar.gz"


def test_html_hash_fragment() -> None:
    page = parse_project_html(
        "demo",
        html_page(
            f'<a href="demo-1.0.tar.gz#sha256={SHA_B.upper()}">x</a>',
            f'<a href="demo-2.0.tar.gz#md5={"b" * 32}">x</a>',
            '<a href="demo-3.0.tar.gz#sha256=not-hex">x</a>',
            '<a href="demo-4.0.tar.gz#nosuchhash=abcd">x</a>',
            '<a href="demo-5.0.tar.gz#egg=demo">x</a>',
        ),
        BASE,
    )
    by_name = {link.filename: link for link in page.links}
    assert by_name["demo-1.0.tar.gz"].hashes == {"sha256": SHA_B}
    assert by_name["demo-1.0.tar.gz"].sha256 == SHA_B
    # The fragment is not part of the URL devpid fetches.
    assert by_name["demo-1.0.tar.gz"].url == BASE + "demo-1.0.tar.gz"
    assert by_name["demo-2.0.tar.gz"].hashes == {"md5": "b" * 32}
    assert by_name["demo-2.0.tar.gz"].sha256 is None
    assert by_name["demo-3.0.tar.gz"].hashes == {}
    assert by_name["demo-4.0.tar.gz"].hashes == {}
    assert by_name["demo-5.0.tar.gz"].hashes == {}


def test_html_requires_python_entities_are_decoded() -> None:
    page = parse_project_html(
        "demo",
        html_page(
            '<a href="demo-1.0.tar.gz" data-requires-python="&gt;=3.8, &lt;4">x</a>',
            '<a href="demo-2.0.tar.gz" data-requires-python="&gt;=2.7, !=3.0.*">x</a>',
            '<a href="demo-3.0.tar.gz" data-requires-python="">x</a>',
            '<a href="demo-4.0.tar.gz">x</a>',
        ),
        BASE,
    )
    assert [link.requires_python for link in page.links] == [
        ">=3.8, <4",
        ">=2.7, !=3.0.*",
        None,
        None,
    ]


def test_html_yanked_with_and_without_reason() -> None:
    page = parse_project_html(
        "demo",
        html_page(
            '<a href="demo-1.0.tar.gz" data-yanked>x</a>',
            '<a href="demo-2.0.tar.gz" data-yanked="">x</a>',
            '<a href="demo-3.0.tar.gz" data-yanked="broken &amp; &quot;bad&quot;">x</a>',
            '<a href="demo-4.0.tar.gz">x</a>',
        ),
        BASE,
    )
    assert [link.yanked for link in page.links] == [True, True, 'broken & "bad"', False]


def test_html_core_metadata_attributes() -> None:
    page = parse_project_html(
        "demo",
        html_page(
            '<a href="demo-1.0-py3-none-any.whl" data-core-metadata="true">x</a>',
            f'<a href="demo-2.0-py3-none-any.whl" data-core-metadata="sha256={META_SHA}">x</a>',
            '<a href="demo-3.0-py3-none-any.whl" data-dist-info-metadata="true">x</a>',
            '<a href="demo-4.0-py3-none-any.whl"'
            f' data-dist-info-metadata="sha256={META_SHA}">x</a>',
            # Both spellings: PEP 714's name wins.
            f'<a href="demo-5.0-py3-none-any.whl" data-core-metadata="sha256={META_SHA}"'
            f' data-dist-info-metadata="sha256={"c" * 64}">x</a>',
            '<a href="demo-6.0-py3-none-any.whl">x</a>',
        ),
        BASE,
    )
    assert [link.core_metadata for link in page.links] == [
        True,
        {"sha256": META_SHA},
        True,
        {"sha256": META_SHA},
        {"sha256": META_SHA},
        False,
    ]
    assert [link.metadata_sha256 for link in page.links] == [
        None,
        META_SHA,
        None,
        META_SHA,
        META_SHA,
        None,
    ]


def test_html_project_status_meta() -> None:
    head = (
        '<meta name="pypi:repository-version" content="1.4">'
        '<meta name="pypi:project-status" content="quarantined">'
        '<meta name="pypi:project-status-reason" content="under &lt;review&gt;">'
    )
    page = parse_project_html("demo", html_page(head=head), BASE)
    assert page.status == ProjectStatus("quarantined", "under <review>")
    assert page.links == ()

    page = parse_project_html(
        "demo", html_page(head='<meta name="pypi:project-status" content="archived">'), BASE
    )
    assert page.status == ProjectStatus("archived", None)

    assert parse_project_html("demo", html_page(), BASE).status is None


def test_html_serial_and_name_are_kept() -> None:
    page = parse_project_html("demo", html_page(), BASE, serial=42)
    assert page.name == "demo"
    assert page.serial == 42


@pytest.mark.parametrize(
    "href",
    [
        "",
        "..",
        "../",
        "%2e%2e",
        "./",
        "sub/",
        "a%2Fb-1.0.tar.gz",
        "%2Fetc%2Fpasswd",
        "..%2F..%2Fdemo-1.0.tar.gz",
        ".hidden-1.0.tar.gz",
        "demo%00-1.0.tar.gz",
        "demo%0A-1.0.tar.gz",
        "demo-1.0.tar.gz%0A",
        "#sha256=" + SHA_A,
    ],
)
def test_html_links_with_bad_filenames_are_skipped(href: str) -> None:
    page = parse_project_html(
        "demo",
        html_page(
            f'<a href="{href}">bad</a>', '<a href="demo-1.0.tar.gz">good</a>', "<a>no href</a>"
        ),
        BASE,
    )
    assert [link.filename for link in page.links] == ["demo-1.0.tar.gz"]


def test_html_malformed_url_raises_page_parse_error_or_is_skipped() -> None:
    body = html_page(
        '<a href="http://[::1/demo-1.0.tar.gz">x</a>', '<a href="demo-2.0.tar.gz">y</a>'
    )
    try:
        page = parse_project_html("demo", body, BASE)
    except PageParseError:
        return
    assert [link.filename for link in page.links] == ["demo-2.0.tar.gz"]


# -- PEP 691 JSON ----------------------------------------------------------


def test_json_full_entry() -> None:
    page = parse_project_json(
        "demo",
        json_page(
            [
                {
                    "filename": "demo-1.0-py3-none-any.whl",
                    "url": "../../files/demo-1.0-py3-none-any.whl",
                    "hashes": {"sha256": SHA_B.upper(), "md5": "b" * 32},
                    "size": 1234,
                    "upload-time": "2024-01-02T03:04:05.678901Z",
                    "requires-python": ">=3.8",
                    "yanked": "broken build",
                    "core-metadata": {"sha256": META_SHA},
                    "dist-info-metadata": {"sha256": META_SHA},
                }
            ],
            versions=["1.0", "2.0"],
            **{"project-status": {"status": "deprecated", "reason": "use other"}},
        ),
        BASE,
        serial=7,
    )
    assert page == ProjectPage(
        name="demo",
        links=(
            Link(
                filename="demo-1.0-py3-none-any.whl",
                url="http://127.0.0.1:8000/files/demo-1.0-py3-none-any.whl",
                hashes={"sha256": SHA_B, "md5": "b" * 32},
                size=1234,
                requires_python=">=3.8",
                yanked="broken build",
                core_metadata={"sha256": META_SHA},
                upload_time="2024-01-02T03:04:05.678901Z",
            ),
        ),
        versions=("1.0", "2.0"),
        status=ProjectStatus("deprecated", "use other"),
        serial=7,
    )


def test_json_minimal_entry_defaults() -> None:
    page = parse_project_json(
        "demo", json_page([{"url": "demo-1.0.tar.gz#frag", "hashes": {}}]), BASE
    )
    assert page.links == (Link(filename="demo-1.0.tar.gz", url=BASE + "demo-1.0.tar.gz"),)
    assert page.versions is None
    assert page.status is None
    assert page.serial is None


@pytest.mark.parametrize(
    ("yanked", "expected"),
    [(True, True), (False, False), ("reason", "reason"), (None, False)],
)
def test_json_yanked(yanked: object, expected: object) -> None:
    page = parse_project_json(
        "demo", json_page([{"url": "demo-1.0.tar.gz", "yanked": yanked}]), BASE
    )
    assert one_link(page).yanked == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"core-metadata": {"sha256": META_SHA.upper()}}, {"sha256": META_SHA}),
        ({"core-metadata": True}, True),
        ({"core-metadata": False}, False),
        ({}, False),
        # The pre-PEP 714 spelling is the fallback.
        ({"dist-info-metadata": {"sha256": META_SHA}}, {"sha256": META_SHA}),
        ({"dist-info-metadata": True}, True),
        # PEP 714's spelling wins when both are present.
        ({"core-metadata": False, "dist-info-metadata": True}, False),
        ({"core-metadata": {"sha256": META_SHA}, "dist-info-metadata": True}, {"sha256": META_SHA}),
    ],
)
def test_json_core_metadata(entry: dict[str, object], expected: object) -> None:
    item = {"url": "demo-1.0-py3-none-any.whl", **entry}
    link = one_link(parse_project_json("demo", json_page([item]), BASE))
    assert link.core_metadata == expected


def test_json_ignores_ill_typed_optional_fields() -> None:
    item = {
        "url": "demo-1.0.tar.gz",
        "size": -1,
        "requires-python": 3,
        "upload-time": 12,
        "hashes": {"sha256": 5},
    }
    link = one_link(parse_project_json("demo", json_page([item], versions="nope"), BASE))
    assert link.size is None
    assert link.requires_python is None
    assert link.upload_time is None
    assert link.hashes == {}


def test_json_boolean_size_is_ignored() -> None:
    link = one_link(
        parse_project_json("demo", json_page([{"url": "demo-1.0.tar.gz", "size": True}]), BASE)
    )
    assert link.size is None


def test_json_project_status() -> None:
    def status_of(value: object) -> ProjectStatus | None:
        body = json_page([], **{"project-status": value})
        return parse_project_json("demo", body, BASE).status

    assert status_of({"status": "archived"}) == ProjectStatus("archived", None)
    assert status_of({"status": "quarantined", "reason": "x"}) == ProjectStatus("quarantined", "x")
    assert status_of({"status": "active", "reason": 5}) == ProjectStatus("active", None)
    assert status_of({"reason": "no status"}) is None
    assert status_of("archived") is None


@pytest.mark.parametrize(
    "item",
    [
        {"url": "x", "filename": "../evil-1.0.tar.gz"},
        {"url": "x", "filename": "sub/demo-1.0.tar.gz"},
        {"url": "x", "filename": ".."},
        {"url": "x", "filename": 5},
        {"url": "x", "filename": "demo-0.1.tar.gz\n"},
        {"url": "a%2Fb-1.0.tar.gz"},
        {"url": ".."},
        {"url": "sub/"},
    ],
)
def test_json_entries_with_bad_filenames_are_skipped(item: dict[str, object]) -> None:
    page = parse_project_json("demo", json_page([item, {"url": "demo-1.0.tar.gz"}]), BASE)
    assert [link.filename for link in page.links] == ["demo-1.0.tar.gz"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'"files"',
        b"null",
        b"42",
        b'{"meta": {"api-version": "1.1"}, "name": "demo"}',
        b'{"files": {}}',
        b'{"files": null}',
        b'{"files": ["demo-1.0.tar.gz"]}',
        b'{"files": [{"filename": "demo-1.0.tar.gz"}]}',
        b'{"files": [{"url": 5}]}',
        b'{"files": [{"url": "demo-1.0.tar.gz", "hashes": ["sha256"]}]}',
    ],
)
def test_json_malformed_raises_page_parse_error(body: bytes) -> None:
    with pytest.raises(PageParseError) as caught:
        parse_project_json("demo", body, BASE)
    assert_one_line(caught.value)


def test_json_deeply_nested_raises_page_parse_error() -> None:
    with pytest.raises(PageParseError):
        parse_project_json("demo", b"[" * 100_000, BASE)


def test_json_malformed_url_raises_page_parse_error_or_is_skipped() -> None:
    body = json_page([{"url": "http://[::1/demo-1.0.tar.gz"}, {"url": "demo-2.0.tar.gz"}])
    try:
        page = parse_project_json("demo", body, BASE)
    except PageParseError:
        return
    assert [link.filename for link in page.links] == ["demo-2.0.tar.gz"]


@pytest.mark.parametrize("bad", ["ab", "zz" * 32, "../../../../../etc"])
def test_storage_hash_is_always_a_full_hex_digest(bad: str) -> None:
    pages = [
        parse_project_json(
            "demo", json_page([{"url": "demo-1.0.tar.gz", "hashes": {"sha256": bad}}]), BASE
        ),
        parse_project_html(
            "demo", html_page(f'<a href="demo-1.0.tar.gz#sha256={bad}">x</a>'), BASE
        ),
    ]
    for page in pages:
        assert RELPATH.match(one_link(page).relpath)


# -- dispatch by content type ------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        JSON_V1,
        "application/vnd.pypi.simple.latest+json",
        "application/json",
        "Application/VND.PyPI.Simple.V1+JSON; charset=utf-8",
    ],
)
def test_parse_project_page_json(content_type: str) -> None:
    body = json_page([{"url": "demo-1.0.tar.gz", "size": 3}])
    page = parse_project_page("demo", body, content_type, BASE, serial=3)
    assert one_link(page).size == 3
    assert page.serial == 3


@pytest.mark.parametrize(
    "content_type",
    [HTML_V1, "text/html", "text/html; charset=utf-8", "TEXT/HTML", "", "application/x+html"],
)
def test_parse_project_page_html(content_type: str) -> None:
    body = html_page(f'<a href="demo-1.0.tar.gz#sha256={SHA_A}">x</a>')
    page = parse_project_page("demo", body, content_type, BASE)
    assert one_link(page).sha256 == SHA_A


@pytest.mark.parametrize(
    "content_type", ["application/octet-stream", "text/plain", "image/png", "application/xml"]
)
def test_parse_project_page_unknown_type_raises(content_type: str) -> None:
    with pytest.raises(PageParseError) as caught:
        parse_project_page("demo", html_page(), content_type, BASE)
    assert_one_line(caught.value)
    assert content_type in str(caught.value)


# -- project lists -----------------------------------------------------------


def test_parse_project_list_html() -> None:
    body = (
        b"<html><body>"
        b'<a href="Foo_Bar/">Foo_Bar</a><a href="foo-bar/">foo-bar</a>'
        b'<a href="zope.interface/">zope.interface</a>'
        b'<a href="a/"> A </a>'
        b'<a href="x/">-bad-</a><a href="y/">has space</a><a href="z/"></a>'
        b'<a href="w/">not/valid</a>'
        b"</body></html>"
    )
    assert parse_project_list(body, "text/html") == ("a", "foo-bar", "zope-interface")
    assert parse_project_list(body, HTML_V1) == ("a", "foo-bar", "zope-interface")


def test_parse_project_list_json() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.1"},
            "projects": [
                {"name": "Foo_Bar"},
                {"name": "foo.bar"},
                {"name": "Django"},
                {"name": "-bad"},
                {"name": ""},
                {"name": 5},
                {"nom": "x"},
                "bare-string",
                {"name": "x" * 201},
            ],
        }
    ).encode()
    assert parse_project_list(body, JSON_V1) == ("django", "foo-bar")


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"projects": {}}', b"{}"])
def test_parse_project_list_bad_json_raises(body: bytes) -> None:
    with pytest.raises(PageParseError) as caught:
        parse_project_list(body, JSON_V1)
    assert_one_line(caught.value)


# -- the model ---------------------------------------------------------------


def test_relpath_and_storage_hash_with_sha256() -> None:
    link = Link("demo-1.0.tar.gz", "http://127.0.0.1/demo-1.0.tar.gz", {"sha256": SHA_B})
    assert link.storage_hash == SHA_B
    assert link.relpath == f"{SHA_B[:3]}/{SHA_B[3:16]}/demo-1.0.tar.gz"
    assert link.relpath == "012/3456789abcdef/demo-1.0.tar.gz"


def test_relpath_and_storage_hash_without_sha256_uses_the_url() -> None:
    url = "http://127.0.0.1/files/demo-1.0.tar.gz"
    link = Link("demo-1.0.tar.gz", url, {"md5": "b" * 32})
    expected = hashlib.sha256(url.encode("utf-8")).hexdigest()
    assert link.storage_hash == expected
    assert link.relpath == f"{expected[:3]}/{expected[3:16]}/demo-1.0.tar.gz"
    other = Link("demo-1.0.tar.gz", url + "?x", {})
    assert other.storage_hash != link.storage_hash


def _rich_page() -> ProjectPage:
    return ProjectPage(
        name="demo",
        links=(
            Link(
                "demo-1.0-py3-none-any.whl",
                "http://127.0.0.1/files/demo-1.0-py3-none-any.whl",
                {"sha256": SHA_B, "md5": "b" * 32},
                size=10,
                requires_python=">=3.8,<4",
                yanked="bad",
                core_metadata={"sha256": META_SHA},
                upload_time="2024-01-01T00:00:00Z",
            ),
            Link("demo-1.0.tar.gz", "http://127.0.0.1/files/demo-1.0.tar.gz", yanked=True),
            Link("demo-0.9.zip", "http://127.0.0.1/files/demo-0.9.zip", core_metadata=True),
        ),
        versions=("0.9", "1.0"),
        status=ProjectStatus("quarantined", "why"),
        serial=99,
    )


@pytest.mark.parametrize(
    "page",
    [
        _rich_page(),
        ProjectPage(name="empty", links=()),
        ProjectPage(name="s", links=(), status=ProjectStatus("archived")),
        ProjectPage(name="v", links=(), versions=()),
    ],
)
def test_project_page_json_round_trip(page: ProjectPage) -> None:
    assert ProjectPage.from_json(page.to_json()) == page
    # The way it is stored on disk: through a JSON document.
    stored = json.loads(json.dumps(page.to_json()))
    assert ProjectPage.from_json(stored) == page


def test_link_for() -> None:
    page = _rich_page()
    wheel = page.links[0]
    sdist = page.links[1]
    assert page.link_for(wheel.filename, wheel.storage_hash[:16]) is wheel
    assert page.link_for(wheel.filename, wheel.storage_hash) is wheel
    assert page.link_for(wheel.filename, "") is wheel
    assert page.link_for(sdist.filename, sdist.storage_hash[:16]) is sdist
    assert page.link_for(wheel.filename, sdist.storage_hash[:16]) is None
    assert page.link_for("other-1.0.tar.gz", wheel.storage_hash[:16]) is None


def test_link_for_same_filename_under_two_hashes() -> None:
    first = Link("demo-1.0.tar.gz", "http://127.0.0.1/a/demo-1.0.tar.gz", {"sha256": SHA_A})
    second = Link("demo-1.0.tar.gz", "http://127.0.0.1/b/demo-1.0.tar.gz", {"sha256": SHA_B})
    page = ProjectPage("demo", (first, second))
    assert page.link_for("demo-1.0.tar.gz", SHA_A[:16]) is first
    assert page.link_for("demo-1.0.tar.gz", SHA_B[:16]) is second


@pytest.mark.parametrize(
    ("filename", "project"),
    [
        ("demo-1.0-py3-none-any.whl", "demo"),
        ("Foo_Bar-2.0.1-cp311-cp311-manylinux_2_17_x86_64.whl", "foo-bar"),
        ("zope.interface-6.0-py3-none-any.whl", "zope-interface"),
        ("charset_normalizer-3.4.0-cp311-cp311-manylinux_2_17_x86_64.whl", "charset-normalizer"),
        ("six-1.17.0.tar.gz", "six"),
        ("Foo.Bar-1.0.tar.gz", "foo-bar"),
        ("foo-bar-1.0.tar.gz", "foo-bar"),
        ("demo-1.0.zip", "demo"),
        ("demo-1.0-py3-none-any.whl.metadata", "demo"),
        ("Flask-3.0.0-py3-none-any.whl.metadata", "flask"),
        ("demo-1.0-py3.11.egg", "demo"),
    ],
)
def test_project_of_filename(filename: str, project: str) -> None:
    assert project_of_filename(filename) == project


@pytest.mark.parametrize(
    "filename", ["", "garbage", "README.txt", "..", ".metadata", "index.html", "demo.tar.gz"]
)
def test_project_of_filename_garbage(filename: str) -> None:
    assert project_of_filename(filename) is None


@pytest.mark.parametrize("filename", ["-1.0.tar.gz", "a.-1.0.tar.gz", "a_-1.0.zip"])
def test_project_of_filename_never_returns_an_invalid_name(filename: str) -> None:
    result = project_of_filename(filename)
    assert result is None or is_valid_project_name(result)


@pytest.mark.parametrize(
    "name",
    ["a", "A", "7", "demo", "Foo_Bar", "zope.interface", "a-b_c.d", "x" * 200, "a1" * 100],
)
def test_valid_project_names(name: str) -> None:
    assert is_valid_project_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-a",
        "a-",
        "_a",
        "a.",
        ".",
        "..",
        "a b",
        "a/b",
        "a\\b",
        "a\nb",
        "a\n",
        "Foo_Bar\n",
        "café",
        "a+b",
        "x" * 201,
    ],
)
def test_invalid_project_names(name: str) -> None:
    assert not is_valid_project_name(name)


# -- the shared corpus -------------------------------------------------------


def _corpus_projects() -> list[str]:
    simple = CORPUS / "simple"
    if not simple.is_dir():
        return []
    return sorted(p.name for p in simple.iterdir() if (p / "index.html").is_file())


def _summary(page: ProjectPage) -> list[tuple[object, ...]]:
    return sorted(
        (link.filename, link.url, link.sha256, link.metadata_sha256, link.requires_python)
        for link in page.links
    )


@pytest.mark.skipif(not _corpus_projects(), reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("project", _corpus_projects() or ["-"])
def test_corpus_html_and_json_agree(project: str) -> None:
    directory = CORPUS / "simple" / project
    base = f"http://127.0.0.1:8000/simple/{project}/"
    from_html = parse_project_page(
        project, (directory / "index.html").read_bytes(), "text/html", base
    )
    from_json = parse_project_page(project, (directory / "index.json").read_bytes(), JSON_V1, base)
    assert from_html.links
    assert _summary(from_html) == _summary(from_json)
    for link in from_json.links:
        assert FILENAME.match(link.filename)
        assert link.sha256 is not None and len(link.sha256) == 64
        assert RELPATH.match(link.relpath)
        assert link.url == f"http://127.0.0.1:8000/files/{link.filename}"
        assert isinstance(link.size, int) and link.size > 0
        assert project_of_filename(link.filename) == project
        assert link.yanked is False
        if link.filename.endswith(".whl"):
            assert link.metadata_sha256 is not None
    raw = json.loads((directory / "index.json").read_bytes())
    assert from_json.versions == tuple(raw["versions"])


@pytest.mark.skipif(not _corpus_projects(), reason=f"no corpus at {CORPUS}")
def test_corpus_project_lists_agree() -> None:
    simple = CORPUS / "simple"
    from_html = parse_project_list((simple / "index.html").read_bytes(), "text/html")
    from_json = parse_project_list((simple / "index.json").read_bytes(), JSON_V1)
    assert from_html == from_json
    assert set(from_html) == set(_corpus_projects())


# -- robustness --------------------------------------------------------------

# No brackets: an unbalanced "[" in a URL's host is the known bug tested above.
_TEXT = st.text(st.characters(blacklist_characters="[]"), max_size=20)
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_FILE_KEYS = st.sampled_from(
    [
        "filename",
        "url",
        "hashes",
        "size",
        "yanked",
        "requires-python",
        "core-metadata",
        "dist-info-metadata",
        "upload-time",
    ]
)
_FILE_ENTRIES = st.dictionaries(
    _FILE_KEYS,
    _JSON_VALUES | st.sampled_from(["demo-1.0.tar.gz", "../x", "http://127.0.0.1/a-1.0.zip"]),
    max_size=9,
)


def _parses_or_page_parse_error(parse: object, body: bytes) -> None:
    try:
        page = parse("demo", body, BASE)  # type: ignore[operator]
    except PageParseError as e:
        assert_one_line(e)
        return
    assert isinstance(page, ProjectPage)
    for link in page.links:
        assert FILENAME.match(link.filename)


_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_html(body: bytes) -> None:
    _parses_or_page_parse_error(parse_project_html, body)


@_FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_json(body: bytes) -> None:
    _parses_or_page_parse_error(parse_project_json, body)


@_FAST
@given(
    st.lists(
        st.sampled_from(
            [
                "<a ",
                "href=",
                '"demo-1.0.tar.gz',
                "#sha256=",
                SHA_A,
                '"',
                " data-yanked",
                " data-core-metadata=",
                " data-requires-python=",
                "&gt;",
                "&#",
                "<",
                ">",
                "</a>",
                "<meta name=",
                "pypi:project-status",
                " content=",
                "<!--",
                "<![CDATA[",
                "<?",
                "\x00",
                "é",
            ]
        ),
        max_size=30,
    ).map(lambda parts: "".join(parts).encode("utf-8"))
)
def test_html_like_bytes(body: bytes) -> None:
    _parses_or_page_parse_error(parse_project_html, body)


@_FAST
@given(st.lists(_FILE_ENTRIES, max_size=4), _JSON_VALUES, _JSON_VALUES)
def test_json_like_pages(files: list[dict[str, object]], versions: object, status: object) -> None:
    body = json.dumps({"files": files, "versions": versions, "project-status": status}).encode()
    _parses_or_page_parse_error(parse_project_json, body)


def test_a_json_body_said_to_be_html_is_a_parse_error_not_an_empty_page() -> None:
    body = b' {"meta": {"api-version": "1.1"}, "name": "demo", "files": []}'
    with pytest.raises(PageParseError, match="JSON document where HTML"):
        parse_project_page("demo", body, "text/html", "http://upstream.test/simple/demo/")
    with pytest.raises(PageParseError):
        parse_project_list(b'{"projects": []}', "text/html")
