"""Command lines whose options may follow their arguments, as pip's and tar's do."""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence

from twisted.python import usage


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
