"""Run devpi-client's own functional tests against a fresh devpid (or devpi-server) (issue 13).

devpi-client's sdist ships its test suite (``testing/``); with ``--live-url`` its
functional tests talk to a running server instead of starting one. This script
builds what the suite needs, starts a fresh server on a loopback port (root with an
empty password, root/pypi mirroring a local copy of /work/shared/corpus), runs the
suite with pytest and prints a summary::

    python bench/devpi_client_suite.py --server devpid|devpi [--keep] [-k EXPR]
        [--workdir DIR] [--all] [--port PORT] [-- EXTRA PYTEST ARGS]

Which tests: the 152 that use conftest's ``url_of_liveserver`` fixture (directly or
through ``devpi``, ``mapp``, ``create_and_upload``...), which are the ones that talk
to the server; a small plugin written beside the run deselects the other 206, which
mock HTTP and say nothing about the server (``--all`` runs them too). Before each
test the plugin also sends ``GET /+api?devpid-suite-test=<test id>`` so the server's
access log can be cut per test.

Exit status: 0 when at least ``--min-passed`` (150) live-server tests passed, 1 when
fewer did, 2 when the harness itself could not run (no corpus, no venv, a server that
did not start).

Reference, devpi-server 6.20.3 on this machine: 150 passed, 2 skipped (152), as the
issue says; with ``--all``: 344 passed, 14 skipped. The two skips are the suite's own:
``test_large_upload`` ("test only works in devpi-server") and
``test_whitelisted_package_not_in_mirror`` (the client's Mapp has no ``get_simple``);
the 12 more under ``--all`` need Mercurial (``hg``), which is not installed. One
run takes about 6 minutes.

What it builds, once, under ~/.cache/devpid-tests/devpi-client-suite/:

- ``devpi_client-7.3.0.tar.gz``, fetched with ``pip download --no-binary :all:``, and
  ``src/devpi_client-7.3.0``, its extracted tree: pytest runs there so that the
  suite's own ``tox.ini`` ([pytest] section: ``timeout = 60``, ``-r a``) and its
  ``testing`` package (conftest, ``reqmock`` plugin) are used as released.
- ``client-venv``: devpi-client 7.3.0 built from that sdist, pytest, pytest-timeout
  and the suite's tox.ini deps that matter here (mock, webtest, wheel, tox,
  virtualenv, flit_core, sphinx for ``--with-docs``, pypitoken). It also holds
  devpi-server 6.20.3 *as a tool of the suite*, whichever server is tested:
  conftest's ``server_version`` fixture runs ``devpi-server --version`` (found on
  PATH) to decide version-dependent skips, and ``url_of_liveserver2`` (used by
  ``test_switch_preserves_auth`` only) always starts a second real devpi-server. So
  the skips are the same for both servers.
- ``server-venv``: devpi-server 6.20.3 for ``--server devpi`` (the reference), unless
  /tmp/devpid-bench-venv already has that version.

The upstream is ``python -m http.server`` serving the corpus (PEP 503 pages under
``simple/``); there is no internet. devpid gets it as ``--upstream``; for devpi-server
root/pypi's ``mirror_url`` is changed to it (as root, empty password) before the
tests. The suite's mirror tests bring their own upstream (conftest's ``simpypi``).

What differs from devpi-client's own CI, and why:

- pip's global configuration of this machine (find-links and extra index of local
  wheel directories) stays in force, so tests that build in an isolated environment
  find setuptools and flit_core without the internet;
- ``PIP_CONSTRAINT`` adds ``flit_core<4`` (keeping the machine's constraints): flit_core
  4 refuses the ``packages`` key that conftest's ``initproj`` writes into
  pyproject.toml, which fails ``test_wheel_pyproject_toml`` for any server;
- ``VIRTUAL_ENV`` is set to the client venv, as under tox
  (``test_simple_install_missing_venvdir`` deletes it and fails when it is unset);
- the live URL is ``http://localhost:PORT`` with no trailing slash, as conftest's own
  ``_liveserver`` makes it: tests compare printed "using server: URL/" lines with it.

The run's files (kept with ``--keep`` or ``--workdir``): ``pytest.log``,
``junit.xml``, the server's log (``devpid.log`` or ``devpi-server.log``),
``upstream.log`` and the serverdir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import attrs

CLIENT_VERSION = "7.3.0"
SERVER_VERSION = "6.20.3"
CORPUS = Path("/work/shared/corpus")
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DEVPID_TEST_CACHE", Path.home() / ".cache" / "devpid-tests"))
SUITE_CACHE = CACHE / "devpi-client-suite"
BENCH_VENV = Path("/tmp/devpid-bench-venv")
# what the suite imports or runs, beside devpi-client itself (see tox.ini's deps)
SUITE_REQUIREMENTS = [
    f"devpi-server=={SERVER_VERSION}",
    "pytest",
    "pytest-timeout",
    "mock",
    "webtest",
    "wheel",
    "tox",
    "virtualenv",
    "flit_core",
    "setuptools",
    "sphinx",  # devpi upload --with-docs runs sphinx-build
    "pypitoken",  # test_push's token derivation (not a live-server test)
]
# flit_core 4 refuses the ``packages`` key that conftest's initproj writes into pyproject.toml
BUILD_CONSTRAINTS = ["flit_core<4"]
LIVE_FIXTURE = "url_of_liveserver"
# a pytest plugin (written beside the run's files) that keeps only the tests using the live
# server unless DEVPID_SUITE_ALL is set; it also lists them so the summary can count them
PLUGIN_NAME = "devpid_live_only"
PLUGIN = f'''"""Keep the live-server tests of devpi-client (from devpi_client_suite.py)."""

import os
import urllib.parse
import urllib.request


def pytest_runtest_logstart(nodeid, location):
    # a marker in the server's access log, so its lines can be told apart by test
    url = os.environ.get("DEVPID_SUITE_MARK_URL")
    if url:
        query = urllib.parse.urlencode({{"devpid-suite-test": nodeid}})
        try:
            urllib.request.urlopen(url + "/+api?" + query, timeout=5).close()
        except OSError:
            pass


def pytest_collection_modifyitems(session, config, items):
    live = [item for item in items if "{LIVE_FIXTURE}" in getattr(item, "fixturenames", ())]
    with open(os.environ["DEVPID_SUITE_LIVE_LIST"], "w") as f:
        f.writelines(item.nodeid + "\\n" for item in live)
    if os.environ.get("DEVPID_SUITE_ALL"):
        return
    keep = set(map(id, live))
    other = [item for item in items if id(item) not in keep]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = live
'''

MIN_PASSED = 150
START_TIMEOUT = 60.0


class HarnessError(Exception):
    """The harness could not run the suite (exit status 2), not a test failure."""


def say(message: str) -> None:
    print(f"[devpi-client-suite] {message}", flush=True)


def run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """A command whose failure stops the harness, with the command's output in the error."""
    argv = [str(a) for a in args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise HarnessError(f"{' '.join(argv)} failed ({result.returncode}):\n{tail}")
    return result


# -- what the suite needs ---------------------------------------------------------------


def ensure_sdist() -> Path:
    """devpi-client's sdist, extracted: the released tests, not a checkout's."""
    tree = SUITE_CACHE / "src" / f"devpi_client-{CLIENT_VERSION}"
    if (tree / "testing" / "conftest.py").exists():
        return tree
    SUITE_CACHE.mkdir(parents=True, exist_ok=True)
    archive = SUITE_CACHE / f"devpi_client-{CLIENT_VERSION}.tar.gz"
    if not archive.exists():
        say(f"downloading devpi-client {CLIENT_VERSION}'s sdist")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                SUITE_CACHE,
                f"devpi-client=={CLIENT_VERSION}",
            ]
        )
    if not archive.exists():
        raise HarnessError(f"pip download did not leave {archive}")
    with tarfile.open(archive) as tar:
        tar.extractall(SUITE_CACHE / "src", filter="data")
    return tree


