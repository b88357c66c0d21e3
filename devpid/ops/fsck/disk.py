"""How fsck touches the serverdir: never through a link, never removing a file it did not check."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Never follow a symbolic link, never block on a FIFO put where a file should be.
OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK

#: What tells one file from its replacement: device, inode, size, modification time.
FileIdentity = tuple[int, int, int, int]


def identity(status: os.stat_result) -> FileIdentity:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def identity_of(path: Path) -> FileIdentity | None:
    """The identity of whatever is at ``path`` now (None when nothing can be seen there)."""
    try:
        return identity(os.lstat(path))
    except OSError:
        return None


def walk(root: Path, parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every entry under ``root`` that is not a directory, in name order, never through links.

    Yields ``(parts, entry)``, or ``(parts, OSError)`` for a directory that cannot be listed.
    """
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as e:
        yield parts, e
        return
    for entry in entries:
        try:
            is_directory = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_directory = False
        if is_directory:
            yield from walk(Path(entry.path), (*parts, entry.name))
        else:
            yield (*parts, entry.name), entry


def remove_if_unchanged(path: Path, checked: FileIdentity) -> bool:
    """Unlink ``path`` if it is still the very file that was checked (gone counts as done)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return True
    if identity(now) != checked:
        return False
    os.unlink(path)
    return True
