"""The streaming tee, in memory: an upstream body delivered by hand, clients as fake requests."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from devpid.common.identity import ProcessIdentity
from devpid.common.stats import Stats
from devpid.files import store as filestore
from devpid.files.store import FileStore
from devpid.mirror.tee import Download, DownloadFailed, DownloadManager, FileSpec
from devpid.mirror.tee import download as tee
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.tee.shared import FOLLOW_POLL
from devpid.mirror.upstream import UpstreamClient, UpstreamHealth
from devpid.store import StoreUnavailable
from devpid.store.embedded import EmbeddedStore

CHUNKS = [b"a" * 1000, b"b" * 1000, b"c" * 500]
BODY = b"".join(CHUNKS)
SHA = hashlib.sha256(BODY).hexdigest()


@attrs.define
class FakeTransport:
    aborted: bool = False
    stopped: bool = False

    def abortConnection(self) -> None:
        self.aborted = True

    def stopProducing(self) -> None:
        self.stopped = True


@attrs.define
class FakeChannel:
    transport: FakeTransport = attrs.field(factory=FakeTransport)


@attrs.define
class FakeClient:
    """What TeeReader uses of a twisted.web request, recording what it is sent."""

    channel: FakeChannel = attrs.field(factory=FakeChannel)
    received: bytearray = attrs.field(factory=bytearray)
    producer: Any = None
    finished: bool = False
    _notify: list[Deferred[None]] = attrs.field(factory=list)
    #: Pause the producer once this many bytes were written (a slow client).
    window: int | None = None

    def write(self, data: bytes) -> None:
        assert not self.finished
        self.received += data
        if self.window is not None and len(self.received) >= self.window:
            self.producer.pauseProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def finish(self) -> None:
        self.finished = True
        for d in self._notify:
            d.callback(None)

    def notifyFinish(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._notify.append(d)
        return d

    def disconnect(self) -> None:
        for d in self._notify:
            d.errback(Failure(ConnectionError("client went away")))

    @property
    def aborted(self) -> bool:
        return self.channel.transport.aborted


@attrs.define
class FakeResponse:
    """An upstream response whose body the test delivers chunk by chunk."""

    length: int | None
    code: int = 200
    protocol: Any = None
    headers: Headers = attrs.field(factory=Headers)

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(FakeTransport())

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def end(self, reason: Failure | None = None) -> None:
        self.protocol.connectionLost(reason or Failure(ResponseDone()))


@attrs.define
class Setup:
    download: Download
    response: FakeResponse
    clock: MemoryReactorClock
    files: FileStore
    final: Path


def start(tmp_path: Path, sha256: str | None = SHA, length: int | None = len(BODY)) -> Setup:
    files = FileStore(tmp_path)
    files.prepare()
    clock = MemoryReactorClock()
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    spec = FileSpec("http://upstream.test/demo-1.0.tar.gz", final, sha256, None)
    download = Download(spec, files, clock, idle_timeout=30)
    response = FakeResponse(length)
    download._start_streaming(response, None)  # type: ignore[arg-type]
    return Setup(download, response, clock, files, final)


def attach(setup: Setup, **options: Any) -> FakeClient:
    client = FakeClient(**options)
    setup.download.attach(client)  # type: ignore[arg-type]
    return client


def test_clients_get_everything_only_after_verification(tmp_path: Path) -> None:
    s = start(tmp_path)
    client = attach(s)
    s.response.send(CHUNKS[0])
    assert bytes(client.received) == b""  # the newest chunk is held back
    s.response.send(CHUNKS[1])
    assert bytes(client.received) == CHUNKS[0]
    s.response.send(CHUNKS[2])
    assert bytes(client.received) == CHUNKS[0] + CHUNKS[1]
    assert not client.finished
    s.response.end()
    assert bytes(client.received) == BODY and client.finished
    assert s.download.verified
    assert s.final.read_bytes() == BODY
    assert not s.files.partial_path(s.final).exists()


def test_late_joiner_reads_from_disk_then_follows(tmp_path: Path) -> None:
    s = start(tmp_path)
    s.response.send(CHUNKS[0])
    s.response.send(CHUNKS[1])
    late = attach(s)
    assert bytes(late.received) == CHUNKS[0]
    s.response.send(CHUNKS[2])
    s.response.end()
    assert bytes(late.received) == BODY and late.finished


@pytest.mark.parametrize(
    ("sha256", "length", "body"),
    [
        ("0" * 64, len(BODY), BODY),  # wrong hash
        (SHA, len(BODY), BODY[:-1]),  # short body
        (None, len(BODY), BODY[:-1]),  # no hash, short body
    ],
)
def test_bad_bodies_abort_clients_and_keep_nothing(
    tmp_path: Path, sha256: str | None, length: int, body: bytes
) -> None:
    s = start(tmp_path, sha256=sha256, length=length)
    client = attach(s)
    s.response.send(body[:1000])
    s.response.send(body[1000:])
    s.response.end(Failure(PotentialDataLoss()) if sha256 is None else None)
    assert s.download.state == "failed"
    assert client.aborted and not client.finished
    assert len(client.received) < len(BODY)
    assert not s.final.exists()
    assert not s.files.partial_path(s.final).exists()


def test_more_bytes_than_announced_fail_at_once(tmp_path: Path) -> None:
    s = start(tmp_path)
    client = attach(s)
    s.response.send(BODY)
    s.response.send(b"extra")
    assert s.download.state == "failed"
    assert s.response.protocol.transport.stopped
    assert client.aborted


def test_upstream_breaking_off_aborts_clients(tmp_path: Path) -> None:
    s = start(tmp_path)
    client = attach(s)
    s.response.send(CHUNKS[0])
    s.response.end(Failure(ConnectionResetError("reset")))
    assert client.aborted and s.download.state == "failed"
    assert "broke off" in (s.download.error or "")
    assert not s.files.partial_path(s.final).exists()


def test_idle_upstream_times_out(tmp_path: Path) -> None:
    s = start(tmp_path)
    client = attach(s)
    s.response.send(CHUNKS[0])
    s.clock.advance(29)
    s.response.send(CHUNKS[1])
    s.clock.advance(29)
    assert s.download.state == "streaming"
    s.clock.advance(2)
    assert s.download.state == "failed"
    assert "stalled" in (s.download.error or "")
    assert s.response.protocol.transport.stopped
    assert client.aborted


def test_disconnected_client_detaches_and_download_completes(tmp_path: Path) -> None:
    s = start(tmp_path)
    leaving = attach(s)
    staying = attach(s)
    s.response.send(CHUNKS[0])
    s.response.send(CHUNKS[1])
    leaving.disconnect()
    assert len(s.download.readers) == 1
    s.response.send(CHUNKS[2])
    s.response.end()
    assert s.download.verified and staying.finished
    assert bytes(staying.received) == BODY
    assert len(leaving.received) == len(CHUNKS[0])


def test_slow_client_does_not_hold_up_the_download(tmp_path: Path) -> None:
    s = start(tmp_path)
    slow = attach(s, window=500)
    for chunk in CHUNKS:
        s.response.send(chunk)
    s.response.end()
    assert s.download.verified  # the cache filled while the client was paused
    assert len(slow.received) < len(BODY) and not slow.finished
    slow.window = None
    slow.producer.resumeProducing()
    assert bytes(slow.received) == BODY and slow.finished


def test_no_hash_verifies_by_length_only(tmp_path: Path) -> None:
    s = start(tmp_path, sha256=None)
    for chunk in CHUNKS:
        s.response.send(chunk)
    s.response.end()
    assert s.download.verified


def attach_refusable(setup: Setup, refused: list[tuple[int, str]]) -> FakeClient:
    """A client whose error answers (status, reason) are recorded in ``refused``."""
    client = FakeClient()
    request: Any = client
    setup.download.attach(request, lambda code, reason: refused.append((code, reason)))
    return client


def test_a_trickle_is_no_progress(tmp_path: Path) -> None:
    """A byte a second keeps the connection busy, but less than MIN_PROGRESS bytes
    within the idle timeout fails the download like silence does."""
    s = start(tmp_path)
    client = attach(s)
    for _ in range(29):
        s.response.send(b"a")
        s.clock.advance(1)
    assert s.download.state == "streaming"
    s.clock.advance(1)
    assert s.download.state == "failed"
    assert "too slow: 29 bytes in 30s" in (s.download.error or "")
    assert s.response.protocol.transport.stopped
    assert client.aborted


def test_a_client_sent_nothing_yet_gets_an_error_answer_not_a_cut(tmp_path: Path) -> None:
    s = start(tmp_path)
    refused: list[tuple[int, str]] = []
    early = attach_refusable(s, refused)
    waiting = attach_refusable(s, refused)
    waiting.producer.pauseProducing()  # a slow client: nothing sent to it yet
    s.response.send(CHUNKS[0])
    s.response.send(CHUNKS[1])
    s.response.end(Failure(ConnectionResetError("reset")))
    assert early.aborted and len(early.received) == len(CHUNKS[0])  # it had bytes: cut off
    assert not waiting.aborted and waiting.received == b""
    assert refused == [(502, s.download.error)] and "broke off" in refused[0][1]
    assert s.download.readers == set()


@pytest.mark.parametrize("limit", ["file size", "free space"])
def test_a_file_the_cache_cannot_hold_fails_before_its_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    if limit == "file size":
        monkeypatch.setattr(tee.resource, "getrlimit", lambda _: (1000, 1000))
    else:
        monkeypatch.setattr(tee.os, "statvfs", lambda _: os.statvfs_result((0,) * 4 + (1,) * 6))
    s = start(tmp_path)
    assert s.download.state == "failed" and s.download.error_status == 507
    assert ("file size limit" if limit == "file size" else "not enough space") in (
        s.download.error or ""
    )
    assert s.response.protocol.transport.stopped  # the body is not read
    assert not s.files.partial_path(s.final).exists()
    failures: list[Failure] = []
    s.download.wait_for_headers().addErrback(failures.append)
    assert isinstance(failures[0].value, DownloadFailed) and failures[0].value.status == 507


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write = os.write
    monkeypatch.setattr(tee.os, "write", lambda fd, data: write(fd, bytes(data[:300])))
    s = start(tmp_path)
    client = attach(s)
    for chunk in CHUNKS:
        s.response.send(chunk)
    s.response.end()
    assert s.download.verified and bytes(client.received) == BODY
    assert s.final.read_bytes() == BODY


def test_a_write_error_fails_the_download_with_507(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = start(tmp_path)
    refused: list[tuple[int, str]] = []
    attach_refusable(s, refused)

    def too_large(fd: int, data: bytes) -> int:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(tee.os, "write", too_large)
    s.response.send(CHUNKS[0])
    assert s.download.state == "failed"
    assert refused == [(507, "cannot write to the cache: File too large")]
    assert s.response.protocol.transport.stopped
    assert not s.files.partial_path(s.final).exists()


class FileResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.pending: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.gets += 1
        if request.path.endswith(b"missing.tar.gz"):
            request.setResponseCode(404)
            return b"no"
        # Answer later, so that the download is still running when others ask.
        request.setHeader(b"content-length", str(len(BODY)).encode())
        request.write(CHUNKS[0])
        self.pending.append(request)
        return NOT_DONE_YET

    def complete(self) -> None:
        for request in self.pending:
            request.write(b"".join(CHUNKS[1:]))
            request.finish()


def manager(tmp_path: Path) -> tuple[DownloadManager, StubTreq, FileResource, FileStore]:
    resource = FileResource()
    stub = StubTreq(resource)
    clock = MemoryReactorClock()
    files = FileStore(tmp_path)
    files.prepare()
    upstream = UpstreamClient("http://upstream.test/simple/", stub, clock, timeout=5)
    return DownloadManager(files, upstream, clock, 30, Stats()), stub, resource, files


def test_manager_runs_one_download_per_file(tmp_path: Path) -> None:
    downloads, stub, resource, files = manager(tmp_path)
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    spec = FileSpec("http://upstream.test/files/demo-1.0.tar.gz", final, SHA, len(BODY))
    first, started = downloads.download_for(spec)
    second, started_again = downloads.download_for(spec)
    assert first is second and started and not started_again
    waiter = first.wait_for_headers()
    stub.flush()
    assert waiter.called
    third, started_again = downloads.download_for(spec)
    assert third is first and not started_again
    assert not downloads.drain().called
    resource.complete()
    stub.flush()
    assert resource.gets == 1
    assert first.verified
    assert final.read_bytes() == BODY
    assert downloads.running == {}
    assert downloads.drain().called


def test_manager_reports_upstream_404(tmp_path: Path) -> None:
    downloads, stub, _resource, files = manager(tmp_path)
    final = files.file_path("root/pypi", "abc", "0123456789abc", "missing.tar.gz")
    spec = FileSpec("http://upstream.test/files/missing.tar.gz", final, SHA, None)
    download, _ = downloads.download_for(spec)
    waiter = download.wait_for_headers()
    stub.flush()
    failures: list[Failure] = []
    waiter.addErrback(failures.append)
    assert failures and failures[0].check(DownloadFailed)
    assert "404" in str(failures[0].value)
    assert downloads.stats.totals()["download_failures"] == 1


# -- followers: another process owns the download ------------------------------


@attrs.define
class FakeRangeUpstream:
    """``open_file`` for a takeover: answers what the test prepared, records the offset."""

    response: FakeResponse
    offsets: list[int] = attrs.field(factory=list)
    health: UpstreamHealth = attrs.field(factory=UpstreamHealth)

    async def open_file(self, url: str, offset: int = 0) -> FakeResponse:
        self.offsets.append(offset)
        return self.response


@attrs.define
class Pair:
    """An owner (``start``'s download, "process A") and a follower in "process B"."""

    owner: Setup
    follower: Download
    peers: SharedDownloads
    store: EmbeddedStore
    owner_token: str

    def follow(self, upstream: Any = None) -> Deferred[None]:
        return Deferred.fromCoroutine(self.follower.run(upstream))

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.owner.clock.advance(FOLLOW_POLL)


def start_pair(tmp_path: Path) -> Pair:
    owner = start(tmp_path)
    store = EmbeddedStore(tmp_path / "state.sqlite", owner.clock)
    Deferred.fromCoroutine(store.open())
    owner_token = owner.files.identity.token
    name = "download:" + owner.files.relative(owner.final)
    Deferred.fromCoroutine(store.acquire_lock(name, owner_token, 10))
    assert owner.download.partial_path is not None
    document = {"owner": owner_token, "state": "streaming", "total": len(BODY)}
    document["partial"] = owner.download.partial_path.name
    Deferred.fromCoroutine(store.set_document(name, document))
    other = ProcessIdentity(nonce="b0b0b0")
    files_b = FileStore(tmp_path, identity=other)
    peers = SharedDownloads(store, files_b, other, lock_ttl=10)
    spec = owner.download.spec
    follower = Download(spec, files_b, owner.clock, idle_timeout=30, peers=peers)
    return Pair(owner, follower, peers, store, owner_token)


def test_a_follower_streams_the_owners_file_and_holds_back_until_committed(
    tmp_path: Path,
) -> None:
    pair = start_pair(tmp_path)
    pair.follow()
    assert pair.follower.role == "follower" and pair.follower.state == "streaming"
    client = attach_to(pair.follower)
    for chunk in CHUNKS:
        pair.owner.response.send(chunk)
        pair.tick()
    # Everything on disk but the last byte: the owner has not verified it yet.
    assert bytes(client.received) == BODY[:-1]
    assert not client.finished
    pair.owner.response.end()
    pair.tick()
    assert bytes(client.received) == BODY and client.finished
    assert pair.follower.verified and not pair.follower.committed_here


def test_a_follower_cuts_its_clients_off_when_the_owner_fails(tmp_path: Path) -> None:
    pair = start_pair(tmp_path)
    pair.follow()
    client = attach_to(pair.follower)
    pair.owner.response.send(CHUNKS[0])
    pair.owner.response.send(b"x" * 1500)  # wrong bytes: the hash will not match
    pair.tick()
    pair.owner.response.end()
    pair.tick()
    assert pair.owner.download.state == "failed"
    assert pair.follower.state == "failed"
    assert client.aborted and not client.finished
    assert len(client.received) < len(BODY)
    assert not pair.owner.final.exists()


def test_a_follower_takes_over_a_dead_owner_and_resumes_with_a_range(tmp_path: Path) -> None:
    pair = start_pair(tmp_path)
    rest = FakeResponse(len(BODY) - 1500, code=206)
    rest.headers.setRawHeaders(b"content-range", [f"bytes 1500-{len(BODY) - 1}/{len(BODY)}"])
    range_upstream = FakeRangeUpstream(rest)
    pair.follow(range_upstream)
    client = attach_to(pair.follower)
    pair.owner.response.send(CHUNKS[0])
    pair.owner.response.send(CHUNKS[1][:500])
    pair.tick()
    # The owner dies: nothing more arrives, and its lock runs out.
    pair.owner.download._close_fds()
    pair.owner.clock.advance(10.5)
    pair.tick(20)
    new_owner = pair.follower
    assert new_owner.role == "owner" and new_owner.state == "streaming"
    assert pair.peers.takeovers == 1
    assert range_upstream.offsets == [1500]
    assert new_owner.resumed_from == 1500
    # Adopted by renaming: the dead owner's name is gone, the bytes (and inode) stay.
    assert not pair.owner.download.partial_path.exists()  # type: ignore[union-attr]
    assert new_owner.partial_path == pair.peers.files.partial_path(pair.owner.final)
    assert bytes(client.received) == BODY[:1500]  # short of the total: nothing complete
    rest.send(BODY[1500:2000])
    rest.send(BODY[2000:])
    rest.end()
    assert bytes(client.received) == BODY and client.finished
    assert new_owner.verified and new_owner.committed_here
    assert pair.owner.final.read_bytes() == BODY
    assert list(tmp_path.rglob("*.devpid-partial")) == []


def test_a_takeover_without_range_support_refetches_and_cuts_off_old_readers(
    tmp_path: Path,
) -> None:
    pair = start_pair(tmp_path)
    whole = FakeResponse(len(BODY), code=200)
    pair.follow(FakeRangeUpstream(whole))
    early = attach_to(pair.follower)
    pair.owner.response.send(CHUNKS[0])
    pair.tick()
    pair.owner.download._close_fds()
    pair.owner.clock.advance(10.5)
    pair.tick(20)
    assert early.aborted and not early.finished  # its bytes came from a file now dropped
    late = attach_to(pair.follower)
    for chunk in CHUNKS:
        whole.send(chunk)
    whole.end()
    assert bytes(late.received) == BODY and late.finished
    assert pair.owner.final.read_bytes() == BODY
    assert list(tmp_path.rglob("*.devpid-partial")) == []


def attach_to(download: Download, **options: Any) -> FakeClient:
    client = FakeClient(**options)
    download.attach(client)  # type: ignore[arg-type]
    return client


# -- the lock is only a hint: the flock and the file decide ---------------------


def test_a_follower_keeps_following_a_live_owner_whose_lock_ran_out(tmp_path: Path) -> None:
    """The store lost the lock under a live owner (it still holds its file's flock):
    the follower that gets the lock gives it back and follows on; one download."""
    pair = start_pair(tmp_path)
    upstream = FakeRangeUpstream(FakeResponse(len(BODY), code=200))
    pair.follow(upstream)
    client = attach_to(pair.follower)
    pair.owner.response.send(CHUNKS[0])
    pair.tick()
    pair.owner.clock.advance(10.5)  # the lock runs out; the owner still writes
    pair.tick(20)
    assert pair.follower.role == "follower" and pair.peers.takeovers == 0
    assert upstream.offsets == []  # no second download
    name = "download:" + pair.peers.files.relative(pair.owner.final)
    holder = Deferred.fromCoroutine(pair.store.lock_owner(name))
    assert holder.result is None  # given back, for the owner's next renewal
    for chunk in CHUNKS[1:]:
        pair.owner.response.send(chunk)
    pair.owner.response.end()
    pair.tick()
    assert bytes(client.received) == BODY and client.finished
    assert pair.follower.verified and pair.owner.final.read_bytes() == BODY


def test_a_copy_of_its_own_when_the_announced_file_is_still_written(tmp_path: Path) -> None:
    """Taking over, a download never adopts a file whose writer lives: it fetches its own
    copy; clients that had bytes of the other file are cut off, the others read the new one."""
    pair = start_pair(tmp_path)
    whole = FakeResponse(len(BODY), code=200)
    upstream = FakeRangeUpstream(whole)
    pair.follow(upstream)
    waiting = attach_to(pair.follower)
    waiting.producer.pauseProducing()  # a slow client: nothing sent before the takeover
    early = attach_to(pair.follower)
    pair.owner.response.send(CHUNKS[0])
    pair.tick()
    assert len(early.received) > 0 and len(waiting.received) == 0
    # The follower already holds the lock when it looks at the owner's file.
    pair.follower._locked = True
    pair.follower._take_over(pair.peers)
    Deferred.fromCoroutine(pair.follower._fetch(upstream))  # type: ignore[arg-type]
    new_owner = pair.follower
    assert new_owner.role == "owner" and new_owner.resumed_from == 0
    assert upstream.offsets == [0]  # a copy of its own, from the start
    assert early.aborted
    assert new_owner.partial_path != pair.owner.download.partial_path
    for chunk in CHUNKS:
        whole.send(chunk)
    whole.end()
    assert new_owner.verified
    waiting.producer.resumeProducing()
    assert bytes(waiting.received) == BODY and waiting.finished
    for chunk in CHUNKS[1:]:
        pair.owner.response.send(chunk)
    pair.owner.response.end()
    assert pair.owner.download.verified
    assert pair.owner.final.read_bytes() == BODY
    assert list(tmp_path.rglob("*.devpid-partial")) == []


def test_a_follower_does_not_take_over_while_the_store_is_away(tmp_path: Path) -> None:
    pair = start_pair(tmp_path)
    pair.follow()
    client = attach_to(pair.follower)
    pair.owner.response.send(CHUNKS[0])
    pair.tick()
    pair.peers.store = StoreAway()  # type: ignore[assignment]
    pair.owner.clock.advance(10.5)  # any lock would have run out by now
    pair.tick(20)
    assert pair.follower.role == "follower" and pair.peers.takeovers == 0
    for chunk in CHUNKS[1:]:
        pair.owner.response.send(chunk)
    pair.owner.response.end()
    pair.tick()
    assert bytes(client.received) == BODY and client.finished
    assert pair.follower.verified and not pair.follower.committed_here


def test_a_second_writer_makes_the_download_fail_instead_of_committing(tmp_path: Path) -> None:
    setup = start(tmp_path)
    for chunk in CHUNKS:
        setup.response.send(chunk)
    assert setup.download.partial_path is not None
    with open(setup.download.partial_path, "ab") as intruder:
        intruder.write(b"x")
    setup.response.end()
    assert setup.download.state == "failed"
    assert "holds 2501 bytes, not the 2500 received" in (setup.download.error or "")
    assert not setup.final.exists()


def test_a_download_aborted_while_claiming_lets_its_lock_go(tmp_path: Path) -> None:
    """Shutdown aborts a download still asking for its lock: the manager's ``unlocked()``
    waits until the lock, granted after all, has been let go."""
    files = FileStore(tmp_path)
    files.prepare()
    clock = MemoryReactorClock()
    store = SlowLockStore(EmbeddedStore(tmp_path / "state.sqlite", clock))
    Deferred.fromCoroutine(store.inner.open())
    peers = SharedDownloads(store, files, ProcessIdentity(), lock_ttl=10)  # type: ignore[arg-type]
    upstream = FakeRangeUpstream(FakeResponse(len(BODY)))
    downloads = DownloadManager(files, upstream, clock, 30, Stats(), peers=peers)  # type: ignore[arg-type]
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    downloads.download_for(FileSpec("http://upstream.test/demo-1.0.tar.gz", final, SHA, None))
    downloads.abort_all("devpid is shutting down")
    assert downloads.running == {}
    unlocked = downloads.unlocked()
    assert not unlocked.called  # the claim is still out
    store.answer()  # the lock is granted after all
    assert unlocked.called
    assert upstream.offsets == []  # nothing fetched
    holder = Deferred.fromCoroutine(store.inner.lock_owner("download:" + files.relative(final)))
    assert holder.result is None


def test_a_download_that_loses_its_lock_finishes_without_it(tmp_path: Path) -> None:
    setup = start(tmp_path)
    download = setup.download
    store = EmbeddedStore(tmp_path / "state.sqlite", setup.clock)
    Deferred.fromCoroutine(store.open())
    peers = SharedDownloads(store, setup.files, setup.files.identity, lock_ttl=3)
    name = "download:" + setup.files.relative(setup.final)
    # As _run does for a download that won its lock:
    download.peers, download._lock_value, download._locked = peers, "me#1", True
    Deferred.fromCoroutine(store.acquire_lock(name, "me#1", 3))
    Deferred.fromCoroutine(store.release_lock(name, "me#1"))
    Deferred.fromCoroutine(store.acquire_lock(name, "someone-else#1", 3))
    download._renew()
    assert peers.lost_locks == 1 and download.state == "streaming"
    for chunk in CHUNKS:
        setup.response.send(chunk)
    setup.response.end()
    assert download.verified and setup.final.read_bytes() == BODY
    holder = Deferred.fromCoroutine(store.lock_owner(name))
    assert holder.result == "someone-else#1"  # not released by the one that lost it


def test_a_download_takes_its_lost_lock_back_once_it_is_free(tmp_path: Path) -> None:
    setup = start(tmp_path)
    download = setup.download
    store = EmbeddedStore(tmp_path / "state.sqlite", setup.clock)
    Deferred.fromCoroutine(store.open())
    peers = SharedDownloads(store, setup.files, setup.files.identity, lock_ttl=3)
    name = "download:" + setup.files.relative(setup.final)
    download.peers, download._lock_value, download._locked = peers, "me#1", True
    Deferred.fromCoroutine(store.acquire_lock(name, "follower#1", 3))  # ours ran out
    download._renew()
    assert peers.lost_locks == 1 and not download._locked
    Deferred.fromCoroutine(store.release_lock(name, "follower#1"))  # the follower gives it back
    download._renew()
    assert download._locked
    holder = Deferred.fromCoroutine(store.lock_owner(name))
    assert holder.result == "me#1"
    for chunk in CHUNKS:
        setup.response.send(chunk)
    setup.response.end()
    assert download.verified
    holder = Deferred.fromCoroutine(store.lock_owner(name))
    assert holder.result is None  # released at the end, as an owner does


def test_a_client_that_breaks_while_finishing_does_not_wedge_the_manager(
    tmp_path: Path,
) -> None:
    downloads, stub, resource, files = manager(tmp_path)
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    download, _ = downloads.download_for(
        FileSpec("http://upstream.test/files/demo-1.0.tar.gz", final, SHA, len(BODY))
    )
    download.wait_for_headers()
    stub.flush()
    client = BreakingClient()
    download.attach(client)  # type: ignore[arg-type]
    client.breaking = True
    resource.complete()
    with contextlib.suppress(RuntimeError):
        stub.flush()
    assert download.verified and final.read_bytes() == BODY
    assert downloads.running == {}  # the manager heard: the next request is served
    assert downloads.drain().called


def test_prepare_keeps_files_being_written_and_removes_leftovers(tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    files.prepare()
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    writing, fd = files.create_partial(final)
    os.write(fd, b"partial")
    crashed = final.with_name(f"{final.name}.999999-dead00.devpid-partial")
    crashed.write_bytes(b"left by a crash")
    page = files.page_path("root/pypi", "demo")
    page.parent.mkdir(parents=True)
    dead_page = page.with_name("demo.json.999999-dead00.devpid-partial")
    dead_page.write_text("{")
    live_page = files.partial_path(page)
    live_page.write_text("{")
    FileStore(tmp_path, identity=ProcessIdentity(nonce="c0ffee")).prepare()
    assert writing.exists() and live_page.exists()
    assert not crashed.exists() and not dead_page.exists()
    os.close(fd)  # the writer is gone: its file is a leftover now
    FileStore(tmp_path).prepare()
    assert not writing.exists()


def test_a_partial_with_a_live_writer_is_not_adopted(tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    theirs, fd = files.create_partial(final)
    other = FileStore(tmp_path, identity=ProcessIdentity(nonce="b0b0b0"))
    assert other.adopt_partial(theirs, final) is None
    os.close(fd)
    adopted = other.adopt_partial(theirs, final)
    assert adopted is not None and adopted[0] == other.partial_path(final)
    os.close(adopted[1])


@attrs.define
class SlowLockStore:
    """An embedded store whose first ``acquire_lock`` answers when the test says."""

    inner: EmbeddedStore
    _pending: list[tuple[Deferred[None], tuple[Any, ...]]] = attrs.field(factory=list)

    async def acquire_lock(self, *args: Any) -> bool:
        d: Deferred[None] = Deferred()
        self._pending.append((d, args))
        await d
        return bool(await self.inner.acquire_lock(*args))

    def answer(self) -> None:
        for d, _args in self._pending:
            d.callback(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class StoreAway:
    """The state store while Redis is unreachable: every call fails at once."""

    def __getattr__(self, name: str) -> Any:
        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("redis is unavailable: connection refused")

        return unavailable


def test_the_start_up_clean_up_leaves_a_file_replaced_while_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer replaced the temporary file between the clean-up's open and its flock:
    the new file is the writer's, and stays."""
    files = FileStore(tmp_path)
    files.prepare()
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    final.parent.mkdir(parents=True)
    partial = final.with_name(f"{final.name}.4242-abcdef.devpid-partial")
    partial.write_bytes(b"old")
    real_lock = filestore.lock_for_writing

    def replaced_meanwhile(fd: int) -> bool:
        partial.unlink()
        partial.write_bytes(b"the writer's new file")
        return real_lock(fd)

    monkeypatch.setattr(filestore, "lock_for_writing", replaced_meanwhile)
    files.prepare()
    assert partial.read_bytes() == b"the writer's new file"


def test_no_flock_on_the_file_system_leaves_no_file_and_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FileStore(tmp_path)
    final = files.file_path("root/pypi", "abc", "0123456789abc", "demo-1.0.tar.gz")
    theirs = final.with_name(f"{final.name}.4242-abcdef.devpid-partial")
    final.parent.mkdir(parents=True)
    theirs.write_bytes(b"x")

    def no_locks(fd: int) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(filestore, "lock_for_writing", no_locks)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="No locks"):
        files.create_partial(final)
    with pytest.raises(OSError, match="No locks"):
        files.adopt_partial(theirs, final)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not files.partial_path(final).exists() and theirs.exists()


@attrs.define
class BreakingClient(FakeClient):
    """A client whose connection raises on write once ``breaking`` is set."""

    breaking: bool = False

    def write(self, data: bytes) -> None:
        if self.breaking:
            raise RuntimeError("this client's connection broke in an unexpected way")
        super().write(data)
