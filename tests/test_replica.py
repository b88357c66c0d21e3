"""A primary and two replicas as separate ``twistd -n devpid`` processes and serverdirs.

Uploads go to the primary; pip installs from a replica; writes to a replica
are refused. A replica killed with SIGKILL while it syncs, and a primary
stopped for a while, end with every replica at the primary's serial and with
the same stage files, byte for byte (``devpid fsck`` clean on each). A primary
replaced by another (a new uuid) makes the replicas resync. A bad
``--primary-url`` gets one line at start; a garbled feed is never applied.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.conftest import pip_install
from tests.fixtures.deploy import gen_config
from tests.fixtures.devpid_process import DevpidProcess, devpid_env, twistd_command
from tests.fixtures.nginx import INSTALL_HINT as NGINX_HINT
from tests.fixtures.nginx import Nginx, nginx_path
from tests.fixtures.ports import free_consecutive_ports, wait_until
from tests.fixtures.replicas import NO_UPSTREAM, Replicated, fsck, stage_files, write_secret
from tests.test_nginx import (
    JSON,
    PASSWORD,
    basic_auth,
    build_wheel,
    create_stage,
    json_call,
    release_file_url,
    request,
    upload,
)

pytestmark = pytest.mark.integration

PROJECT = "replicated-pkg"
MODULE = PROJECT.replace("-", "_")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Replicated]:
    cluster = Replicated.start(tmp_path, replicas=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def upload_versions(
    base: str, tmp: Path, versions: list[str], blob_size: int = 0, user: str = "alice"
) -> None:
    for version in versions:
        wheel = build_wheel(tmp, PROJECT, version, blob_size)
        answer = upload(f"{base}/{user}/dev/", wheel, user, PROJECT, version)
        assert answer.status == 200, answer


def file_url(process: DevpidProcess, filename: str) -> str:
    return urljoin(process.url, release_file_url(process.url, "alice/dev", PROJECT, filename))


def check_clean(cluster: Replicated) -> None:
    cluster.wait_converged()
    for process in [cluster.primary, *cluster.replicas]:
        checked = fsck(process.serverdir)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "clean" in checked.stdout


def test_replicas_follow_uploads_serve_installs_and_refuse_writes(
    cluster: Replicated, tmp_path: Path
) -> None:
    primary, (first, second) = cluster.primary, cluster.replicas
    create_stage(primary.url, "alice", bases="")
    upload_versions(primary.url, tmp_path, ["1.0", "1.1", "2.0"], blob_size=300_000)
    check_clean(cluster)
    assert len(stage_files(first.serverdir)) == 6  # three wheels and their .metadata

    installed = pip_install(f"{first.url}/alice/dev/+simple/", tmp_path / "target", PROJECT)
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "target" / MODULE / "__init__.py").exists()

    status = second.status()
    assert status["role"] == "REPLICA"
    section = status["replica"]
    assert section["state"] == "following" and section["lag_events"] == 0
    assert section["primary_serial"] == primary.status()["serial"] == status["serial"]
    headers = second.get("/+api").headers
    assert headers["x-devpi-primary-uuid"] == primary.status()["uuid"]
    assert headers["x-devpi-uuid"] != headers["x-devpi-primary-uuid"]

    # writes: one line naming the primary, nothing changed
    refused = json_call(second.url, "PUT", "/bob", {"password": "x"})
    assert refused.status == 403
    assert json.loads(refused.body)["message"] == (
        f"this is a read-only replica of {cluster.primary_url}; send writes to the primary"
    )
    wheel = build_wheel(tmp_path, PROJECT, "9.0")
    refused = upload(f"{second.url}/alice/dev/", wheel, "alice", PROJECT, "9.0")
    assert refused.status == 403 and "read-only replica" in refused.reason
    gone = request(
        f"{second.url}/alice/dev/{PROJECT}/1.0", "DELETE", Authorization=basic_auth("alice")
    )
    assert gone.status == 403
    # a login is not a write: the replica checks the replicated password itself
    login = json_call(second.url, "POST", "/+login", {"user": "alice", "password": PASSWORD})
    assert login.status == 200, login
    assert (
        json_call(second.url, "POST", "/+login", {"user": "alice", "password": "no"}).status == 401
    )

    # a file asked for before it arrived is streamed from the primary while it is written
    url = file_url(second, f"{MODULE}-2.0-py3-none-any.whl")
    path = next(p for p in (second.serverdir / "+files").rglob(f"{MODULE}-2.0-py3-none-any.whl"))
    expected = path.read_bytes()
    path.unlink()
    fetched = request(url)
    assert fetched.status == 200 and fetched.body == expected
    assert path.read_bytes() == expected
    assert primary.status()["serial"] == second.status()["serial"]


def test_replicas_converge_after_a_sigkill_mid_sync_and_a_primary_outage(
    cluster: Replicated, tmp_path: Path
) -> None:
    primary, (first, second) = cluster.primary, cluster.replicas
    create_stage(primary.url, "alice", bases="")
    upload_versions(primary.url, tmp_path, ["1.0"])
    cluster.wait_converged()
    start = second.status()["serial"]

    upload_versions(primary.url, tmp_path, [f"2.{n}" for n in range(8)], blob_size=1_000_000)
    # the moment the second replica has applied something new, it dies
    wait_until(lambda: second.status()["serial"] > start, timeout=20, interval=0.005)
    second.stop(signal.SIGKILL)
    upload_versions(primary.url, tmp_path, ["3.0"])
    cluster.restart_replica(1)
    check_clean(cluster)

    # the primary goes away: the replicas keep serving, and say they are disconnected
    primary.stop()
    assert wait_until(lambda: first.status()["replica"]["state"] == "disconnected")
    status = first.status()
    assert status["replica"]["last_error"].startswith("the primary is unreachable")
    assert any("disconnected" in warning for warning in status["warnings"])
    page = first.get(f"/alice/dev/+simple/{PROJECT}/", Accept=JSON)
    assert page.status == 200 and len(json.loads(page.body)["files"]) == 10
    url = file_url(first, f"{MODULE}-3.0-py3-none-any.whl")
    assert request(url).status == 200

    cluster.primary = cluster.start_primary(primary.serverdir)
    upload_versions(cluster.primary.url, tmp_path, ["4.0"])
    check_clean(cluster)
    assert first.status()["replica"]["state"] == "following"


def test_a_replaced_primary_makes_the_replicas_resync(cluster: Replicated, tmp_path: Path) -> None:
    primary = cluster.primary
    create_stage(primary.url, "alice", bases="")
    upload_versions(primary.url, tmp_path, ["1.0", "2.0"])
    cluster.wait_converged()
    old_serial = primary.status()["serial"]
    primary.stop()

    # restored from another backup: another uuid, fewer events, other users
    cluster.primary = new = cluster.start_primary(tmp_path / "restored")
    create_stage(new.url, "bob", bases="")
    upload_versions(new.url, tmp_path, ["5.0"], user="bob")
    assert new.status()["serial"] < old_serial
    check_clean(cluster)
    for replica in cluster.replicas:
        status = replica.status()
        assert status["replica"]["resyncs"] == 1
        assert status["replica"]["primary_uuid"] == new.status()["uuid"]
        assert replica.get("/alice/dev").status == 404
        users = json.loads(replica.get("/", Accept=JSON).body)["result"]
        assert sorted(users) == ["bob", "root"]
        assert not list((replica.serverdir / "+files" / "alice").rglob("*.whl"))
        assert "resyncing from the primary's snapshot: the primary's uuid changed" in (
            replica.log_text()
        )


def start_failing(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [*twistd_command(), "-n", "--pidfile=", "--logfile", "-", "devpid"]
    command += ["--serverdir", str(tmp_path / "bad"), "--upstream", NO_UPSTREAM, *options]
    return subprocess.run(
        command, env=devpid_env(), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--primary-url", "primary:3141"], "--primary-url must be an http:// or https:// URL"),
        (["--primary-url", "http://p:3141/?x=1"], "must not have a query"),
        (["--primary-url", "http://p:3141/"], "--primary-url needs --replication-secret-file"),
        (
            ["--primary-url", "http://p:3141/", "--replication-secret-file", "/nonexistent"],
            "cannot read --replication-secret-file /nonexistent",
        ),
        (
            ["--listen", "tcp:3999", "--primary-url", "http://127.0.0.1:3999/"],
            "is devpid's own --listen address",
        ),
    ],
)
def test_a_bad_primary_url_or_secret_gets_one_line(
    tmp_path: Path, options: list[str], line: str
) -> None:
    secret = write_secret(tmp_path / "secret")
    if "--replication-secret-file" not in options and "needs" not in line:
        options = [*options, "--replication-secret-file", str(secret)]
    started = start_failing(tmp_path, *options)
    assert started.returncode != 0
    errors = [text for text in started.stderr.splitlines() if "error" in text]
    assert len(errors) == 1 and line in errors[0], started.stderr
    assert "Traceback" not in started.stderr + started.stdout


class GarbledPrimary(BaseHTTPRequestHandler):
    """Answers every feed request as a primary would, with a body that is not events."""

    def do_GET(self) -> None:
        body = b'{"serial": 0, "at": 1.0, "who": null, "what": "x", "changes": "everything"}\n'
        if "since=-1" not in self.path:
            body = b"not json at all\n"
        self.send_response(200)
        self.send_header("X-Devpid-Primary-Uuid", "f" * 32)
        self.send_header("X-Devpid-Primary-Serial", "5")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_garbled_feed_is_logged_backed_off_and_never_applied(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), GarbledPrimary)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = write_secret(tmp_path / "secret")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with DevpidProcess.start(
            tmp_path / "replica",
            NO_UPSTREAM,
            "--primary-url",
            url,
            "--replication-secret-file",
            str(secret),
            "--changelog-interval",
            "0",
        ) as replica:
            assert wait_until(lambda: replica.status()["replica"]["last_error"] is not None)
            time.sleep(1.0)  # a few more polls, backing off
            status = replica.status()
            assert status["serial"] == -1
            assert "was not applied" in status["replica"]["last_error"]
            log = replica.log_text()
            assert log.count("the primary's answer was not applied") == 1  # logged once
            assert "Traceback" not in log
    finally:
        server.shutdown()
        server.server_close()
    assert sys.version_info >= (3, 9)


@pytest.mark.skipif(nginx_path() is None, reason=NGINX_HINT)
def test_the_generated_nginx_of_a_replica_sends_writes_to_the_primary(tmp_path: Path) -> None:
    cluster = Replicated.start(tmp_path, replicas=0)
    try:
        port = free_consecutive_ports(2)
        replica = cluster.start_replica(0, "--listen", f"tcp:{port}:interface=127.0.0.1")
        cluster.replicas.append(replica)
        out = tmp_path / "gen"
        generated = gen_config(
            "--out", out, "--workers", "1", "--port", port, "--nginx-port", port + 1,
            "--serverdir", replica.serverdir, "--primary-url", cluster.primary_url,
            "--replication-secret-file", cluster.secret,
        )  # fmt: skip
        assert generated.returncode == 0, generated.stderr
        with Nginx.start(tmp_path / "nginx", out / "nginx-devpid.conf", port + 1) as nginx:
            create_stage(nginx.url, "alice", bases="")  # PUTs: to the primary
            upload_versions(nginx.url, tmp_path, ["1.0"])  # a POST: to the primary
            cluster.wait_converged()
            url = file_url(replica, f"{MODULE}-1.0-py3-none-any.whl").replace(
                replica.url, nginx.url
            )
            served = request(url)
            assert served.status == 200 and "x-devpi-serial" not in served.headers  # nginx's
            page = request(f"{nginx.url}/alice/dev/+simple/{PROJECT}/")
            assert page.status == 200 and page.headers["x-devpi-uuid"] == replica.status()["uuid"]
            assert '"POST /alice/dev/"' in cluster.primary.log_text()
            assert '"POST /alice/dev/"' not in replica.log_text()
    finally:
        cluster.stop()
