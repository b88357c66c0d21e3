"""``devpid fsck``: its options, and the report printed as lines or JSON.

The checks are devpid.ops.fsck; this module reads the command line, finds the
serverdir as devpid would (``--serverdir``, else the config's, else the
default) and turns the report into output and an exit status.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from twisted.python import usage

from devpid.cli.options import Refused, parse_command
from devpid.config import DEFAULTS, ConfigError, read_ini
from devpid.ops.fsck import PROGRAM, check


class Options(usage.Options):
    synopsis = "Usage: devpid fsck [--serverdir DIR | --config FILE] [--repair] [--json]"
    longdesc = (
        "Verify every cached file against the sha256 and length its cached page "
        "recorded, and every stage file against its version's link; report leftover "
        "temporary files, unreadable pages, orphans and unexpected files; check the "
        "unpacked docs against their doc zips, the tools' staging directories under "
        "+tmp/, and the private data (users, indexes, the event log; never repaired). "
        "Safe while devpid runs. Exit status: 0 when no error is left (warnings do not "
        "count), 1 when errors remain, 2 for bad usage."
    )
    optParameters = [
        ["serverdir", None, None, "the serverdir to check [default: the config's, or ~/.devpid]"],
        ["config", "c", None, "read the serverdir from this INI file, as devpid does"],
    ]
    optFlags = [
        [
            "repair",
            None,
            "remove bad files, stale or damaged unpacked docs and leftovers, so that they "
            "are fetched or unpacked again",
        ],
        ["json", None, "print one JSON document instead of lines"],
    ]

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")


def serverdir_from(options: usage.Options) -> Path:
    raw = options["serverdir"]
    if raw is None and options["config"] is not None:
        raw = read_ini(options["config"]).get("serverdir")
    if raw is None:
        raw = DEFAULTS["serverdir"][0]
    serverdir = Path(os.path.expanduser(str(raw))).absolute()
    if not serverdir.is_dir():
        raise ConfigError(f"no serverdir at {serverdir}")
    return serverdir


def main(argv: Sequence[str]) -> int:
    """Run ``devpid fsck``; the exit status."""
    options = Options()
    serverdir = parse_command(PROGRAM, options, argv, lambda: serverdir_from(options))
    if isinstance(serverdir, Refused):
        return serverdir.status
    report = check(serverdir, repair=bool(options["repair"]))
    if options["json"]:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for problem in report.problems:
            print(problem.line())
        print(report.summary())
    return report.exit_status
