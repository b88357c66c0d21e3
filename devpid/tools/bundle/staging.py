"""An import's staging directory inside the target serverdir, and the clean-up of dead ones.

``devpid import`` copies a bundle's bytes into ``<serverdir>/+tmp/import-<pid>-<nonce>/``
before it changes anything: the copy is on the serverdir's file system, so a full disk
fails there, and every file can then be renamed (or linked) into place. The directory
holds a ``.lock`` file ``flock``-ed by the import for as long as it runs; the kernel drops
the lock when the process exits or is killed, so a later import removes every staging
directory whose lock it can take (``sweep``). A directory without a ``.lock`` (a crash
between ``mkdir`` and the lock) goes when the pid in its name no longer runs.

Nothing in devpid's server reads ``+tmp/``; ``devpid fsck`` reports a directory whose lock
is free as a leftover, and ``--repair`` removes it while holding that lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import attrs

from devpid.common.identity import ProcessIdentity, pid_alive, pid_of
from devpid.ops.fsck.leftovers import LOCK, TMP

PREFIX = "import-"


def tmp_root(serverdir: Path) -> Path:
    return serverdir / TMP


def _try_lock(path: Path) -> int | None:
    """``path`` open and ``flock``-ed without waiting; None when someone holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sweep(serverdir: Path) -> int:
    """Remove the staging directories no live import holds; how many were removed."""
    root = tmp_root(serverdir)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        directory = Path(entry.path)
        try:
            fd = _try_lock(directory / LOCK)
        except FileNotFoundError:
            pid = pid_of(entry.name[len(PREFIX) :])
            if pid is not None and pid_alive(pid):
                continue  # just made, about to be locked
            fd = None
        except OSError:
            continue
        else:
            if fd is None:
                continue  # a live import
        try:
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
        removed += not directory.exists()
    return removed


@attrs.define
class Staging:
    """This import's staging directory, ``flock``-ed until ``remove``."""

    serverdir: Path
    path: Path
    _lock_fd: int | None

    @classmethod
    def create(cls, serverdir: Path) -> Staging:
        root = tmp_root(serverdir)
        path = root / f"{PREFIX}{ProcessIdentity().token}"
        for attempt in range(3):
            root.mkdir(exist_ok=True)
            try:
                path.mkdir()
                break
            except FileNotFoundError:  # another import removed the empty +tmp meanwhile
                if attempt == 2:
                    raise
        try:
            fd = os.open(path / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # a sweep or fsck may hold it for an instant
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(serverdir, path, fd)

    @property
    def received(self) -> Path:
        """Where a bundle's files are copied (or extracted) to, under their bundle paths."""
        return self.path / "bundle"

    def remove(self) -> None:
        """Remove the directory and everything left in it, then drop the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        with contextlib.suppress(OSError):
            tmp_root(self.serverdir).rmdir()  # only when empty: leave no trace
