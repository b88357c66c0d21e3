"""Huge project pages in memory: the packed links, streamed parsing, the page file, the
rendering in pieces and to files (issue 17). The real process is tests/test_huge_pages.py."""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpid.mirror.spool import spool
from devpid.simple import model
from devpid.simple.jsonstream import JSONStreamError, scan_object
from devpid.simple.model import (
    JSON_V1,
    TEXT_HTML,
    Link,
    LinkTable,
    LinkTableBuilder,
    ProjectPage,
    ProjectStatus,
    record_filename,
    record_has_provenance,
    record_with_index,
)
from devpid.simple.parse import (
    PageParseError,
    parse_project_html,
    parse_project_json,
    parse_stored_page,
)
from devpid.simple.render import LinkRenderer, project_page_pieces, render_project_page
from tests.fixtures.hugepage import huge_files, write_huge_project

BASE = "http://127.0.0.1:1/simple/demo/"
URLS = LinkRenderer("http://devpid.test", "root/pypi")


@pytest.fixture(params=["objects", "packed"])
def packing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the links as objects (small pages) and packed (large ones),
    the packed ones in blocks of 3 so that a few links span blocks."""
    if request.param == "packed":
        monkeypatch.setattr(model, "PACK_MIN_LINKS", 1)
        monkeypatch.setattr(model, "BLOCK_LINKS", 3)
    return str(request.param)


def _links(count: int) -> list[Link]:
    return [
        Link(
            filename=f"demo-1.{n}.tar.gz",
            url=f"http://127.0.0.1:1/files/demo-1.{n}.tar.gz",
            hashes={"sha256": f"{n:064x}"} if n % 4 else {},
            size=n * 10 if n % 2 else None,
            requires_python=">=3.9" if n % 3 else None,
            yanked=[False, True, "bad"][n % 3],
            core_metadata=[False, True, {"sha256": "ab" * 32}][n % 3],
            upload_time="2024-01-01T00:00:00Z" if n % 2 else None,
            provenance=f"http://127.0.0.1:1/p/{n}" if n % 5 == 1 else None,
        )
        for n in range(count)
    ]


# -- the packed links ---------------------------------------------------------


def test_links_round_trip_in_order(packing: str) -> None:
    links = _links(10)
    table = LinkTable.of(links)
    assert len(table) == 10
    assert list(table) == links
    assert table == links and table == tuple(links)
    assert [table[n] for n in range(10)] == links
    assert table[-1] == links[-1] and table[2:5] == tuple(links[2:5])
    assert table.has_provenance
    with pytest.raises(IndexError):
        table[10]
    assert links[4] in table


def test_a_page_of_links_compares_and_finds_by_name(packing: str) -> None:
    links = _links(7)
    page = ProjectPage("demo", links)
    assert page == ProjectPage("demo", tuple(links))
    assert page.link_for("demo-1.5.tar.gz", links[5].storage_hash[:16]) == links[5]
    assert page.link_for("demo-1.5.tar.gz", "fff") is None
    assert page.link_for("nope-1.0.tar.gz", "") is None
    same_name = attrs.evolve(links[1], hashes={"sha256": "cd" * 32})
    twice = ProjectPage("demo", [*links, same_name])
    assert twice.link_for(same_name.filename, "cdc") == same_name
    assert twice.link_for(same_name.filename, links[1].storage_hash[:5]) == links[1]


_TEXT = st.text(max_size=12)
_LINKS = st.builds(
    Link,
    filename=st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True),
    url=_TEXT,
    hashes=st.dictionaries(_TEXT, _TEXT, max_size=2),
    size=st.none() | st.integers(min_value=0, max_value=2**40),
    requires_python=st.none() | _TEXT,
    yanked=st.booleans() | _TEXT,
    core_metadata=st.booleans() | st.dictionaries(_TEXT, _TEXT, max_size=2),
    upload_time=st.none() | _TEXT,
    provenance=st.none() | _TEXT,
    index=st.none() | _TEXT,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINKS, max_size=8))
def test_any_links_survive_packing_unchanged(links: list[Link]) -> None:
    """Separators, ``=``, ``,`` and ``!`` in any field, empty strings against None:
    a packed link comes back equal (the odd ones go as JSON)."""
    builder = LinkTableBuilder()
    builder._links = None  # packed from the first link
    for link in links:
        builder.append(link)
    table = builder.build()
    assert list(table) == links
    for link in links:
        assert link in list(table.named(link.filename))
    records = list(table.records())
    assert [record_filename(r) for r in records] == [link.filename for link in links]
    assert [record_has_provenance(r) for r in records] == [
        link.provenance is not None for link in links
    ]
    moved = [record_with_index(r, "u/i\x1f") for r in records]
    again = LinkTableBuilder()
    again._links = None
    for record, link in zip(moved, links, strict=True):
        again.append_record(record, link.filename, link.provenance is not None)
    assert list(again.build()) == [attrs.evolve(link, index="u/i\x1f") for link in links]


def test_a_large_page_is_packed_small(monkeypatch: pytest.MonkeyPatch) -> None:
    files = list(huge_files("demo", 5000))
    table = LinkTable.of(
        Link(f.filename, f.url, {"sha256": f.sha256}, f.size, f.requires_python, f.yanked)
        for f in files
    )
    assert table._links is None
    # compressed: well under the text itself (~250 bytes a link)
    assert table.packed_bytes < 5000 * 150
    assert [link.filename for link in table] == [f.filename for f in files]


# -- streamed JSON --------------------------------------------------------------


def _events(text: bytes, chunk: int) -> list[tuple[str, object, bool]]:
    return list(scan_object(io.BytesIO(text), frozenset({"files"}), chunk=chunk))


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 20])
def test_scan_object_yields_members_and_big_array_items(chunk: int) -> None:
    text = b' {"a": 12345, "files": [ {"x": [1, "\\u00e9\xc3\xa9"]} , 2.5e3, null ], "b": true} '
    assert _events(text, chunk) == [
        ("a", 12345, False),
        ("files", [], False),
        ("files", {"x": [1, "éé"]}, True),
        ("files", 2500.0, True),
        ("files", None, True),
        ("b", True, False),
    ]
    assert _events(b'{"files": []}', chunk) == [("files", [], False)]
    assert _events(b'{"files": 3}', chunk) == [("files", 3, False)]
    assert _events(b"{}", chunk) == []


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[]",
        b"42",
        b"{",
        b'{"a"',
        b'{"a": }',
        b'{"files": [1,',
        b'{"a": 1} x',
        b"{1: 2}",
        b'{"a": 1,}',
        b'{"files": [1 2]}',
        b'{"a": "\xff"}',
        b'{"files": [' + b"[" * 100_000,
    ],
)
def test_scan_object_refuses_what_is_not_one_object(text: bytes) -> None:
    with pytest.raises(JSONStreamError):
        _events(text, 3)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    ),
    st.integers(min_value=1, max_value=9),
)
def test_scan_object_agrees_with_json_loads(document: dict[str, object], chunk: int) -> None:
    text = json.dumps(document).encode()
    scanned: dict[str, object] = {}
    for key, value, is_item in scan_object(io.BytesIO(text), frozenset({"files"}), chunk):
        if is_item:
            scanned[key].append(value)  # type: ignore[attr-defined]
        else:
            scanned[key] = value
    assert scanned == json.loads(text)


# -- parsing large pages in pieces -------------------------------------------------------


def _upstream_page(tmp_path: Path, count: int) -> Path:
    write_huge_project(tmp_path, "demo", count)
    return tmp_path / "simple" / "demo"


def test_json_and_html_pages_parse_alike_from_files(tmp_path: Path) -> None:
    page_dir = _upstream_page(tmp_path, 3000)
    with (page_dir / "index.json").open("rb") as f:
        from_json = parse_project_json("demo", f, BASE, serial=7)
    with (page_dir / "index.html").open("rb") as f:
        from_html = parse_project_html("demo", f, BASE, serial=7)
    files = list(huge_files("demo", 3000))
    assert len(from_json.links) == len(from_html.links) == 3000
    assert from_json.links._links is None  # packed
    assert from_json.serial == 7 and from_json.versions is not None
    for f, j, h in zip(files, from_json.links, from_html.links, strict=True):
        assert j.filename == h.filename == f.filename
        assert j.url == h.url
        assert j.url.startswith(("http://127.0.0.1:1/files/", "http://127.0.0.1:9/packages/"))
        assert j.sha256 == h.sha256 == f.sha256
        assert j.requires_python == h.requires_python == f.requires_python
        assert j.yanked == h.yanked == f.yanked
        assert j.metadata_sha256 == h.metadata_sha256 == f.metadata_sha256
        assert (j.provenance is None) == (h.provenance is None) == (f.provenance is None)
        assert j.size == f.size and j.upload_time == f.upload_time and h.size is None
    # the bytes as a whole parse the same
    assert parse_project_json("demo", (page_dir / "index.json").read_bytes(), BASE, 7) == from_json


def test_a_json_page_without_files_or_cut_short_is_a_parse_error(tmp_path: Path) -> None:
    page_dir = _upstream_page(tmp_path, 10)
    body = (page_dir / "index.json").read_bytes()
    with pytest.raises(PageParseError, match="unparseable JSON"):
        parse_project_json("demo", io.BytesIO(body[: len(body) // 2]), BASE)
    with pytest.raises(PageParseError, match="no 'files' list"):
        parse_project_json("demo", io.BytesIO(b'{"name": "demo"}'), BASE)
    with pytest.raises(PageParseError, match="not an object"):
        parse_project_json("demo", io.BytesIO(b"[1]"), BASE)


def test_an_html_page_split_anywhere_parses_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from devpid.simple import parse

    body = (
        b'<html><head><meta name="pypi:project-status" content="archived"></head><body>'
        b'<a href="demo-1.0.tar.gz#sha256=' + b"a" * 64 + b'" data-yanked="x&amp;y">d</a>'
        b'<a href="demo-2.0.tar.gz" data-requires-python="&gt;=3.9">\xc3\xa9</a></body></html>'
    )
    whole = parse_project_html("demo", body, BASE)
    monkeypatch.setattr(parse, "HTML_CHUNK", 5)
    assert parse_project_html("demo", io.BytesIO(body), BASE) == whole
    assert whole.status == ProjectStatus("archived")
    assert [link.yanked for link in whole.links] == ["x&y", False]
    assert whole.links[1].requires_python == ">=3.9"


# -- the page file -------------------------------------------------------------------


def _page(packing: str) -> ProjectPage:
    return ProjectPage(
        "demo",
        _links(9),
        versions=("1.0", "1.1"),
        status=ProjectStatus("quarantined", "why"),
        serial=42,
    )


def test_the_page_file_is_written_in_pieces_and_read_back(packing: str) -> None:
    page = _page(packing)
    text = "".join(page.json_chunks())
    assert json.loads(text) == page.to_json()  # the same document as before
    assert parse_stored_page(io.BytesIO(text.encode())) == page
    assert ProjectPage.from_json(json.loads(text)) == page


def test_a_page_file_of_the_older_form_is_read(packing: str) -> None:
    """What ``json.dump(page.to_json())`` wrote before (name and links first)."""
    page = _page(packing)
    older = json.dumps(page.to_json(), separators=(",", ":")).encode()
    assert older.startswith(b'{"name":"demo","links":[')
    assert parse_stored_page(io.BytesIO(older)) == page


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{}",
        b'{"name": "demo"}',
        b'{"links": []}',
        b'{"name": "d", "links": [1]}',
        b'{"name": "d", "links": [{"url": "x"}]}',
        b'{"name": "d", "links": [{"filename"',
    ],
)
def test_a_damaged_page_file_is_a_value_error(text: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_stored_page(io.BytesIO(text))


# -- rendering ---------------------------------------------------------------------


def _old_json(page: ProjectPage, urls: LinkRenderer) -> dict[str, object]:
    """What the page's JSON said before rendering went in pieces."""
    meta: dict[str, object] = {"api-version": "1.4", "_last-serial": page.serial}
    files = []
    for link in page.links:
        entry: dict[str, object] = {
            "filename": link.filename,
            "url": urls.file_url(link),
            "hashes": link.hashes,
            "requires-python": link.requires_python,
            "yanked": link.yanked,
            "core-metadata": link.core_metadata,
            "dist-info-metadata": link.core_metadata,
        }
        if link.size is not None:
            entry["size"] = link.size
        if link.upload_time is not None:
            entry["upload-time"] = link.upload_time
        if link.provenance is not None:
            entry["provenance"] = urls.provenance_url(link)
        files.append(entry)
    return {
        "meta": meta,
        "name": page.name,
        "files": files,
        "versions": list(page.versions or ()),
        "project-status": {"status": "quarantined", "reason": "why"},
    }


