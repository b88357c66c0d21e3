"""Small line charts drawn on the server as inline SVG, for ``/+status``.

No JavaScript, no external references and no ``style`` attributes (the pages'
Content-Security-Policy forbids inline styles): the page's stylesheet colours
the parts by class (``chart``, ``chart-title``, ``chart-label``, ``chart-latest``,
``chart-empty``, ``chart-grid``, ``chart-axis``, ``chart-line``, ``chart-dot``);
the presentation attributes here are only the defaults of a page without it.
Every text (the title and unit may come from anywhere) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

_BINARY_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
_SUFFIXES = ("", "k", "M", "G", "T")
#: Room for the title row above the plot, and for the time labels below it.
_TOP = 18.0
_BOTTOM = 14.0
#: Room for the value labels left of the plot.
_LEFT = 46.0
_RIGHT = 6.0


def _three_digits(value: float) -> str:
    """``value`` with three significant digits, never in exponent notation above 1."""
    return f"{value:.3g}" if abs(value) < 999.5 else f"{value:.0f}"


def compact_number(value: float) -> str:
    """``1234.5`` as ``1.23k``: three significant digits and a metric suffix."""
    if not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) < 0.01:
        return f"{value:.1g}"
    for suffix in _SUFFIXES[:-1]:
        if abs(value) < 999.5:
            return f"{value:.3g}{suffix}"
        value /= 1000
    return f"{_three_digits(value)}{_SUFFIXES[-1]}"


def _binary_prefix(value: float) -> int:
    """The index in ``_BINARY_UNITS`` of the unit that shows ``value`` bytes best."""
    index = 0
    while abs(value) >= 1024 and index < len(_BINARY_UNITS) - 1:
        value /= 1024
        index += 1
    return index


def format_bytes(value: float) -> str:
    """A size as ``3.4 MB`` (powers of 1024, like the other pages' sizes)."""
    if not math.isfinite(value):
        return "-"
    index = _binary_prefix(value)
    scaled = value / 1024**index
    if index == 0:
        return f"{scaled:.0f} B"
    return f"{_three_digits(scaled)} {_BINARY_UNITS[index]}"


def format_value(value: float, unit: str) -> str:
    """``value`` with its unit: bytes (``B``, ``B/s``) in binary units, others compact."""
    if unit == "B":
        return format_bytes(value)
    if unit == "B/s":
        return f"{format_bytes(value)}/s"
    text = compact_number(value)
    if not unit:
        return text
    return f"{text}{unit}" if unit[0] in "%/" else f"{text} {unit}"


def format_span(seconds: float) -> str:
    """A duration as the time axis names it: ``1 h``, ``30 min``, ``45 s``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def nice_ceiling(value: float, unit: str = "") -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``
    (in the unit it is shown in, for bytes), so the scale's top is a round number."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    divisor = 1024.0 ** _binary_prefix(value) if unit in ("B", "B/s") else 1.0
    scaled = value / divisor
    power = 10.0 ** math.floor(math.log10(scaled))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if scaled <= step * power * (1 + 1e-9):
            return step * power * divisor
    return 10 * power * divisor  # pragma: no cover (10 always fits)


def _visible(
    points: Sequence[tuple[float, float | None]], start: float, now: float
) -> list[tuple[float, float | None]]:
    """The points within [start, now], by time; values that are not finite become gaps."""
    kept: list[tuple[float, float | None]] = []
    for at, value in points:
        if not math.isfinite(at) or not start <= at <= now:
            continue
        finite = value is not None and math.isfinite(value)
        kept.append((at, float(value) if finite and value is not None else None))
    kept.sort(key=lambda point: point[0])
    return kept


def _runs(
    points: list[tuple[float, float | None]], gap: float | None
) -> list[list[tuple[float, float]]]:
    """Stretches of values without a gap: a None, or more than ``gap`` seconds apart."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for at, value in points:
        if value is None or (gap is not None and current and at - current[-1][0] > gap):
            if current:
                runs.append(current)
            current = []
        if value is not None:
            current.append((at, value))
    if current:
        runs.append(current)
    return runs


def _text(x: float, y: float, text: str, classes: str, anchor: str = "start") -> str:
    return (
        f'<text class="{classes}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"'
        f' font-size="9" fill="currentColor">{escape(text)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, classes: str, opacity: str) -> str:
    return (
        f'<line class="{classes}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}"'
        f' stroke="currentColor" stroke-opacity="{opacity}" stroke-width="1"/>'
    )


def line_chart(
    points: Sequence[tuple[float, float | None]],
    *,
    title: str,
    unit: str,
    now: float,
    span: float = 3600,
    width: int = 320,
    height: int = 100,
    gap: float | None = None,
) -> Markup:
    """An inline ``<svg class="chart">`` of ``points`` (time, value) over the ``span``
    seconds up to ``now``: a line broken where a value is None (or not finite, or
    more than ``gap`` seconds from the previous point), a scale from 0 to a round
    number, the scale's top and the latest value labelled in ``unit``."""
    start = now - span
    visible = _visible(points, start, now)
    values = [value for _, value in visible if value is not None]
    left, right = _LEFT, width - _RIGHT
    top, bottom = _TOP, height - _BOTTOM
    plot_width, plot_height = max(right - left, 1.0), max(bottom - top, 1.0)
    middle = (top + bottom) / 2
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
    ]
    latest = visible[-1][1] if visible else None
    latest_label = "-" if latest is None else format_value(latest, unit)
    scale = nice_ceiling(max(values, default=0.0), unit)
    if values:
        description = (
            f"latest {latest_label}, highest {format_value(max(values), unit)}"
            f" in the last {format_span(span)}"
        )
    else:
        description = "no data yet"
    parts.append(f"<desc>{escape(description)}</desc>")
    parts.append(_text(4, 11, title, "chart-label chart-title"))
    parts.append(_line(left, top, right, top, "chart-grid", "0.2"))
    parts.append(_line(left, middle, right, middle, "chart-grid", "0.2"))
    parts.append(_line(left, bottom, right, bottom, "chart-axis", "0.6"))
    parts.append(_line(left, top, left, bottom, "chart-axis", "0.6"))
    parts.append(_text(left, height - 3, f"{format_span(span)} ago", "chart-label"))
    parts.append(_text(right, height - 3, "now", "chart-label", "end"))
    if not values:
        parts.append(
            _text(
                (left + right) / 2, middle + 3, "no data yet", "chart-label chart-empty", "middle"
            )
        )
        parts.append("</svg>")
        return Markup("".join(parts))
    parts.append(_text(width - 4, 11, latest_label, "chart-label chart-latest", "end"))
    parts.append(
        _text(left - 4, top + 3, format_value(scale, unit), "chart-label chart-max", "end")
    )
    parts.append(_text(left - 4, bottom, format_value(0, unit), "chart-label chart-zero", "end"))

    def x_of(at: float) -> float:
        return left + (at - start) / span * plot_width if span > 0 else right

    def y_of(value: float) -> float:
        return bottom - min(max(value, 0.0), scale) / scale * plot_height

    path: list[str] = []
    for run in _runs(visible, gap):
        if len(run) == 1:
            at, value = run[0]
            parts.append(
                f'<circle class="chart-dot" cx="{x_of(at):.1f}" cy="{y_of(value):.1f}"'
                ' r="1.5" fill="currentColor"/>'
            )
            continue
        moves = " L".join(f"{x_of(at):.1f} {y_of(value):.1f}" for at, value in run)
        path.append(f"M{moves}")
    if path:
        parts.append(
            f'<path class="chart-line" d="{" ".join(path)}" fill="none"'
            ' stroke="currentColor" stroke-width="1.5" stroke-linejoin="round"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
