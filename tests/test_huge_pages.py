"""A project page of 50,000 files through a real ``twistd -n devpid`` (issue 17).

The local upstream serves one synthetic page (``tests.fixtures.hugepage``) with
every kind of detail a file can have. devpid fetches it (its body to a file),
parses it in a thread into packed links, stores it link by link, renders it in a
thread to files and sends those: every link and detail must come through, as
JSON and HTML, gzipped and plain, with ETags; a file from the page downloads and
verifies; a restart (and a page file in the older form) serves the stored page;
a stage over root/pypi that holds the project serves the merged page. The
memory it all takes is bounded (the page is never held as objects whole).
The same in memory, in pieces: tests/test_huge_pages_unit.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.fixtures.devpid_process import DevpidProcess, Response, http_get
from tests.fixtures.hugepage import HugeFile, huge_files, write_huge_project
from tests.fixtures.upstream import UpstreamProcess
from tests.test_nginx import PASSWORD, basic_auth, build_wheel, json_call, upload

pytestmark = pytest.mark.integration

LINKS = 50_000
PROJECT = "huge"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
PAGE = f"/root/pypi/+simple/{PROJECT}/"
#: What holding such a page may add to the process's peak RSS: the links packed
#: (~6 MB), a chunk of the body, the renderings' batches. Built as objects, the
#: links alone would be ~60 MB, and the JSON document made of them as much again.
MAX_GROWTH_MB = 60


@attrs.define
class Huge:
    upstream: UpstreamProcess
    server: DevpidProcess
    base: Path
    files: list[HugeFile]
    idle_kib: int

    def get(self, path: str = PAGE, **headers: str) -> Response:
        return http_get(self.server.url + path, timeout=120, **headers)

    def restart(self) -> None:
        self.server.stop()
        self.server = DevpidProcess.start(self.base / "serverdir", self.upstream.simple_url)


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Huge]:
    base = tmp_path_factory.mktemp("huge")
    write_huge_project(base / "upstream", PROJECT, LINKS)
    with UpstreamProcess.start(base / "upstream") as upstream:
        server = DevpidProcess.start(base / "serverdir", upstream.simple_url)
        setup = Huge(upstream, server, base, list(huge_files(PROJECT, LINKS)), 0)
        setup.idle_kib = server.peak_rss_kib()
        try:
            yield setup
        finally:
            setup.server.stop()


def _json(answer: Response) -> dict[str, Any]:
    assert answer.status == 200, answer.body[:300]
    body = answer.body
    if answer.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    result: dict[str, Any] = json.loads(body)
    return result


def _check_entry(entry: dict[str, Any], f: HugeFile, index: str = "root/pypi") -> None:
    assert entry["filename"] == f.filename
    assert entry["hashes"] == {"sha256": f.sha256}
    assert entry["url"].endswith(f"/{index}/+f/{f.sha256[:3]}/{f.sha256[3:16]}/{f.filename}"), (
        entry["url"]
    )
    assert entry["requires-python"] == f.requires_python
    assert entry["yanked"] == f.yanked
    metadata = {"sha256": f.metadata_sha256} if f.metadata_sha256 else False
    assert entry["core-metadata"] == entry["dist-info-metadata"] == metadata
    assert entry["size"] == f.size
    assert entry["upload-time"] == f.upload_time
    if f.provenance is None:
        assert "provenance" not in entry
    else:
        assert entry["provenance"] == entry["url"] + ".provenance"


def test_the_json_page_gzipped_as_pip_asks_has_every_link_and_detail(huge: Huge) -> None:
    answer = huge.get(accept=JSON_V1, accept_encoding="gzip")
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.headers["content-type"] == JSON_V1
    assert int(answer.headers["content-length"]) == len(answer.body)
    page = _json(answer)
    assert page["name"] == PROJECT
    assert page["meta"]["api-version"] == "1.3"  # some files have provenance
    assert len(page["files"]) == LINKS
    for entry, f in zip(page["files"], huge.files, strict=True):
        _check_entry(entry, f)
    assert page["versions"][:2] == ["0.0.0", "0.0.1"]
    # the plain body is the same document, with its own ETag
    plain = huge.get(accept=JSON_V1)
    assert "content-encoding" not in plain.headers
    assert plain.headers["etag"] != answer.headers["etag"]
    assert _json(plain) == page


_ANCHOR = re.compile(r"<a ([^>]*)>([^<]*)</a>")


def test_the_html_page_plain_and_gzipped_has_every_link_and_detail(huge: Huge) -> None:
    plain = huge.get(accept="text/html")
    zipped = huge.get(accept="text/html", accept_encoding="gzip")
    assert plain.status == zipped.status == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain.body
    anchors = _ANCHOR.findall(plain.body.decode())
    assert len(anchors) == LINKS
    for (attributes, text), f in zip(anchors, huge.files, strict=True):
        assert text == f.filename
        assert f"#sha256={f.sha256}" in attributes
        assert ('data-yanked="' in attributes) == (f.yanked is not False)
        if isinstance(f.yanked, str):
            assert f'data-yanked="{f.yanked}"' in attributes
        if f.metadata_sha256:
            assert f'data-core-metadata="sha256={f.metadata_sha256}"' in attributes
        assert ("data-provenance=" in attributes) == (f.provenance is not None)
        if f.requires_python:
            assert f'data-requires-python="&gt;={f.requires_python[2:]}"' in attributes


def test_etags_answer_304_in_either_encoding(huge: Huge) -> None:
    for headers in ({"accept": JSON_V1}, {"accept": "text/html"}):
        zipped = huge.get(accept_encoding="gzip", **headers)
        plain = huge.get(**headers)
        for etag in (zipped.headers["etag"], plain.headers["etag"]):
            again = huge.get(if_none_match=etag, accept_encoding="gzip", **headers)
            assert again.status == 304 and again.body == b""


def test_a_file_of_the_page_downloads_and_verifies(huge: Huge) -> None:
    page = _json(huge.get(accept=JSON_V1))
    first = page["files"][1]
    answer = http_get(huge.server.url + first["url"])
    assert answer.status == 200
    assert hashlib.sha256(answer.body).hexdigest() == first["hashes"]["sha256"]
    made_up = page["files"][-1]  # on the page, not on the upstream: a clean 502
    assert http_get(huge.server.url + made_up["url"]).status in (404, 502)


def test_its_memory_stays_bounded(huge: Huge) -> None:
    huge.get(accept=JSON_V1, accept_encoding="gzip")
    huge.get(accept="text/html")
    grown = (huge.server.peak_rss_kib() - huge.idle_kib) / 1024
    assert grown < MAX_GROWTH_MB, f"peak RSS grew {grown:.0f} MB for a page of {LINKS} links"


def test_a_stage_over_root_pypi_serves_the_merged_page(huge: Huge, tmp_path: Path) -> None:
    url = huge.server.url
    assert json_call(url, "PUT", "/bigstage", {"password": PASSWORD}).status == 201
    # the project is the stage's too: root/pypi's files only show when whitelisted
    config = {"bases": "root/pypi", "mirror_whitelist": [PROJECT]}
    made = json_call(url, "PUT", "/bigstage/dev", config, Authorization=basic_auth("bigstage"))
    assert made.status == 200, made
    wheel = build_wheel(tmp_path, PROJECT, "999.0")
    assert upload(f"{url}/bigstage/dev/", wheel, "bigstage", PROJECT, "999.0").status == 200
    page = _json(
        huge.get(f"/bigstage/dev/+simple/{PROJECT}/", accept=JSON_V1, accept_encoding="gzip")
    )
    assert len(page["files"]) == LINKS + 1
    own = page["files"][0]
    assert own["filename"] == wheel.name and "/bigstage/dev/+f/" in own["url"]
    for entry, f in zip(page["files"][1:], huge.files, strict=True):
        _check_entry(entry, f)
    html = huge.get(f"/bigstage/dev/+simple/{PROJECT}/", accept="text/html")
    assert html.body.count(b"<a ") == LINKS + 1


def test_a_restart_serves_the_stored_page_and_reads_the_older_form(huge: Huge) -> None:
    before = _json(huge.get(accept=JSON_V1))
    page_file = huge.base / "serverdir" / "+pages" / "root" / "pypi" / f"{PROJECT}.json"
    stored = json.loads(page_file.read_bytes())
    assert len(stored["links"]) == LINKS
    huge.upstream.control(status=500)  # from here on, only the serverdir has the page
    try:
        huge.restart()
        assert _json(huge.get(accept=JSON_V1)) == before
        # as devpid wrote it before pages were stored a link at a time: name and links first
        huge.server.stop()
        older = {key: stored[key] for key in ("name", "links", "versions", "status", "serial")}
        page_file.write_text(json.dumps(older, separators=(",", ":")))
        huge.restart()
        assert _json(huge.get(accept=JSON_V1, accept_encoding="gzip")) == before
    finally:
        huge.upstream.control()
