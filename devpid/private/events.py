"""The event log's records: one ``Event`` per committed change, keyed by its serial.

Every change to private data (a user, an index, a token, later an upload) is
one transaction, and each transaction appends exactly one event holding the
records it wrote, in full. Replaying the events in serial order rebuilds the
private data, which is what replicas, export and ``devpid fsck`` rely on;
webhooks read the same events through ``Event.public``, which leaves out
password hashes and token digests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

#: The kinds of record: ``user`` (name: the user), ``index`` (``user/index``),
#: ``token`` (the token id), ``version`` (``user/index/project/version``, its
#: metadata and its files' links), ``tombstone`` (the path of a file that was
#: deleted, so it answers 410 rather than 404).
KINDS = ("user", "index", "token", "version", "tombstone")

#: Keys that never leave the server, whatever reads the log.
_SECRET_KEYS = frozenset({"pwhash", "pwsalt", "digest", "webhook_secret"})


@attrs.frozen
class Change:
    """One record as a transaction left it; ``value`` None means deleted."""

    kind: str
    name: str
    value: Mapping[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "value": self.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        return cls(str(data["kind"]), str(data["name"]), data["value"])

    def public(self) -> dict[str, Any]:
        """The change without secrets: what webhooks and other readers may see."""
        value = self.value
        if value is not None:
            value = {k: v for k, v in value.items() if k not in _SECRET_KEYS}
        return {"kind": self.kind, "name": self.name, "value": value}


@attrs.frozen
class Event:
    """A committed transaction: its serial, when, who did it, what it did, what it wrote."""

    serial: int
    at: float
    who: str | None
    what: str
    changes: tuple[Change, ...]

    def changes_json(self) -> str:
        return json.dumps([c.as_json() for c in self.changes], separators=(",", ":"))

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Event:
        serial, at, who, what, changes = row
        return cls(
            int(serial),
            float(at),
            who,
            str(what),
            tuple(Change.from_json(c) for c in json.loads(changes)),
        )

    def public(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "at": self.at,
            "who": self.who,
            "what": self.what,
            "changes": [c.public() for c in self.changes],
        }
