"""Start-up time (issue 17): ready to serve with 100,000 cached projects, 10,000 cached
files and 10,000 private releases, against an empty serverdir.

    python bench/startup_bench.py            # 5 starts of each
    python bench/startup_bench.py --quick    # 3 starts of each: about 30 s (the first
                                             # run also writes the big serverdir, ~1 min)

What is measured and how: bench/devpid_bench/startup_figures.py. Prints each figure
beside its goal; exits 1 if one falls short.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench.goals import run_script
from devpid_bench.startup_figures import figures

if __name__ == "__main__":
    sys.exit(run_script(figures, __doc__))
