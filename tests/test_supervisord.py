"""A real supervisord from the ``supervisord.conf`` that ``devpid gen-config`` writes.

Two devpid workers on consecutive ports share a serverdir and a real Redis;
``supervisorctl`` starts, stops and restarts them, they stop cleanly on
SIGTERM, and one killed with SIGKILL is started again.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.fixtures.deploy import Supervisord, gen_config
from tests.fixtures.devpid_process import http_get
from tests.fixtures.ports import accepts_connections, free_consecutive_ports, wait_until
from tests.fixtures.redis_server import INSTALL_HINT, RedisServer, redis_server_path
from tests.fixtures.upstream import UpstreamProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(redis_server_path() is None, reason=INSTALL_HINT),
]

GROUP = "devpid:*"


@attrs.frozen
class Setup:
    supervisord: Supervisord
    ports: tuple[int, ...]
    serverdir: Path
    logdir: Path

    def names(self) -> list[str]:
        return [f"devpid:devpid-{port}" for port in self.ports]

    def states(self) -> dict[str, tuple[str, int | None]]:
        status = self.supervisord.status()
        return {name: status.get(name, ("MISSING", None)) for name in self.names()}

    def all_running(self) -> dict[str, int] | None:
        """name -> pid when every worker is RUNNING, else None."""
        states = self.states()
        if all(state == "RUNNING" and pid for state, pid in states.values()):
            return {name: pid for name, (_, pid) in states.items() if pid}
        return None

    def serves(self, port: int) -> bool:
        response = http_get(f"http://127.0.0.1:{port}/root/pypi/+simple/devpid-demo-lib/")
        return response.status == 200 and b"devpid_demo_lib-2.0" in response.body


@pytest.fixture
def setup(tmp_path: Path, upstream: UpstreamProcess) -> Iterator[Setup]:
    redis = RedisServer.start(tmp_path)
    first = free_consecutive_ports(2)
    run, logs, serverdir = tmp_path / "run", tmp_path / "log", tmp_path / "serverdir"
    run.mkdir()
    logs.mkdir()
    out = tmp_path / "gen-config"
    result = gen_config(
        "--out", out, "--serverdir", serverdir, "--port", str(first), "--workers", "2",
        "--redis", redis.url, "--upstream", upstream.simple_url,
        "--logdir", logs, "--rundir", run,
        "--", "--changelog-interval", "0",
    )  # fmt: skip
    supervisord = Supervisord(out / "supervisord.conf", run / "supervisord.pid")
    try:
        assert result.returncode == 0, result.stderr
        supervisord.start()
        yield Setup(supervisord, (first, first + 1), serverdir, logs)
    finally:
        try:
            supervisord.shutdown()
        finally:
            redis.stop()


def test_supervisorctl_runs_stops_starts_and_restarts_the_workers(setup: Setup) -> None:
    supervisord = setup.supervisord
    pids = wait_until(setup.all_running)
    assert pids, setup.states()
    status = supervisord.ctl("status", GROUP)
    assert status.returncode == 0, status.stdout
    for port in setup.ports:
        assert setup.serves(port)
        # One serverdir, one Redis: both report the same.
        report = json.loads(http_get(f"http://127.0.0.1:{port}/+status").body)
        assert report["serverdir"] == str(setup.serverdir)
        # twistd logs to stdout; supervisord writes it to a file per worker.
        log = (setup.logdir / f"devpid-{port}.log").read_text()
        assert "devpid listening on" in log

    stop = supervisord.ctl("stop", GROUP)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert {state for state, _ in setup.states().values()} == {"STOPPED"}
    assert not any(accepts_connections(port) for port in setup.ports)
    # SIGTERM is devpid's normal way to stop: exit status 0, not death by signal.
    supervisord_log = (setup.logdir / "supervisord.log").read_text()
    for name in setup.names():
        assert f"stopped: {name.split(':')[1]} (exit status 0)" in supervisord_log

    start = supervisord.ctl("start", GROUP)
    assert start.returncode == 0, start.stdout + start.stderr
    started = setup.all_running()
    assert started and set(started.values()).isdisjoint(pids.values())
    assert all(setup.serves(port) for port in setup.ports)

    restart = supervisord.ctl("restart", GROUP)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    restarted = setup.all_running()
    assert restarted and set(restarted.values()).isdisjoint(started.values())
    assert all(setup.serves(port) for port in setup.ports)


def test_a_killed_worker_is_started_again(setup: Setup) -> None:
    pids = wait_until(setup.all_running)
    assert pids, setup.states()
    victim, other = setup.names()
    os.kill(pids[victim], signal.SIGKILL)

    def replaced() -> bool:
        now = setup.all_running()
        return now is not None and now[victim] != pids[victim]

    assert wait_until(replaced, timeout=30), setup.states()
    now = setup.all_running()
    assert now is not None and now[other] == pids[other]
    assert setup.serves(setup.ports[0]) and setup.serves(setup.ports[1])
    supervisord_log = (setup.logdir / "supervisord.log").read_text()
    assert f"exited: {victim.split(':')[1]} (terminated by SIGKILL; not expected)" in (
        supervisord_log
    )
