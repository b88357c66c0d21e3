"""What the site records of each request: counts by route and status, bytes, latency.

``RequestMetrics.observe`` runs once per request (a few dict updates, no
locks); ``/+metrics`` renders these counters and ``/+status`` the sliding
window's last minute.
"""

from __future__ import annotations

import bisect
from collections import Counter

import attrs
from twisted.internet.interfaces import IReactorTime

from devpid.ops.window import SlidingWindow

#: The ``route`` label: a fixed set, never the path itself (unbounded cardinality).
ROUTES = (
    "project_list",
    "project_page",
    "refresh",
    "file",
    "index",
    "api",
    "login",
    "upload",
    "docs",
    "status",
    "metrics",
    "web",
    "replica",
    "other",
)
#: The request attribute a route sets to its label as Klein dispatches to it
#: (``devpid.routes.labelled``): the router's decision, whatever the path's spelling.
#: Requests that reach no route (refusals, the router's 404s) count as "other".
ROUTE_ATTRIBUTE = "devpid_route"
#: Requests of monitors, left out of ``/+status``'s ``last_minute`` so that
#: health checks (and replicas' long polls) do not water down the latency of real traffic.
MONITORING_ROUTES = frozenset({"status", "metrics", "replica"})
#: Upper bounds (seconds) of the latency histogram buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@attrs.define
class _Latency:
    """One route's latency histogram: a count per bucket (not cumulative) and the sum."""

    counts: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        # A bucket counts durations <= its bound (Prometheus's "le").
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return buckets


@attrs.define
class RequestMetrics:
    """Requests as the site's access log sees them: by route and status, with latency."""

    window: SlidingWindow
    requests: Counter[tuple[str, int]] = attrs.field(factory=Counter)
    sent: Counter[str] = attrs.field(factory=Counter)
    latency: dict[str, _Latency] = attrs.field(factory=dict)

    @classmethod
    def with_clock(cls, clock: IReactorTime) -> RequestMetrics:
        return cls(SlidingWindow(clock))

    def observe(self, route: str, code: int, seconds: float, sent: int) -> None:
        self.requests[route, code] += 1
        self.sent[route] += sent
        latency = self.latency.get(route)
        if latency is None:
            latency = self.latency[route] = _Latency()
        latency.observe(seconds)
        if route not in MONITORING_ROUTES:
            self.window.record(seconds)
