"""Numbers and times as the pages show them."""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence

_UNITS = ("B", "KB", "MB", "GB", "TB")


def human_bytes(size: int | float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover (the loop returns)


def human_time(when: float | Sequence[int] | None) -> str:
    """A UNIX time, or devpi's six UTC integers of a log entry, as UTC text."""
    if when is None:
        return "-"
    if isinstance(when, int | float):
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    parts = list(when)[:6]
    if len(parts) < 5 or not all(isinstance(p, int) for p in parts):
        return "-"
    return "{:04d}-{:02d}-{:02d} {:02d}:{:02d} UTC".format(*parts[:5])


def log_seconds(when: Sequence[int] | None) -> float:
    """devpi's six UTC integers as a UNIX time (0 for anything else)."""
    if not when or len(when) < 6 or not all(isinstance(p, int) for p in when):
        return 0.0
    try:
        return float(calendar.timegm((*when[:6], 0, 0, 0)))
    except (OverflowError, ValueError):
        return 0.0