def ensure_venv(venv: Path, requirements: list[str]) -> Path:
    """A venv with ``requirements``, rebuilt when the recorded list differs; its bin dir."""
    marker = venv / ".devpid-suite-requirements"
    wanted = "\n".join(requirements)
    if marker.exists() and marker.read_text() == wanted:
        return venv / "bin"
    say(f"creating {venv} (a minute or two, once)")
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", *requirements], timeout=900)
    marker.write_text(wanted)
    return venv / "bin"


def server_version(bin_dir: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            [str(bin_dir / "devpi-server"), "--version"], capture_output=True, text=True
        )
        return result.stdout.strip().splitlines()[-1].strip()
    return ""


def ensure_reference_venv() -> Path:
    """devpi-server 6.20.3 to compare with: the benchmark's venv when it has that version."""
    if server_version(BENCH_VENV / "bin") == SERVER_VERSION:
        return BENCH_VENV / "bin"
    return ensure_venv(SUITE_CACHE / "server-venv", [f"devpi-server=={SERVER_VERSION}"])


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Processes:
    """Every process the harness started, stopped by pid in reverse order."""

    workdir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = attrs.Factory(list)

    def start(self, name: str, argv: list[str | Path], **kwargs: object) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, **kwargs
        )
        self.started.append((name, proc))
        return proc

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def stop_all(self) -> None:
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            say(f"stopped {name} (pid {proc.pid}, status {proc.returncode})")
        self.started.clear()


