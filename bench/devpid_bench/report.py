"""The results: one row per measured quantity, printed as a table and saved as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Column:
    """A column of a table: the value of ``value``, or the ratio ``value / over``."""

    header: str
    value: str
    over: str | None = None


#: The columns of each table, by the ``table`` of its rows.
TABLES: dict[str, tuple[Column, ...]] = {
    "main": (
        Column("devpid", "devpid"),
        Column("devpi", "devpi"),
        Column("devpid/devpi", "devpid", "devpi"),
        Column("upstream", "upstream"),
        Column("devpid/upstream", "devpid", "upstream"),
    ),
    # issue 3: devpid processes sharing a serverdir and a Redis, behind nginx, and two
    # more sharing one port (reuseport:) with no balancer but the kernel
    "cluster": (
        Column("direct", "direct"),
        Column("1 proc", "1 proc"),
        Column("2 procs", "2 procs"),
        Column("2/1", "2 procs", "1 proc"),
        Column("2 port", "2 port"),
        Column("2 port/direct", "2 port", "direct"),
    ),
    # issue 12: the private side (login, authenticated reads, index changes, start-up);
    # devpi/devpid > 1 on a "v" (lower is better) row means devpid is faster
    "private": (
        Column("devpid", "devpid"),
        Column("devpi", "devpi"),
        Column("devpi/devpid", "devpi", "devpid"),
    ),
    # issue 13: uploads, merged pages of stage indexes, project JSON, private installs;
    # "baseline" is cp of the same file (MB/s) or nginx serving the same files (pip)
    "uploads": (
        Column("devpid", "devpid"),
        Column("devpi", "devpi"),
        Column("devpid/devpi", "devpid", "devpi"),
        Column("baseline", "baseline"),
        Column("devpid/baseline", "devpid", "baseline"),
    ),
    # issue 4: devpid behind the nginx file devpid gen-config writes, against nginx
    # serving the same file from the same directory with nothing else in its way
    "front": (
        Column("devpid", "devpid"),
        Column("via nginx", "via nginx"),
        Column("nginx static", "nginx static"),
        Column("via nginx/static", "via nginx", "nginx static"),
    ),
    # load.py: many keep-alive connections, paced and not, with and without slowloris
    "load": (
        Column("paced", "paced"),
        Column("paced+slowloris", "paced+slowloris"),
        Column("slowloris/none", "paced+slowloris", "paced"),
        Column("unpaced", "unpaced"),
        Column("unpaced+slowloris", "unpaced+slowloris"),
    ),
    # load.py: the soak, a long mixed run; "run" holds totals and figures over the run
    "soak": (
        Column("start", "start"),
        Column("peak", "peak"),
        Column("end", "end"),
        Column("run", "run"),
    ),
}


@attrs.define
class Row:
    """One measured quantity for each server (None where not measured)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool | None  # None: context, neither
    values: dict[str, float | None] = attrs.field(factory=dict)
    errors: dict[str, str] = attrs.field(factory=dict)
    note: str = ""
    table: str = "main"

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

    def row(
        self,
        key: str,
        label: str,
        unit: str,
        higher_is_better: bool | None,
        table: str = "main",
    ) -> Row:
        new = Row(key=key, label=label, unit=unit, higher_is_better=higher_is_better, table=table)
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
                    "table": r.table,
                    "values": r.values,
                    **{c.header: r.ratio(c.value, c.over) for c in TABLES[r.table] if c.over},
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
    out: list[str] = []
    for name, columns in TABLES.items():
        rows = [r for r in results.rows if r.table == name]
        if rows:
            if out:
                out.extend(["", f"{name}:"])
            out.extend(_table(rows, columns))
    out.append("(^ higher is better, v lower is better; ERR: see the errors below)")
    errors = [f"  {r.label} [{who}]: {msg}" for r in results.rows for who, msg in r.errors.items()]
    if errors:
        out.append("errors:")
        out.extend(errors)
    if results.problems:
        out.append("problems seen:")
        out.extend(f"  - {p}" for p in results.problems)
    return "\n".join(out)


def _table(rows: list[Row], columns: tuple[Column, ...]) -> list[str]:
    header = ["measurement", "unit", *(c.header for c in columns), "note"]
    lines = [header]
    for r in rows:
        cells = [
            _ratio(r.ratio(c.value, c.over))
            if c.over
            else _number(r.values.get(c.value), r.errors.get(c.value))
            for c in columns
        ]
        arrow = {True: " ^", False: " v", None: ""}[r.higher_is_better]
        lines.append([r.label, r.unit + arrow, *cells, r.note])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = range(2, 2 + len(columns))
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
