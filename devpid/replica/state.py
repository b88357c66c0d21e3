"""Where a replica stands, for ``/+status`` and ``/+metrics``, and which worker follows.

One worker of a replica follows the primary: the one holding the ``flock`` of
``replica.lock`` in the serverdir (``FollowerLease``); the others serve what it
applied, through SQLite's ``catch_up`` as always. The follower keeps its
``ReplicaState`` in memory and writes it to ``replica-status.json`` (atomically,
at most once a second, and at once when its state changes), where the other
workers read it for their ``/+status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from devpid.common.clock import iso_time

STATUS_FILE = "replica-status.json"
LOCK_FILE = "replica.lock"
# ``state`` is starting, following (in contact and applying), resyncing (replacing
# everything with a snapshot) or disconnected (the primary did not answer; serving
# what it has).
#: Seconds between writes of the status file while nothing but the contact time changes.
SAVE_INTERVAL = 1.0


@attrs.define
class ReplicaState:
    primary_url: str
    path: Path
    wall_clock: Callable[[], float]
    state: str = "starting"
    primary_uuid: str | None = None
    primary_serial: int | None = None
    last_contact: float | None = None
    #: When the replica first saw the primary ahead of it (None: caught up).
    behind_since: float | None = None
    last_error: str | None = None
    resyncs: int = 0
    events_applied: int = 0
    files_pending: int = 0
    files_fetched: int = 0
    file_failures: int = 0
    _saved_at: float = -1.0
    _saved_state: str = ""

    def contact(self, uuid: str, primary_serial: int, serial: int) -> None:
        """The primary answered: its uuid and serial, and the serial applied here."""
        now = self.wall_clock()
        self.primary_uuid = uuid
        self.primary_serial = primary_serial
        self.last_contact = now
        self.last_error = None
        if self.state != "resyncing":
            self.state = "following"
        self.applied(serial)

    def applied(self, serial: int) -> None:
        if self.primary_serial is None or serial >= self.primary_serial:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = self.wall_clock()
        self.save()

    def failed(self, reason: str) -> None:
        self.state = "disconnected"
        self.last_error = reason
        self.save()

    def as_json(self) -> dict[str, Any]:
        return {
            "primary_url": self.primary_url,
            "primary_uuid": self.primary_uuid,
            "primary_serial": self.primary_serial,
            "state": self.state,
            "last_contact": self.last_contact,
            "behind_since": self.behind_since,
            "last_error": self.last_error,
            "resyncs": self.resyncs,
            "events_applied": self.events_applied,
            "files_pending": self.files_pending,
            "files_fetched": self.files_fetched,
            "file_failures": self.file_failures,
            "pid": os.getpid(),
        }

    def save(self, force: bool = False) -> None:
        """Write the status file for the other workers (best effort)."""
        now = self.wall_clock()
        if not force and self.state == self._saved_state and now - self._saved_at < SAVE_INTERVAL:
            return
        self._saved_at, self._saved_state = now, self.state
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            temporary.write_text(json.dumps(self.as_json()))
            os.replace(temporary, self.path)


def read_saved(path: Path) -> dict[str, Any] | None:
    """The follower's last saved state, if there is one to read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status_of(
    saved: dict[str, Any] | None, primary_url: str, serial: int, now: float, following: bool
) -> dict[str, Any]:
    """The ``replica`` section of ``/+status`` from a follower's state and the local serial."""
    saved = saved or {}
    primary_serial = saved.get("primary_serial")
    lag_events = None
    lag_seconds = None
    if isinstance(primary_serial, int):
        lag_events = max(0, primary_serial - serial)
        behind = saved.get("behind_since")
        lag_seconds = (
            0.0
            if lag_events == 0
            else round(max(0.0, now - behind), 3)
            if isinstance(behind, (int, float))
            else None
        )
    contact = saved.get("last_contact")
    return {
        "primary_url": primary_url,
        "primary_uuid": saved.get("primary_uuid"),
        "serial": serial,
        "primary_serial": primary_serial,
        "lag_events": lag_events,
        "lag_seconds": lag_seconds,
        "last_contact": iso_time(contact) if isinstance(contact, (int, float)) else None,
        "seconds_since_contact": round(now - contact, 3)
        if isinstance(contact, (int, float))
        else None,
        "state": saved.get("state", "starting"),
        "last_error": saved.get("last_error"),
        "resyncs": saved.get("resyncs", 0),
        "files_pending": saved.get("files_pending", 0),
        "files_fetched": saved.get("files_fetched", 0),
        "file_failures": saved.get("file_failures", 0),
        "follower": "this process" if following else saved.get("pid"),
    }


@attrs.define
class FollowerLease:
    """The ``flock`` of ``replica.lock``: held by the one worker that follows the primary."""

    path: Path
    _fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