def wait_http(url: str, proc: subprocess.Popen[bytes], procs: Processes, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{name} exited ({proc.returncode}):\n{procs.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise HarnessError(f"{name} did not answer {url} in {START_TIMEOUT}s:\n{procs.log_tail(name)}")


def start_upstream(procs: Processes, corpus: Path) -> str:
    """The corpus over HTTP: directories with an index.html are served as that page."""
    port = free_port()
    proc = procs.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(port),
            "--directory",
            corpus,
        ],
    )
    url = f"http://127.0.0.1:{port}/simple/"
    wait_http(url, proc, procs, "upstream")
    return url


def start_devpid(procs: Processes, upstream: str) -> int:
    port = free_port()
    serverdir = procs.workdir / "devpid-serverdir"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    twistd = "from twisted.scripts.twistd import run; run()"
    argv: list[str | Path] = [sys.executable, "-c", twistd, "-n", "--pidfile="]
    argv += ["devpid", "--listen", f"tcp:{port}:interface=127.0.0.1", "--serverdir", serverdir]
    argv += ["--upstream", upstream]
    proc = procs.start("devpid", argv, env=env, cwd=procs.workdir)
    wait_http(f"http://127.0.0.1:{port}/+api", proc, procs, "devpid")
    return port


def start_devpi(procs: Processes, server_bin: Path, client_bin: Path, upstream: str) -> int:
    port = free_port()
    serverdir = procs.workdir / "devpi-serverdir"
    run([server_bin / "devpi-init", "--serverdir", serverdir, "--root-passwd", ""])
    argv: list[str | Path] = [server_bin / "devpi-server", "--serverdir", serverdir]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    proc = procs.start("devpi-server", argv, cwd=procs.workdir)
    wait_http(f"http://127.0.0.1:{port}/+api", proc, procs, "devpi-server")
    # root/pypi must mirror the local upstream, not the internet
    clientdir = procs.workdir / "setup-client"
    devpi: list[str | Path] = [client_bin / "devpi", "--clientdir", clientdir]
    run([*devpi, "use", f"http://localhost:{port}"])
    run([*devpi, "login", "root", "--password", ""])
    run([*devpi, "index", "root/pypi", f"mirror_url={upstream}"])
    run([*devpi, "logoff"])
    return port


# -- the suite and its summary -----------------------------------------------------------


@attrs.frozen
class Outcome:
    nodeid: str
    status: str  # passed, failed, error, skipped
    reason: str


def nodeid_of(classname: str, name: str) -> str:
    """``testing.test_x.TestY`` + ``test_z`` → ``testing/test_x.py::TestY::test_z``."""
    parts = classname.split(".")
    for i, part in enumerate(parts):
        if part.startswith("test_") or part == "functional":
            return "::".join(["/".join(parts[: i + 1]) + ".py", *parts[i + 1 :], name])
    return "::".join([*parts, name])


def one_line(text: str, limit: int = 200) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # pytest's message is often "AssertionError: assert ..."; prefer its first line
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_junit(path: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = nodeid_of(case.get("classname", ""), case.get("name", ""))
        status, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
                reason = one_line(child.get("message") or child.text or "")
                break
        outcomes.append(Outcome(nodeid, status, reason))
    return outcomes


def write_run_files(workdir: Path) -> tuple[Path, Path]:
    """The live-only plugin's directory and a pip constraints file for isolated builds."""
    plugin_dir = workdir / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / f"{PLUGIN_NAME}.py").write_text(PLUGIN)
    constraints = workdir / "constraints.txt"
    lines = list(BUILD_CONSTRAINTS)
    # keep the machine's own constraints: PIP_CONSTRAINT replaces pip's configured ones
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.constraint"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for name in configured:
        with contextlib.suppress(OSError):
            lines += Path(name).read_text().splitlines()
    constraints.write_text("\n".join(lines) + "\n")
    return plugin_dir, constraints


