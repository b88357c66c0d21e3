"""``devpid warm``'s pieces in memory: targets, requirements files, pip's report,
the fallback to one requirement at a time, sdists on a page, and the summary."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devpid.cli.warm import Options
from devpid.tools.warm.fetch import Wanted, fetch_all
from devpid.tools.warm.http import Origin, file_key, is_distribution_path
from devpid.tools.warm.pages import PageFile, files_of_page, sdists_of
from devpid.tools.warm.progress import Progress
from devpid.tools.warm.requirements import RequirementsError, Unit, read_requirements
from devpid.tools.warm.resolve import Resolver, files_from_report, reason_from
from devpid.tools.warm.summary import FileResult, ResolutionFailure, Summary, human_bytes
from devpid.tools.warm.targets import Target, TargetError, parse_target, targets_from


def test_target_specs() -> None:
    target = parse_target(
        "platform=manylinux2014_x86_64,platform=manylinux_2_28_x86_64,python=3.12"
    )
    assert target == Target(("manylinux2014_x86_64", "manylinux_2_28_x86_64"), "3.12")
    assert target.pip_options() == [
        "--only-binary=:all:",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.12",
    ]
    assert (
        target.label() == "platform=manylinux2014_x86_64,platform=manylinux_2_28_x86_64,python=3.12"
    )
    assert Target().pip_options() == [] and Target().label() == "this interpreter"
    for bad in ("", "platform", "os=linux", "python=3.11,python=3.12", "platform=a b"):
        with pytest.raises(TargetError):
            parse_target(bad)


def test_pip_style_options_give_one_target_per_platform_and_python() -> None:
    targets = targets_from([], ["linux_x86_64", "win_amd64"], ["3.11", "3.12"], ["abi3"])
    assert [(t.platforms, t.python_version, t.abis) for t in targets] == [
        (("linux_x86_64",), "3.11", ("abi3",)),
        (("linux_x86_64",), "3.12", ("abi3",)),
        (("win_amd64",), "3.11", ("abi3",)),
        (("win_amd64",), "3.12", ("abi3",)),
    ]
    assert targets_from([]) == [Target()]
    assert targets_from(["platform=a"], ["a"]) == [Target(("a",))]


def test_options_may_follow_the_requirements() -> None:
    options = Options()
    options.parseOptions(["flask", "-r", "a.txt", "--target", "platform=a", "pytest", "--json"])
    assert options["requirements"] == ["flask", "pytest"]
    assert options["requirement_files"] == ["a.txt"]
    assert options["target_specs"] == ["platform=a"]
    assert options["json"] and options["jobs"] == 4


def test_requirements_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.txt").write_text("six==1.16 --hash=sha256:abc\n")
    (tmp_path / "c.txt").write_text("attrs<30\n")
    main = tmp_path / "requirements.txt"
    main.write_text(
        "# comment\nflask>=2 \\\n  # not a comment inside\n"
        "-r sub/more.txt\n--constraint c.txt\n-e ./local\n--index-url http://x/\n"
        "requests ; python_version >= '3.8'  # why\n"
    )
    requirements = read_requirements(["pytest"], [str(main)])
    assert requirements.units == (
        Unit("pytest", "command line"),
        Unit("flask>=2", f"{main}:2"),
        Unit("six==1.16", f"{tmp_path / 'sub' / 'more.txt'}:1"),
        Unit("requests ; python_version >= '3.8'", f"{main}:8"),
    )
    assert requirements.constraints == (tmp_path / "c.txt",)
    assert [note.split(": ", 1)[0] for note in requirements.notes] == [f"{main}:6", f"{main}:7"]
    assert requirements.pip_arguments([requirements.units[0]]) == [
        "-c",
        str(tmp_path / "c.txt"),
        "pytest",
    ]
    with pytest.raises(RequirementsError, match="cannot read"):
        read_requirements([], [str(tmp_path / "absent.txt")])
    loop = tmp_path / "loop.txt"
    loop.write_text("-r loop.txt\n")
    with pytest.raises(RequirementsError, match="loop"):
        read_requirements([], [str(loop)])


REPORT = {
    "version": "1",
    "install": [
        {
            "download_info": {
                "url": "http://127.0.0.1:9/root/pypi/%2Bf/0ea/70c0/Demo_App-1.0-py3-none-any.whl",
                "archive_info": {"hash": "sha256=0ea7", "hashes": {"sha256": "0ea7"}},
            },
            "is_direct": False,
            "metadata": {"name": "Demo_App", "version": "1.0"},
        },
        {
            "download_info": {
                "url": "http://127.0.0.1:9/x/lib-2.0.tar.gz#sha256=ff",
                "archive_info": {"hash": "sha256=ff"},
            },
            "metadata": {"name": "lib", "version": "2.0"},
        },
        {
            "download_info": {"url": "file:///src/proj", "dir_info": {}},
            "is_direct": True,
            "metadata": {"name": "proj"},
        },
    ],
}


def test_files_from_pip_report() -> None:
    app, lib, local = files_from_report(json.loads(json.dumps(REPORT)))
    assert (app.filename, app.project, app.version, app.sha256) == (
        "Demo_App-1.0-py3-none-any.whl",
        "demo-app",
        "1.0",
        "0ea7",
    )
    assert (lib.url, lib.sha256, lib.is_direct) == (
        "http://127.0.0.1:9/x/lib-2.0.tar.gz",
        "ff",
        False,
    )
    assert local.is_direct
    with pytest.raises(ValueError):
        files_from_report({"version": "1"})


def test_reason_is_pips_error_lines() -> None:
    stderr = (
        "WARNING: retrying\nERROR: Could not find a version that satisfies the requirement x "
        "(from versions: none)\nERROR: No matching distribution found for x\n"
    )
    assert reason_from(stderr) == (
        "Could not find a version that satisfies the requirement x (from versions: none); "
        "No matching distribution found for x"
    )
    assert reason_from("") == "pip failed, saying nothing"
    assert len(reason_from("ERROR: " + "y" * 5000)) == 600


def test_a_failed_resolution_is_retried_one_requirement_at_a_time(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(arguments: Sequence[str]) -> tuple[int, str]:
        requested = [a for a in arguments[arguments.index("http://relay/+simple/") + 3 :]]
        calls.append(requested)
        if "nothere" in requested:
            return 1, "ERROR: No matching distribution found for nothere\n"
        report = {"install": [item for item in REPORT["install"][:1]]}  # type: ignore[index]
        Path(arguments[arguments.index("--report") + 1]).write_text(json.dumps(report))
        return 0, ""

    requirements = read_requirements(["demo-app", "nothere"], [])
    resolver = Resolver("http://relay/+simple/", tmp_path, runner=runner)
    files, failures = resolver.resolve(Target(), requirements)
    assert calls == [["demo-app", "nothere"], ["demo-app"], ["nothere"]]
    assert [f.filename for f in files] == ["Demo_App-1.0-py3-none-any.whl"]
    assert failures == [
        (Unit("nothere", "command line"), "No matching distribution found for nothere")
    ]


def test_sdists_of_a_release_on_a_page() -> None:
    document = {
        "files": [
            {
                "filename": "Lib-2.0.tar.gz",
                "url": "../../+f/aa/Lib-2.0.tar.gz",
                "hashes": {"sha256": "aa"},
                "size": 7,
            },
            {"filename": "lib-2.0.zip", "url": "/x/lib-2.0.zip", "hashes": {}, "yanked": "bad"},
            {"filename": "lib-2.0-py3-none-any.whl", "url": "/x/w.whl", "hashes": {}},
            {"filename": "lib-1.0.tar.gz", "url": "/x/lib-1.0.tar.gz", "hashes": {}},
        ]
    }
    files = files_of_page(document, "http://d/root/pypi/+simple/lib/")
    assert sdists_of(files, "LIB", "2.0.0") == [
        PageFile("Lib-2.0.tar.gz", "http://d/root/pypi/+f/aa/Lib-2.0.tar.gz", "aa", 7, False)
    ]
    assert sdists_of(files, "lib", "3.0") == []


def test_file_paths() -> None:
    assert file_key("/root/pypi/%2Bf/0ea/70c/a-1.0.whl?x=1") == "/root/pypi/+f/0ea/70c/a-1.0.whl"
    assert is_distribution_path("/root/pypi/%2Bf/0ea/70c/a-1.0.whl")
    assert not is_distribution_path("/root/pypi/%2Bf/0ea/70c/a-1.0.whl.metadata")
    assert not is_distribution_path("/root/pypi/+simple/a/")


def test_summary_lines_json_and_exit_status() -> None:
    files = (
        FileResult("a.whl", "u/a", 1_500_000, "miss", None, "pip"),
        FileResult("b.whl", "u/b", 2_000, "hit", None, "warm"),
        FileResult("c.whl", "u/c", 0, None, None, "warm"),  # nginx served it from disk
        FileResult("d.tar.gz", "u/d", 10, "miss", "10 bytes received, 20 expected", "warm"),
    )
    failure = ResolutionFailure("platform=x", "nothere", "req.txt:3", "No matching distribution")
    summary = Summary("http://i/", ("platform=x",), files, (failure,), ("e 1.0",), ("a note",))
    assert summary.lines() == [
        "warmed http://i/ for 1 target: platform=x",
        "fetched 1 file (1.5 MB), already there 2 (2.0 kB), failed 2",
        "failed: nothere (req.txt:3) for platform=x: No matching distribution",
        "failed: d.tar.gz: 10 bytes received, 20 expected",
        "no sdist: e 1.0",
        "note: a note",
    ]
    document = summary.to_json()
    assert document["fetched"] == {"files": 1, "bytes": 1_500_000}
    assert document["already"] == {"files": 2, "bytes": 2_000}
    assert document["failed"] == {"files": 1, "resolutions": 1}
    assert document["exit_status"] == summary.exit_status == 1
    assert [f["outcome"] for f in document["files"]] == ["fetched", "already", "already", "failed"]
    clean = Summary("http://i/", ("this interpreter",), files[:2])
    assert clean.exit_status == 0 and clean.to_json()["failed"] == {"files": 0, "resolutions": 0}
    assert [human_bytes(n) for n in (0, 999, 1000, 2_500_000_000, 10**13)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "2.5 GB",
        "10000.0 GB",
    ]


class _Files(BaseHTTPRequestHandler):
    """Answers like devpid would, and like a devpid cut off mid-file."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        body, length, cache = b"abc", 3, "miss"
        if self.path.endswith("short.whl"):
            length = 10
        elif self.path.endswith("nginx.whl"):
            cache = ""
        elif self.path.endswith("gone.whl"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        if cache:
            self.send_header("X-Devpid-Cache", cache)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_fetch_counts_checks_and_names_failures() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/root/pypi/+f/"
        abc = hashlib.sha256(b"abc").hexdigest()
        wanted = [
            Wanted(base + "ok.whl", "ok.whl", abc),
            Wanted(base + "short.whl", "short.whl", abc),
            Wanted(base + "wrong.whl", "wrong.whl", "00" * 32),
            Wanted(base + "nginx.whl", "nginx.whl", abc),
            Wanted(base + "gone.whl", "gone.whl"),
        ]
        progress = Progress(enabled=False, stream=io.StringIO())
        results = list(fetch_all(wanted, Origin.of(base), jobs=3, timeout=5, progress=progress))
    finally:
        server.shutdown()
        server.server_close()
    assert [(r.filename, r.outcome, r.size, r.cache) for r in results] == [
        ("ok.whl", "fetched", 3, "miss"),
        ("short.whl", "failed", 3, "miss"),
        ("wrong.whl", "failed", 3, "miss"),
        ("nginx.whl", "already", 3, None),
        ("gone.whl", "failed", 0, None),
    ]
    assert [r.error for r in results] == [
        None,
        "3 bytes received, 10 expected",
        f"sha256 {abc}, the index says {'00' * 32}",
        None,
        "HTTP 404 Not Found",
    ]
