"""Who this process is, for locks, temporary file names and invalidation messages."""

from __future__ import annotations

import os
import secrets
import socket

import attrs


@attrs.define
class ProcessIdentity:
    """A token unique to one devpid process: ``<pid>-<random>``.

    The pid is read when asked, not when the object is made: twistd forks to
    daemonize after building the services.
    """

    nonce: str = attrs.field(factory=lambda: secrets.token_hex(3))
    host: str = attrs.field(factory=socket.gethostname)

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def token(self) -> str:
        return f"{self.pid}-{self.nonce}"


def pid_of(token: str) -> int | None:
    """The pid in a token made by ``ProcessIdentity`` (None if it is not one)."""
    pid, _, nonce = token.partition("-")
    return int(pid) if pid.isdigit() and nonce else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
