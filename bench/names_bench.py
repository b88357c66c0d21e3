"""The upstream's whole project list (issue 17): 700,000 names, served, refreshed, searched.

    python bench/names_bench.py            # 700,000 names, 40 warm GETs of each kind
    python bench/names_bench.py --quick    # 700,000 names, 10 warm GETs (under 40 s)
    python bench/names_bench.py --names 100000

Prints each figure (``devpid_bench.names_figures``); exits 1 if one misses its goal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench import names_figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--names", type=int, default=None, help="another list size (raw figures)")
    parser.add_argument("--raw", action="store_true", help="print the raw measurements too")
    args = parser.parse_args(argv)
    if args.names is not None or args.raw:
        found = names_figures.measure(args.quick, args.names or names_figures.NAMES)
        print(json.dumps(found, indent=1))
        return 0
    figures = names_figures.figures(quick=args.quick)
    for figure in figures:
        print(figure.line())
    return 0 if all(f.met for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
