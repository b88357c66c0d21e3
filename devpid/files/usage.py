"""When each cached mirror file was last used: noted in memory, kept by the file system.

The least recently used mirror files are the first to go when the cache is
over ``--cache-max-size``. Writing anything per cache hit would cost more
than the hit, so a hit (and a committed download) only notes the file's path
and the time in a dict (``UsageLog.note``: one assignment on the reactor).
Every few seconds the dict is swapped for an empty one and the batch is
applied in a thread (``apply_uses``): each file's **atime** is set to its
last use with ``os.utime``, its mtime left as it was (the commit time).

So the file system holds the LRU order, whatever the mount's own atime
options (``os.utime`` always sets it; a kernel that also updates atime on
reads, ``relatime`` or ``strictatime``, only makes it more recent, which is
as true), every process sharing the serverdir contributes, nothing is kept
in a database, and a crash loses at most the last batch's uses. A file used
a thousand times between two flushes costs one ``stat`` and one ``utime``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

#: Seconds between two batches of uses written to the files' atimes.
FLUSH_INTERVAL = 10.0


@attrs.define
class UsageLog:
    """This process's uses of cached files since the last flush: path (as a string, the
    key every caller already has) -> Unix time."""

    _pending: dict[str, float] = attrs.field(factory=dict)

    def note(self, path: str, when: float) -> None:
        """A hit on ``path`` (or its commit) at ``when``: the whole cost on the request path."""
        self._pending[path] = when

    def last_noted(self, path: str) -> float | None:
        """When ``path`` was last used in this process and not yet flushed (safe from a
        thread: one dict lookup)."""
        return self._pending.get(path)

    def take(self) -> dict[str, float]:
        """The batch to flush; later uses go to a new dict."""
        batch, self._pending = self._pending, {}
        return batch

    def __len__(self) -> int:
        return len(self._pending)


def apply_uses(batch: Mapping[str, float]) -> int:
    """Set each file's atime to its last use, keeping its mtime; blocking (run in a thread).

    A file that is gone (evicted meanwhile) is skipped; atime never moves back
    (a read the kernel recorded later stays). Returns how many were set.
    """
    applied = 0
    for path, when in batch.items():
        used_ns = int(when * 1e9)
        try:
            st = os.stat(path)
            if st.st_atime_ns >= used_ns:
                continue
            os.utime(path, ns=(used_ns, st.st_mtime_ns))
        except OSError:  # gone, or not ours to touch: its use is lost, nothing else
            continue
        applied += 1
    return applied
