"""Stale marks, and the messages that keep the processes' memories in step.

A project is marked stale when its page must be revalidated on the next
request whatever its age (the changelog said it changed, or a user asked for
a refresh). The marks live in a set in the store, shared by the processes and
kept across restarts; each process mirrors the set in memory, because every
page request looks at it.

Each process also keeps pages in memory. When one marks pages stale or writes
new ones, it publishes an ``Invalidation`` through the store; the others apply
it to their memory (``MirrorIndex.invalidated``).
"""

from __future__ import annotations

from typing import Any

import attrs

from devpid.store import StateStore, StoreUnavailable


@attrs.define
class StaleMarks:
    """The projects of one index marked stale: the store's set, mirrored in memory."""

    index: str
    store: StateStore
    #: The store's set as last read and updated; None until read (or after forgetting).
    _loaded: set[str] | None = None

    @property
    def _set_key(self) -> str:
        return f"stale:{self.index}"

    async def _marks(self) -> set[str]:
        if self._loaded is None:
            try:
                self._loaded = await self.store.set_members(self._set_key)
            except StoreUnavailable:
                return set()  # unknown until the store is back
        return self._loaded

    async def has(self, project: str) -> bool:
        return project in await self._marks()

    async def add(self, *projects: str) -> None:
        """Mark ``projects`` in memory (reading the store's set first if not yet read)."""
        marks = await self._marks()
        marks.update(projects)
        if self._loaded is None:  # the store is away: remember the marks here at least
            self._loaded = marks

    async def share(self, *projects: str) -> None:
        """Mark ``projects`` in the store's set, for the other processes and the next start."""
        await self.store.add_to_set(self._set_key, *projects)

    async def clear(self, project: str) -> None:
        """The page of ``project`` was just fetched or confirmed: it is no longer stale."""
        marks = await self._marks()
        if project in marks:
            marks.discard(project)
            await self.store.remove_from_set(self._set_key, project)

    def heard_stale(self, project: str) -> None:
        """Another process marked ``project``; the store's set has it already."""
        if self._loaded is not None:
            self._loaded.add(project)

    def discard_here(self, project: str) -> None:
        """Unmark ``project`` in memory only (another process did, or the store is away)."""
        if self._loaded is not None:
            self._loaded.discard(project)

    def forget(self) -> None:
        """Read the store's set again when next needed."""
        self._loaded = None


@attrs.frozen
class Invalidation:
    """Pages of ``index`` marked stale (``op: stale``) or written anew (``op: fresh``)."""

    op: str
    index: str
    projects: list[str]

    def message(self, origin: str) -> dict[str, Any]:
        """The message to publish; ``origin`` tells the sending process its own messages."""
        message: dict[str, Any] = {"op": self.op, "index": self.index, "projects": self.projects}
        message["origin"] = origin
        return message

    @classmethod
    def received(cls, message: dict[str, Any], index: str) -> Invalidation | None:
        """The invalidation ``message`` carries for ``index``; None if it is for another."""
        if message.get("index") != index:
            return None
        projects = message.get("projects")
        if not isinstance(projects, list):
            return None
        op = message.get("op")
        names = [project for project in projects if isinstance(project, str)]
        return cls(op if isinstance(op, str) else "", index, names)
