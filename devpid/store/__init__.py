"""The state store: small, async, and shared by everything that must outlive a request.

Page metadata (etag, serial, fetched-at), sets (such as stale marks), counters,
locks and invalidation messages go through this interface, so an implementation
backed by a server (Redis) can replace the embedded one without touching its
callers.

A store backed by a server can be unreachable: its methods then raise
``StoreUnavailable`` promptly (never hang), and callers degrade instead of
failing the request (see docs/operations.md, "Redis going away").
"""

from __future__ import annotations

from typing import Any, Protocol


class StoreUnavailable(Exception):
    """The store cannot be reached right now; the message is one line."""


class StateStore(Protocol):
    @property
    def description(self) -> str:
        """One line for /+status, e.g. "embedded (sqlite: /srv/devpid/state.sqlite)"."""
        ...

    def health(self) -> dict[str, Any]:
        """For /+status: ``state`` and, for Redis, ``last_error`` and more.

        ``state`` is "embedded", or "connecting", "up", "down" or "closed".
        """
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get_document(self, key: str) -> dict[str, Any] | None: ...

    async def set_document(self, key: str, document: dict[str, Any]) -> None: ...

    async def delete_document(self, key: str) -> None: ...

    async def add_to_set(self, name: str, *members: str) -> None: ...

    async def remove_from_set(self, name: str, *members: str) -> None: ...

    async def set_members(self, name: str) -> set[str]: ...

    async def increment(self, counters: dict[str, int]) -> None: ...

    async def counters(self) -> dict[str, int]: ...

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    async def release_lock(self, name: str, owner: str) -> None: ...

    async def lock_owner(self, name: str) -> str | None:
        """Who holds the lock ``name`` now (None when it is free or expired)."""
        ...

    async def publish(self, message: dict[str, Any]) -> None:
        """Tell every other process sharing this store (a no-op when none can)."""
        ...
