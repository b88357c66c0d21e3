"""``devpid export``: its options, its progress bar, and its summary as lines or JSON.

The export itself is devpid.tools.bundle.export; this module reads the command line, finds
the serverdir as ``devpid fsck`` does (``--serverdir``, else the config's, else the
default), shows a tqdm bar (bytes, with the files as a postfix) when standard error is a
terminal, and turns the outcome into one line per error and an exit status: 0 when the
bundle is complete (written now or before), 1 when it could not be, 2 for bad usage,
130 when interrupted (what was written is kept for the next run to resume).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.python import usage

from devpid.cli.fsck import serverdir_from
from devpid.cli.options import AnyOrderOptions, Refused, parse_command
from devpid.tools.bundle.export import Exporter, ExportError, Progress

PROGRAM = "devpid export"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Options(AnyOrderOptions):
    synopsis = (
        "Usage: devpid export [--serverdir DIR | -c CONFIG] [--mirror all|none|REQUIREMENTS] "
        "[--force] [--json] OUT"
    )
    longdesc = (
        "Write a bundle of the serverdir to OUT (a directory, or one uncompressed tar when OUT "
        "ends in .tar): users, indexes, tokens, versions with their files, docs and tox results, "
        "and the mirror cache as --mirror says, every file with its sha256. Safe while devpid "
        "runs (a consistent snapshot). Run it again after an interruption to resume. "
        "See docs/backup.md."
    )
    optParameters = [
        ["serverdir", None, None, "the serverdir to export [default: the config's, or ~/.devpid]"],
        ["config", "c", None, "read the serverdir from this INI file, as devpid does"],
        [
            "mirror",
            None,
            "none",
            "the mirror cache: none, all, or a requirements file (their closure)",
        ],
    ]
    optFlags = [
        ["force", None, "write OUT again even when it is a complete bundle already"],
        ["json", None, "print the summary as one JSON document"],
        ["progress", None, "show the progress bar even when standard error is no terminal"],
        ["no-progress", None, "never show the progress bar"],
    ]

    def parseArgs(self, out: str) -> None:  # type: ignore[override]
        self["out"] = out

    def postOptions(self) -> None:
        mirror = str(self["mirror"])
        if mirror not in ("all", "none") and not Path(mirror).is_file():
            raise usage.UsageError(f"--mirror {mirror}: not all, none, or a requirements file")


class BarProgress(Progress):
    """A tqdm bar of bytes, with the number of files done as its postfix."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.files = 0
        self.total_files = 0

    def start(self, files: int, size: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self.total_files = files
        self.bar = tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="export", file=sys.stderr
        )
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.files}/{self.total_files} files", refresh=False)

    def advance(self, size: int) -> None:
        if self.bar is not None:
            self.bar.update(size)

    def file_done(self, reused: bool, size: int) -> None:
        self.files += 1
        if self.bar is not None:
            if size:
                self.bar.update(size)
            self._postfix()

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(f"{PROGRAM}: {message}", file=sys.stderr)
        else:
            print(f"{PROGRAM}: {message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: Sequence[str]) -> int:
    """Run ``devpid export``; the exit status."""
    options = Options()
    serverdir = parse_command(
        PROGRAM, options, argv, lambda: serverdir_from(options), config_status=EXIT_FAILED
    )
    if isinstance(serverdir, Refused):
        return serverdir.status
    show = bool(options["progress"]) or (
        sys.stderr.isatty() and not options["no-progress"] and not options["json"]
    )
    if options["no-progress"]:
        show = False
    out = Path(str(options["out"])).absolute()
    exporter = Exporter(
        serverdir, out, str(options["mirror"]), bool(options["force"]), BarProgress(show)
    )
    try:
        summary = exporter.run()
    except ExportError as e:
        print(f"{PROGRAM}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            f"{PROGRAM}: interrupted: what was written is kept; run the same command again "
            "to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if options["json"]:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        for line in summary.lines():
            print(line)
    return 0
