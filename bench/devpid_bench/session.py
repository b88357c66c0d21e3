"""What every bench script does around its measurements: a work directory, a log line
format, SIGTERM and Ctrl-C stopping every child, the report printed whatever happens."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from devpid_bench.procs import BenchError
from devpid_bench.report import Results


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
