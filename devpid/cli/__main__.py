"""``python -m devpid.cli``: the same as the ``devpid`` console command."""

from devpid.cli import main

main()
