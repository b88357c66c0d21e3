"""The results: one row per measured quantity, printed as a table and saved as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

COLUMNS = ("devpid", "devpi", "upstream")


@attrs.define
class Row:
    """One measured quantity for each server (None where not measured)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, float | None] = attrs.field(factory=dict)
    errors: dict[str, str] = attrs.field(factory=dict)
    note: str = ""

    def ratio(self, a: str, b: str) -> float | None:
        x, y = self.values.get(a), self.values.get(b)
        if x is None or y is None or y == 0:
            return None
        return x / y


@attrs.define
class Results:
    rows: list[Row] = attrs.field(factory=list)
    details: dict[str, Any] = attrs.field(factory=dict)
    meta: dict[str, Any] = attrs.field(factory=dict)
    problems: list[str] = attrs.field(factory=list)

    def row(self, key: str, label: str, unit: str, higher_is_better: bool) -> Row:
        new = Row(key=key, label=label, unit=unit, higher_is_better=higher_is_better)
        self.rows.append(new)
        return new

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "rows": [
                {
                    "key": r.key,
                    "label": r.label,
                    "unit": r.unit,
                    "higher_is_better": r.higher_is_better,
                    "values": r.values,
                    "devpid/devpi": r.ratio("devpid", "devpi"),
                    "devpid/upstream": r.ratio("devpid", "upstream"),
                    "errors": r.errors,
                    "note": r.note,
                }
                for r in self.rows
            ],
            "details": self.details,
            "problems": self.problems,
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")


def _number(value: float | None, error: str | None) -> str:
    if value is None:
        return "ERR" if error else "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(results: Results) -> str:
    header = [
        "measurement",
        "unit",
        "devpid",
        "devpi",
        "devpid/devpi",
        "upstream",
        "devpid/upstream",
        "note",
    ]
    lines = [header]
    for r in results.rows:
        lines.append(
            [
                r.label,
                r.unit + (" ^" if r.higher_is_better else " v"),
                _number(r.values.get("devpid"), r.errors.get("devpid")),
                _number(r.values.get("devpi"), r.errors.get("devpi")),
                _ratio(r.ratio("devpid", "devpi")),
                _number(r.values.get("upstream"), r.errors.get("upstream")),
                _ratio(r.ratio("devpid", "upstream")),
                r.note,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 6}
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("(^ higher is better, v lower is better; ERR: see the errors below)")
    errors = [f"  {r.label} [{who}]: {msg}" for r in results.rows for who, msg in r.errors.items()]
    if errors:
        out.append("errors:")
        out.extend(errors)
    if results.problems:
        out.append("problems seen:")
        out.extend(f"  - {p}" for p in results.problems)
    return "\n".join(out)
