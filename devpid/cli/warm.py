"""``devpid warm``: its options, the progress bars, the summary and the exit status.

The work is devpid.tools.warm; this module reads the command line into a
``WarmRequest``, decides whether to draw progress bars (stderr a terminal, unless
``--progress``/``--no-progress`` say otherwise) and prints the summary as lines or,
with ``--json``, as one JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from twisted.python import usage

from devpid.cli.options import AnyOrderOptions
from devpid.tools.warm.http import Origin, URLError
from devpid.tools.warm.progress import Progress
from devpid.tools.warm.requirements import RequirementsError, read_requirements
from devpid.tools.warm.resolve import PipMissing, check_pip
from devpid.tools.warm.run import DEFAULT_INDEX_URL, CannotWarm, WarmRequest, warm
from devpid.tools.warm.summary import EXIT_USAGE
from devpid.tools.warm.targets import TargetError, targets_from

PROGRAM = "devpid warm"


class Options(AnyOrderOptions):
    synopsis = (
        "Usage: devpid warm [--index-url URL] [-r FILE]... [--target SPEC]... "
        "[--platform P]... [--python-version V]... [--sdists] [--json] [REQUIREMENT...]"
    )
    longdesc = (
        "Fill a running devpid's cache with what the requirements resolve to, for "
        "this interpreter or for other platforms and Python versions. pip (of this "
        "Python) resolves through devpid; every file is then fetched through devpid. "
        "TARGETS: --target platform=P,python=V[,abi=A][,implementation=I] (repeatable: "
        "one resolution each; a key given twice in one SPEC gives pip both values), or "
        "pip's --platform/--python-version/--abi/--implementation (one resolution per "
        "platform and Python version given). Exit status: 0 when every file is in "
        "devpid's cache, 1 when something failed (each failure is listed), 2 for bad "
        "usage, no pip, or no devpid at the index URL."
    )
    optParameters = [
        ["index-url", "i", DEFAULT_INDEX_URL, "the devpid index to warm (any index URL)"],
        ["jobs", "j", 4, "files fetched at once", int],
        ["timeout", None, 60.0, "seconds to wait for devpid on one read", float],
        ["implementation", None, None, "pip's --implementation for the targets (cp, pp)"],
    ]
    optFlags = [
        ["sdists", None, "also fetch the sdist of every resolved release"],
        ["json", None, "print the summary as one JSON document"],
        ["progress", None, "draw progress bars even if stderr is not a terminal"],
        ["no-progress", None, "never draw progress bars"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["requirement_files"] = []
        self["target_specs"] = []
        self["platforms"] = []
        self["python_versions"] = []
        self["abis"] = []
        self["pip_options"] = []

    def opt_requirement(self, path: str) -> None:
        """read requirements from this file (repeatable)"""
        self["requirement_files"].append(path)

    opt_r = opt_requirement

    def opt_target(self, spec: str) -> None:
        """resolve for platform=P,python=V[,abi=A][,implementation=I] (repeatable)"""
        self["target_specs"].append(spec)

    def opt_platform(self, platform: str) -> None:
        """pip's --platform: one resolution per value (repeatable)"""
        self["platforms"].append(platform)

    def opt_python_version(self, version: str) -> None:
        """pip's --python-version: one resolution per value (repeatable)"""
        self["python_versions"].append(version)

    def opt_abi(self, abi: str) -> None:
        """pip's --abi, for every --platform/--python-version target (repeatable)"""
        self["abis"].append(abi)

    def opt_pip_option(self, option: str) -> None:
        """pass this option to pip install as is, e.g. --pip-option=--pre (repeatable)"""
        self["pip_options"].append(option)

    def parseArgs(self, *requirements: str) -> None:
        self["requirements"] = list(requirements)

    def postOptions(self) -> None:
        if not self["requirements"] and not self["requirement_files"]:
            raise usage.UsageError("nothing to warm: give requirements or -r FILE")
        if self["jobs"] < 1:
            raise usage.UsageError("--jobs must be at least 1")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")
        if self["progress"] and self["no-progress"]:
            raise usage.UsageError("--progress and --no-progress contradict each other")


def _error(message: str) -> int:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str]) -> int:
    """Run ``devpid warm``; the exit status."""
    options = Options()
    try:
        options.parseOptions(list(argv))
        targets = targets_from(
            options["target_specs"],
            options["platforms"],
            options["python_versions"],
            options["abis"],
            options["implementation"],
        )
        Origin.of(options["index-url"])
        requirements = read_requirements(options["requirements"], options["requirement_files"])
    except usage.UsageError as e:
        return _error(f"{e} (see: {PROGRAM} --help)")
    except (TargetError, URLError, RequirementsError) as e:
        return _error(str(e))
    try:
        check_pip()
    except PipMissing as e:
        return _error(str(e))
    if not requirements.units:
        return _error("the requirements files name nothing to warm")
    show = sys.stderr.isatty()
    if options["progress"] or options["no-progress"]:
        show = bool(options["progress"])
    request = WarmRequest(
        index_url=options["index-url"],
        requirements=requirements,
        targets=tuple(targets),
        sdists=bool(options["sdists"]),
        jobs=options["jobs"],
        timeout=options["timeout"],
        pip_options=tuple(options["pip_options"]),
    )
    progress = Progress(enabled=show, stream=sys.stderr)
    try:
        summary = warm(request, progress)
    except CannotWarm as e:
        return _error(str(e))
    finally:
        progress.close()
    if options["json"]:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print("\n".join(summary.lines()))
    return summary.exit_status
