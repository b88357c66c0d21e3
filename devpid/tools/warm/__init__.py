"""``devpid warm``: fill a running devpid's cache for requirements, over HTTP only.

The pieces, each in its own module:

``requirements``
    the requirements named on the command line and in ``-r`` files, as units pip
    resolves together (and one by one when together fails);
``targets``
    the platforms and Python versions to resolve for, as pip's options;
``relay``
    a pass-through HTTP server on loopback that pip resolves through: it forwards
    every request to devpid and records what devpid said about each file pip
    downloaded (pip before 25.3 downloads every wheel even with ``--dry-run``);
``resolve``
    one ``pip install --dry-run --report`` per target, its report read into files;
``pages``
    a project's PEP 691 page on devpid, where ``--sdists`` finds each release's sdist;
``fetch``
    the files pip did not download, streamed to nowhere a few at a time, counted and
    checked against their sha256;
``summary``
    what happened to each file and each target, as lines or one JSON document;
``http``
    blocking HTTP to devpid (no proxy, no redirects), file paths, the cache header;
``progress``
    the files and bytes bars (tqdm), shared by the relay and the fetchers;
``run``
    the whole run, in order.

No resolver is written here and nothing is read from the serverdir: devpid is asked
over HTTP, so every worker setup (one process, several, behind nginx) is warmed the same.
"""
