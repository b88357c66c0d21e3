"""Downloads shared between devpid processes: one upstream GET per file across all of them.

Processes that share a serverdir and a state store agree on who downloads a
file with a lock named after the file's path (``download:<path>``), taken with
a TTL and renewed while the download runs. The owner announces its temporary
file in a document of the same name; the others stream that file as it grows
(a ``Download`` in its follower role, see ``shared``), and take the lock over
when the owner dies and the TTL runs out, adopting the temporary file and
resuming the upstream transfer with a Range request.

Correctness never depends on the lock, only the number of upstream GETs does.
The process writing a temporary file holds an exclusive ``flock`` on it for as
long as it writes, and a file is adopted (or swept at start-up) only when that
``flock`` can be taken, so a lock that expired under a live owner (a Redis
restart, a stalled reply) costs a second download, never a file with two
writers. When the store is unavailable, a new download goes ahead in its own
temporary file and a follower keeps following: only an owner's lock, once
the store answers again, lets a follower take over.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any, Literal

import attrs
from twisted.logger import Logger

from devpid.common.identity import ProcessIdentity
from devpid.files.store import FileStore
from devpid.store import StateStore, StoreUnavailable

#: Default seconds a download lock lives without renewal (a dead owner's files wait this long).
DEFAULT_LOCK_TTL = 10.0

#: What asking for a download lock can tell: this download holds it, another one
#: does, or nobody can say (the store is unreachable).
Claim = Literal["owned", "busy", "unavailable"]


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
    #: Downloads that lost their lock to another process and finished without it.
    lost_locks: int = 0
    _serials: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
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

    def lock_value(self) -> str:
        """A lock value of this process's, different for each download.

        A late release by a download that is over cannot free the lock of the
        next download of the same file in the same process.
        """
        return f"{self.token}#{next(self._serials)}"

    def _name(self, final: Path) -> str:
        return "download:" + self.files.relative(final)

    async def claim(self, final: Path, value: str) -> Claim:
        """Take (or keep) the download lock for ``final`` under ``value``."""
        try:
            owned = await self.store.acquire_lock(self._name(final), value, self.lock_ttl)
        except StoreUnavailable:
            return "unavailable"
        return "owned" if owned else "busy"

    async def release(self, final: Path, value: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.release_lock(self._name(final), value)

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
