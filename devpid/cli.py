"""The ``devpid`` console command: ``devpid [options]`` runs ``twistd -n devpid [options]``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "devpid", *args]
    run()
