"""Figures with goals: what ``bench/guard.py`` prints and judges.

Each bench that the guard runs offers ``figures(quick=True) -> list[Figure]``:
a measured value (most are ratios against nginx or devpi measured in the same
run), the goal it must meet and which way is better. The guard prints them
side by side and exits non-zero when one falls short.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import attrs


@attrs.frozen
class Figure:
    """One measured figure beside its goal."""

    #: What was measured, e.g. "cached 16.9 MB wheel, 1 connection, devpid / nginx".
    name: str
    #: The measured value (a ratio, ms or MB), None when it could not be measured.
    value: float | None
    goal: float
    #: True when the value must be at least the goal, False when at most.
    higher_is_better: bool
    #: "x" for a ratio, or the unit of the value ("ms", "MB", "s").
    unit: str = "x"
    #: The raw figures behind a ratio, or why the value is missing.
    detail: str = ""

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        if self.higher_is_better:
            return self.value >= self.goal
        return self.value <= self.goal

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:,.2f}{self.unit}"
        sign = ">=" if self.higher_is_better else "<="
        verdict = "ok" if self.met else "BELOW GOAL"
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{self.name}: {shown} (goal {sign} {self.goal:g}{self.unit}) {verdict}{detail}"


def run_script(figures: Callable[[bool], list[Figure]], doc: str | None) -> int:
    """A bench script's ``main``: ``--quick`` or not, each figure printed, 1 if one falls short."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    options = parser.parse_args()
    found = figures(options.quick)
    for figure in found:
        print(figure.line())
    return 0 if all(figure.met for figure in found) else 1
