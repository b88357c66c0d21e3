"""``devpid fsck``: verify every cached file against what its page recorded.

What is checked (see docs/operations.md#checking-the-cache-devpid-fsck):

- a committed file listed by its project's cached page: its length against
  the page's size, and its content against the page's sha256 (when the page
  has none, against another hash the page gives; else by length only, else
  not at all);
- a ``.metadata`` file: its content against the link's core-metadata sha256;
- a ``.provenance`` file (PEP 740): nothing to check it against, counted as
  not verifiable;
- a file no cached page lists (an orphan, a warning): whether its sha256
  starts with the ``<h3><h13>`` of its path, which holds for every file the
  upstream gave a sha256 for;
- temporary files nobody writes any more, unexpected files, unreadable pages;
- a stage index's files against the links of its versions (``stages``): a
  linked file missing or different is an error never repaired (the only
  copy), a file no version links a leftover;
- the unpacked documentation under ``+docs/`` (``docs``): each directory
  against its version's current doc zip (stale ones are warnings; one that
  differs from its zip, by a missing, extra or changed file, an error; both
  removed by ``--repair``, to be unpacked again on demand), and each doc zip
  a zip devpid would unpack (an error never repaired);
- the staging directories of devpid's tools under ``+tmp/`` (``leftovers``):
  one whose ``.lock`` nobody holds is a leftover warning, removed by
  ``--repair`` while fsck holds that lock;
- the private data (``private.sqlite``, see ``devpid.ops.fsck.private``): its
  integrity, an event log without gaps whose replay gives exactly the
  records, index owners and bases. Never repaired: restore from a backup.

It reads the serverdir only, never the state store, so it runs beside live
devpid processes. ``--repair`` removes what it found bad, by the same rules
as devpid's own clean-up: a download's temporary file only while holding its
``flock``, any file only if it is still the one that was checked, a directory
only if it is still the one checked (unpacked docs renamed aside first).
Files are read without touching their access times where allowed
(eviction's LRU order lives in them).

What it does not look at: the serverdir's top level (``private.sqlite``,
``state.sqlite``, ``.secret``, ``upstream.json``, eviction's ``evict.lock``
and whatever an operator keeps there), nor what a tool staged in ``+tmp/``.

The report (``report``): one ``Problem`` per thing found (severity, kind,
path relative to the serverdir, detail, whether ``--repair`` removed it), the
``Counts``, printed as lines or one JSON document. Errors decide the exit
status (1 while any is left unrepaired); warnings never do, repaired or not.

One job a module:

- ``report``: what was found (``Problem``, ``Counts``, ``Report``), as lines or JSON
- ``pages``: a cached page read as fsck needs it: what it records of each file
- ``disk``: walking the trees without following links; removing only the file checked
- ``checker``: one run over a serverdir, the checks of files and pages, and repair
- ``stages``: what the private data links (stage files, each version's doc zip)
- ``docs``: ``+docs/`` against the doc zips
- ``leftovers``: ``+tmp/``, the tools' staging directories
- ``private``: ``private.sqlite`` against its event log

The command line (``Options``, ``main``) is devpid.cli.fsck.
"""

from pathlib import Path

from devpid.ops.fsck.checker import Checker
from devpid.ops.fsck.report import (
    EXIT_CLEAN,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    PROGRAM,
    Counts,
    Problem,
    Report,
)


def check(serverdir: Path, repair: bool = False) -> Report:
    """Check (and with ``repair``, repair) one serverdir."""
    return Checker(serverdir, repair).check()


__all__ = [
    "EXIT_CLEAN",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "PROGRAM",
    "Checker",
    "Counts",
    "Problem",
    "Report",
    "check",
]