def test_the_json_rendering_in_pieces_is_the_whole_page(packing: str) -> None:
    page = _page(packing)
    body = render_project_page(page, JSON_V1, URLS)
    assert json.loads(body) == _old_json(page, URLS)
    assert "".join(project_page_pieces(page, JSON_V1, URLS)).encode() == body


def test_select_drops_links_and_the_provenance_api_version(packing: str) -> None:
    page = ProjectPage("demo", _links(9))
    assert json.loads(render_project_page(page, JSON_V1, URLS))["meta"]["api-version"] == "1.3"

    def without_provenance(link: Link) -> Link | None:
        return None if link.provenance is not None else link

    data = json.loads(render_project_page(page, JSON_V1, URLS, without_provenance))
    assert data["meta"]["api-version"] == "1.1"
    assert len(data["files"]) == 7
    html = render_project_page(page, TEXT_HTML, URLS, without_provenance).decode()
    assert html.count("<a ") == 7 and 'content="1.1"' in html


def test_spooled_renderings_are_the_page_plain_and_gzipped(tmp_path: Path) -> None:
    page = _page("objects")
    for media_type in (JSON_V1, TEXT_HTML):
        body = render_project_page(page, media_type, URLS)
        spooled = spool(project_page_pieces(page, media_type, URLS), tmp_path)
        assert spooled.plain.read() == body and spooled.plain.size == len(body)
        assert gzip.decompress(spooled.gzipped.read()) == body
        assert spooled.gzipped.size == len(spooled.gzipped.read())
        fd = spooled.plain.open()
        assert os.pread(fd, 10, 0) == body[:10]
        os.close(fd)
    assert list(tmp_path.iterdir()) == []  # nameless files: nothing left on disk


