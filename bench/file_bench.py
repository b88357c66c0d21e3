"""Cached files sent by ``os.sendfile`` (issue 17): devpid against nginx on one 16.9 MB wheel.

    python bench/file_bench.py            # 7 rounds of 5 s per server and connection count
    python bench/file_bench.py --quick    # 5 rounds of 2 s: about 45 s

What is measured and how: bench/devpid_bench/file_figures.py. Prints each figure
beside its goal; exits 1 if one falls short.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench.file_figures import figures
from devpid_bench.goals import run_script

if __name__ == "__main__":
    sys.exit(run_script(figures, __doc__))
