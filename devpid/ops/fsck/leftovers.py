"""fsck of ``+tmp/``: the staging directories of devpid's tools (export, import).

A tool that stages work in the serverdir does it in
``<serverdir>/+tmp/<tool>-<pid>-<nonce>/`` and holds an exclusive ``flock``
on the ``.lock`` file inside for as long as it runs; the kernel drops the
lock when the process exits or is killed. So:

- a directory whose ``.lock`` someone holds belongs to a running tool:
  counted as in progress, never touched;
- one whose ``.lock`` is free was left by a tool that died (``kill -9``, a
  crash, a full disk): a ``leftover`` warning. ``--repair`` removes it while
  holding the lock itself (taken without waiting), and only if the ``.lock``
  is still the file it locked, so a tool never loses a directory it uses;
- one without a ``.lock`` (its tool died between making it and locking it)
  is a leftover once the pid in its name no longer runs on this host.

Only the ``.lock`` of each directory is opened: what a tool staged (copies,
hard links of committed files) is not read. Anything else in ``+tmp/`` is
``unexpected``: reported, never followed, never removed. Nothing of devpid's
server reads ``+tmp/``, so nothing here is an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path

from devpid.common.identity import pid_alive
from devpid.ops.fsck.disk import OPEN_FLAGS
from devpid.ops.fsck.report import Report

#: The tools' staging root in the serverdir, and the lock file in each staging directory
#: (``devpid export`` and ``devpid import`` make them; fsck and the tools sweep them).
TMP = "+tmp"
LOCK = ".lock"
#: ``<tool>-<pid>-<nonce>``: the tool's name, then its ProcessIdentity token.
_STAGING = re.compile(
    r"^(?P<tool>[a-z][a-z0-9_]*(?:-[a-z][a-z0-9_]*)*)-(?P<pid>[0-9]+)-[0-9a-f]+\Z"
)


def check_leftovers(serverdir: Path, report: Report) -> None:
    """Add to ``report`` the staging directories under ``+tmp/`` no running tool holds."""
    root = serverdir / TMP
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        report.add("warning", "unexpected", TMP, "not a directory: not followed")
        return
    try:
        with os.scandir(root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as e:
        report.add("error", "unreadable", TMP, f"cannot list it: {e.strerror}")
        return
    for entry in entries:
        relative = f"{TMP}/{entry.name}"
        match = _STAGING.match(entry.name)
        if entry.is_symlink():
            report.add("warning", "unexpected", relative, "a symbolic link: not followed")
        elif not entry.is_dir(follow_symlinks=False) or match is None:
            report.add("warning", "unexpected", relative, "not a tool's staging directory")
        else:
            _check_staging(Path(entry.path), relative, match["tool"], int(match["pid"]), report)


def _check_staging(directory: Path, relative: str, tool: str, pid: int, report: Report) -> None:
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | OPEN_FLAGS | os.O_CLOEXEC)
    except FileNotFoundError:
        _unlocked(directory, relative, tool, pid, report)
        return
    except OSError as e:
        report.add(
            "warning",
            "unchecked",
            relative,
            f"cannot open its {LOCK} ({e.strerror}): cannot tell whether its {tool} runs",
        )
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report.counts.in_progress += 1  # its tool runs
            return
        except OSError as e:
            report.add(
                "warning",
                "unchecked",
                relative,
                f"cannot lock its {LOCK} ({e.strerror}): cannot tell whether its {tool} runs",
            )
            return
        problem = report.add(
            "warning",
            "leftover",
            relative,
            f"a staging directory its {tool} (pid {pid}) left behind: its {LOCK} is free",
        )

        def remove() -> bool:
            held, named = os.fstat(fd), os.lstat(directory / LOCK)
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                return False  # not the lock checked any more
            _remove(directory)
            return True

        report.attempt_repair(problem, remove)
    finally:
        os.close(fd)  # drops the flock


def _unlocked(directory: Path, relative: str, tool: str, pid: int, report: Report) -> None:
    """A staging directory without its ``.lock``: its tool's pid says whether it runs."""
    if pid_alive(pid):
        report.counts.in_progress += 1  # just made, about to be locked
        return
    problem = report.add(
        "warning",
        "leftover",
        relative,
        f"a staging directory its {tool} (pid {pid}) left behind: no {LOCK}, and the pid "
        "runs no more",
    )

    def remove() -> bool:
        if os.path.lexists(directory / LOCK):
            return False  # someone locks it now
        _remove(directory)
        return True

    report.attempt_repair(problem, remove)


def _remove(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # gone meanwhile: as good
        shutil.rmtree(directory)  # follows no link inside
