"""``devpid import``: its options, the serverdir, the output and the exit status.

The work is devpid.tools.bundle.importer; this module reads the command line, finds the
serverdir as devpid would (``--serverdir``, else the config's, else the default; it may
not exist yet), and turns the outcome into lines (or one JSON document) and a status:

- 0: imported, or already present (nothing written);
- 1: refused (a damaged bundle, wrong records, a target in use without ``--merge``,
  conflicts without ``--keep-existing``) or failed (a full disk, a busy file): nothing
  was imported;
- 2: bad usage;
- 3: imported with ``--keep-existing``, the target's version of each conflict kept.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.python import usage

from devpid.cli.options import AnyOrderOptions, Refused, parse_command
from devpid.config import DEFAULTS, read_ini
from devpid.private.database import DatabaseError
from devpid.tools.bundle.format import BundleError
from devpid.tools.bundle.importer import (
    MAX_SHOWN,
    ImportFailed,
    ImportOptions,
    ImportRefused,
    Summary,
    run_import,
)
from devpid.tools.bundle.reader import NotABundle
from devpid.tools.devpi_export import DevpiExportError

PROGRAM = "devpid import"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_CONFLICTS_KEPT = 0, 1, 2, 3


class Options(AnyOrderOptions):
    synopsis = (
        "Usage: devpid import [--serverdir DIR | -c CONFIG] [--merge [--keep-existing]] "
        "[--from-devpi] [--progress | --no-progress] [--json] IN"
    )
    longdesc = (
        "Load a bundle (a directory or a .tar written by devpid export) into a serverdir, "
        "or with --from-devpi a devpi-server export directory. Every file's sha256 is "
        "verified first; a damaged bundle is refused with the list of what is wrong and "
        "the serverdir untouched. Without --merge the serverdir must be new (absent, empty, "
        "or only what devpid init made). Safe while devpid serves the serverdir. Exit "
        "status: 0 imported (or already present), 1 refused or failed (nothing imported), "
        "2 bad usage, 3 imported with --keep-existing keeping conflicting records."
    )
    optParameters = [
        ["serverdir", None, None, "the serverdir to load [default: the config's, or ~/.devpid]"],
        ["config", "c", None, "read the serverdir from this INI file, as devpid does"],
    ]
    optFlags = [
        ["merge", None, "add to a serverdir in use; conflicting records refuse the import"],
        ["keep-existing", None, "with --merge: import the rest, keep the target's conflicts"],
        ["from-devpi", None, "IN is a devpi-server export directory (devpi-export)"],
        ["progress", None, "show a progress bar [default: when stderr is a terminal]"],
        ["no-progress", None, "never show a progress bar"],
        ["json", None, "print one JSON document instead of lines"],
    ]

    def parseArgs(self, source: str) -> None:  # type: ignore[override]
        self["source"] = source

    def postOptions(self) -> None:
        if self["keep-existing"] and not self["merge"]:
            raise usage.UsageError("--keep-existing goes with --merge")
        if self["progress"] and self["no-progress"]:
            raise usage.UsageError("--progress or --no-progress, not both")


def target_serverdir(options: usage.Options) -> Path:
    """The serverdir as devpid finds it; unlike fsck's, it may not exist yet."""
    raw = options["serverdir"]
    if raw is None and options["config"] is not None:
        raw = read_ini(options["config"]).get("serverdir")
    if raw is None:
        raw = DEFAULTS["serverdir"][0]
    return Path(os.path.expanduser(str(raw))).absolute()


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def summary_lines(summary: Summary) -> list[str]:
    s = summary
    if s.already_present:
        return [
            f"{PROGRAM}: {s.bundle} is already present in {s.serverdir}: nothing written "
            f"({_n(s.records_same, 'record')} the same, {_n(s.files_present, 'file')} and "
            f"{_n(s.pages_kept, 'page')} already there)"
        ]
    return [
        f"{PROGRAM}: imported {s.bundle} into {s.serverdir}",
        f"  records: {s.records_added} added, {s.records_same} the same, "
        f"{len(s.conflicts)} conflicting",
        f"  files: {s.files_placed} placed, {s.files_present} already there",
        f"  pages: {s.pages_written} written, {s.pages_kept} kept",
        f"  bytes: {_megabytes(s.bytes_copied)} copied of {_megabytes(s.bytes_read)} read",
    ]


def _shown(problems: list[str]) -> list[str]:
    shown = problems[:MAX_SHOWN]
    if len(problems) > MAX_SHOWN:
        shown.append(f"... and {len(problems) - MAX_SHOWN} more")
    return shown


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=1))


def main(argv: Sequence[str]) -> int:
    """Run ``devpid import``; the exit status."""
    options = Options()
    serverdir = parse_command(PROGRAM, options, argv, lambda: target_serverdir(options))
    if isinstance(serverdir, Refused):
        return serverdir.status
    progress = bool(options["progress"]) or (not options["no-progress"] and sys.stderr.isatty())
    import_options = ImportOptions(
        source=Path(options["source"]).absolute(),
        serverdir=serverdir,
        merge=bool(options["merge"]),
        keep_existing=bool(options["keep-existing"]),
        from_devpi=bool(options["from-devpi"]),
        progress=progress,
    )
    as_json = bool(options["json"])
    try:
        summary = run_import(import_options)
    except ImportRefused as e:
        if as_json:
            _print_json(
                {
                    "status": "refused",
                    "exit_status": EXIT_REFUSED,
                    "error": e.headline,
                    "problems": e.problems,
                }
            )
        else:
            print(f"{PROGRAM}: error: {e.headline}:", file=sys.stderr)
            for line in _shown(e.problems):
                print(f"  {line}", file=sys.stderr)
        return EXIT_REFUSED
    except (
        ImportFailed,
        NotABundle,
        BundleError,
        DevpiExportError,
        DatabaseError,
        sqlite3.Error,
        OSError,
    ) as e:
        message = str(e) if not isinstance(e, OSError) else f"{e.strerror or e}: {e.filename}"
        if as_json:
            _print_json({"status": "failed", "exit_status": EXIT_REFUSED, "error": message})
        else:
            print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return EXIT_REFUSED
    status = EXIT_CONFLICTS_KEPT if summary.conflicts else EXIT_OK
    if as_json:
        done = "already-present" if summary.already_present else "imported"
        _print_json({"status": done, "exit_status": status, **summary.to_json()})
        return status
    for warning in summary.warnings:
        print(f"{PROGRAM}: warning: {warning}", file=sys.stderr)
    for line in summary_lines(summary):
        print(line)
    if summary.conflicts:
        print(f"{PROGRAM}: kept the target's version of {_n(len(summary.conflicts), 'record')}:")
        for line in _shown(summary.conflicts):
            print(f"  {line}")
    return status
