"""Request rate and latency percentiles over the last minute, in bounded memory.

Each second of the window is one bucket; a bucket counts durations in
logarithmic bins (eight per doubling), so memory does not grow with the
request rate and a percentile is exact to within about 4.5 %.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

#: Bins per doubling of the duration: the reported value is at most 2**(1/16) off.
BINS_PER_DOUBLING = 8
#: Durations shorter than this (1 microsecond) count as this.
SHORTEST = 1e-6
PERCENTILES = (50, 90, 99)


def _bin(seconds: float) -> int:
    return math.floor(math.log2(max(seconds, SHORTEST)) * BINS_PER_DOUBLING)


def _bin_value(index: int) -> float:
    """The geometric middle of a bin, in seconds."""
    return float(2 ** ((index + 0.5) / BINS_PER_DOUBLING))


@attrs.define
class _Second:
    count: int = 0
    bins: Counter[int] = attrs.field(factory=Counter)


@attrs.define
class SlidingWindow:
    """Durations of the requests of the last ``seconds`` seconds, by the injected clock."""

    clock: IReactorTime
    seconds: int = 60
    #: When it was first used: the window covers nothing before.
    started: float | None = attrs.field(init=False, default=None)
    _buckets: dict[int, _Second] = attrs.field(init=False, factory=dict)

    def _now(self) -> float:
        now = self.clock.seconds()
        if self.started is None:
            self.started = now
        return now

    def record(self, duration: float) -> None:
        second = math.floor(self._now())
        bucket = self._buckets.get(second)
        if bucket is None:
            # Once per second at most: drop what has left the window.
            self._forget_before(second)
            bucket = self._buckets[second] = _Second()
        bucket.count += 1
        bucket.bins[_bin(duration)] += 1

    def _forget_before(self, second: int) -> None:
        # Keys after ``second`` only exist if the clock went back; they go too,
        # so there are never more than ``seconds`` buckets.
        oldest = second - self.seconds + 1
        for key in [k for k in self._buckets if not oldest <= k <= second]:
            del self._buckets[key]

    def summary(self) -> dict[str, Any]:
        """``requests`` and ``per_second`` in the window, and ``p50_ms``, ``p90_ms``,
        ``p99_ms`` (``None`` without requests)."""
        now = self._now()
        second = math.floor(now)
        self._forget_before(second)
        count = 0
        merged: Counter[int] = Counter()
        for bucket in self._buckets.values():
            count += bucket.count
            merged.update(bucket.bins)
        # The window covers whole seconds back from the current one, and nothing
        # before first use; under a second it would turn one request into a burst.
        started = now if self.started is None else self.started
        span = max(1.0, now - max(started, second - self.seconds + 1))
        summary: dict[str, Any] = {
            "window_seconds": self.seconds,
            "requests": count,
            "per_second": round(count / span, 3),
        }
        ranks = {p: max(1, math.ceil(count * p / 100)) for p in PERCENTILES}
        values: dict[int, float | None] = dict.fromkeys(PERCENTILES)
        seen = 0
        for index in sorted(merged):
            seen += merged[index]
            for p, rank in ranks.items():
                if values[p] is None and seen >= rank:
                    values[p] = round(_bin_value(index) * 1000, 3)
        for p in PERCENTILES:
            summary[f"p{p}_ms"] = values[p] if count else None
        return summary
