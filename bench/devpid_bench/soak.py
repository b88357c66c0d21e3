"""Clients for the load and soak runs that check what they get, beside wrk's bulk traffic.

``ColdFetcher`` asks for projects no cache has seen, at a steady rate: each fetch
is the project's page and then its one file, both of which devpid must get from
the (slow) upstream; every file's length and sha256 are checked. ``Verifier``
fetches a random cached page and a random cached file every ``interval`` seconds
and checks them (status, length, sha256), so wrk's counts (which see status and
framing only) are backed by content checks all along.
"""

from __future__ import annotations

import queue
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs

from devpid_bench.http import PIP_ACCEPT, fetch, file_urls, http_get, percentile
from devpid_bench.repository import Blob


@attrs.frozen
class ColdResult:
    project: str
    lag: float  # seconds between when the fetch was due and when a worker began it
    page_seconds: float
    file_seconds: float
    error: str | None  # None: page 200, file 200 with the right length and sha256


@attrs.define
class ColdFetcher:
    """Fetches ``blobs`` one after the other at ``rate`` per second from ``server_url``.

    A fetch is due at ``start + i / rate``; ``workers`` threads take them as they
    fall due, so a slow server shows as lag, not as a lower rate until all are busy.
    """

    simple_url: str  # devpid's ".../+simple/"
    blobs: Sequence[Blob]
    rate: float
    workers: int = 32
    timeout: float = 60.0
    results: list[ColdResult] = attrs.field(factory=list)
    ran_out: bool = False
    _queue: queue.Queue[tuple[Blob, float] | None] = attrs.field(factory=queue.Queue)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _threads: list[threading.Thread] = attrs.field(factory=list)

    def start(self) -> ColdFetcher:
        self._threads = [threading.Thread(target=self._schedule, daemon=True, name="cold-sched")]
        self._threads += [
            threading.Thread(target=self._work, daemon=True, name=f"cold-{i}")
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, wait: float) -> int:
        """Schedule no more; wait up to ``wait`` s for the fetches under way; how many remain."""
        self._stop.set()
        for _ in range(self.workers):
            self._queue.put(None)
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for t in self._threads if t.is_alive())

    def _schedule(self) -> None:
        started = time.monotonic()
        for i, blob in enumerate(self.blobs):
            due = started + i / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._queue.put((blob, due))
        self.ran_out = True

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            blob, due = job
            result = self._one(blob, time.monotonic() - due)
            with self._lock:
                self.results.append(result)

    def _one(self, blob: Blob, lag: float) -> ColdResult:
        page_url = f"{self.simple_url}{blob.project}/"
        started = time.monotonic()
        try:
            urls = file_urls(page_url, timeout=self.timeout)
        except Exception as exc:  # any failure is a counted error, never a dead worker
            elapsed = time.monotonic() - started
            return ColdResult(blob.project, lag, elapsed, 0.0, f"page: {exc}"[:300])
        page_seconds = time.monotonic() - started
        if blob.filename not in urls:
            return ColdResult(blob.project, lag, page_seconds, 0.0, "file not on its page")
        got = fetch(urls[blob.filename], timeout=self.timeout, want_hash=True)
        wrong = got.wrong(blob.size, blob.sha256)
        error = None if wrong is None else f"file: {wrong}"
        return ColdResult(blob.project, lag, page_seconds, got.total, error)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            done = list(self.results)
        errors = [r for r in done if r.error]
        totals = sorted(r.page_seconds + r.file_seconds for r in done if not r.error)
        lags = sorted(r.lag for r in done)
        return {
            "fetches": len(done),
            "errors": len(errors),
            "first_errors": [f"{r.project}: {r.error}" for r in errors[:5]],
            "rate_per_s": self.rate,
            "ran_out_of_cold_projects": self.ran_out,
            "page_plus_file_p50_s": statistics.median(totals) if totals else None,
            "page_plus_file_p99_s": percentile(totals, 99) if totals else None,
            "lag_p99_s": percentile(lags, 99) if lags else None,
            "lag_max_s": lags[-1] if lags else None,
        }


@attrs.frozen
class CachedFile:
    url: str
    size: int
    sha256: str

    def check(self, timeout: float) -> str | None:
        """Fetch it whole: what is wrong with what came, or None."""
        return fetch(self.url, timeout=timeout, want_hash=True).wrong(self.size, self.sha256)


@attrs.define
class Verifier:
    """Every ``interval`` s: one random cached page and one random cached file, checked."""

    pages: Sequence[str]  # page URLs
    files: Sequence[CachedFile]
    interval: float = 1.0
    phase: str = "start"
    checks: dict[str, int] = attrs.field(factory=dict)  # phase -> checks made
    failures: dict[str, list[str]] = attrs.field(factory=dict)  # phase -> what was wrong
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def start(self) -> Verifier:
        self._thread = threading.Thread(target=self._run, daemon=True, name="verifier")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(70)

    def _run(self) -> None:
        rng = random.Random(11)
        while not self._stop.wait(self.interval):
            phase = self.phase
            problems = [self._page(rng.choice(self.pages)), self._file(rng.choice(self.files))]
            with self._lock:
                self.checks[phase] = self.checks.get(phase, 0) + 2
                self.failures.setdefault(phase, []).extend(p for p in problems if p)

    @staticmethod
    def _page(url: str) -> str | None:
        try:
            status, _, body = http_get(url, timeout=30, headers={"Accept": PIP_ACCEPT})
        except Exception as exc:  # http.client raises more than OSError
            return f"{url}: {type(exc).__name__}: {exc}"
        if status != 200 or not body:
            return f"{url}: status {status}, {len(body)} bytes"
        return None

    @staticmethod
    def _file(cached: CachedFile) -> str | None:
        wrong = cached.check(timeout=30)
        return None if wrong is None else f"{cached.url}: {wrong}"

    def tally(self, phase: str) -> tuple[int, list[str]]:
        with self._lock:
            return self.checks.get(phase, 0), list(self.failures.get(phase, []))
