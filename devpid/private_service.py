"""The private side of a running devpid: its data opened, initialised, and watched.

``open_private_data`` opens the serverdir's ``private.sqlite`` and, on an
empty serverdir, creates ``root`` (empty password) and ``root/pypi``, so
``twistd -n devpid`` needs no ``devpid init``. ``RootPasswordWatch`` keeps
knowing whether root's password is still empty, for the start-up warning and
``/+status``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.logger import Logger

from devpid import __version__
from devpid.auth.passwords import hash_password, verify_password
from devpid.http.devpi import DEVPI_API_LEVEL
from devpid.ops.status import PrivateStatus
from devpid.private.data import PrivateData, timestamp
from devpid.private.database import PrivateDatabase
from devpid.private.events import Event
from devpid.private.init import ROOT, initialize

_log = Logger()

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "\\:\\:1"}


def listens_beyond_loopback(listen: str) -> bool:
    """Whether the endpoint string accepts connections from other hosts."""
    if listen.startswith("unix:"):
        return False
    match = re.search(r"interface=([^:]+(?:\\:[^:]*)*)", listen)
    if match is None:
        return True
    return match.group(1) not in _LOOPBACK and not match.group(1).startswith("127.")


def open_private_data(
    data_path: Any, cache_expiry: int, root_pypi_upstream: str | None
) -> PrivateData:
    """Open (and on first use initialise) the private data; ``DatabaseError`` if it cannot."""
    database = PrivateDatabase(data_path)
    database.open()
    data = PrivateData(database, default_cache_expiry=cache_expiry)
    empty = not data.users()
    if empty and initialize(data, hash_password(""), root_pypi_upstream, timestamp(time.time())):
        _log.info(
            "initialised the private data: user root (empty password) and root/pypi; "
            "set root's password with: devpid passwd root"
        )
    return data


@attrs.define
class RootPasswordWatch:
    """Whether root's password is empty, checked at start and whenever root changes."""

    data: PrivateData
    beyond_loopback: bool
    empty: bool = False

    def check(self) -> None:
        record = self.data.user(ROOT) or {}
        pwhash = record.get("pwhash")
        self.empty = isinstance(pwhash, str) and verify_password(pwhash, "")
        if self.empty and self.beyond_loopback:
            _log.warn(
                "root's password is empty and devpid listens beyond loopback: "
                "anyone who reaches it can log in as root; set one with: devpid passwd root"
            )

    def heard(self, event: Event) -> None:
        if any(c.kind == "user" and c.name == ROOT for c in event.changes):
            self.check()

    def status(self) -> PrivateStatus:
        data = self.data
        database = data.database
        at = database.records.last_commit_at
        fields = {
            "versioninfo": {"devpi-server": DEVPI_API_LEVEL, "devpid": __version__},
            "uuid": database.uuid,
            "serial": data.serial,
            "last-commit-timestamp": at,
            "event-serial": data.serial,
            "event-serial-timestamp": at,
            "event-serial-in-sync-at": at,
            "role": "MASTER",
            "private": {
                "database": str(database.path),
                "serial": data.serial,
                "users": len(data.users()),
                "indexes": len(data.indexes()),
                "mirror_indexes": len(data.mirrors()),
                "root_password_empty": self.empty,
            },
        }
        warnings: tuple[str, ...] = ()
        if self.empty and self.beyond_loopback:
            warnings = ("root's password is empty and devpid listens beyond loopback",)
        return PrivateStatus(fields, warnings)


class PrivateDataService(Service):
    """Names the private data in the service tree (for tools and tests).

    The database is not closed when the service stops: answers still being
    sent during the shutdown grace read it; the process's exit closes it.
    """

    name = "private"

    def __init__(self, data: PrivateData, at_start: Callable[[], object] | None = None) -> None:
        self.data = data
        #: Run once when the service starts (after the serverdir's clean-up).
        self.at_start = at_start

    def startService(self) -> None:
        super().startService()
        if self.at_start is not None:
            self.at_start()
