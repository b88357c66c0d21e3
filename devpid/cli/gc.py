"""``devpid gc``: the mirror cache brought within ``--cache-max-size`` by hand.

The same run as the evictor of a running devpid (devpid.files.eviction), in
the foreground: least recently used mirror files first, down to 90 % of the
limit, never a stage's file, a file used or downloaded within the grace
period, or a download in progress. It takes the serverdir's ``evict.lock``
without waiting; when a devpid (or another ``devpid gc``) holds it, it says
so and exits with status 1 rather than wait: that process is doing the same
work. ``--dry-run`` takes no lock and removes nothing; it lists what would go.

Which indexes are mirrors comes from ``private.sqlite``, read-only. The
limit and the grace period come from the options, else from the config file
(``cache-max-size``, ``evict-grace``), as devpid reads them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.python import usage

from devpid.cli.fsck import serverdir_from
from devpid.cli.options import AnyOrderOptions, Refused, parse_command
from devpid.common.clock import iso_time
from devpid.config import DEFAULTS, ConfigError, cache_max_size, read_ini
from devpid.files.eviction import (
    CacheLimit,
    EvictionBusy,
    EvictionLock,
    Removed,
    RunReport,
    evict,
)
from devpid.files.store import FileStore
from devpid.ops.fsck.private import open_read_only
from devpid.private.database import FILENAME
from devpid.private.indexconfig import MIRROR

PROGRAM = "devpid gc"
EXIT_OK = 0
#: Another process is evicting, or the run failed.
EXIT_FAILED = 1
EXIT_USAGE = 2


class Options(AnyOrderOptions):
    synopsis = (
        "Usage: devpid gc [--serverdir DIR | --config FILE] [--cache-max-size SIZE] "
        "[--grace SECONDS] [--dry-run] [--json]"
    )
    longdesc = (
        "Evict the least recently used files of the mirror indexes until their cache is "
        "at 90% of --cache-max-size (when it is over the limit); stage files never go. "
        "Safe while devpid runs: it takes the serverdir's evict.lock, and exits 1 at once "
        "when a devpid is evicting. Exit status: 0 done, 1 busy or failed, 2 bad usage."
    )
    optParameters = [
        ["serverdir", None, None, "the serverdir [default: the config's, or ~/.devpid]"],
        ["config", "c", None, "read the serverdir and the limit from this INI file"],
        ["cache-max-size", None, None, "the limit (500M, 50G) [default: the config's]"],
        [
            "grace",
            None,
            None,
            "seconds after its last use during which a file stays "
            "[default: the config's evict-grace, or 600]",
        ],
    ]
    optFlags = [
        ["dry-run", "n", "list what would be removed, and remove nothing"],
        ["json", None, "print one JSON document instead of lines"],
    ]

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")


def _limit(options: usage.Options) -> CacheLimit:
    ini = read_ini(options["config"]) if options["config"] else {}
    size = cache_max_size(options["cache-max-size"] or ini.get("cache-max-size"))
    if size is None:
        raise ConfigError("no --cache-max-size given (nor cache-max-size in a --config file)")
    raw_grace = options["grace"] or ini.get("evict-grace") or DEFAULTS["evict-grace"][0]
    try:
        grace = float(raw_grace)
    except ValueError:
        raise ConfigError(f"--grace must be a number of seconds, not {raw_grace!r}") from None
    if not grace >= 0:
        raise ConfigError(f"--grace must be at least 0, not {raw_grace!r}")
    return CacheLimit(size, grace)


def mirror_indexes(serverdir: Path) -> list[str]:
    """The mirror indexes in ``serverdir``'s private data (read-only)."""
    path = serverdir / FILENAME
    if not path.is_file():
        raise ConfigError(f"no {FILENAME} in {serverdir}: cannot tell mirror indexes from stages")
    try:
        db = open_read_only(path)
        try:
            rows = db.execute("SELECT name, value FROM records WHERE kind = 'index'").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    mirrors = []
    for name, value in rows:
        try:
            config = json.loads(value)
        except (TypeError, ValueError):
            continue  # unreadable: not known to be a mirror, so never touched
        if isinstance(config, dict) and config.get("type") == MIRROR:
            mirrors.append(str(name))
    return sorted(mirrors)


def _line(serverdir: Path, item: Removed, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    path = item.path.relative_to(serverdir).as_posix()
    return f"{verb} {path} ({item.size} bytes, last used {iso_time(item.last_use)})"


def _summary(report: RunReport, mirrors: Sequence[str]) -> str:
    limit = report.limit
    head = (
        f"mirror cache ({len(mirrors)} mirror index{'es' if len(mirrors) != 1 else ''}): "
        f"{report.bytes_before} bytes, limit {limit.max_bytes}"
    )
    if report.bytes_before <= limit.max_bytes:
        return f"{head}: within the limit, nothing to remove"
    verb = "would remove" if report.dry_run else "removed"
    kept = f", {report.kept} left as used meanwhile" if report.kept else ""
    tail = (
        f"; still over the limit: the rest was used within {limit.grace:g}s or is being downloaded"
        if report.bytes_after > limit.max_bytes
        else ""
    )
    return (
        f"{head}, target {limit.target}: {verb} {report.files} files ({report.bytes} bytes) "
        f"in {report.seconds:.3f}s{kept}, leaving {report.bytes_after} bytes{tail}"
    )


def _document(serverdir: Path, report: RunReport, mirrors: Sequence[str]) -> dict[str, Any]:
    return {
        "serverdir": str(serverdir),
        "dry_run": report.dry_run,
        "mirrors": list(mirrors),
        "limit_bytes": report.limit.max_bytes,
        "target_bytes": report.limit.target,
        "grace_seconds": report.limit.grace,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "files": report.files,
        "bytes": report.bytes,
        "kept": report.kept,
        "seconds": round(report.seconds, 3),
        "removed": [
            {
                "path": item.path.relative_to(serverdir).as_posix(),
                "size": item.size,
                "last_use": iso_time(item.last_use),
            }
            for item in report.removed
        ],
    }


def main(argv: Sequence[str]) -> int:
    """Run ``devpid gc``; the exit status."""
    options = Options()

    def find() -> tuple[Path, CacheLimit, list[str]]:
        serverdir = serverdir_from(options)
        return serverdir, _limit(options), mirror_indexes(serverdir)

    found = parse_command(PROGRAM, options, argv, find)
    if isinstance(found, Refused):
        return found.status
    serverdir, limit, mirrors = found
    dry_run, as_json = bool(options["dry-run"]), bool(options["json"])

    def said(item: Removed) -> None:
        if not as_json:  # as it goes: a run cut short has said what it removed
            print(_line(serverdir, item, dry_run), flush=True)

    files_root = FileStore(serverdir).files_root
    lock = EvictionLock(serverdir)
    try:
        if not dry_run:
            lock.acquire()
        report = evict(files_root, mirrors, limit, dry_run=dry_run, removed=said)
    except EvictionBusy:
        print(
            f"{PROGRAM}: a devpid (or another devpid gc) is evicting in {serverdir} right now "
            f"({lock.path} is held); try again later",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as e:
        print(f"{PROGRAM}: error: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        lock.release()
    if as_json:
        print(json.dumps(_document(serverdir, report, mirrors), indent=1))
    else:
        print(_summary(report, mirrors))
    return EXIT_OK
