"""Which indexes answer for a project: devpi's resolution order and mirror whitelist.

Pure functions over index configurations; callers look the stages up and ask the
store whether a private stage holds a project. See devpi-api.md sections 6.3 and
6.4 and trap 8.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

__all__ = ["INHERITANCES", "Resolution", "Stage", "resolution_order", "resolve_project"]

#: How a requesting index combines the whitelists of the stages it inherits from.
INHERITANCES = frozenset({"intersection", "union"})


def _names(value: Any) -> tuple[str, ...]:
    """A stored list, tolerating the comma string form the HTTP API accepts."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(item) for item in value)


@attrs.frozen
class Stage:
    """What resolution needs to know about one index.

    A mirror's ``bases`` and ``whitelist`` are ignored: devpi drops both keys
    on mirrors, and following a mirror's bases could put a private stage after it.
    """

    name: str
    is_mirror: bool
    bases: tuple[str, ...] = ()
    #: Normalised project names, may contain ``*``.
    whitelist: frozenset[str] = frozenset()
    inheritance: str = attrs.field(
        default="intersection", validator=attrs.validators.in_(INHERITANCES)
    )

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> Stage:
        """Build from a stored index configuration.

        A missing ``mirror_whitelist_inheritance`` means ``union``: devpi keeps the
        old behaviour for indexes created before the key existed. ``type`` other
        than ``mirror`` (``stage`` or a plugin type) is private.
        """
        is_mirror = config.get("type", "stage") == "mirror"
        inheritance = str(config.get("mirror_whitelist_inheritance", "union")).lower()
        if inheritance not in INHERITANCES:
            raise ValueError(
                f"Unknown value {inheritance!r} for mirror_whitelist_inheritance of {name}"
            )
        if is_mirror:
            return cls(name=name, is_mirror=True, inheritance=inheritance)
        return cls(
            name=name,
            is_mirror=False,
            bases=_names(config.get("bases")),
            whitelist=frozenset(_names(config.get("mirror_whitelist"))),
            inheritance=inheritance,
        )


def resolution_order(start: str, stages: Mapping[str, Stage]) -> list[str]:
    """The stages ``start`` consults, in order (devpi's ``sro()``).

    Breadth-first over ``bases`` from ``start``; a stage is visited once (so cycles
    end), bases missing from ``stages`` are skipped, and mirrors are deferred to
    the end in the order they were discovered, because private releases reachable
    by another path must win. A missing ``start`` gives ``[]``.

    ``a(bases b,root/pypi,c)``, ``b(bases d)`` gives ``[a, b, c, d, root/pypi]``.
    """
    first = stages.get(start)
    if first is None:
        return []
    private: list[str] = []
    mirrors: list[str] = []
    seen = {start}
    queue: deque[Stage] = deque([first])
    while queue:
        stage = queue.popleft()
        if stage.is_mirror:
            mirrors.append(stage.name)
            continue
        private.append(stage.name)
        for base_name in stage.bases:
            base = stages.get(base_name)
            if base_name in seen or base is None:
                continue
            seen.add(base_name)
            queue.append(base)
    return private + mirrors


@attrs.frozen
class Resolution:
    """The stages to consult for one project, after the whitelist check."""

    #: In resolution order, without the mirrors the whitelist blocks.
    stages: tuple[str, ...]
    #: The first mirror skipped because of the whitelist (named in the INFO note).
    blocked_by: str | None


def _combine(inheritance: str, combined: frozenset[str], more: Iterable[str]) -> frozenset[str]:
    if inheritance == "union":
        return combined.union(more)
    return combined.intersection(more)


def resolve_project(
    start: str,
    project: str,
    stages: Mapping[str, Stage],
    has_private_project: Callable[[str, str], bool],
) -> Resolution:
    """Apply the dependency-confusion guard of devpi-api.md 6.4 to ``project``.

    ``project`` is normalised; ``has_private_project(stage, project)`` is only asked
    about non-mirror stages. Walking the resolution order:

    - the combined whitelist starts as the first non-mirror stage's list and is
      combined with each next non-mirror stage's list by the *requesting* index's
      ``inheritance``;
    - after each combination, ``project`` or ``*`` in it makes the project
      whitelisted for good (devpi's ``whitelisted = stage`` is never reset, so a
      later, narrower intersection does not undo it);
    - otherwise a stage holding the project sets ``private_hit`` (once the project
      is whitelisted no stage is asked: nothing could block a mirror any more);
    - a mirror reached while ``private_hit`` and not whitelisted is skipped, never
      queried, whether or not it has the project.

    Non-mirror stages and allowed mirrors are all kept, whether or not they hold
    the project: existence checks belong to the caller. Where 6.4 is loose, this
    follows devpi's code, which protects a private project unless a whitelist on
    the path to it, as combined for the requesting index, names it.
    """
    start_stage = stages.get(start)
    if start_stage is None:
        return Resolution(stages=(), blocked_by=None)
    inheritance = start_stage.inheritance
    combined: frozenset[str] | None = None
    whitelisted = private_hit = False
    consulted: list[str] = []
    blocked_by: str | None = None
    for name in resolution_order(start, stages):
        stage = stages[name]
        if stage.is_mirror:
            if private_hit and not whitelisted:
                if blocked_by is None:
                    blocked_by = name
                continue
        else:
            combined = (
                stage.whitelist
                if combined is None
                else _combine(inheritance, combined, stage.whitelist)
            )
            if project in combined or "*" in combined:
                whitelisted = True
            elif not whitelisted and has_private_project(name, project):
                private_hit = True
        consulted.append(name)
    return Resolution(stages=tuple(consulted), blocked_by=blocked_by)
