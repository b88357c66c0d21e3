"""The garbage collector of a serving process: start-up's objects frozen, pauses timed.

A full (generation 2) collection walks every container object the process
holds. After start-up that is some 80,000 objects (modules, classes, the
routes, the private data), none of which ever becomes garbage, and walking them
held the reactor for 30-90 ms every few seconds under load: every request in
flight waited that long, which at 50 connections was the p99 of cached pages.

``GcTuning`` collects once the reactor runs and then ``gc.freeze()``s what is
left, so later collections walk only what was made since. The thresholds stay
Python's (``THRESHOLDS`` says why). The
``GcPauses`` it keeps (through ``gc.callbacks``) counts collections and their
time by generation, for ``/+metrics``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.logger import Logger

#: gc.set_threshold for a serving process: (youngest, middle, oldest). Python's own:
#: a young collection's pause grows with the threshold (10,000 made each 6-7 ms under
#: load against 0.3 ms), and with start-up frozen the full ones are small anyway.
THRESHOLDS = (700, 10, 10)
GENERATIONS = (0, 1, 2)


@attrs.define(eq=False)
class GcPauses:
    """Collections and the time they held the process, by generation (``gc.callbacks``)."""

    counts: list[int] = attrs.field(factory=lambda: [0, 0, 0])
    seconds: list[float] = attrs.field(factory=lambda: [0.0, 0.0, 0.0])
    longest: list[float] = attrs.field(factory=lambda: [0.0, 0.0, 0.0])
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        took = time.perf_counter() - self._started
        self.counts[generation] += 1
        self.seconds[generation] += took
        if took > self.longest[generation]:
            self.longest[generation] = took

    def attach(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def detach(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def freeze_start_up() -> int:
    """Collect what start-up left as garbage, then move every object left out of the
    collector's sight (``gc.freeze``); how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@attrs.define(slots=False)
class GcTuning(Service):
    """Applies ``THRESHOLDS`` and freezes start-up's objects once the reactor runs."""

    reactor: Any
    pauses: GcPauses = attrs.field(factory=GcPauses)
    thresholds: tuple[int, int, int] = THRESHOLDS
    log = Logger()

    def startService(self) -> None:
        super().startService()
        self.pauses.attach()
        gc.set_threshold(*self.thresholds)
        # Once running, the services have started (the private data loaded, the
        # routes built): what exists then lives as long as the process.
        self.reactor.callWhenRunning(self.freeze)

    def freeze(self) -> None:
        started = time.perf_counter()
        frozen = freeze_start_up()
        self.log.info(
            "gc: {frozen} start-up objects frozen in {ms:.0f} ms, thresholds {thresholds}",
            frozen=frozen,
            ms=(time.perf_counter() - started) * 1000,
            thresholds=self.thresholds,
        )

    def stopService(self) -> None:
        super().stopService()
        self.pauses.detach()
