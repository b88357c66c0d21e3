"""``/+replica/...``: what a primary answers its replicas, behind the replication secret.

- ``GET /+replica/events?since=N[&timeout=S][&primary=UUID][&mark=M]``: the events
  after serial ``N`` as JSON lines, at once when there are any, else after
  waiting up to ``S`` seconds (a long poll) for the next; its headers carry the
  primary's uuid, serial, and the mark of its event ``N`` (a replica compares it
  with its own). A replica that cannot continue from here (``N`` past this
  serial, another primary's ``UUID``, another event ``N`` than its mark ``M``)
  is answered at once.
- ``GET /+replica/snapshot``: every record and event at one serial.
- ``GET /+replica/files/<user>/<index>/+f/<h3>/<h13>/<name>``: a stage's file that a
  version links (or its ``.metadata``).

Each request must be signed with the secret of ``--replication-secret-file``
(``devpid.replica.secret``); without that option the endpoints do not exist (404),
and a request not signed with it gets 403. Password hashes and token digests
travel in the events, which is why nothing here is answered without the secret.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from devpid.files.releases import ReleaseFiles
from devpid.files.sender import FileSender, open_cached
from devpid.files.store import UnsafePath
from devpid.http.errors import HTTPError
from devpid.http.request import until_finished
from devpid.private.data import PrivateData
from devpid.replica.feed import MAX_WAIT, EventFeed, dump_snapshot
from devpid.replica.secret import HEADER, ReplicationSecret
from devpid.replica.wire import CONTENT_TYPE, PRIMARY_SERIAL, PRIMARY_UUID, SINCE_MARK, event_line
from devpid.routes import labelled
from devpid.simple.model import METADATA

#: The long poll's wait when the replica does not say.
DEFAULT_WAIT = 25.0


def _int_arg(request: Request, name: bytes, default: int) -> int:
    raw = request.args.get(name, [b""])[0]
    if not raw:
        return default
    try:
        value = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, f"{name.decode()} must be a whole number") from None
    if value < -1:
        raise HTTPError(400, f"{name.decode()} must be -1 or more")
    return value


def _wait_arg(request: Request) -> float:
    raw = request.args.get(b"timeout", [b""])[0]
    if not raw:
        return DEFAULT_WAIT
    try:
        value = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, "timeout must be a number of seconds") from None
    if not 0 <= value <= MAX_WAIT:
        raise HTTPError(400, f"timeout must be between 0 and {MAX_WAIT:g} seconds")
    return value


@attrs.define
class ReplicaRoutes:
    data: PrivateData
    files: ReleaseFiles
    feed: EventFeed
    clock: IReactorTime
    #: Runs the snapshot's dump off the reactor.
    offload: Callable[[Callable[[], Any]], Deferred[Any]]
    #: None: this devpid answers no replica (the routes are 404).
    secret: ReplicationSecret | None = None

    def register(self, app: Klein) -> None:
        app.route("/+replica/events", methods=["GET"])(labelled("replica", self.events))
        app.route("/+replica/snapshot", methods=["GET"])(labelled("replica", self.snapshot))
        app.route("/+replica/files/<path:path>", methods=["GET", "HEAD"])(
            labelled("replica", self.file)
        )

    def _check(self, request: Request) -> None:
        if self.secret is None:
            raise HTTPError(404, "this devpid has no replicas (no --replication-secret-file)")
        signature = request.getHeader(HEADER)
        if not self.secret.verify(signature, request.method, request.uri, self.clock.seconds()):
            raise HTTPError(403, "not signed with the replication secret (or the clocks differ)")

    def _node_headers(self, request: Request) -> None:
        request.setHeader(PRIMARY_UUID, self.data.database.uuid.encode("ascii"))
        request.setHeader(PRIMARY_SERIAL, b"%d" % self.data.serial)
        request.setHeader(b"cache-control", b"no-store")

    async def events(self, request: Request) -> bytes:
        self._check(request)
        since = _int_arg(request, b"since", -1)
        wait = _wait_arg(request)
        database = self.data.database
        database.catch_up()
        # a replica that cannot continue from here hears so at once, not after the wait
        if since > database.serial or self._elsewhere(request, since):
            wait = 0.0
        await self.feed.wait_after(since, wait)
        events = self.feed.events_after(since)
        mark = self.data.database.event_mark(since) if since >= 0 else ""
        self._node_headers(request)
        request.setHeader(SINCE_MARK, (mark if mark is not None else "none").encode("ascii"))
        request.setHeader(b"content-type", CONTENT_TYPE)
        return b"".join(event_line(event) for event in events)

    def _elsewhere(self, request: Request, since: int) -> bool:
        """Whether the replica says it follows another primary, or another history."""
        primary = request.args.get(b"primary", [b""])[0]
        if primary and primary != self.data.database.uuid.encode("ascii"):
            return True
        mark = request.args.get(b"mark", [b""])[0]
        if mark and since >= 0:
            ours = self.data.database.event_mark(since)
            return ours is None or mark != ours.encode("ascii")
        return False

    async def snapshot(self, request: Request) -> None:
        self._check(request)
        database = self.data.database
        # no name on disk: nothing is left behind, whatever happens to this process
        with tempfile.TemporaryFile(dir=database.path.parent, prefix=".snapshot-") as out:
            serial = await self.offload(partial(dump_snapshot, database.path, out))
            size = out.tell()
            fd = os.dup(out.fileno())
        request.setHeader(PRIMARY_UUID, database.uuid.encode("ascii"))
        request.setHeader(PRIMARY_SERIAL, b"%d" % serial)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"content-length", b"%d" % size)
        finished = until_finished(request)
        FileSender(request, fd, size).start()
        await finished

    def locate(self, path: str) -> Path:
        """The file at ``path`` if a version links it (or it is a linked wheel's
        ``.metadata``), else a 404."""
        self.data.catch_up()
        dist = path
        if self.data.version_of_file(path) is None:
            dist = path.removesuffix(METADATA)
            if dist == path or self.data.version_of_file(dist) is None:
                raise HTTPError(404, "no version links this file")
        try:
            located = self.files.path_of(dist)
        except UnsafePath as e:
            raise HTTPError(400, str(e)) from None
        return located.with_name(located.name + path[len(dist) :])

    async def file(self, request: Request, path: str) -> Any:
        self._check(request)
        located = self.locate(path)
        opened = open_cached(located)
        if opened is None:
            raise HTTPError(404, "the file is linked but not on disk here")
        fd, size = opened.fd, opened.stat.st_size
        self._node_headers(request)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        if request.method == b"HEAD":
            os.close(fd)
            return b""
        finished = until_finished(request)
        FileSender(request, fd, size).start()
        await finished
        return None
