"""Counters the request paths keep in memory, persisted to the state store in batches."""

from __future__ import annotations

from collections import Counter

import attrs

#: Counter names, documented in docs/operations.md.
COUNTERS = (
    "requests",
    "page_hits",
    "page_misses",
    "file_hits",
    "file_misses",
    "bytes_served",
    "files_without_hash",
    "download_failures",
    "offline_misses",
)


@attrs.define
class Stats:
    #: Totals persisted before this process started.
    base: Counter[str] = attrs.field(factory=Counter)
    #: What this process added and has not yet written to the store.
    pending: Counter[str] = attrs.field(factory=Counter)
    #: What this process added and has written.
    flushed: Counter[str] = attrs.field(factory=Counter)

    def incr(self, name: str, amount: int = 1) -> None:
        self.pending[name] += amount

    def take_pending(self) -> dict[str, int]:
        """The unflushed increments, now counted as flushed."""
        pending = {k: v for k, v in self.pending.items() if v}
        self.flushed.update(pending)
        self.pending.clear()
        return pending

    def restore(self, pending: dict[str, int]) -> None:
        """Put increments back after a failed flush."""
        self.flushed.subtract(pending)
        self.pending.update(pending)

    def totals(self) -> dict[str, int]:
        total = self.base + self.flushed + self.pending
        return {name: total.get(name, 0) for name in COUNTERS}
