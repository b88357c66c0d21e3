"""A project page of 200,000 files (issue 17): devpid's peak RSS, and its warm page time
against nginx sending the same bytes.

    python bench/hugepage_bench.py            # 15 warm rounds, and a stage's merged page
    python bench/hugepage_bench.py --quick    # 5 warm rounds: about 30 s

What is measured and how: bench/devpid_bench/hugepage_figures.py. Prints each figure
beside its goal; exits 1 if one falls short.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench.goals import run_script
from devpid_bench.hugepage_figures import figures

if __name__ == "__main__":
    sys.exit(run_script(figures, __doc__))
