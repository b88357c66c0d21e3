"""Webhooks with real processes: ``twistd -n devpid``, twine, and a real HTTP receiver.

The receiver (``tests/fixtures/webhook_receiver.py``) is down while releases
are uploaded, deleted and yanked; devpid is killed with ``kill -9`` with the
deliveries pending; then the receiver comes up and devpid starts again: every
delivery arrives once, signed, in serial order per URL. Two workers sharing a
serverdir deliver a backlog between them, each delivery once. A receiver
that never answers, or answers garbage, holds back only its own URL. Bad
webhook URLs get one line from the API and from devpi-client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpid.webhooks.service import MAX_IN_FLIGHT
from devpid.webhooks.signing import verify
from tests.fixtures.devpi_client import DevpiClient, client_venv
from tests.fixtures.devpid_process import DevpidProcess, devpid_env
from tests.fixtures.ports import free_consecutive_ports, wait_until
from tests.test_nginx import PASSWORD, basic_auth, build_wheel, create_stage, json_call, upload

pytestmark = pytest.mark.integration

#: Nothing listens here: the stages' mirror base is never asked in these tests.
NO_UPSTREAM = "http://127.0.0.1:9/simple/"
SECRET = "a-webhook-secret-of-some-length"
USER, INDEX, PROJECT = "alice", "alice/dev", "whpkg"
#: Quick retries and timeouts, so a receiver coming back is noticed within a second.
OPTIONS = (
    "--changelog-interval", "0",
    "--webhook-backoff-max", "0.5",
    "--webhook-timeout", "2",
)  # fmt: skip
WAIT = 60.0


@attrs.define
class Receiver:
    port: int
    out: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Receiver:
        command = [sys.executable, "-m", "tests.fixtures.webhook_receiver"]
        command += ["--port", str(self.port), "--out", str(self.out)]
        repo = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(command, cwd=repo, env=devpid_env(), stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        assert line.startswith("listening on"), line
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def on(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["path"] == path]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    found = Receiver(free_consecutive_ports(1), tmp_path / "received.jsonl")
    yield found
    found.stop()


def hooks(devpid: DevpidProcess, *urls: str, secret: str | None = SECRET) -> None:
    body: dict[str, Any] = {"webhooks": list(urls)}
    if secret is not None:
        body["webhook_secret"] = secret
    answer = json_call(devpid.url, "PATCH", f"/{INDEX}", body, Authorization=basic_auth(USER))
    assert answer.status == 200, answer


def webhooks_status(devpid: DevpidProcess) -> dict[str, Any]:
    status: dict[str, Any] = devpid.status()["webhooks"]
    return status


def twine_upload(url: str, *files: Path) -> None:
    command = [sys.executable, "-m", "twine", "upload", "--non-interactive"]
    command += ["--disable-progress-bar", "--repository-url", f"{url}/{INDEX}/"]
    command += ["-u", USER, "-p", PASSWORD, *map(str, files)]
    env = {k: v for k, v in devpid_env().items() if not k.startswith("TWINE_")}
    env["HOME"] = str(files[0].parent)  # no ~/.pypirc of this host's
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def check_delivered(records: list[dict[str, Any]], events: list[str]) -> list[int]:
    """Records of one URL: signed, each delivery once, in serial order, these events."""
    for record in records:
        body = record["body"].encode()
        assert verify(body, SECRET, record["headers"].get("x-devpid-signature")), record
        assert json.loads(body)["serial"] == int(record["headers"]["x-devpid-serial"])
    ids = [r["headers"]["x-devpid-delivery"] for r in records]
    assert len(ids) == len(set(ids))
    serials = [int(r["headers"]["x-devpid-serial"]) for r in records]
    assert serials == sorted(set(serials)), serials
    assert [r["headers"]["x-devpid-event"] for r in records] == events
    return serials


def test_deliveries_wait_for_a_receiver_that_is_down_and_survive_kill_9(
    tmp_path: Path, receiver: Receiver
) -> None:
    serverdir = tmp_path / "serverdir"
    base = f"http://127.0.0.1:{receiver.port}"
    jenkins = "http://jenkins:AP1T0KEN@" + base.removeprefix("http://")
    jenkins += "/ok/job/t/buildWithParameters?token=T0K&PROJECT={project}&V={version}"
    wheels = [build_wheel(tmp_path, PROJECT, v) for v in ("1.0", "1.1", "1.2")]
    with ExitStack() as stack:
        devpid = stack.enter_context(DevpidProcess.start(serverdir, NO_UPSTREAM, *OPTIONS))
        create_stage(devpid.url, USER)
        hooks(devpid, jenkins, f"{base}/ok/plain")
        twine_upload(devpid.url, *wheels)
        auth = basic_auth(USER)
        deleted = json_call(
            devpid.url, "DELETE", f"/{INDEX}/{PROJECT}/1.0", None, Authorization=auth
        )
        assert deleted.status == 200, deleted
        path = f"/{INDEX}/{PROJECT}/1.1"
        yanked = json_call(devpid.url, "PATCH", path, {"yanked": "broken"}, Authorization=auth)
        assert yanked.status == 200, yanked
        assert wait_until(lambda: webhooks_status(devpid)["attempts_failed"] >= 2, WAIT)
        assert webhooks_status(devpid)["pending"] == 10
        assert webhooks_status(devpid)["oldest_pending_age"] >= 0
        assert "ConnectionRefusedError" in webhooks_status(devpid)["last_error"]["error"]
        devpid.kill()
        receiver.start()
        assert receiver.records() == []
        devpid = stack.enter_context(DevpidProcess.start(serverdir, NO_UPSTREAM, *OPTIONS))
        assert wait_until(lambda: webhooks_status(devpid)["pending"] == 0, WAIT)
        status = webhooks_status(devpid)
        assert (status["delivered"], status["failed"]) == (10, 0)
        assert status["oldest_pending_age"] is None
        metrics = devpid.get("/+metrics").body.decode()
        assert 'devpid_webhook_deliveries_total{result="delivered"} 10.0' in metrics
        assert 'devpid_webhook_deliveries_total{result="failed"} 0.0' in metrics
        assert "devpid_webhooks_pending 0.0" in metrics
        # the token stays out of /+status and the log
        for secret in ("T0K", "AP1T0KEN"):
            assert secret not in json.dumps(status) and secret not in devpid.log_text()
    events = ["upload"] * 3 + ["delete_version", "yank"]
    plain = check_delivered(receiver.on("/ok/plain"), events)
    built = receiver.on("/ok/job/t/buildWithParameters")
    assert check_delivered(built, events) == plain
    # the URL's user and API token go as HTTP Basic, as Jenkins takes them
    assert {r["headers"]["authorization"] for r in built} == {"Basic amVua2luczpBUDFUMEtFTg=="}
    assert all("authorization" not in r["headers"] for r in receiver.on("/ok/plain"))
    assert [r["query"] for r in built][:3] == [
        f"token=T0K&PROJECT={PROJECT}&V={v}" for v in ("1.0", "1.1", "1.2")
    ]
    bodies = [json.loads(r["body"]) for r in receiver.on("/ok/plain")]
    assert [b["version"] for b in bodies] == ["1.0", "1.1", "1.2", "1.0", "1.1"]
    assert bodies[0]["files"][0]["filename"] == f"{PROJECT}-1.0-py3-none-any.whl"
    assert bodies[4]["yanked"] == "broken" and bodies[0]["index"] == INDEX
    assert all(SECRET not in r["body"] for r in receiver.records())


def test_two_workers_deliver_a_backlog_together_each_delivery_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    serverdir = tmp_path / "serverdir"
    # 12 URLs answer only once 12 POSTs are in flight at once: more than one worker
    # sends (MAX_IN_FLIGHT), so both do, and neither sends what the other claimed
    assert MAX_IN_FLIGHT < 12
    base = f"http://127.0.0.1:{receiver.port}/barrier/12"
    urls = [f"{base}/{n}" for n in range(12)]
    options = (*OPTIONS, "--webhook-timeout", "30")
    with ExitStack() as stack:
        a = stack.enter_context(DevpidProcess.start(serverdir, NO_UPSTREAM, *options, name="a"))
        b = stack.enter_context(DevpidProcess.start(serverdir, NO_UPSTREAM, *options, name="b"))
        create_stage(a.url, USER)
        hooks(b, *urls)
        for n in range(4):
            worker = (a, b)[n % 2]
            wheel = build_wheel(tmp_path, PROJECT, f"2.{n}")
            uploaded = upload(f"{worker.url}/{INDEX}/", wheel, USER, PROJECT, f"2.{n}")
            assert uploaded.status == 200, uploaded
        assert wait_until(lambda: webhooks_status(a)["pending"] == 48, WAIT)
        receiver.start()  # both workers find the same backlog due
        assert wait_until(lambda: webhooks_status(b)["pending"] == 0, WAIT)
        assert webhooks_status(a)["delivered"] == 48
        logged = [w.log_text().count("delivered to") for w in (a, b)]
    # each delivery recorded by exactly one worker, and both worked
    assert sum(logged) == 48 and min(logged) > 0, logged
    records = receiver.records()
    assert len({r["headers"]["x-devpid-delivery"] for r in records}) == len(records) == 48
    serials = [check_delivered(receiver.on(f"/barrier/12/{n}"), ["upload"] * 4) for n in range(12)]
    assert all(s == serials[0] for s in serials)


def test_a_receiver_that_hangs_or_answers_garbage_holds_back_only_itself(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.start()
    base = f"http://127.0.0.1:{receiver.port}"
    with DevpidProcess.start(tmp_path / "serverdir", NO_UPSTREAM, *OPTIONS) as devpid:
        create_stage(devpid.url, USER)
        hooks(devpid, f"{base}/slow/a", f"{base}/garbage/b", f"{base}/ok/c", secret=None)
        for n in range(3):
            wheel = build_wheel(tmp_path, PROJECT, f"3.{n}")
            uploaded = upload(f"{devpid.url}/{INDEX}/", wheel, USER, PROJECT, f"3.{n}")
            assert uploaded.status == 200, uploaded
        assert wait_until(lambda: len(receiver.on("/ok/c")) == 3, WAIT)
        # the reactor answers meanwhile (status polls), and the slow URL times out
        timed_out = "/slow/a failed (1): no answer within 2s; will retry"
        assert wait_until(lambda: timed_out in devpid.log_text(), WAIT)
        status = webhooks_status(devpid)
        assert status["pending"] == 6 and status["delivered"] == 3
        log = devpid.log_text()
        assert "/garbage/b failed (1): ParseError" in log
        assert "Traceback" not in log
    records = receiver.on("/ok/c")
    assert [r["headers"]["x-devpid-event"] for r in records] == ["upload"] * 3
    assert all("x-devpid-signature" not in r["headers"] for r in records)  # no secret
    first = int(records[0]["headers"]["x-devpid-serial"])
    # the URLs that fail only ever see their first delivery, retried
    for path in ("/slow/a", "/garbage/b"):
        tried = {int(r["headers"]["x-devpid-serial"]) for r in receiver.on(path)}
        assert tried == {first}, (path, tried)


# -- bad input ------------------------------------------------------------------------------

BAD_URLS = [
    "ftp://x",
    "http://",
    "javascript:alert(1)",
    "http://exa mple/",
    "http://h:99999/",
    "//h/x",
    "http://h/\u0000",
]


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevpidProcess]:
    serverdir = tmp_path_factory.mktemp("webhooks-bad") / "serverdir"
    with DevpidProcess.start(serverdir, NO_UPSTREAM, *OPTIONS) as devpid:
        create_stage(devpid.url, USER)
        yield devpid


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_webhook_url_is_one_line_and_changes_nothing(lone: DevpidProcess, url: str) -> None:
    before = lone.status()["serial"]
    auth = basic_auth(USER)
    for body in ([f"webhooks+={url}"], {"webhooks": [url]}):
        answer = json_call(lone.url, "PATCH", f"/{INDEX}", body, Authorization=auth)
        assert answer.status == 400, answer
        message = json.loads(answer.body)["message"]
        assert "\n" not in message and "http:// or https://" in message
    assert lone.status()["serial"] == before


def test_devpi_client_gets_the_line_too(lone: DevpidProcess, tmp_path: Path) -> None:
    devpi = DevpiClient(client_venv(), tmp_path / "client")
    devpi("use", lone.url).ok()
    devpi("login", USER, "--password", PASSWORD).ok()
    result = devpi("index", INDEX, "webhooks+=ftp://x")
    assert result.returncode != 0
    assert "webhook 'ftp://x' must be an http:// or https:// URL" in result.out
    assert "Traceback" not in result.out
    devpi("index", INDEX, "webhooks+=http://127.0.0.1:9/hook?token=SECRET").ok()
    shown = devpi("index", INDEX).ok().out
    assert "http://127.0.0.1:9/hook?token=***" in shown and "SECRET" not in shown
    devpi("index", INDEX, "webhooks-=http://127.0.0.1:9/hook?token=SECRET").ok()


@given(st.text(max_size=40))
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_any_webhook_text_is_taken_or_refused_in_one_line(lone: DevpidProcess, text: str) -> None:
    auth = basic_auth(USER)
    answer = json_call(lone.url, "PATCH", f"/{INDEX}", [f"webhooks+={text}"], Authorization=auth)
    assert answer.status in (200, 400), answer
    if answer.status == 400:
        message = json.loads(answer.body)["message"]
        assert message and "\n" not in message
        return
    stored = json.loads(answer.body)["result"]["webhooks"]
    assert all(url.startswith(("http://", "https://")) for url in stored)
    reset = json_call(lone.url, "PATCH", f"/{INDEX}", {"webhooks": []}, Authorization=auth)
    assert reset.status == 200
