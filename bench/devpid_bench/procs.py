"""Starting and always stopping the processes the benchmark measures.

Every child is started in its own session with its output sent to a log file
(never to a pipe nobody reads) and registered with a ``ProcessGroup``, which
kills them all on ``close()`` and, as a last resort, from ``atexit``.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from devpid_bench.http import http_get
from tests.fixtures.upstream import UpstreamProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define
class Child:
    """A running child process and the log file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    own_session: bool = True  # started in its own session: signal its whole group

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child (and its process group), then SIGKILL it if it lingers."""
        if self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                if self.own_session:
                    os.killpg(self.popen.pid, sig)
                else:
                    self.popen.send_signal(sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@attrs.define
class ProcessGroup:
    """Owns every child the benchmark starts; ``close()`` stops them all."""

    log_dir: Path
    children: list[Child] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        atexit.register(self.close)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name=name, popen=popen, log_path=log_path)
        self.children.append(child)
        return child

    def adopt(self, name: str, popen: subprocess.Popen[bytes]) -> Child:
        """Take charge of a process someone else started (in our own session)."""
        child = Child(name=name, popen=popen, log_path=None, own_session=False)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        while self.children:
            self.children.pop().stop()


def wait_for_http(child: Child, url: str, timeout: float, any_status: bool = False) -> None:
    """Poll ``url`` until it answers 200 (or anything); fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(
                f"{child.name} exited with {child.popen.returncode} before answering {url}:\n"
                + child.log_tail()
            )
        try:
            status, _, _ = http_get(url, timeout=2.0)
            if status == 200 or any_status:
                return
            last_error = f"status {status}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{child.name} did not answer {url} within {timeout:.0f}s ({last_error}):\n"
        + child.log_tail()
    )


def wait_for_log_line(child: Child, marker: str, timeout: float) -> str:
    """Return the first log line of ``child`` that contains ``marker``."""
    deadline = time.monotonic() + timeout
    assert child.log_path is not None
    while time.monotonic() < deadline:
        for line in child.log_path.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        if not child.alive():
            break
        time.sleep(0.1)
    raise BenchError(f"{child.name} never printed {marker!r}:\n" + child.log_tail())


def repo_env() -> dict[str, str]:
    """The environment for a child that imports from the devpid work tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the upstream fixture ---------------------------------------------------------


@attrs.frozen
class Upstream:
    """A running ``tests.fixtures.upstream`` process serving a repository root."""

    process: UpstreamProcess
    child: Child

    @property
    def url(self) -> str:  # "http://127.0.0.1:PORT/"
        return self.process.url

    @property
    def simple_url(self) -> str:
        return self.process.simple_url

    def file_url(self, filename: str) -> str:
        return self.process.file_url(filename)

    def set_rate(self, bytes_per_second: int) -> None:
        modes = self.process.control(rate=bytes_per_second)
        if modes.get("rate") != bytes_per_second:
            raise BenchError(f"upstream did not take the rate mode: {modes}")

    def gets(self, filename: str) -> int:
        """How many GETs of ``/files/<filename>`` the upstream has served."""
        counts: dict[str, int] = self.process.stats()["gets"]
        return counts.get(f"/files/{filename}", 0)


def start_upstream(procs: ProcessGroup, name: str, root: Path) -> Upstream:
    process = UpstreamProcess.start(root)
    child = procs.adopt(name, process.process)
    if not process.url.startswith("http://127.0.0.1:"):
        raise BenchError(f"upstream fixture listens on a non-loopback address: {process.url}")
    return Upstream(process=process, child=child)


# --- the servers under test ----------------------------------------------------------


@attrs.frozen
class Server:
    """A running index server (devpid or devpi-server) and where its mirrors live."""

    child: Child
    url: str  # "http://127.0.0.1:PORT/"

    def simple_url(self, index: str = "root/pypi") -> str:
        return f"{self.url}{index}/+simple/"

    def page_url(self, project: str, index: str = "root/pypi") -> str:
        return f"{self.simple_url(index)}{project}/"


def start_devpid(
    procs: ProcessGroup,
    name: str,
    serverdir: Path,
    upstream: Upstream,
    extra_args: Sequence[str] = (),
    shared_port: int | None = None,
    port: int | None = None,
    backlog: int | None = None,
) -> Server:
    """``twist devpid`` on a free loopback port, or on ``shared_port`` with ``reuseport:``
    (several processes on one port); ``extra_args`` go after devpid's own."""
    serverdir.mkdir(parents=True, exist_ok=True)
    port = shared_port or port or free_port()
    kind = "reuseport" if shared_port else "tcp"
    listen = f"{kind}:{port}:interface=127.0.0.1"
    if backlog is not None:
        listen += f":backlog={backlog}"
    child = procs.start(
        name,
        [
            sys.executable,
            "-m",
            "twisted",  # `twist` (always in the foreground), not twistd: no -n
            "--log-format",
            "text",
            "devpid",
            "--listen",
            listen,
            "--serverdir",
            str(serverdir),
            "--upstream",
            upstream.simple_url,
            *extra_args,
        ],
        cwd=serverdir.parent,
        env=repo_env(),
    )
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(child, url + "+status", timeout=60.0)
    return Server(child=child, url=url)


def devpid_help() -> str:
    """The output of ``python -m twisted devpid --help``; a BenchError when devpid cannot run."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "devpid", "--help"],
            cwd=REPO_ROOT,
            env=repo_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError("`python -m twisted devpid --help` did not finish in 60s") from exc
    text = result.stdout + result.stderr
    if result.returncode != 0:
        raise BenchError("`python -m twisted devpid --help` failed: " + text.strip()[-500:])
    return text
