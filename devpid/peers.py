"""Downloads shared between devpid processes: one upstream GET per file across all of them.

Processes that share a serverdir and a state store agree on who downloads a
file with a lock named after the file's path (``download:<path>``), taken with
a TTL and renewed while the download runs. The owner announces its temporary
file in a document of the same name; the others stream that file as it grows
(``tee.Download`` in its follower role), and take the lock over when the owner
dies and the TTL runs out, adopting the temporary file and resuming the
upstream transfer with a Range request.

When the store is unavailable every process downloads for itself: correctness
never depends on the lock, only the number of upstream GETs does.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.filestore import FileStore, partial_owner
from devpid.identity import ProcessIdentity, pid_alive, pid_of
from devpid.store import StateStore, StoreUnavailable

#: Default seconds a download lock lives without renewal (a dead owner's files wait this long).
DEFAULT_LOCK_TTL = 10.0


@attrs.define
class SharedDownloads:
    store: StateStore
    files: FileStore
    identity: ProcessIdentity
    lock_ttl: float = DEFAULT_LOCK_TTL
    #: Downloads started without the lock because the store was unavailable.
    uncoordinated: int = 0
    #: Downloads taken over from a process that went away.
    takeovers: int = 0
    log = Logger()

    @property
    def token(self) -> str:
        return self.identity.token

    @property
    def renew_interval(self) -> float:
        return self.lock_ttl / 3

    @property
    def check_interval(self) -> float:
        """How often a follower checks whether the owner's lock is still held."""
        return min(0.5, self.lock_ttl / 4)

    def _name(self, final: Path) -> str:
        return "download:" + self.files.relative(final)

    async def claim(self, final: Path) -> bool:
        """Take (or keep) the download lock for ``final``; True when this process owns it.

        Without a reachable store every process is its own owner.
        """
        try:
            owned = await self.store.acquire_lock(self._name(final), self.token, self.lock_ttl)
        except StoreUnavailable:
            self.uncoordinated += 1
            return True
        return owned

    async def renew(self, final: Path) -> bool:
        """Extend the lock; False only when another process holds it now."""
        try:
            return await self.store.acquire_lock(self._name(final), self.token, self.lock_ttl)
        except StoreUnavailable:
            return True  # nobody can take it while the store is away either

    async def release(self, final: Path) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.release_lock(self._name(final), self.token)

    async def announce(self, final: Path, **fields: Any) -> None:
        """Publish the state of this process's download of ``final`` to the others."""
        document = {"owner": self.token, "host": self.identity.host, **fields}
        with contextlib.suppress(StoreUnavailable):
            await self.store.set_document(self._name(final), document)

    async def forget(self, final: Path) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete_document(self._name(final))

    async def announcement(self, final: Path) -> dict[str, Any] | None:
        """What the owner of ``final``'s download last announced (None if nothing, or unknown)."""
        try:
            return await self.store.get_document(self._name(final))
        except StoreUnavailable:
            return None

    async def sweep(self, partials: list[Path]) -> int:
        """Remove the temporary files no running download owns; the number removed.

        A file stays while the lock of its download is held by the process that
        named it (another process, possibly on another host, is writing it).
        """
        removed = 0
        for partial in partials:
            owner = partial_owner(partial)
            final = partial.with_name(partial.name.split(f".{owner}.")[0]) if owner else None
            try:
                if owner is not None and final is not None:
                    holder = await self.store.lock_owner(self._name(final))
                    if holder == owner:
                        if not await self._died_here(final, owner):
                            continue
                        await self.store.release_lock(self._name(final), owner)
            except StoreUnavailable:
                return removed  # decide at the next start; adoption handles them meanwhile
            try:
                os.unlink(partial)
            except FileNotFoundError:
                continue
            removed += 1
        if removed:
            self.log.info("removed {count} temporary files no process owns", count=removed)
        return removed

    async def _died_here(self, final: Path, owner: str) -> bool:
        """Whether ``owner`` announced itself from this host and no longer runs."""
        document = await self.store.get_document(self._name(final)) or {}
        pid = pid_of(owner)
        return (
            document.get("owner") == owner
            and document.get("host") == self.identity.host
            and pid is not None
            and not pid_alive(pid)
        )
