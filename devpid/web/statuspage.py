"""``/+status`` for people: the status document, an hour of charts, the search index.

The figures are ``StatusReport.report()``'s (the JSON monitors read); the charts
are drawn on the server from ``StatusHistory`` (``devpid.ops.history``), one
sample every 30 seconds, so the page needs no script to show them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from markupsafe import Markup
from twisted.internet.interfaces import IReactorTime

from devpid.ops.history import SAMPLE_INTERVAL, StatusHistory
from devpid.ops.status import StatusReport
from devpid.web.charts import line_chart

#: (field of a sample, title, unit) of each chart, in the page's order.
CHARTS = (
    ("requests_per_second", "Requests", "/s"),
    ("hit_rate", "Cache hit rate", "%"),
    ("upstream_latency_ms", "Upstream latency", "ms"),
    ("cache_bytes", "Cache size", "B"),
    ("errors_per_second", "5xx answers", "/s"),
    ("bytes_served_per_second", "Bytes served", "B/s"),
)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


@attrs.define
class StatusPageData:
    status: StatusReport
    history: StatusHistory
    clock: IReactorTime
    #: The search catalog's state per index, when search runs.
    search_status: Callable[[], dict[str, Any]] | None = None

    def context(self) -> dict[str, Any]:
        report = self.status.report()
        now = self.clock.seconds()
        charts: list[Markup] = [
            line_chart(
                self.history.points(field),
                title=title,
                unit=unit,
                now=now,
                gap=3 * SAMPLE_INTERVAL,
            )
            for field, title, unit in CHARTS
        ]
        hits, misses = int(report.get("hits", 0)), int(report.get("misses", 0))
        hit_rate = (
            f"{100 * hits / (hits + misses):.1f}% of {hits + misses}" if hits + misses else "-"
        )
        return {
            "report": report,
            "charts": charts,
            "uptime": _duration(float(report.get("uptime", 0))),
            "hit_rate": hit_rate,
            "search": self.search_status() if self.search_status is not None else {},
        }
