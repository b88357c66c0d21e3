"""The project list kept in files, in memory: parsing, the names file, joins, rendering,
the name index built from it, and a mirror's list as another worker wrote it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from devpid.common.stats import Stats
from devpid.files.store import PROJECT_LIST, FileStore
from devpid.mirror.index import MirrorIndex
from devpid.mirror.projectlist import ListRenderer, ProjectList
from devpid.mirror.upstream import UpstreamClient
from devpid.search.catalog import Slicer
from devpid.search.names import NameIndex
from devpid.simple import namejob
from devpid.simple.model import HTML_V1, JSON_V1, TEXT_HTML
from devpid.simple.namelist import (
    NameListError,
    NamesContent,
    Source,
    blocks,
    joined,
    parse_upstream_list,
    read_header,
    read_names,
    render_to_files,
    write_names_file,
)
from devpid.simple.render import LinkRenderer, render_project_list
from devpid.store import StateStore
from devpid.store.embedded import EmbeddedStore
from tests.fixtures.namelists import normalise, synthetic_names

NAMES = ["Django", "zope.interface", "a", "Foo_Bar", "foo-bar", "bad name!", ""]
WANT = ["a", "django", "foo-bar", "zope-interface"]


def resolved(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not resolved"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def json_body(names: list[str]) -> bytes:
    return json.dumps(
        {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
    ).encode()


def html_body(names: list[str]) -> bytes:
    anchors = "".join(f'<a href="{n}/">{n}</a>\n' for n in names)
    return f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n".encode()


# -- parsing -------------------------------------------------------------------------------


def test_an_upstream_list_is_normalised_sorted_and_unique() -> None:
    assert parse_upstream_list(json_body(NAMES), JSON_V1) == WANT
    assert parse_upstream_list(html_body(NAMES), "text/html") == WANT
    assert parse_upstream_list(html_body(["a&amp;b", " spaced "]), HTML_V1) == ["spaced"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json_body(WANT)[:-20], JSON_V1),  # cut short
        (b'{"meta": {}}', JSON_V1),  # no projects
        (b"[1, 2]", JSON_V1),
        (html_body(WANT)[:-30], "text/html"),  # cut short: no </body>
        (json_body(WANT), "text/html"),  # JSON where HTML was expected
    ],
)
def test_a_garbled_or_partial_list_fails(body: bytes, content_type: str) -> None:
    with pytest.raises(NameListError):
        parse_upstream_list(body, content_type)


# -- the names file ------------------------------------------------------------------------


def test_the_names_file_is_json_and_reads_back_in_blocks(tmp_path: Path) -> None:
    names = sorted({normalise(n) for n in synthetic_names(20_000)})
    header = write_names_file(tmp_path / "n.json", names)
    assert json.loads((tmp_path / "n.json").read_bytes())["names"] == names
    assert read_header(tmp_path / "n.json") == header and header.count == len(names)
    pieces = list(blocks(tmp_path / "n.json", header.offset, block_bytes=1000))
    assert len(pieces) > 100 and all(pieces)
    assert "\n".join(pieces).split("\n") == names
    assert read_names(tmp_path / "n.json") == names


def test_an_empty_list_and_the_older_one_line_form(tmp_path: Path) -> None:
    write_names_file(tmp_path / "empty.json", [])
    assert read_names(tmp_path / "empty.json") == []
    assert json.loads((tmp_path / "empty.json").read_bytes())["names"] == []
    (tmp_path / "old.json").write_text(json.dumps({"names": ["b", "A"]}))
    assert read_header(tmp_path / "old.json") is None
    assert read_names(tmp_path / "old.json") == ["a", "b"]


def test_a_join_keeps_the_first_of_each_name_in_order(tmp_path: Path) -> None:
    write_names_file(tmp_path / "m.json", ["a", "b", "c", "mine"])
    header = read_header(tmp_path / "m.json")
    assert header is not None
    mirror = Source(path=str(tmp_path / "m.json"), offset=header.offset)
    stage = Source(names=("mine", "zzz"))
    flat = [n for group in joined([stage, mirror, Source(names=("c", "d"))]) for n in group]
    assert flat == ["mine", "zzz", "a", "b", "c", "d"]
    only = frozenset({"b", "zzz", "nowhere"})
    assert [n for group in joined([stage, mirror], only) for n in group] == ["zzz", "b"]


@pytest.mark.parametrize("media_type", [JSON_V1, HTML_V1, TEXT_HTML])
def test_rendered_files_are_what_render_project_list_renders(
    tmp_path: Path, media_type: str
) -> None:
    names = ["a", "b-c", "x&y"]
    urls = LinkRenderer("http://outside.test/p", "root/pypi")
    files = render_to_files(
        [names[:2], names[2:]],
        media_type,
        "http://outside.test/p/root/pypi/+simple/",
        tmp_path / "r",
    )
    assert files.plain.read_bytes() == render_project_list(names, media_type, urls)
    assert gzip.decompress(files.gzipped.read_bytes()) == files.plain.read_bytes()
    assert files.size == files.plain.stat().st_size


def test_the_name_index_built_in_steps_is_the_one_built_at_once(tmp_path: Path) -> None:
    names = sorted({normalise(n) for n in synthetic_names(12_000)})
    header = write_names_file(tmp_path / "n.json", names)
    steps = NameIndex.building(
        joined([Source(path=str(tmp_path / "n.json"), offset=header.offset)]), 500
    )
    clock = Clock()
    slicer = Slicer(clock, 0.0)
    built = Deferred.fromCoroutine(slicer.run(steps))
    while not built.called:
        clock.advance(0)
    index = resolved(built)
    assert slicer.turns >= 4  # the reactor had its turns between the blocks
    whole = NameIndex.build(names, 500)
    assert index.size == whole.size == len(names)
    # chunks as the file's blocks come, the same names in the same order
    assert "".join(c.text for c in index.chunks).split() == names
    assert index.by_length == whole.by_length
    assert names[77] in index and "nowhere-at-all" not in index


# -- a mirror's list, in memory ------------------------------------------------------------


class FakeJobs:
    """Runs jobs here, counting them."""

    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []

    def __call__(self, spec: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self.specs.append(spec)
        d: Deferred[dict[str, Any]] = Deferred()
        try:
            d.callback(namejob.run(spec))
        except NameListError as e:
            d.errback(e)
        return d


def store_for(tmp_path: Path, clock: Clock) -> StateStore:
    store = EmbeddedStore(tmp_path / "state.sqlite", clock)
    resolved(Deferred.fromCoroutine(store.open()))
    return store


def test_a_list_written_by_another_worker_is_seen_on_the_next_request(tmp_path: Path) -> None:
    clock = Clock()
    files = FileStore(tmp_path)
    files.prepare()
    store = store_for(tmp_path, clock)
    jobs = FakeJobs()
    mine = ProjectList("root/pypi", files, store, ListRenderer(files, jobs))
    assert resolved(Deferred.fromCoroutine(mine.cached())) is None
    path = files.page_path("root/pypi", PROJECT_LIST)
    path.parent.mkdir(parents=True)
    write_names_file(path, ["a", "b"])
    first = resolved(Deferred.fromCoroutine(mine.cached()))
    assert isinstance(first.content, NamesContent) and first.content.names() == ["a", "b"]
    assert resolved(Deferred.fromCoroutine(mine.cached())) is first  # a stat, nothing read
    partial = tmp_path / "other-worker.json"
    write_names_file(partial, ["a", "b", "c"])
    partial.replace(path)
    second = resolved(Deferred.fromCoroutine(mine.cached()))
    assert second is not first and second.content.names() == ["a", "b", "c"]
    # rendered once per variant, then found (also by a fresh renderer: in the serverdir)
    renderer = ListRenderer(files, jobs)
    for _ in range(2):
        resolved(
            Deferred.fromCoroutine(renderer.rendered(second.content, "root/pypi", JSON_V1, ""))
        )
    assert len(jobs.specs) == 1
    other = ListRenderer(files, jobs)
    found = resolved(
        Deferred.fromCoroutine(other.rendered(second.content, "root/pypi", JSON_V1, ""))
    )
    assert len(jobs.specs) == 1
    assert json.loads(found.plain.read_bytes())["projects"] == [{"name": n} for n in "abc"]


def test_the_older_one_line_file_is_rewritten_once(tmp_path: Path) -> None:
    clock = Clock()
    files = FileStore(tmp_path)
    files.prepare()
    path = files.page_path("root/pypi", PROJECT_LIST)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"names": ["Zope.Interface", "a"]}))
    jobs = FakeJobs()
    listing = ProjectList("root/pypi", files, store_for(tmp_path, clock), ListRenderer(files, jobs))
    entry = resolved(Deferred.fromCoroutine(listing.cached()))
    assert entry.content.names() == ["a", "zope-interface"]
    assert read_header(path) is not None and len(jobs.specs) == 1


class _Upstream:
    """A ``/simple/`` page through treq's StubTreq."""

    def __init__(self, body: bytes, content_type: str = JSON_V1) -> None:
        self.body = body
        self.content_type = content_type
        self.gets = 0

    def stub(self) -> Any:
        from treq.testing import StubTreq
        from twisted.web.resource import Resource

        upstream = self

        class Root(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                upstream.gets += 1
                request.setHeader(b"content-type", upstream.content_type.encode())
                request.setHeader(b"etag", b'"v%d"' % upstream.gets)
                return upstream.body

        return StubTreq(Root())


def test_a_refresh_replaces_the_list_and_a_garbled_one_keeps_it(tmp_path: Path) -> None:
    clock = Clock()
    files = FileStore(tmp_path)
    files.prepare()
    upstream = _Upstream(json_body(["b", "A"]))
    stub = upstream.stub()
    client = UpstreamClient("http://upstream.test/simple/", stub, clock, timeout=5)
    mirror = MirrorIndex(
        "root/pypi", client, store_for(tmp_path, clock), files, clock, Stats(), 60.0
    )

    def listed() -> list[str]:
        d = Deferred.fromCoroutine(mirror.project_list())
        stub.flush()
        content = resolved(d).content
        assert isinstance(content, NamesContent)
        return content.names()

    assert listed() == ["a", "b"]
    clock.advance(61)
    upstream.body = json_body(["b", "A", "c"])
    assert listed() == ["a", "b", "c"]
    clock.advance(61)
    upstream.body = json_body(["b", "A", "c", "d"])[:-10]
    assert listed() == ["a", "b", "c"]
    assert upstream.gets == 3
    leftovers = [p.name for p in files.page_path("root/pypi", PROJECT_LIST).parent.iterdir()]
    assert leftovers == ["+projects.json"]
