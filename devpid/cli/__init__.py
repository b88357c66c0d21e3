"""The ``devpid`` console command.

``devpid [options]`` runs ``twistd --nodaemon --pidfile= devpid [options]``;
``devpid gen-config [options]`` writes configuration files (see devpid.cli.gen_config);
``devpid fsck [options]`` verifies the cached files (see devpid.cli.fsck);
``devpid init``, ``passwd`` and ``token`` manage the private data (devpid.cli.accounts);
``devpid warm`` fills a running devpid's cache (devpid.cli.warm);
``devpid export`` and ``import`` write and load bundles (devpid.cli.export,
devpid.cli.import_bundle);
``devpid gc`` evicts mirror files beyond ``--cache-max-size`` (devpid.cli.gc).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = ("gen-config", "fsck", "init", "passwd", "token", "warm", "export", "import", "gc")

#: Printed before twistd's help for ``devpid --help``: the subcommands it does not list.
PREAMBLE = """\
devpid [options]             run devpid in the foreground (twistd -n devpid; options below)
devpid gen-config [options]  write configuration files (see: devpid gen-config --help)
devpid fsck [options]        verify the cached files (see: devpid fsck --help)
devpid init [options]        create root and root/pypi in a new serverdir (like devpi-init)
devpid passwd USER           set a user's password offline (like devpi-passwd)
devpid token create|list|revoke USER ...   manage API tokens
devpid warm [options] REQ... fill a running devpid's cache for requirements
devpid export [options] OUT  write a bundle: users, indexes, uploads, the mirror cache
devpid import [options] IN   load a bundle (or, with --from-devpi, a devpi-export directory)
devpid gc [--dry-run]        evict mirror files beyond --cache-max-size, least recently used first
"""


#: The tools' subcommands: ``name -> (module, function(argv) -> exit status)``, imported
#: only when asked for.
_TOOLS = {
    "warm": ("devpid.cli.warm", "main"),
    "export": ("devpid.cli.export", "main"),
    "import": ("devpid.cli.import_bundle", "main"),
    "gc": ("devpid.cli.gc", "main"),
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["gen-config"]:
        from devpid.cli.gen_config import main as gen_config

        gen_config(args[1:])
        return
    if args[:1] == ["fsck"]:
        from devpid.cli.fsck import main as fsck

        raise SystemExit(fsck(args[1:]))
    if args[:1] in (["init"], ["passwd"], ["token"]):
        from devpid.cli import accounts

        command = {"init": accounts.init_main, "passwd": accounts.passwd_main}.get(
            args[0], accounts.token_main
        )
        raise SystemExit(command(args[1:]))
    tool = _TOOLS.get(args[0]) if args else None
    if tool is not None:
        module, function = tool
        raise SystemExit(getattr(importlib.import_module(module), function)(args[1:]))
    from twisted.scripts.twistd import run

    if "--help" in args[: args.index("--") if "--" in args else None]:
        print(PREAMBLE)
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "devpid", *args]
    run()


if __name__ == "__main__":
    main()
