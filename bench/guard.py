"""The regression guard: every issue-17 figure beside its goal, in under 3 minutes.

    python bench/guard.py                 # all areas, quick mode
    python bench/guard.py --only files    # one area (files, names, hugepage, startup, p99)
    python bench/guard.py --json out.json

Each area's ``figures(quick=True)`` starts what it compares (devpid, a local
upstream, nginx or devpi-server) in the same run and stops it again. The guard
prints each figure beside its goal and exits 1 when any falls short (or could
not be measured), 0 when all are met. Run it on a quiet machine before a
release (docs/performance.md); it is not part of ``.ci/run``: timings on a
shared machine are not tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for devpid_bench

from devpid_bench.goals import Figure

#: area -> the module whose ``figures(quick)`` measures it.
AREAS = {
    "files": "devpid_bench.file_figures",
    "names": "devpid_bench.names_figures",
    "hugepage": "devpid_bench.hugepage_figures",
    "startup": "devpid_bench.startup_figures",
    "p99": "devpid_bench.p99_figures",
}


def measure(area: str, quick: bool) -> list[Figure]:
    """The area's figures; one unmet figure saying why when it could not be measured."""
    try:
        module = importlib.import_module(AREAS[area])
        return list(module.figures(quick=quick))
    except Exception as e:  # a broken bench is a failed guard, never a silent pass
        traceback.print_exc()
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        return [Figure(f"{area}: could not be measured", None, 0.0, True, detail=reason)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=sorted(AREAS), help="an area; repeatable"
    )
    parser.add_argument("--full", action="store_true", help="the areas' full runs, not quick ones")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results: list[tuple[str, Figure]] = []
    for area in args.only or list(AREAS):
        began = time.monotonic()
        figures = measure(area, quick=not args.full)
        print(f"== {area} ({time.monotonic() - began:.0f} s)", flush=True)
        for figure in figures:
            print("  " + figure.line(), flush=True)
            results.append((area, figure))
    unmet = [figure for _, figure in results if not figure.met]
    took = time.monotonic() - started
    print(
        f"\n{len(results) - len(unmet)} of {len(results)} figures meet their goals in {took:.0f} s"
    )
    if args.json:
        rows = [
            {
                "area": area,
                "name": f.name,
                "value": f.value,
                "goal": f.goal,
                "met": f.met,
                "higher_is_better": f.higher_is_better,
                "unit": f.unit,
                "detail": f.detail,
            }
            for area, f in results
        ]
        args.json.write_text(json.dumps({"seconds": took, "figures": rows}, indent=2) + "\n")
    return 1 if unmet else 0


if __name__ == "__main__":
    sys.exit(main())