def run_suite(
    client_bin: Path, tree: Path, port: int, workdir: Path, pytest_args: list[str], everything: bool
) -> tuple[list[Outcome], set[str]]:
    """Run pytest in the sdist's tree; the outcomes and the ids of the live-server tests."""
    junit = workdir / "junit.xml"
    live_list = workdir / "live-tests.txt"
    plugin_dir, constraints = write_run_files(workdir)
    env = dict(os.environ)
    # the suite runs ``devpi``, ``devpi-server --version``, ``sphinx-build`` and
    # ``virtualenv`` from PATH, and some tests expect to run inside a virtualenv
    env["PATH"] = os.pathsep.join([str(client_bin), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(client_bin.parent)
    env["PYTHONPATH"] = str(plugin_dir)
    env["PIP_CONSTRAINT"] = str(constraints)
    env["DEVPID_SUITE_LIVE_LIST"] = str(live_list)
    env["DEVPID_SUITE_MARK_URL"] = f"http://127.0.0.1:{port}"
    env.pop("DEVPID_SUITE_ALL", None)
    if everything:
        env["DEVPID_SUITE_ALL"] = "1"
    env["TMPDIR"] = str(workdir / "tmp")
    (workdir / "tmp").mkdir(exist_ok=True)
    argv = [str(client_bin / "python"), "-m", "pytest", "testing", "-p", "no:cacheprovider"]
    argv += ["-p", PLUGIN_NAME, f"--live-url=http://localhost:{port}", f"--junitxml={junit}"]
    argv += ["-rA", "--timeout", "120", *pytest_args]
    say("running: " + " ".join(argv))
    with (workdir / "pytest.log").open("wb") as log:
        subprocess.run(argv, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if not junit.exists():
        raise HarnessError(f"pytest wrote no {junit}; see {workdir / 'pytest.log'}")
    live = set(live_list.read_text().split()) if live_list.exists() else set()
    return read_junit(junit), live


def count(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {s: 0 for s in ("passed", "failed", "error", "skipped")}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


def report(server: str, outcomes: list[Outcome], live: set[str], min_passed: int) -> int:
    """Print failures, skips and counts; the exit status counts the live-server tests only."""
    bad = [o for o in outcomes if o.status in ("failed", "error")]
    for outcome in sorted(bad, key=lambda o: o.nodeid):
        print(f"{outcome.status.upper():6} {outcome.nodeid}: {outcome.reason}")
    for outcome in outcomes:
        if outcome.status == "skipped":
            print(f"SKIP   {outcome.nodeid}: {outcome.reason}")
    live_counts = count([o for o in outcomes if o.nodeid in live])
    all_counts = count(outcomes)
    if len(outcomes) != sum(live_counts.values()):
        summary = ", ".join(f"{n} {s}" for s, n in all_counts.items())
        print(f"{server}, all tests run: {summary} ({len(outcomes)} in all)")
    passed = live_counts["passed"]
    summary = ", ".join(f"{n} {s}" for s, n in live_counts.items())
    verdict = "OK" if passed >= min_passed else f"FEWER THAN {min_passed} PASSED"
    print(f"{server}, live-server tests: {summary} ({sum(live_counts.values())} run): {verdict}")
    return 0 if passed >= min_passed else 1


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["devpid", "devpi"], required=True)
    parser.add_argument(
        "--port",
        type=int,
        help="test the server already listening on this loopback port (started by you, fresh, "
        "root with an empty password) instead of starting one; --server only names it",
    )
    parser.add_argument(
        "--corpus", type=Path, default=CORPUS, help="the upstream's files (default: %(default)s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-k", dest="keyword", help="pytest's -k: only tests matching EXPR")
    parser.add_argument("--workdir", type=Path, help="where serverdirs, logs, junit.xml go")
    parser.add_argument(
        "--min-passed",
        type=int,
        default=MIN_PASSED,
        help="live-server tests that must pass for exit status 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="also run the suite's tests that do not use the live server (mocked HTTP)",
    )
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if args.keyword:
        extra = ["-k", args.keyword, *extra]
    return args, extra


@contextlib.contextmanager
def work_directory(given: Path | None, keep: bool) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="devpi-client-suite-"))
    try:
        yield path
    finally:
        if keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args, pytest_args = parse_args(argv)
    if not (args.corpus / "simple" / "index.html").exists():
        say(f"no corpus at {args.corpus} (simple/index.html missing): nothing to mirror")
        return 2
    try:
        tree = ensure_sdist()
        sdist = SUITE_CACHE / f"devpi_client-{CLIENT_VERSION}.tar.gz"
        client_bin = ensure_venv(SUITE_CACHE / "client-venv", [str(sdist), *SUITE_REQUIREMENTS])
        wanted = args.server == "devpi" and not args.port
        server_bin = ensure_reference_venv() if wanted else None
        with work_directory(args.workdir, args.keep) as workdir:
            procs = Processes(workdir)
            try:
                upstream = "(yours)"
                if args.port:
                    port = args.port
                else:
                    upstream = start_upstream(procs, args.corpus)
                    if server_bin is None:
                        port = start_devpid(procs, upstream)
                    else:
                        port = start_devpi(procs, server_bin, client_bin, upstream)
                say(f"{args.server} on http://localhost:{port}, upstream {upstream}")
                outcomes, live = run_suite(
                    client_bin, tree, port, workdir, pytest_args, args.everything
                )
            finally:
                procs.stop_all()
            say(f"pytest output: {workdir / 'pytest.log'} (server log beside it)")
            return report(args.server, outcomes, live, args.min_passed)
    except HarnessError as exc:
        say(f"harness error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
