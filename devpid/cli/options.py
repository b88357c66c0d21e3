"""Command lines whose options may follow their arguments, as pip's and tar's do."""

from __future__ import annotations

import getopt
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
from twisted.python import usage

from devpid.config import ConfigError

#: A usage error's exit status (the tools' common one).
EXIT_USAGE = 2

_Found = TypeVar("_Found")


@attrs.frozen
class Refused:
    """The command line was refused, with one line said; ``status`` is the exit status."""

    status: int


def parse_command(
    program: str,
    options: usage.Options,
    argv: Sequence[str],
    find: Callable[[], _Found],
    *,
    config_status: int = EXIT_USAGE,
) -> _Found | Refused:
    """``options`` parsed from ``argv``, then what ``find`` works out from them (the
    serverdir, say); a usage error or a ``ConfigError`` is one line on standard error
    and ``Refused`` (``EXIT_USAGE``, or ``config_status`` for a ``ConfigError``)."""
    try:
        options.parseOptions(list(argv))
        return find()
    except usage.UsageError as e:
        print(f"{program}: error: {e} (see: {program} --help)", file=sys.stderr)
        return Refused(EXIT_USAGE)
    except ConfigError as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return Refused(config_status)


class AnyOrderOptions(usage.Options):
    """``usage.Options`` reading options after the arguments too
    (``devpid export OUT.tar --mirror all``); ``--`` still ends the options."""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else list(options)
        try:
            found, arguments = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        takes_value = {f"--{name[:-1]}" for name in self.longOpt if name.endswith("=")}
        takes_value |= {
            f"-{self.shortOpt[i]}"
            for i in range(len(self.shortOpt) - 1)
            if self.shortOpt[i + 1] == ":"
        }
        ordered: list[str] = []
        for option, value in found:
            ordered += [option, value] if option in takes_value else [option]
        super().parseOptions([*ordered, "--", *arguments])
