"""The upstream's whole project list at scale (issue 17): tens of thousands of names.

Against a real ``twistd -n devpid`` and a local upstream serving a synthetic
list: the list is served as HTML and PEP 691 JSON (gzip or not, with ETags),
through a stage whose bases include the mirror, searched, refreshed when it
expired, seen by a second worker sharing the serverdir, kept when the upstream
garbles it, and offline lists the cached projects. The full 700,000 names are
bench/names_bench.py's.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.namelists import normalise, synthetic_names, write_name_list
from tests.fixtures.upstream import UpstreamProcess
from tests.test_private_api import Api

pytestmark = pytest.mark.integration

COUNT = 60_000
JSON_V1 = "application/vnd.pypi.simple.v1+json"
EXPIRY = 3.0


@pytest.fixture(scope="module")
def names() -> list[str]:
    return synthetic_names(COUNT)


@pytest.fixture
def upstream(tmp_path: Path, names: list[str]) -> Iterator[UpstreamProcess]:
    write_name_list(tmp_path / "upstream", names)
    with UpstreamProcess.start(tmp_path / "upstream") as process:
        yield process


def start(
    tmp_path: Path, upstream: UpstreamProcess, *options: str, name: str = "a"
) -> DevpidProcess:
    return DevpidProcess.start(
        tmp_path / "serverdir",
        upstream.simple_url,
        "--changelog-interval",
        "0",
        "--cache-expiry",
        str(EXPIRY),
        *options,
        name=name,
    )


def json_names(devpid: DevpidProcess, path: str = "/root/pypi/+simple/") -> list[str]:
    answer = devpid.get(path, Accept=JSON_V1, Accept_Encoding="gzip")
    assert answer.status == 200, answer.body[:300]
    body = answer.body
    if answer.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return [p["name"] for p in json.loads(body)["projects"]]


def html_names(devpid: DevpidProcess, path: str = "/root/pypi/+simple/") -> list[str]:
    answer = devpid.get(path)
    assert answer.status == 200, answer.body[:300]
    assert "content-encoding" not in answer.headers
    text = answer.body.decode()
    assert text.endswith("</body></html>\n")
    return [line.split(">", 1)[1].split("<", 1)[0] for line in text.splitlines() if "<a " in line]


def expected(names: list[str]) -> list[str]:
    return sorted({normalise(n) for n in names})


def searchable(devpid: DevpidProcess, name: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = devpid.get(f"/+search?query={name}", Accept="application/json")
        assert answer.status == 200, answer.body
        hits = json.loads(answer.body)["result"]["hits"]
        if any(hit["project"] == name for hit in hits):
            return True
        time.sleep(0.1)
    return False


def test_served_as_html_and_json_with_etags_and_gzip(
    tmp_path: Path, upstream: UpstreamProcess, names: list[str]
) -> None:
    with start(tmp_path, upstream) as devpid:
        want = expected(names)
        assert json_names(devpid) == want
        assert html_names(devpid) == want
        gzipped = devpid.get("/root/pypi/+simple/", Accept_Encoding="gzip")
        assert gzipped.headers["content-encoding"] == "gzip"
        assert gzipped.headers["vary"] == "Accept, Accept-Encoding, X-Outside-URL"
        plain = devpid.get("/root/pypi/+simple/")
        assert gzip.decompress(gzipped.body) == plain.body
        assert b'<a href="/root/pypi/+simple/' + want[0].encode() + b'/">' in plain.body
        assert gzipped.headers["etag"] != plain.headers["etag"]
        for etag in (gzipped.headers["etag"], plain.headers["etag"]):
            again = devpid.get("/root/pypi/+simple/", If_None_Match=etag, Accept_Encoding="gzip")
            assert again.status == 304 and again.body == b""
        outside = devpid.get("/root/pypi/+simple/", X_Outside_URL="http://proxy.test/pypi")
        assert b'href="http://proxy.test/pypi/root/pypi/+simple/' in outside.body
        # kept in the serverdir as a names file that is also the JSON it always was
        stored = json.loads((tmp_path / "serverdir/+pages/root/pypi/+projects.json").read_bytes())
        assert stored["names"] == want and stored["count"] == len(want)
        assert "Traceback" not in devpid.log_text()


def test_through_a_stage_and_searched(
    tmp_path: Path, upstream: UpstreamProcess, names: list[str]
) -> None:
    with start(tmp_path, upstream) as devpid:
        api = Api(devpid)
        api.login("root", "")
        made = api.call("PUT", "/root/dev", {"type": "stage", "bases": ["root/pypi"]})
        assert made.status in (200, 201), made.body
        want = expected(names)
        assert json_names(devpid, "/root/dev/+simple/") == want
        html = devpid.get("/root/dev/+simple/").body
        assert html.count(b"<a ") == len(want)
        assert b'href="/root/dev/+simple/' + want[-1].encode() + b'/"' in html
        assert searchable(devpid, want[len(want) // 2])


def test_a_refresh_picks_up_new_names_and_a_second_worker_sees_them(
    tmp_path: Path, upstream: UpstreamProcess, names: list[str]
) -> None:
    with start(tmp_path, upstream) as first, start(tmp_path, upstream, name="b") as second:
        assert json_names(first) == expected(names)
        assert json_names(second) == expected(names)
        longer = names + synthetic_names(50, start=COUNT)
        write_name_list(upstream.root, longer)
        time.sleep(EXPIRY + 0.5)
        assert json_names(first) == expected(longer)  # expired: fetched again
        # the other worker: its list is young by its own clock, but the file changed
        assert json_names(second) == expected(longer)
        assert html_names(second) == expected(longer)
        assert searchable(first, normalise(longer[-1]))


@pytest.mark.parametrize("malformed", ["json", "html"])
def test_a_garbled_list_keeps_the_old_one(
    tmp_path: Path, upstream: UpstreamProcess, names: list[str], malformed: str
) -> None:
    with start(tmp_path, upstream) as devpid:
        want = expected(names)
        assert json_names(devpid) == want
        write_name_list(upstream.root, [*names, "newcomer"])
        upstream.control(malformed=malformed, page_format=malformed)
        time.sleep(EXPIRY + 0.5)
        assert json_names(devpid) == want  # stale, whole: never a partial list
        assert html_names(devpid) == want
        assert "serving stale page for +projects" in devpid.log_text()
        assert upstream.stats()["gets"]["/simple/"] == 2  # the garbled one was fetched


def test_nothing_cached_and_a_garbled_list_is_a_502(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    upstream.control(malformed="json", page_format="json")
    with start(tmp_path, upstream) as devpid:
        answer = devpid.get("/root/pypi/+simple/", Accept=JSON_V1)
        assert answer.status == 502, answer.body
        assert not (tmp_path / "serverdir/+pages/root/pypi/+projects.json").exists()


def test_offline_lists_the_cached_projects(
    tmp_path: Path, upstream: UpstreamProcess, names: list[str]
) -> None:
    with start(tmp_path, upstream) as devpid:
        assert len(json_names(devpid)) == COUNT
    with start(tmp_path, upstream, "--offline") as offline:
        assert json_names(offline) == []  # no project page cached: nothing installable
