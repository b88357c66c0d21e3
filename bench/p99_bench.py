"""The p99 of a cached project page at 50 connections (issue 17): devpid, devpi-server, nginx.

    python bench/p99_bench.py            # 5 rounds of 10 s per server
    python bench/p99_bench.py --quick    # 3 rounds of 4 s: about 45 s (devpi's venv made first
                                         # if missing, once: not counted)

What is measured and how: bench/devpid_bench/p99_figures.py. Prints each figure
beside its goal; exits 1 if one falls short.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench.goals import run_script
from devpid_bench.p99_figures import figures

if __name__ == "__main__":
    sys.exit(run_script(figures, __doc__))
