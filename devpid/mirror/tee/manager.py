"""The downloads running in this process, one per file, addressed by the file's final path.

Requests ask the manager for a file's download and attach to it; the service
drains it at shutdown and waits for the shared locks to be let go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from devpid.common.stats import Stats
from devpid.files.store import FileStore
from devpid.mirror.tee.download import Download
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.tee.state import FileSpec
from devpid.mirror.upstream import UpstreamClient


@attrs.define
class DownloadManager:
    """The running downloads, addressed by the file's final path."""

    files: FileStore
    upstream: UpstreamClient
    clock: IReactorTime
    idle_timeout: float
    stats: Stats
    #: Other processes sharing the serverdir and store; None for a lone process.
    peers: SharedDownloads | None = None
    running: dict[Path, Download] = attrs.field(factory=dict)
    _drained: list[Deferred[None]] = attrs.field(factory=list)
    #: Shared locks still being let go by downloads that are over.
    _unlocking: set[Deferred[None]] = attrs.field(factory=set)
    #: ``Download.run`` of each download whose coroutine has not returned yet.
    _runs: set[Deferred[None]] = attrs.field(factory=set)

    def download_for(self, spec: FileSpec) -> tuple[Download, bool]:
        """The running download of ``spec`` and whether this call started it."""
        download = self.running.get(spec.final_path)
        if download is not None:
            return download, False
        download = Download(
            spec,
            self.files,
            self.clock,
            self.idle_timeout,
            on_done=self._done,
            on_unlock=self._track_unlock,
            peers=self.peers,
        )
        self.running[spec.final_path] = download
        self._track(self._runs, Deferred.fromCoroutine(download.run(self.upstream)))
        return download, True

    def _done(self, download: Download) -> None:
        self.running.pop(download.spec.final_path, None)
        if download.committed_here and download.spec.sha256 is None:
            self.stats.incr("files_without_hash")
        if download.state == "failed":
            self.stats.incr("download_failures")
        if not self.running:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """Fires when no download is running."""
        d: Deferred[None] = Deferred()
        if self.running:
            self._drained.append(d)
        else:
            d.callback(None)
        return d

    def _track_unlock(self, unlocked: Deferred[None]) -> None:
        self._track(self._unlocking, unlocked)

    @staticmethod
    def _track(pending: set[Deferred[None]], d: Deferred[None]) -> None:
        if d.called:
            return
        pending.add(d)

        def let_go(result: object) -> object:
            pending.discard(d)
            return result

        d.addBoth(let_go)

    def unlocked(self) -> Deferred[Any]:
        """Fires when every shared lock of a download that is over has been let go.

        That includes a lock granted to a download aborted while it asked for it.
        """
        return gatherResults([*self._runs, *self._unlocking], consumeErrors=True)

    def abort_all(self, reason: str) -> None:
        for download in list(self.running.values()):
            download.abort(reason)
