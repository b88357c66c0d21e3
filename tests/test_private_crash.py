"""``kill -9`` during a burst of private-data changes, then a restart: no acknowledged change
lost, nothing half-applied.

Fifty client threads change users and indexes on a real ``twistd -n devpid``
as fast as it answers; the process is killed once enough changes were
acknowledged. After a restart on the same serverdir every acknowledged change
is there, each index patched in a sequence holds the last acknowledged value
or the one in flight at the kill, ``devpid fsck`` (a real process) finds the
records and the event log agreeing, and the serial devpid reports is the log's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from devpid.ops.fsck.private import open_read_only
from devpid.private.database import FILENAME
from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.upstream import UpstreamProcess
from tests.test_fsck import run_fsck
from tests.test_private_api import Api, body

pytestmark = pytest.mark.integration

CLIENTS = 50
#: No client runs longer than this, whenever the kill comes.
BURST_TIMEOUT = 60.0


@attrs.define
class Client:
    """One thread's sequence of changes: what was acknowledged, what was in flight."""

    number: int
    api: Api
    stop: threading.Event
    #: (method, path, body) of each change that got its 2xx, in order.
    acknowledged: list[tuple[str, str, Any]] = attrs.field(factory=list)
    #: The change whose answer never came (the kill), if any.
    in_flight: tuple[str, str, Any] | None = None
    unexpected: list[tuple[str, str, int, bytes]] = attrs.field(factory=list)

    @property
    def role(self) -> str:
        return ("user", "index", "patch", "delete")[self.number % 4]

    def changes(self) -> Iterator[tuple[str, str, Any]]:
        n = self.number
        for i in range(10_000):
            if self.role == "user":
                yield "PUT", f"/c{n}u{i}", {"password": f"pw{i}", "email": f"c{n}u{i}@example.com"}
            elif self.role == "index":
                yield "PUT", f"/root/c{n}i{i}", {"bases": "root/pypi", "title": f"i{i}"}
            elif self.role == "patch":
                yield "PATCH", f"/root/p{n}", [f"title=v{i}", f"description=d{i}"]
            else:
                yield "PUT", f"/root/c{n}d{i}", {"volatile": "True"}
                yield "DELETE", f"/root/c{n}d{i}", None

    def run(self) -> None:
        deadline = time.monotonic() + BURST_TIMEOUT
        for change in self.changes():
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            self.in_flight = change
            try:
                answer = self.api.call(*change)
            except OSError:  # the kill: refused, reset, or closed without an answer
                return
            if answer.status // 100 != 2:
                self.unexpected.append((change[0], change[1], answer.status, answer.body))
                self.in_flight = None
                return
            self.acknowledged.append(change)
            self.in_flight = None


def total_acknowledged(clients: list[Client]) -> int:
    return sum(len(c.acknowledged) for c in clients)


def event_count(serverdir: Path) -> int:
    db = open_read_only(serverdir / FILENAME)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


