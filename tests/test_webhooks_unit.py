"""Webhooks in memory: which logged events are webhook events, their bodies and signatures,
the durable queue's rules (idempotent queueing, leases, order per URL, back-off), and the
sender service on a memory clock against an in-memory receiver (StubTreq).

The private data is a real ``private.sqlite`` in a temporary directory, changed through
the same ``Releases`` and ``PrivateData`` calls the routes make.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from devpid.private.data import PrivateData
from devpid.private.database import PrivateDatabase
from devpid.private.events import Change, Event
from devpid.private.init import initialize
from devpid.private.releases import DOCZIP, RELEASE, TOXRESULT, NewFile, Releases, entrypath
from devpid.private.userconfig import NewUser
from devpid.tap import makeService
from devpid.webhooks.delivery import Request as Post
from devpid.webhooks.delivery import Sender
from devpid.webhooks.events import StageEvent, classify, payload, target_url
from devpid.webhooks.queue import NewDelivery, RetryPolicy, WebhookQueue
from devpid.webhooks.service import WebhookService
from devpid.webhooks.signing import sign, verify

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
SHA_A, SHA_B = "a" * 64, "b" * 64
SECRET = "s3cret-s3cret-s3cret"
META = {"name": "hello", "version": "1.0", "summary": "hi"}


def wheel(index: str, sha: str = SHA_A, version: str = "1.0") -> NewFile:
    return NewFile(RELEASE, entrypath(index, sha, f"hello-{version}-py3-none-any.whl"), sha, 10)


@attrs.define
class Setup:
    data: PrivateData
    releases: Releases
    path: Path

    @property
    def database(self) -> PrivateDatabase:
        return self.data.database

    def last_event(self) -> Event:
        return self.database.events_since(self.data.serial - 1)[-1]

    def hooks(self, *urls: str, secret: str | None = SECRET, index: str = "alice/dev") -> None:
        body: dict[str, Any] = {"webhooks": list(urls)}
        if secret is not None:
            body["webhook_secret"] = secret
        self.data.patch_index(index, body, "alice")


def open_setup(path: Path, first: bool = True) -> Setup:
    database = PrivateDatabase(path / "private.sqlite")
    database.open()
    data = PrivateData(database)
    if first:
        initialize(data, HASH, "http://localhost:1/simple/", "x")
        data.create_user("alice", NewUser("pw", None, {}), HASH, None)
        data.create_index("alice", "dev", {"bases": "root/pypi"}, "alice")
        data.create_index("alice", "prod", {}, "alice")
    return Setup(data, Releases(database), path)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    opened = open_setup(tmp_path)
    yield opened
    opened.database.close()


# -- which events are webhook events ---------------------------------------------------


def test_every_release_change_is_classified_from_its_records(setup: Setup) -> None:
    data, releases = setup.data, setup.releases
    release = wheel("alice/dev")
    releases.store("alice/dev", "hello", "1.0", META, release, "alice", -1)
    upload = classify(setup.last_event())
    assert upload is not None
    assert (upload.event, upload.index, upload.project, upload.version) == (
        "upload",
        "alice/dev",
        "hello",
        "1.0",
    )
    assert [f["path"] for f in upload.files] == [release.entrypath]
    assert upload.files[0]["sha256"] == SHA_A and upload.files[0]["rel"] == RELEASE

    doc = NewFile(DOCZIP, entrypath("alice/dev", SHA_B, "hello-1.0.doc.zip"), SHA_B, 5)
    releases.store("alice/dev", "hello", "1.0", META, doc, "alice", data.serial)
    docs = classify(setup.last_event())
    assert docs is not None and docs.event == "upload"
    assert [f["rel"] for f in docs.files] == [DOCZIP]  # only the new link, not the wheel

    tox = NewFile(TOXRESULT, release.entrypath + ".toxresult-0", SHA_B, 3, None, release.entrypath)
    releases.store_toxresult("alice/dev", release.entrypath, tox, None)
    assert classify(setup.last_event()) is None  # tox results are no webhook event

    releases.yank("alice/dev", "hello", "1.0", "broken", "alice")
    yank = classify(setup.last_event())
    assert yank is not None and (yank.event, yank.yanked) == ("yank", "broken")
    releases.yank("alice/dev", "hello", "1.0", False, "alice")
    unyank = classify(setup.last_event())
    assert unyank is not None and (unyank.event, unyank.yanked) == ("unyank", False)

    source = data.versions("alice/dev", "hello")["1.0"]
    copies = [
        (link, "alice/prod/" + link["entrypath"].split("/", 2)[2]) for link in source["+links"]
    ]
    releases.push("alice/dev", "alice/prod", "hello", "1.0", copies, "alice")
    push = classify(setup.last_event())
    assert push is not None
    assert (push.event, push.index, push.source) == ("push", "alice/prod", "alice/dev")
    assert len(push.files) == 3

    releases.delete_file("alice/dev", doc.entrypath, False, "alice")
    gone = classify(setup.last_event())
    assert gone is not None and gone.event == "delete_file" and gone.version == "1.0"
    assert [f["path"] for f in gone.files] == [doc.entrypath]

    releases.store("alice/dev", "hello", "2.0", META, wheel("alice/dev", SHA_B, "2.0"), None, -1)
    releases.delete_version("alice/dev", "hello", "2.0", False, "alice")
    version = classify(setup.last_event())
    assert version is not None and (version.event, version.version) == ("delete_version", "2.0")

    releases.delete_project("alice/dev", "hello", False, "alice")
    project = classify(setup.last_event())
    assert project is not None
    assert (project.event, project.version, project.versions) == ("delete_project", None, ("1.0",))


def test_users_indexes_tokens_and_registrations_are_not_webhook_events(setup: Setup) -> None:
    setup.hooks("http://127.0.0.1:9/x")
    assert classify(setup.last_event()) is None
    setup.releases.register("alice/dev", "hello", "1.0", META, "alice")
    assert classify(setup.last_event()) is None
    setup.releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), None, -1)
    setup.data.delete_index("alice/dev", "alice")  # takes the versions along
    assert classify(setup.last_event()) is None
    for event in setup.database.iter_events():
        kinds = {c.kind for c in event.changes}
        if kinds - {"version", "tombstone"}:
            assert classify(event) is None, event.what


def test_the_body_holds_the_public_event_and_no_secret(setup: Setup) -> None:
    setup.hooks("http://127.0.0.1:9/x")
    setup.releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", -1)
    event = setup.last_event()
    stage_event = classify(event)
    assert stage_event is not None
    body = payload(stage_event, event, "the-uuid")
    assert body["serial"] == event.serial and body["who"] == "alice"
    assert body["time"].endswith("Z") and body["server_uuid"] == "the-uuid"
    assert (body["type"], body["index"], body["project"], body["version"]) == (
        "upload",
        "alice/dev",
        "hello",
        "1.0",
    )
    assert body["filenames"] == ["hello-1.0-py3-none-any.whl"]
    assert body["log_event"] == event.public()
    text = json.dumps(body)
    assert SECRET not in text and "webhook_secret" not in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["+links", "yanked", "serial", "entrypath", "hashes", "log", "what"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(
    verb=st.sampled_from(["upload", "push", "yank", "unyank", "delete", "register", ""]),
    rest=st.text(max_size=30),
    changes=st.lists(
        st.tuples(
            st.sampled_from(["version", "tombstone", "index"]),
            st.text(max_size=20) | st.lists(st.text("ab/", max_size=3), min_size=4).map("/".join),
            st.none()
            | st.dictionaries(st.sampled_from(["+links", "yanked", "serial"]), json_values),
        ),
        max_size=4,
    ),
    serial=st.integers(0, 3),
)
@settings(max_examples=300, deadline=None)
def test_classify_and_the_body_never_fail_whatever_the_records(
    verb: str, rest: str, changes: list[tuple[str, str, Any]], serial: int
) -> None:
    event = Event(serial, 0.0, None, f"{verb} {rest}", tuple(Change(*c) for c in changes))
    stage_event = classify(event)
    if stage_event is not None:
        json.dumps(payload(stage_event, event, "u"))
        target_url("http://h/{project}/{version}", stage_event)


# -- signatures and URLs ------------------------------------------------------------------


def test_signature_is_githubs_hmac_sha256_of_the_raw_body() -> None:
    # HMAC-SHA256 of "hello" keyed with "key" (a published test vector)
    expected = "9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b"
    assert sign(b"hello", "key") == "sha256=" + expected
    assert verify(b"hello", "key", "sha256=" + expected)
    assert not verify(b"hello!", "key", "sha256=" + expected)
    assert not verify(b"hello", "other", "sha256=" + expected)
    assert not verify(b"hello", "key", None)
    assert not verify(b"hello", "key", "sha256=\u00e9")


def test_placeholders_are_replaced_url_quoted(setup: Setup) -> None:
    setup.releases.store("alice/dev", "hello", "1.0+x y", META, wheel("alice/dev"), None, -1)
    stage_event = classify(setup.last_event())
    assert stage_event is not None
    url = target_url(
        "http://j:8080/job/t/buildWithParameters?token=T&P={project}&V={version}"
        "&I={index}&E={event}&S={serial}&N={pkgname}&other={nope}",
        stage_event,
    )
    assert url == (
        "http://j:8080/job/t/buildWithParameters?token=T&P=hello&V=1.0%2Bx%20y"
        f"&I=alice%2Fdev&E=upload&S={stage_event.serial}&N=hello&other={{nope}}"
    )


@given(st.text(max_size=60))
def test_a_url_without_placeholders_is_sent_as_it_is(text: str) -> None:
    template = "http://h/" + text.replace("{", "(")
    assert target_url(template, StageEvent("upload", 1, "a/b", "p", "1")) == template


# -- the queue --------------------------------------------------------------------------


def delivery(serial: int, target: str = "http://h/a", tag: str = "") -> NewDelivery:
    return NewDelivery(
        f"d{serial}{target}{tag}", serial, "upload", "a/b", target, target, b"{}", None
    )


def test_queueing_remembers_the_last_serial_and_is_idempotent(tmp_path: Path) -> None:
    queue = WebhookQueue.in_serverdir(tmp_path)
    queue.open(start_serial=5)
    seen: list[int] = []

    def read(last: int) -> tuple[list[NewDelivery], int]:
        seen.append(last)
        return [delivery(s) for s in range(last + 1, 9)], 8

    assert queue.enqueue(read, 100.0) == 3
    assert queue.enqueue(read, 100.0) == 0  # read after 8: nothing new, nothing twice
    assert seen == [5, 8]
    other = WebhookQueue.in_serverdir(tmp_path)
    other.open(start_serial=0)  # a second opener keeps the serial the first one wrote
    assert other.last_serial() == 8
    assert [d["serial"] for d in other.deliveries()] == [6, 7, 8]


def test_only_the_oldest_pending_delivery_of_a_url_is_claimed(tmp_path: Path) -> None:
    queue = WebhookQueue.in_serverdir(tmp_path)
    queue.open(0)
    rows = [delivery(1), delivery(1, "http://h/b"), delivery(2), delivery(3, "http://h/b")]
    queue.enqueue(lambda last: (rows, 3), 0.0)
    first = queue.claim("p1", 10.0, 40.0, 10)
    assert [(c.serial, c.target) for c in first] == [(1, "http://h/a"), (1, "http://h/b")]
    assert queue.claim("p2", 10.0, 40.0, 10) == []  # both heads leased
    assert queue.delivered(first[0], "p1", 11.0)
    second = queue.claim("p2", 11.0, 40.0, 10)
    assert [(c.serial, c.target) for c in second] == [(2, "http://h/a")]
    # p1's lease on b's head runs out: another process may take it over
    assert queue.claim("p2", 49.0, 40.0, 10) == []
    taken = queue.claim("p2", 50.0, 40.0, 10)
    assert [(c.serial, c.target) for c in taken] == [(1, "http://h/b")]
    # the late first claimer cannot finish what is no longer its own
    assert not queue.delivered(first[1], "p1", 51.0)
    assert queue.figures()["delivered"] == 1


def test_back_off_doubles_up_to_the_cap_and_gives_up_after_retry_for(tmp_path: Path) -> None:
    policy = RetryPolicy(retry_for=100.0, backoff_max=8.0)
    waits = [policy.next_attempt(n, 0.0, 10.0) for n in range(1, 7)]
    assert waits == [11.0, 12.0, 14.0, 18.0, 18.0, 18.0]
    assert policy.next_attempt(3, 0.0, 99.0) == 100.0  # one last try at the deadline
    assert policy.next_attempt(3, 0.0, 100.0) is None
    queue = WebhookQueue.in_serverdir(tmp_path)
    queue.open(0)
    queue.enqueue(lambda last: ([delivery(1)], 1), 0.0)
    (claimed,) = queue.claim("p", 0.0, 40.0, 1)
    assert queue.attempt_failed(claimed, "p", 1.0, "HTTP 500", policy) == "pending"
    assert queue.claim("p", 1.5, 40.0, 1) == []  # not due yet
    (again,) = queue.claim("p", 2.0, 40.0, 1)
    assert queue.attempt_failed(again, "p", 100.0, "HTTP 500", policy) == "failed"
    figures = queue.figures()
    assert (figures["pending"], figures["failed"], figures["attempts_failed"]) == (0, 1, 2)
    assert figures["last_error"]["error"] == "HTTP 500"
    assert queue.prune(before=100.5) == 1 and queue.deliveries() == []


# -- the service, in memory ------------------------------------------------------------------


@attrs.define
class Receiver(Resource):
    """Records each POST; ``/fail`` answers 500, ``/slow`` never answers; while ``hold``,
    answers wait in ``held`` until ``release``."""

    isLeaf = True
    got: list[dict[str, Any]] = attrs.field(factory=list)
    down: bool = False
    hold: bool = False
    held: list[Request] = attrs.field(factory=list)

    def release(self) -> None:
        for request in self.held:
            request.write(b"ok")
            request.finish()
        self.held.clear()

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        path = request.path.decode()
        self.got.append(
            {
                "path": path,
                "headers": {
                    k.decode().lower(): v[0].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        if path.startswith("/slow"):
            return NOT_DONE_YET
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        if self.down or path.startswith("/fail"):
            request.setResponseCode(500)
            return b"down\n"
        return b"ok"


@attrs.define
class Running:
    setup: Setup
    clock: Clock
    receiver: Receiver
    stub: StubTreq
    services: list[WebhookService]

    def run(self, seconds: float, step: float = 0.5) -> None:
        elapsed = 0.0
        while elapsed <= seconds:
            self.stub.flush()
            self.clock.advance(step)
            elapsed += step
        self.stub.flush()

    def upload(self, version: str, sha: str = SHA_A) -> int:
        new = wheel("alice/dev", sha, version)
        change = self.setup.releases.store("alice/dev", "hello", version, META, new, "alice", -1)
        return change.serial


def service(setup: Setup, clock: Clock, stub: StubTreq, queue_dir: Path) -> WebhookService:
    queue = WebhookQueue.in_serverdir(queue_dir)
    policy = RetryPolicy(retry_for=60.0, backoff_max=4.0)
    sender = Sender(stub, clock, timeout=5.0)
    return WebhookService(queue, setup.database, sender, clock, policy, wall_clock=clock.seconds)


@pytest.fixture
def running(setup: Setup) -> Iterator[Running]:
    clock = Clock()
    clock.advance(1_800_000_000)
    receiver = Receiver()
    stub = StubTreq(receiver)
    hooks = service(setup, clock, stub, setup.path)
    hooks.startService()
    yield Running(setup, clock, receiver, stub, [hooks])
    hooks.stopService()


def test_an_upload_is_posted_signed_to_each_url(running: Running) -> None:
    running.setup.hooks("http://h/ok/one", "http://h/ok/two?token=T&p={project}")
    serial = running.upload("1.0")
    running.run(1)
    assert sorted(g["path"] for g in running.receiver.got) == ["/ok/one", "/ok/two"]
    for got in running.receiver.got:
        headers = got["headers"]
        assert headers["x-devpid-event"] == "upload"
        assert headers["x-devpid-serial"] == str(serial)
        assert verify(got["body"], SECRET, headers["x-devpid-signature"])
        assert json.loads(got["body"])["files"][0]["filename"] == "hello-1.0-py3-none-any.whl"
    ids = {g["headers"]["x-devpid-delivery"] for g in running.receiver.got}
    assert len(ids) == 2
    status = running.services[0].status()
    assert (status["pending"], status["delivered"], status["failed"]) == (0, 2, 0)


def test_without_a_secret_deliveries_are_unsigned(running: Running) -> None:
    running.setup.hooks("http://h/ok/one", secret=None)
    running.upload("1.0")
    running.run(1)
    (got,) = running.receiver.got
    assert "x-devpid-signature" not in got["headers"]


def test_a_failing_receiver_gets_the_deliveries_in_order_once_it_answers(
    running: Running,
) -> None:
    running.setup.hooks("http://h/ok/one")
    running.receiver.down = True
    serials = [running.upload(v, sha) for v, sha in (("1.0", SHA_A), ("1.1", SHA_B))]
    running.run(10)
    # only the first is tried while it fails: the second waits behind it
    tried = {g["headers"]["x-devpid-serial"] for g in running.receiver.got}
    assert tried == {str(serials[0])}
    assert running.services[0].status()["attempts_failed"] >= 3
    running.receiver.down = False
    running.receiver.got.clear()
    running.run(5)
    assert [g["headers"]["x-devpid-serial"] for g in running.receiver.got] == [
        str(s) for s in serials
    ]


def test_a_delivery_is_given_up_after_retry_for(running: Running) -> None:
    running.setup.hooks("http://h/fail/one")
    running.upload("1.0")
    running.run(70, step=1)
    status = running.services[0].status()
    assert (status["pending"], status["failed"]) == (0, 1)
    assert status["last_error"]["error"] == "HTTP 500: down"
    count = len(running.receiver.got)
    running.run(30, step=1)
    assert len(running.receiver.got) == count  # failed: never tried again


def test_a_receiver_that_never_answers_holds_back_only_its_own_url(running: Running) -> None:
    running.setup.hooks("http://h/slow/one", "http://h/ok/two")
    running.upload("1.0")
    running.upload("1.1", SHA_B)
    running.run(2)
    assert [g["path"] for g in running.receiver.got].count("/ok/two") == 2
    running.run(6)  # the slow one's 5 s timeout ran out: a failed attempt, retried later
    status = running.services[0].status()
    assert status["last_error"]["error"] == "no answer within 5s"
    assert status["pending"] == 2 and status["delivered"] == 2


def test_two_services_on_one_queue_send_each_delivery_once(running: Running) -> None:
    second_setup = open_setup(running.setup.path, first=False)
    other = service(second_setup, running.clock, running.stub, running.setup.path)
    other.startService()
    try:
        running.setup.hooks("http://h/ok/one", "http://h/ok/two", "http://h/ok/three")
        serials = [running.upload(f"1.{n}", f"{n:x}" * 64) for n in range(6)]
        running.receiver.hold = True  # POSTs in flight while both processes keep passing
        for _ in range(8):
            running.run(2)
            running.receiver.release()
        running.receiver.hold = False
        running.run(2)
        ids = [g["headers"]["x-devpid-delivery"] for g in running.receiver.got]
        assert len(ids) == len(set(ids)) == 18
        assert all(s.status()["pending"] == 0 for s in (running.services[0], other))
        for path in ("/ok/one", "/ok/two", "/ok/three"):
            got = [
                g["headers"]["x-devpid-serial"] for g in running.receiver.got if g["path"] == path
            ]
            assert got == [str(s) for s in serials]
    finally:
        other.stopService()
        second_setup.database.close()


def test_a_restored_log_behind_the_queue_queues_from_the_log(setup: Setup, tmp_path: Path) -> None:
    queue = WebhookQueue.in_serverdir(tmp_path)
    queue.open(setup.data.serial + 50)
    queue.close()
    clock = Clock()
    hooks = service(setup, clock, StubTreq(Receiver()), tmp_path)
    hooks.startService()
    try:
        assert hooks.queue.last_serial() == setup.data.serial
    finally:
        hooks.stopService()


# -- where the sender runs ------------------------------------------------------------------


def test_a_primary_runs_the_sender_and_a_replica_does_not(tmp_path: Path) -> None:
    secret = tmp_path / "replication.secret"
    secret.write_text("r" * 40 + "\n")
    secret.chmod(0o600)
    common = {
        "upstream": "http://127.0.0.1:9/simple/",
        "listen": "tcp:0:interface=127.0.0.1",
        "replication-secret-file": str(secret),
    }
    primary = makeService({**common, "serverdir": str(tmp_path / "p")}, MemoryReactorClock())
    replica = makeService(
        {**common, "serverdir": str(tmp_path / "r"), "primary-url": "http://127.0.0.1:9/"},
        MemoryReactorClock(),
    )
    assert sum(isinstance(s, WebhookService) for s in primary) == 1
    assert not any(isinstance(s, WebhookService) for s in replica)


def test_a_url_taken_out_of_the_index_takes_its_queued_deliveries_along(
    running: Running,
) -> None:
    running.setup.hooks("http://h/fail/one", "http://h/ok/two")
    running.upload("1.0")
    running.upload("1.1", SHA_B)
    running.run(3)
    assert running.services[0].status()["pending"] == 2  # both behind the failing first
    running.setup.hooks("http://h/ok/two")
    running.run(3)
    status = running.services[0].status()
    assert (status["pending"], status["failed"], status["delivered"]) == (0, 2, 2)
    rows = running.services[0].queue.deliveries("failed")
    assert {r["last_error"] for r in rows} == {"the webhook was removed from the index"}


def test_events_committed_while_no_sender_ran_are_queued_at_the_next_start(
    running: Running,
) -> None:
    running.setup.hooks("http://h/ok/one")
    first = running.upload("1.0")
    running.run(1)
    # the process dies between a commit and its queueing: no pass after these commits
    running.services[0].stopService()
    later = [running.upload(v, sha) for v, sha in (("1.1", SHA_B), ("1.2", "c" * 64))]
    restarted = service(running.setup, running.clock, running.stub, running.setup.path)
    running.services[0] = restarted
    restarted.startService()
    running.run(2)
    restarted.stopService()
    serials = [g["headers"]["x-devpid-serial"] for g in running.receiver.got]
    assert serials == [str(s) for s in (first, *later)]


def test_two_queue_objects_on_one_file_never_claim_the_same_delivery(tmp_path: Path) -> None:
    one, two = WebhookQueue.in_serverdir(tmp_path), WebhookQueue.in_serverdir(tmp_path)
    one.open(0)
    two.open(0)
    rows = [delivery(1, f"http://h/{n}") for n in range(6)]
    one.enqueue(lambda last: (rows, 1), 0.0)
    assert two.enqueue(lambda last: (rows, 1), 0.0) == 0  # already queued up to serial 1
    a = one.claim("p1", 1.0, 30.0, 4)
    b = two.claim("p2", 1.0, 30.0, 4)
    assert len(a) == 4 and len(b) == 2
    assert not {c.delivery for c in a} & {c.delivery for c in b}
    assert two.claim("p2", 2.0, 30.0, 4) == []
    one.close()
    two.close()


def test_stopping_gives_a_post_in_flight_back_to_the_queue_unsent(running: Running) -> None:
    running.setup.hooks("http://h/ok/one")
    running.receiver.hold = True
    serial = running.upload("1.0")
    running.run(1)
    assert len(running.receiver.held) == 1  # the POST waits for its answer
    stopping = running.services[0].stopService()
    assert stopping.called  # at once, not after the POST's timeout
    (row,) = _rows(running.setup.path)
    assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 0, None)
    running.receiver.hold = False
    running.receiver.held.clear()
    restarted = service(running.setup, running.clock, running.stub, running.setup.path)
    running.services[0] = restarted
    restarted.startService()
    running.run(1)  # no lease to wait for: sent again at the first pass
    restarted.stopService()
    assert [g["headers"]["x-devpid-serial"] for g in running.receiver.got] == [str(serial)] * 2
    assert _rows(running.setup.path)[0]["state"] == "delivered"


def _rows(queue_dir: Path) -> list[dict[str, Any]]:
    queue = WebhookQueue.in_serverdir(queue_dir)
    queue.open(0)
    try:
        return queue.deliveries()
    finally:
        queue.close()


def test_a_user_and_password_in_the_url_go_as_basic_auth_not_in_the_url() -> None:
    request = Post("http://j%40x:p%3Aw@127.0.0.1:8080/job/t?token=T", b"{}", "upload", "d", 1, None)
    assert request.target()[0] == "http://127.0.0.1:8080/job/t?token=T"
    assert request.headers()["Authorization"] == ["Basic " + base64.b64encode(b"j@x:p:w").decode()]
    plain = Post("http://127.0.0.1/hook", b"{}", "upload", "d", 1, None)
    assert plain.target() == ("http://127.0.0.1/hook", None)
    assert "Authorization" not in plain.headers()
