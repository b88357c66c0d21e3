"""What only a real ``twistd`` process proves: start-up errors, loops, daemonizing, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.devpid_process import DevpidProcess, devpid_env, http_get, twistd_command
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def foreground_devpid(tmp_path: Path, port: int, upstream: str) -> list[str]:
    """twistd arguments for devpid in the foreground on ``port``, logging to tmp_path/log."""
    return [
        "-n", "--pidfile=", "--logfile", str(tmp_path / "log"), "devpid",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--serverdir", str(tmp_path / "sd"), "--upstream", upstream,
    ]  # fmt: skip


def run_twistd(tmp_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*twistd_command(), *args],
        cwd=tmp_path,
        env=devpid_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_port_in_use_exits_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_twistd(
            tmp_path,
            *foreground_devpid(tmp_path, port, "http://127.0.0.1:1/simple/"),
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on tcp:{port}" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--upstream", "ftp://localhost/"), ("--listen", "nonsense:1"), ("--upstream-timeout", "0")],
)
def test_bad_values_stop_start_up_with_one_line(tmp_path: Path, option: str, value: str) -> None:
    result = run_twistd(
        tmp_path, "-n", "--pidfile=", "devpid", option, value, "--serverdir", str(tmp_path / "sd")
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option.lstrip("-") in lines[0], result.stderr


def test_devpid_as_its_own_upstream_is_a_loop_not_a_hang(tmp_path: Path) -> None:
    port = free_port()
    own = f"http://127.0.0.1:{port}/root/pypi/+simple/"
    # A spelling of this address that the start-up check does not recognise,
    # so the per-request loop detection has to catch it.
    disguised = f"http://127.1:{port}/root/pypi/+simple/"
    log = tmp_path / "log"
    process = subprocess.Popen(
        [*twistd_command(), *foreground_devpid(tmp_path, port, disguised)],
        cwd=tmp_path,
        env=devpid_env(),
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while "devpid listening" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        started = time.monotonic()
        response = http_get(f"{own}anything/", timeout=20)
        assert response.status == 502
        assert b"508" in response.body
        assert time.monotonic() - started < 10  # answered by the loop check, not a timeout
    finally:
        process.terminate()
        process.wait(20)


def test_devpid_refuses_its_own_address_as_upstream(tmp_path: Path) -> None:
    port = free_port()
    result = run_twistd(
        tmp_path,
        "-n",
        "--pidfile=",
        "devpid",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--upstream",
        f"http://localhost:{port}/root/pypi/+simple/",
        "--serverdir",
        str(tmp_path / "sd"),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "own --listen address" in lines[0], result.stderr


def test_daemonized_with_pidfile_and_sigterm_exits_zero(
    tmp_path: Path, shared_upstream: UpstreamProcess
) -> None:
    pidfile = tmp_path / "devpid.pid"
    logfile = tmp_path / "devpid.log"
    port = free_port()
    result = run_twistd(
        tmp_path,
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(logfile),
        "devpid",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--serverdir",
        str(tmp_path / "sd"),
        "--upstream",
        shared_upstream.simple_url,
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 20
    while not pidfile.exists() or "devpid listening" not in logfile.read_text():
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert http_get(f"http://127.0.0.1:{port}/root/pypi/+simple/devpid-demo-app/").status == 200
    import os

    os.kill(pid, signal.SIGTERM)
    while pidfile.exists():
        assert time.monotonic() < deadline + 20, "the daemon did not stop"
        time.sleep(0.05)
    assert "Server Shut Down" in logfile.read_text()


def test_sigterm_in_the_foreground_exits_zero(
    tmp_path: Path, shared_upstream: UpstreamProcess
) -> None:
    devpid = DevpidProcess.start(tmp_path / "sd", shared_upstream.simple_url)
    assert devpid.get("/+status").status == 200
    assert devpid.stop(signal.SIGTERM) == 0


def test_sigterm_the_moment_it_listens_exits_zero(
    tmp_path: Path, shared_upstream: UpstreamProcess
) -> None:
    """A supervisor may stop a worker it has just started: the port listens (and says
    so in the log) before the reactor runs, and SIGTERM then must still mean a clean
    exit. The log is watched without pausing, to send SIGTERM in that moment."""
    for attempt in range(3):
        logfile = tmp_path / f"devpid-{attempt}.log"
        command = [*twistd_command(), "-n", "--pidfile=", "--logfile", str(logfile), "devpid"]
        command += ["--listen", "tcp:0:interface=127.0.0.1"]
        command += ["--serverdir", str(tmp_path / f"sd{attempt}")]
        command += ["--upstream", shared_upstream.simple_url]
        process = subprocess.Popen(
            command, env=devpid_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while b"devpid listening on" not in (logfile.read_bytes() if logfile.exists() else b""):
                assert time.monotonic() < deadline and process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, logfile.read_text()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_state_store_that_cannot_open_exits_one_with_one_line(
    tmp_path: Path, shared_upstream: UpstreamProcess
) -> None:
    serverdir = tmp_path / "sd"
    (serverdir / "state.sqlite").mkdir(parents=True)  # not a database
    logfile = tmp_path / "devpid.log"
    command = [*twistd_command(), "-n", "--pidfile=", "--logfile", str(logfile), "devpid"]
    command += ["--listen", "tcp:0:interface=127.0.0.1", "--serverdir", str(serverdir)]
    command += ["--upstream", shared_upstream.simple_url]
    result = subprocess.run(command, env=devpid_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devpid: cannot start the cache: ")


def test_pip_pointed_at_devpid_after_the_first_start_keeps_the_real_upstream(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    """README.md's order: start devpid, then point pip at it. The upstream pip named
    at the first start is remembered in the serverdir, so devpid, restarted under the
    same pip configuration, still mirrors the real index instead of refusing."""
    port = free_port()
    own = f"http://localhost:{port}/root/pypi/+simple/"
    serverdir = tmp_path / "sd"
    remembered = serverdir / "upstream.json"
    pip_conf = tmp_path / "pip.conf"
    env = {key: value for key, value in devpid_env().items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = str(pip_conf)
    args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--serverdir", str(serverdir)]

    def run(name: str) -> tuple[subprocess.Popen[bytes], str]:
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "--logfile", str(log), "devpid", *args],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while "devpid listening" not in (text := log.read_text() if log.exists() else ""):
            assert process.poll() is None, (process.stderr.read() if process.stderr else b"", text)
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        return process, text

    def stop(process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        assert process.wait(30) == 0
        if process.stderr is not None:
            process.stderr.close()

    # pip already names devpid at the very first start: refused, nothing remembered.
    pip_conf.write_text(f"[global]\nindex-url = {own}\n")
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "devpid", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "own --listen address" in lines[0]
    assert not remembered.exists()

    pip_conf.write_text(f"[global]\nindex-url = {upstream.simple_url}\n")
    first, log = run("first")
    try:
        assert f"mirroring {upstream.simple_url} (from pip's configuration; remembered in " in log
        assert http_get(f"{own}devpid-demo-lib/").status == 200
    finally:
        stop(first)
    assert json.loads(remembered.read_text())["url"] == upstream.simple_url

    pip_conf.write_text(f"[global]\nindex-url = {own}\n")  # as README.md says
    second, log = run("second")
    try:
        assert f"mirroring {upstream.simple_url} (remembered in {remembered} from pip's" in log
        assert http_get(f"{own}devpid-demo-app/").status == 200
        assert upstream.stats()["gets"].get("/simple/devpid-demo-app/") == 1
    finally:
        stop(second)


def test_offline_says_so_in_the_start_up_log(tmp_path: Path) -> None:
    with DevpidProcess.start(tmp_path / "sd", "http://127.0.0.1:1/simple/", "--offline") as devpid:
        log = devpid.log_text()
    assert "offline: serving only what is cached; the upstream is never contacted" in log
    assert f"created serverdir {tmp_path / 'sd'}" not in log  # it existed already


def test_a_start_that_creates_the_serverdir_logs_it(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*twistd_command(), *foreground_devpid(tmp_path, 0, "http://127.0.0.1:1/simple/")],
        cwd=tmp_path,
        env=devpid_env(),
        stdin=subprocess.DEVNULL,
    )
    log = tmp_path / "log"
    try:
        deadline = time.monotonic() + 20
        while "devpid listening" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(20)
    assert f"created serverdir {tmp_path / 'sd'}" in log.read_text()


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["--listen", "3142"], 1, "did you mean tcp:3142?"),
        (["--port", "3142"], 2, "devpid's is --listen tcp:3142"),
        (["--offline-mode"], 2, "devpid's is --offline"),
        (["--serverdir", "/proc"], 1, "--serverdir /proc is not writable"),
    ],
)
def test_a_failed_start_is_one_line_and_asks_nothing_upstream(
    tmp_path: Path, upstream: UpstreamProcess, args: list[str], status: int, says: str
) -> None:
    given = ["--serverdir", str(tmp_path / "sd"), "--listen", "tcp:0:interface=127.0.0.1"]
    result = run_twistd(
        tmp_path, "-n", "--pidfile=", "devpid", "--upstream", upstream.simple_url, *given, *args
    )
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert upstream.stats()["total"] == 0


def test_an_unset_home_needs_a_serverdir(tmp_path: Path) -> None:
    env = {k: v for k, v in devpid_env().items() if k != "HOME"}
    result = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "devpid", "--listen", "tcp:0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "twistd devpid: error: --serverdir is required when HOME is not set "
        "(the default is ~/.devpid)"
    )
    assert list(tmp_path.iterdir()) == []