def burst_then_kill(devpid: DevpidProcess, kill_after: int) -> tuple[list[Client], int]:
    """Run the fifty clients; ``kill -9`` devpid once ``kill_after`` changes were acknowledged.

    Returns the clients and how many events there were before the burst.
    """
    root = Api(devpid)
    root.login("root", "")
    for n in range(CLIENTS):
        if n % 4 == 2:
            assert root.call("PUT", f"/root/p{n}", {"title": "start"}).status == 200
    before = event_count(devpid.serverdir)
    stop = threading.Event()
    clients = [Client(n, Api(devpid, root.auth), stop) for n in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        running = [pool.submit(client.run) for client in clients]
        deadline = time.monotonic() + BURST_TIMEOUT
        while total_acknowledged(clients) < kill_after and time.monotonic() < deadline:
            if all(r.done() for r in running):
                break
            time.sleep(0.005)
        devpid.kill()
        stop.set()
        for r in running:
            r.result(timeout=BURST_TIMEOUT)
    return clients, before


def expected_after(client: Client, api: Api) -> None:
    """What must hold on the restarted devpid for one client's acknowledged changes."""
    acked, in_flight = client.acknowledged, client.in_flight
    if client.role in ("user", "index"):
        for _method, path, sent in acked:
            answer = api.call("GET", path)
            assert answer.status == 200, (path, answer.status, answer.body)
            if client.role == "user":
                assert body(answer)["result"]["email"] == sent["email"]
            else:
                assert body(answer)["result"]["title"] == sent["title"]
    elif client.role == "patch":
        config = body(api.call("GET", f"/root/p{client.number}"))["result"]
        possible = [{"title": "start"} if not acked else dict(_patched(acked[-1][2]))]
        if in_flight is not None:
            possible.append(dict(_patched(in_flight[2])))
        got = {k: config[k] for k in ("title", "description") if k in config}
        assert got in possible, (client.number, got, possible)
    else:
        created = {p for m, p, _ in acked if m == "PUT"}
        deleted = {p for m, p, _ in acked if m == "DELETE"}
        for path in sorted(created):
            status = api.call("GET", path).status
            if path in deleted:
                assert status == 404, path
            elif in_flight is not None and in_flight[1] == path:
                assert status in (200, 404), path  # its DELETE may have committed
            else:
                assert status == 200, path


def _patched(operations: list[str]) -> Iterator[tuple[str, str]]:
    for operation in operations:
        key, _, value = operation.partition("=")
        yield key, value


@pytest.fixture(scope="module")
def upstream_url(shared_upstream: UpstreamProcess) -> str:
    return shared_upstream.simple_url


@pytest.mark.parametrize("kill_after", [30, 300])
def test_kill_9_during_fifty_concurrent_changes_loses_nothing_acknowledged(
    tmp_path: Path, upstream_url: str, kill_after: int
) -> None:
    serverdir = tmp_path / "serverdir"
    devpid = DevpidProcess.start(serverdir, upstream_url, name="first")
    try:
        clients, before = burst_then_kill(devpid, kill_after)
    finally:
        devpid.kill()
    assert [u for c in clients for u in c.unexpected] == []
    acknowledged = total_acknowledged(clients)
    assert acknowledged >= kill_after, "the burst ended before the kill"
    # the kill came mid-burst: some change had no answer
    unanswered = sum(c.in_flight is not None for c in clients)
    assert unanswered > 0

    with DevpidProcess.start(serverdir, upstream_url, name="second") as restarted:
        api = Api(restarted)
        api.login("root", "")
        for client in clients:
            expected_after(client, api)
        answer = api.call("GET", "/+api")
        assert answer.status == 200
        events = event_count(serverdir)
        assert int(answer.headers["x-devpi-serial"]) == events - 1
        # one event per acknowledged change, and at most one per change left unanswered
        assert acknowledged <= events - before <= acknowledged + unanswered
        checked = run_fsck(serverdir)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "error" not in checked.stdout, checked.stdout
    # and once no process has it open
    checked = run_fsck(serverdir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "warning private" not in checked.stdout, checked.stdout


def test_an_acknowledged_user_can_log_in_after_kill_9(tmp_path: Path, upstream_url: str) -> None:
    serverdir = tmp_path / "serverdir"
    with DevpidProcess.start(serverdir, upstream_url, name="first") as devpid:
        api = Api(devpid)
        created = api.call("PUT", "/survivor", {"password": "secret-pw"})
        assert created.status == 201
        serial = int(created.headers["x-devpi-serial"])
        devpid.kill()
    with DevpidProcess.start(serverdir, upstream_url, name="second") as restarted:
        api = Api(restarted)
        assert api.login("survivor", "secret-pw")
        answer = api.call("GET", "/survivor")
        assert answer.status == 200 and int(answer.headers["x-devpi-serial"]) >= serial


def test_fsck_beside_a_live_burst_of_changes_finds_nothing(
    tmp_path: Path, upstream_url: str
) -> None:
    """fsck reads one snapshot: commits landing meanwhile never look like a mismatch."""
    serverdir = tmp_path / "serverdir"
    with DevpidProcess.start(serverdir, upstream_url) as devpid:
        root = Api(devpid)
        root.login("root", "")
        for n in range(CLIENTS):
            if n % 4 == 2:
                assert root.call("PUT", f"/root/p{n}", {"title": "start"}).status == 200
        stop = threading.Event()
        clients = [Client(n, Api(devpid, root.auth), stop) for n in range(CLIENTS)]
        with ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(client.run) for client in clients]
            try:
                results = [run_fsck(serverdir) for _ in range(3)]
                still_running = not any(r.done() for r in running)
            finally:
                stop.set()
                for r in running:
                    r.result(timeout=BURST_TIMEOUT)
        assert [u for c in clients for u in c.unexpected] == []
        assert still_running, "the burst ended before fsck did"
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
            assert "private data:" not in result.stdout, result.stdout
