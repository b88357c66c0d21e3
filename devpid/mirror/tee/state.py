"""Where a download stands: what the jobs that work on one read and change.

A ``Download`` (in ``download``) is a ``DownloadState``. The jobs with modules
of their own (``verify``, ``shared``, ``adopt``) see it only as one: they read
and change the fields below, and call the three turns of a download that only
``Download`` takes (``fail``, ``headers_known``, ``finish``). So none of them
imports ``download``, which imports them all.
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from devpid.files.store import FileStore
from devpid.mirror.tee.reader import TeeReader

#: The status of a failed download: the upstream failed, or the cache cannot hold the file.
BAD_GATEWAY = 502
INSUFFICIENT_STORAGE = 507


@attrs.frozen
class FileSpec:
    """What to fetch and how to check it."""

    url: str
    final_path: Path
    sha256: str | None
    size: int | None


@attrs.define(eq=False)
class DownloadState(abc.ABC):
    """One file's download: how far it got, its temporary file and its clients."""

    spec: FileSpec
    files: FileStore
    clock: IReactorTime
    idle_timeout: float
    #: "owner" (fetches from the upstream) or "follower" (streams another process's file).
    role: str = "owner"
    state: str = "connecting"
    error: str | None = None
    #: The HTTP status for clients that got nothing yet when it failed.
    error_status: int = BAD_GATEWAY
    received: int = 0
    #: Bytes that clients may be sent: everything but the newest chunk until verified.
    releasable: int = 0
    #: The file's length once known. Not only the upstream path needs it: the
    #: checks before the commit, the clients' Content-Length, a follower holding
    #: back the last byte and the Range of a resumed transfer all do.
    total: int | None = None
    started_at: float = 0.0
    partial_path: Path | None = None
    readers: set[TeeReader] = attrs.field(factory=set)
    #: Bytes adopted from a process that died, resumed with a Range request.
    resumed_from: int = 0
    #: Whether this process fetched, verified and committed the file.
    committed_here: bool = False
    #: Write side of the temporary file (only while this process writes it).
    fd: int | None = None
    #: Read side of the temporary file, or of the committed one; each client
    #: reads a duplicate of it.
    read_fd: int | None = None
    #: The sha256 of the bytes received so far.
    hasher: Any = attrs.field(factory=hashlib.sha256)

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    @property
    def over(self) -> bool:
        return self.state in ("verified", "failed")

    def close_fds(self) -> None:
        for name in ("fd", "read_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def forget_file(self) -> None:
        """Start again with no file: its bytes, length and hash are someone else's now."""
        self.close_fds()
        self.partial_path = None
        self.total = None
        self.received = self.releasable = self.resumed_from = 0
        self.hasher = hashlib.sha256()

    # -- the turns only a Download takes ----------------------------------------

    @abc.abstractmethod
    def fail(self, reason: str, status: int = BAD_GATEWAY) -> None:
        """End it unverified: clients are cut off or refused, an owner's file removed."""

    @abc.abstractmethod
    def headers_known(self) -> None:
        """Clients may attach now (it streams, or is verified): wake those waiting to."""

    @abc.abstractmethod
    def finish(self) -> None:
        """It is over: pump the clients a last time, let go of the lock, tell the manager."""
