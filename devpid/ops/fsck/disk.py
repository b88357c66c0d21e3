"""How fsck touches the serverdir: never through a link, never removing a file it did not check.

Files are read without updating their access time where the system allows
(``O_NOATIME``): eviction orders mirror files by their atime (the last use,
devpid.files.usage), and a check that reads every file must not make them all
look used. A directory (unpacked docs, a tool's staging directory) is removed
only if it is still the one checked, and first renamed aside when readers may
be in it, so that they see it whole or not at all.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Never follow a symbolic link, never block on a FIFO put where a file should be.
OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK
#: Linux's "do not update the access time" (only for files one owns; 0 elsewhere).
_NOATIME = getattr(os, "O_NOATIME", 0)


def open_for_reading(path: Path | str) -> int:
    """``path`` opened read-only, through no link, without touching its atime if allowed."""
    if _NOATIME:
        try:
            return os.open(path, os.O_RDONLY | OPEN_FLAGS | _NOATIME)
        except PermissionError:  # O_NOATIME needs the file's owner: read it as anyone may
            pass
    return os.open(path, os.O_RDONLY | OPEN_FLAGS)


#: What tells one file from its replacement: device, inode, size, modification time.
FileIdentity = tuple[int, int, int, int]


def identity(status: os.stat_result) -> FileIdentity:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


#: What tells one directory from its replacement: device and inode.
DirectoryIdentity = tuple[int, int]


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


def remove_tree_if_unchanged(
    path: Path, checked: DirectoryIdentity, aside: str | None = None
) -> bool:
    """Remove the directory ``path`` if it is still the one checked (gone counts as done).

    With ``aside``, it is first renamed to ``.<name>.<aside>-<random>`` beside itself
    (one atomic step for its readers), then removed; a removal cut off leaves that
    name, which fsck knows. ``shutil.rmtree`` follows no link inside.
    """
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return True
    if (now.st_dev, now.st_ino) != checked or not os.path.isdir(path) or path.is_symlink():
        return False
    target = path
    if aside is not None:
        target = path.with_name(f".{path.name}.{aside}-{secrets.token_hex(4)}")
        os.rename(path, target)
    shutil.rmtree(target)
    return True
