"""A download's dealings with other devpid processes that share the cache.

Across processes (``peers.SharedDownloads``) a ``Download`` is either the
*owner*, which fetches the file, or a *follower*, which streams the owner's
growing temporary file to its own clients: it learns the file from the owner's
announcement, watches it grow with ``fstat``, releases its last byte only once
the owner has renamed the very same inode into place, and cuts its clients off
when the file is unlinked without being committed. When the owner dies, a
follower takes the lock over and becomes the owner, adopting the temporary
file (``adopt``) and resuming the upstream transfer where it stopped.

None of this runs for a process alone: a ``Download`` has a ``SharedDownload``
only when it has peers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from devpid.mirror.tee.adopt import adopt
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.tee.reader import settle_readers
from devpid.mirror.tee.state import DownloadState

#: How often a follower looks at the owner's temporary file.
FOLLOW_POLL = 0.05


@attrs.define(eq=False)
class SharedDownload:
    """The lock of one download's file, and what its holder or a follower does with it."""

    download: DownloadState
    peers: SharedDownloads
    #: Told of every release of the lock, which may outlive the download.
    on_unlock: Callable[[Deferred[None]], None] = lambda unlocked: None
    #: Whether the download holds the shared lock of its file (under ``lock_value``).
    locked: bool = False
    lock_value: str = ""
    #: Whether the download announced itself as the owner to the other processes.
    announced: bool = False
    #: Fires when the lock has been let go after the download ended.
    unlocked: Deferred[None] | None = None
    _renewal: LoopingCall | None = None
    log = Logger()

    # -- deciding who downloads ----------------------------------------------

    async def decide(self) -> bool:
        """Take the lock, or follow its holder; True when this process must fetch."""
        download, peers = self.download, self.peers
        if self.committed_elsewhere():
            return False
        self.lock_value = peers.lock_value()
        claim = await peers.claim(download.spec.final_path, self.lock_value)
        self.locked = claim == "owned"
        if download.over:
            self.release_lock()
            return False
        if claim == "busy":
            download.role = "follower"
            if not await self.follow():
                return False
            self.take_over()
        elif claim == "unavailable":
            peers.uncoordinated += 1
        if self.locked:
            self._renewal = LoopingCall(self.renew)
            self._renewal.clock = download.clock
            self._renewal.start(peers.renew_interval, now=False)
        return not self.committed_elsewhere()

    def take_over(self) -> None:
        """The owner went away and this process holds the lock: become the owner.

        What the follower knew of the owner's file is dropped; ``adopt``
        looks at it afresh (and clients keep their offsets if it adopts it).
        """
        download = self.download
        self.peers.takeovers += 1
        self.log.info(
            "taking over the download of {url}: its owner went away", url=download.spec.url
        )
        download.role = "owner"
        download.state = "connecting"
        download.forget_file()

    def committed_elsewhere(self) -> bool:
        """Finish at once if the file is in the cache (another process committed it).

        Clients that were sent bytes of another file than the committed one
        are cut off; those that had nothing yet read the committed file.
        """
        download = self.download
        if download.over:
            return True
        try:
            fd = os.open(download.spec.final_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        download.close_fds()
        download.read_fd = fd
        size = os.fstat(fd).st_size
        download.total = size
        settle_readers(download.readers, fd, download.total)
        download.state = "verified"
        download.received = download.releasable = size
        download.headers_known()
        download.finish()
        return True

    async def before_fetch(self) -> int:
        """Adopt a dead owner's temporary file, and tell the others this process fetches.

        The bytes adopted, from which the upstream transfer resumes.
        """
        offset = await adopt(self.download, self.peers) if self.locked else 0
        if self.download.over or not self.locked:
            return offset
        self.announced = True
        await self.peers.announce(self.download.spec.final_path, state="connecting")
        return offset

    def announce(self, **fields: Any) -> None:
        if self.locked:
            d = Deferred.fromCoroutine(self.peers.announce(self.download.spec.final_path, **fields))
            d.addErrback(lambda f: self.log.failure("could not announce a download", f))

    # -- the lock, while the download runs -------------------------------------

    def renew(self) -> Deferred[None]:
        download = self.download

        async def renew() -> None:
            if download.over:
                return
            claim = await self.peers.claim(download.spec.final_path, self.lock_value)
            if download.over:
                if claim == "owned" and not self.locked:  # taken back too late: let go
                    await self.peers.release(download.spec.final_path, self.lock_value)
                return
            if claim == "busy" and self.locked:
                self.lose_lock()
            elif claim == "owned" and not self.locked:
                self.locked = True
                self.log.info("got the download lock of {url} back", url=download.spec.url)

        d = Deferred.fromCoroutine(renew())
        d.addErrback(lambda f: self.log.failure("could not renew a download lock", f))
        return d

    def lose_lock(self) -> None:
        """Another process holds the lock (the store lost ours): go on without it.

        Its process cannot adopt this file while this one writes it (the
        ``flock``), so the worst outcome is a second download of the same
        bytes. The renewal goes on trying, and takes the lock back once it is
        free (a follower that found this file still written gives it back).
        """
        self.peers.lost_locks += 1
        self.locked = False
        self.log.warn(
            "lost the download lock of {url} to another process; going on without it",
            url=self.download.spec.url,
        )

    def stop_renewing(self) -> None:
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()

    def release_lock(self) -> None:
        if self.locked:
            self.locked = False
            self.unlocked = Deferred.fromCoroutine(self._unlock())
            self.unlocked.addErrback(lambda f: self.log.failure("could not release a lock", f))
            self.on_unlock(self.unlocked)

    async def _unlock(self) -> None:
        """Tell the followers how it ended, then let go of the lock (in that order)."""
        download, peers = self.download, self.peers
        if download.verified:
            await peers.forget(download.spec.final_path)
        elif self.announced:  # a follower that never owned the file has nothing to say
            await peers.announce(download.spec.final_path, state="failed", error=download.error)
        await peers.release(download.spec.final_path, self.lock_value)

    # -- follower: another process downloads --------------------------------

    async def follow(self) -> bool:
        """Stream the owner's temporary file until it is committed or fails.

        True when the owner went away and this download now holds the lock.
        While the store is unreachable nobody can take a lock over, so a
        follower keeps following (the file itself says when it is committed
        or removed). Needs the length: the last byte of the announced total
        waits for the owner's commit.
        """
        download, peers = self.download, self.peers
        final = download.spec.final_path
        followed: str | None = None
        last_size, last_progress = -1, download.clock.seconds()
        next_check = download.clock.seconds() + peers.check_interval
        stall_limit = download.idle_timeout + peers.lock_ttl
        while not download.over:
            if self.committed_elsewhere():
                return False
            if download.read_fd is None:
                announced = await peers.announcement(final) or {}
                if download.over:
                    break
                owner, state = announced.get("owner"), announced.get("state")
                if state == "failed" and owner == followed:
                    download.fail(str(announced.get("error") or "the download failed elsewhere"))
                    return False
                if state in ("connecting", "streaming"):
                    followed = owner
                if state == "streaming" and self._open_announced(announced):
                    download.headers_known()
            else:
                status = os.fstat(download.read_fd)
                if status.st_nlink == 0:  # unlinked, not renamed into place: it failed
                    announced = await peers.announcement(final) or {}
                    if self.committed_elsewhere():
                        return False
                    reason = announced.get("error") if announced.get("state") == "failed" else None
                    download.fail(str(reason or "the download failed in another devpid process"))
                    return False
                if status.st_size != last_size:
                    last_size, last_progress = status.st_size, download.clock.seconds()
                    download.received = status.st_size
                    # The last byte waits for the owner's commit of this very file.
                    hold_back = download.total - 1 if download.total else download.received
                    download.releasable = min(download.received, hold_back)
                    for reader in list(download.readers):
                        reader.pump()
            now = download.clock.seconds()
            if now - last_progress > stall_limit:
                download.fail(f"the download of {download.spec.url} in another process stalled")
                return False
            if now >= next_check:
                next_check = now + peers.check_interval
                if await peers.claim(final, self.lock_value) == "owned":
                    self.locked = True
                    if download.over:
                        self.release_lock()
                        return False
                    partial = download.partial_path
                    if partial is None or not download.files.being_written(partial):
                        return True
                    # The lock ran out under an owner that still writes (the store
                    # lost it, or a renewal got no answer in time): keep following,
                    # and let the owner have its lock back.
                    self.locked = False
                    await peers.release(final, self.lock_value)
            await deferLater(download.clock, FOLLOW_POLL, lambda: None)
        return False

    def _open_announced(self, announced: dict[str, Any]) -> bool:
        """Open the temporary file the owner announced; False if it cannot be."""
        download = self.download
        name, total = announced.get("partial"), announced.get("total")
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            return False
        path = download.spec.final_path.with_name(name)
        try:
            download.read_fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        download.partial_path = path
        download.total = total if isinstance(total, int) else None
        download.state = "streaming"
        return True
