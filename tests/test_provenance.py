"""PEP 740 provenance: parsed from upstream pages, advertised at devpid's URL, cached, offline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import pytest

from devpid.files.store import FileStore
from devpid.mirror.index import MirrorIndex
from devpid.ops.fsck import check
from devpid.routes.files import _content_type, _upstream_spec
from devpid.routes.simple import SimpleRoutes
from devpid.simple.model import JSON_V1, TEXT_HTML, Link, ProjectPage, project_of_filename
from devpid.simple.parse import parse_project_html, parse_project_json
from devpid.simple.render import LinkRenderer, render_project_page
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess

PAGE_URL = "http://127.0.0.1:9/simple/demo/"
WHEEL = "demo-1.0-py3-none-any.whl"
SHA = "0123456789abcdef" * 4
URLS = LinkRenderer("", "root/pypi")
OUTSIDE = LinkRenderer("http://localhost:8080/pypi", "root/pypi")
DEVPID_URL = f"/root/pypi/+f/012/3456789abcdef/{WHEEL}.provenance"


def _json_page(*provenances: object) -> bytes:
    files = [
        {"filename": f"demo-1.{i}-py3-none-any.whl", "url": f"../../files/demo-1.{i}.whl"}
        | ({} if value is ... else {"provenance": value})
        for i, value in enumerate(provenances)
    ]
    return json.dumps({"meta": {"api-version": "1.3"}, "name": "demo", "files": files}).encode()


# -- parsing -----------------------------------------------------------------


def test_json_provenance_is_resolved_against_the_page() -> None:
    page = parse_project_json(
        "demo",
        _json_page(
            "../../integrity/demo/1.0/provenance",
            "http://127.0.0.1:9/other/provenance#frag",
            None,
            ...,
        ),
        PAGE_URL,
    )
    assert [link.provenance for link in page.links] == [
        "http://127.0.0.1:9/integrity/demo/1.0/provenance",
        "http://127.0.0.1:9/other/provenance",
        None,
        None,
    ]


@pytest.mark.parametrize(
    "junk", [42, True, "", "   ", ["a"], {"url": "x"}, "javascript:alert(1)", "ftp://127.0.0.1/p"]
)
def test_json_provenance_that_is_not_an_http_url_is_dropped(junk: object) -> None:
    page = parse_project_json("demo", _json_page(junk), PAGE_URL)
    assert len(page.links) == 1  # the file itself stays
    assert page.links[0].provenance is None


def test_html_data_provenance() -> None:
    body = b"""<html><body>
    <a href="../../files/demo-1.0.whl#sha256=%s" data-provenance="../../files/p1">a</a>
    <a href="http://127.0.0.1:9/files/demo-1.1.whl" data-provenance="http://127.0.0.2/p2">b</a>
    <a href="../../files/demo-1.2.whl" data-provenance>c</a>
    <a href="../../files/demo-1.3.whl" data-provenance="javascript:alert(1)">d</a>
    <a href="../../files/demo-1.4.whl">e</a>
    </body></html>""" % SHA.encode()
    page = parse_project_html("demo", body, PAGE_URL)
    assert [link.provenance for link in page.links] == [
        "http://127.0.0.1:9/files/p1",
        "http://127.0.0.2/p2",
        None,
        None,
        None,
    ]


def test_the_model_keeps_it_and_names_side_files() -> None:
    link = Link(WHEEL, "http://127.0.0.1:9/files/" + WHEEL, provenance="http://127.0.0.1:9/p")
    page = ProjectPage("demo", (link,))
    assert ProjectPage.from_json(json.loads(json.dumps(page.to_json()))) == page
    older = page.to_json()
    del older["links"][0]["provenance"]  # a page cached before devpid kept provenance
    assert ProjectPage.from_json(older).links[0].provenance is None
    assert project_of_filename(WHEEL + ".provenance") == "demo"
    assert project_of_filename(WHEEL + ".metadata") == "demo"


# -- rendering ---------------------------------------------------------------


def _page(provenance: str | None = "http://127.0.0.1:9/p") -> ProjectPage:
    link = Link(WHEEL, "http://127.0.0.1:9/files/" + WHEEL, {"sha256": SHA}, provenance=provenance)
    return ProjectPage("demo", (link,))


def test_json_advertises_devpids_url() -> None:
    data = json.loads(render_project_page(_page(), JSON_V1, URLS))
    assert data["files"][0]["provenance"] == DEVPID_URL
    assert data["meta"]["api-version"] == "1.3"
    outside = json.loads(render_project_page(_page(), JSON_V1, OUTSIDE))
    assert outside["files"][0]["provenance"] == "http://localhost:8080/pypi" + DEVPID_URL
    without = json.loads(render_project_page(_page(None), JSON_V1, URLS))
    assert "provenance" not in without["files"][0]
    assert without["meta"]["api-version"] == "1.1"


def test_html_advertises_devpids_url_and_parses_back() -> None:
    body = render_project_page(_page(), TEXT_HTML, URLS)
    assert f'data-provenance="{DEVPID_URL}"'.encode() in body
    assert b"127.0.0.1:9/p" not in body
    again = parse_project_html("demo", body, "http://127.0.0.1:3141/root/pypi/+simple/demo/")
    assert again.links[0].provenance == "http://127.0.0.1:3141" + DEVPID_URL
    assert b"data-provenance" not in render_project_page(_page(None), TEXT_HTML, URLS)


def test_offline_only_a_cached_provenance_is_advertised(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "serverdir")
    files.prepare()
    link = _page().links[0]
    path = files.file_path("root/pypi", SHA[:3], SHA[3:16], WHEEL)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a wheel")
    mirror = cast(MirrorIndex, type("Mirror", (), {"name": "root/pypi"})())
    routes = SimpleRoutes({"root/pypi": mirror}, files)

    def select(link: Link) -> Link | None:
        return routes._cached_only(link, mirror_name="root/pypi")

    assert select(link) == Link(WHEEL, link.url, link.hashes)
    path.with_name(WHEEL + ".provenance").write_bytes(b"{}")
    assert select(link) == link


def test_what_a_provenance_request_fetches(tmp_path: Path) -> None:
    path = tmp_path / (WHEEL + ".provenance")
    link = _page().links[0]
    spec = _upstream_spec(link, ".provenance", path)
    assert spec is not None
    assert (spec.url, spec.final_path, spec.sha256, spec.size) == (
        "http://127.0.0.1:9/p",
        path,
        None,
        None,
    )
    assert _upstream_spec(_page(None).links[0], ".provenance", path) is None
    assert _content_type(WHEEL + ".provenance") == b"application/json"
    assert _content_type(WHEEL) == b"application/octet-stream"


def test_fsck_counts_a_listed_provenance_as_not_verifiable(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "serverdir")
    files.prepare()
    content = b"a wheel"
    link = Link(
        WHEEL,
        "http://127.0.0.1:9/files/" + WHEEL,
        {"sha256": hashlib.sha256(content).hexdigest()},
        provenance="http://127.0.0.1:9/p",
    )
    files.write_page("root/pypi", "demo", ProjectPage("demo", (link,)).to_json())
    h = link.storage_hash
    path = files.file_path("root/pypi", h[:3], h[3:16], WHEEL)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    path.with_name(WHEEL + ".provenance").write_bytes(b'{"attestation_bundles": []}')
    report = check(files.serverdir)
    assert report.problems == []
    assert (report.counts.files, report.counts.by_hash, report.counts.not_verifiable) == (2, 1, 1)
    # Once no page lists it, it is an orphan like a .metadata file.
    files.write_page("root/pypi", "demo", ProjectPage("demo", ()).to_json())
    details = [p.detail for p in check(files.serverdir).problems]
    assert any("the hash in its path is its file's" in d for d in details), details


# -- end to end --------------------------------------------------------------

APP = "demo_prov-1.0-py3-none-any.whl"
SDIST = "demo_prov-1.0.tar.gz"
OLD = "demo_prov-0.9-py3-none-any.whl"
PROVENANCE = b'{"version": 1, "attestation_bundles": []}'


def _repository(root: Path) -> None:
    """An upstream with three files: two with provenance (one never fetched), one without."""
    (root / "files").mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    anchors = []
    for name in (APP, SDIST, OLD):
        content = f"the bytes of {name}".encode()
        (root / "files" / name).write_bytes(content)
        sha = hashlib.sha256(content).hexdigest()
        entry: dict[str, Any] = {"filename": name, "url": f"../../files/{name}"}
        entry["hashes"] = {"sha256": sha}
        attribute = ""
        if name != OLD:
            (root / "files" / f"{name}.provenance").write_bytes(PROVENANCE)
            entry["provenance"] = f"../../files/{name}.provenance"
            attribute = f' data-provenance="../../files/{name}.provenance"'
        entries.append(entry)
        anchors.append(f'<a href="../../files/{name}#sha256={sha}"{attribute}>{name}</a>')
    page = root / "simple" / "demo-prov"
    page.mkdir(parents=True)
    data = {"meta": {"api-version": "1.3"}, "name": "demo-prov", "files": entries}
    (page / "index.json").write_text(json.dumps(data))
    (page / "index.html").write_text("<html><body>" + "".join(anchors) + "</body></html>")
    names = {"meta": {"api-version": "1.1"}, "projects": [{"name": "demo-prov"}]}
    (root / "simple" / "index.json").write_text(json.dumps(names))
    (root / "simple" / "index.html").write_text('<a href="demo-prov/">demo-prov</a>')


def _files(devpid: DevpidProcess) -> dict[str, dict[str, Any]]:
    answer = devpid.get("/root/pypi/+simple/demo-prov/", Accept=JSON_V1)
    assert answer.status == 200, answer
    return {f["filename"]: f for f in json.loads(answer.body)["files"]}


@pytest.mark.integration
def test_provenance_is_passed_through_cached_and_served_offline(tmp_path: Path) -> None:
    _repository(tmp_path / "upstream")
    serverdir = tmp_path / "serverdir"
    with UpstreamProcess.start(tmp_path / "upstream") as upstream:
        with DevpidProcess.start(serverdir, upstream.simple_url) as devpid:
            files = _files(devpid)
            url = files[APP]["provenance"]
            assert url == files[APP]["url"] + ".provenance"
            assert "provenance" not in files[OLD]
            html = devpid.get("/root/pypi/+simple/demo-prov/", Accept="text/html").body
            assert f'data-provenance="{url}"'.encode() in html
            assert devpid.get(files[APP]["url"]).status == 200
            assert devpid.get(files[SDIST]["url"]).status == 200
            fetched = devpid.get(url)
            assert fetched.status == 200 and fetched.body == PROVENANCE
            assert fetched.headers["content-type"] == "application/json"
            cached = devpid.get(url)
            assert cached.status == 200 and cached.body == PROVENANCE
            assert cached.headers["content-type"] == "application/json"
            assert devpid.get(files[OLD]["url"] + ".provenance").status == 404
            assert upstream.stats()["gets"][f"/files/{APP}.provenance"] == 1
        upstream.reset_stats()
        with DevpidProcess.start(serverdir, upstream.simple_url, "--offline") as devpid:
            files = _files(devpid)
            assert files[APP]["provenance"] == url
            assert "provenance" not in files[SDIST]  # a cached file, its provenance never fetched
            offline = devpid.get(url)
            assert offline.status == 200 and offline.body == PROVENANCE
            assert devpid.get(files[SDIST]["url"] + ".provenance").status == 404
        assert upstream.stats()["total"] == 0