def _pieces(count: int) -> Iterator[str]:
    for n in range(count):
        yield f"piece {n} " * 50


def test_spooling_large_text_in_batches(tmp_path: Path) -> None:
    spooled = spool(_pieces(5000), tmp_path)
    text = "".join(_pieces(5000)).encode()
    assert spooled.plain.read() == text
    assert gzip.decompress(spooled.gzipped.read()) == text
    spooled.plain.close()
    spooled.gzipped.close()


# -- a stage's merged page ------------------------------------------------------------


def test_a_merged_page_keeps_the_first_of_each_name_served_from_its_mirror(packing: str) -> None:
    from devpid.routes.stagepages import merged_page

    def link(name: str, digest: str) -> Link:
        return Link(name, f"http://127.0.0.1:1/{name}", {"sha256": digest * 64})

    own = [link("a-1.0.tar.gz", "0")]
    names = [("a", "1"), ("b", "1"), ("b", "2"), ("c", "1")]  # b twice: the first stays
    first = ProjectPage("demo", [link(f"{name}-1.0.tar.gz", digest) for name, digest in names])
    second = ProjectPage("demo", [link("c-1.0.tar.gz", "3"), link("d-1.0.tar.gz", "3")])
    merged = merged_page("demo", own, [("root/pypi", first), ("other/mirror", second)]).content
    assert isinstance(merged, ProjectPage)
    assert [(x.filename, x.sha256 and x.sha256[0], x.index) for x in merged.links] == [
        ("a-1.0.tar.gz", "0", None),
        ("b-1.0.tar.gz", "1", "root/pypi"),
        ("c-1.0.tar.gz", "1", "root/pypi"),
        ("d-1.0.tar.gz", "3", "other/mirror"),
    ]
