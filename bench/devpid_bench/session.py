"""What every bench script does around its measurements: the options they share, a work
directory, a log line format, SIGTERM and Ctrl-C stopping every child, the last checks
(devpid's /+status, children that died, tracebacks in devpid's logs) and the report
printed whatever happens."""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from devpid_bench.http import http_get
from devpid_bench.procs import BenchError, Child, ProcessGroup
from devpid_bench.report import Results
from devpid_bench.repository import DEFAULT_CORPUS


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--json, --corpus and --keep, which every script has."""
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="real distributions to serve, used when present (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, serverdirs) for a look after",
    )


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_session(
    prefix: str,
    run: Callable[[Path], None],
    results: Results,
    report: Callable[[], None],
    json_path: Path | None,
    keep: bool,
    stopped: str = "stopped",
) -> int:
    """``run(workdir)`` in a fresh temporary directory; the exit status.

    ``report`` prints the results, also after a failure or an interruption;
    then they are saved to ``json_path`` and the directory is removed unless
    ``keep``.
    """
    signal.signal(signal.SIGTERM, _interrupt)  # so the finally blocks stop every child
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    say(f"work directory: {workdir}")
    status = 0
    try:
        run(workdir)
    except BenchError as exc:
        results.problems.append(f"{stopped}: {exc}")
        status = 1
    except KeyboardInterrupt:
        results.problems.append("interrupted")
        status = 130
    finally:
        print()
        report()
        if json_path:
            results.write_json(json_path)
            say(f"results written to {json_path}")
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


def save_status(server_url: str, results: Results) -> None:
    """devpid's /+status (its first 5000 characters) into the JSON details."""
    try:
        _, _, body = http_get(server_url + "+status", timeout=10)
        results.details["devpid_status"] = body.decode(errors="replace")[:5000]
    except OSError as exc:
        results.problems.append(f"devpid /+status: {exc}")


def check_children(group: ProcessGroup, results: Results) -> dict[str, int]:
    """Note every child that exited early and scan each devpid's log; tracebacks by name."""
    tracebacks = {}
    for child in list(group.children):
        if not child.alive():
            results.problems.append(f"{child.name} exited early with {child.popen.returncode}")
        if child.name.startswith("devpid"):
            tracebacks[child.name] = scan_log(child, results)
    return tracebacks


def scan_log(child: Child, results: Results) -> int:
    """Note tracebacks and unhandled errors in a devpid log; how many lines have them."""
    if child.log_path is None:
        return 0
    lines = child.log_path.read_text(errors="replace").splitlines()
    bad = [
        i
        for i, line in enumerate(lines)
        if "Traceback" in line or "Unhandled" in line or "CRITICAL" in line
    ]
    if bad:
        first = "\n      ".join(lines[bad[0] : bad[0] + 12])
        results.problems.append(
            f"{child.name} log has {len(bad)} traceback/unhandled lines; first:\n      {first}"
        )
    results.details[f"{child.name}_log_lines"] = len(lines)
    return len(bad)
