"""Small blocking HTTP helpers on ``http.client`` (no proxies, loopback only).

Also the pure-Python load generator used when ``wrk`` is not available.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import attrs

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
READ_SIZE = 1 << 20
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"the benchmark only talks to loopback http URLs, not {url}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), path


def http_get(
    url: str, timeout: float, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn, path = _connect(url, timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


_HREF = re.compile(r"""<a\s[^>]*href=["']([^"']+)["']""", re.IGNORECASE)


def file_urls(page_url: str, timeout: float = 60.0) -> dict[str, str]:
    """Fetch a simple page and map each file's name to its absolute URL (no fragment).

    Asks for PEP 691 JSON and falls back to the anchors of an HTML page.
    """
    status, headers, body = http_get(page_url, timeout, {"Accept": PIP_ACCEPT})
    if status != 200:
        raise OSError(f"GET {page_url} answered {status}: {body[:300]!r}")
    hrefs: list[str]
    if "json" in headers.get("content-type", ""):
        hrefs = [entry["url"] for entry in json.loads(body)["files"]]
    else:
        hrefs = _HREF.findall(body.decode("utf-8", "replace"))
    urls = {}
    for href in hrefs:
        absolute = urljoin(page_url, href).split("#")[0]
        urls[absolute.rsplit("/", 1)[-1]] = absolute
    return urls


@attrs.frozen
class Fetch:
    """What one full GET of a (large) file saw."""

    status: int
    size: int
    ttfb_headers: float  # seconds until the status line and headers
    ttfb: float  # seconds until the first body bytes
    total: float  # seconds until the last body byte
    sha256: str | None
    error: str | None = None

    def wrong(self, size: int, sha256: str) -> str | None:
        """What makes this not a good fetch of a file of ``size`` bytes and ``sha256``."""
        if self.error or self.status != 200:
            return f"status {self.status}, {self.error or 'no error text'}"
        if self.size != size:
            return f"{self.size} bytes, expected {size}"
        if self.sha256 != sha256:
            return "sha256 differs from the upstream's"
        return None


def fetch(url: str, timeout: float = 60.0, want_hash: bool = False) -> Fetch:
    """GET ``url`` to the end, timing the first header and body bytes; never raises."""
    digest = hashlib.sha256() if want_hash else None
    start = time.perf_counter()
    ttfb_headers = ttfb = 0.0
    size = 0
    status = 0
    error = None
    conn, path = _connect(url, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        status = response.status
        ttfb_headers = time.perf_counter() - start
        first_chunk = response.read1(READ_SIZE)
        ttfb = time.perf_counter() - start
        size = len(first_chunk)
        if digest is not None:
            digest.update(first_chunk)
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        while n := response.readinto(buffer):
            size += n
            if digest is not None:
                digest.update(view[:n])
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        total = time.perf_counter() - start
        conn.close()
    return Fetch(
        status=status,
        size=size,
        ttfb_headers=ttfb_headers,
        ttfb=ttfb,
        total=total,
        sha256=digest.hexdigest() if digest is not None and error is None else None,
        error=error,
    )


def fetch_all(urls: Sequence[str], timeout: float) -> list[Fetch]:
    """A thread per URL; all GET at the same moment (a barrier) and read to the end."""
    clients = len(urls)
    results: list[Fetch | None] = [None] * clients
    barrier = threading.Barrier(clients)

    def one(i: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=30)
        results[i] = fetch(urls[i], timeout=timeout)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        r if r is not None else Fetch(0, 0, 0.0, 0.0, 0.0, None, "did not finish in time")
        for r in results
    ]


@attrs.frozen
class LoadResult:
    """Totals of a fixed-duration load run (from wrk or the Python fallback)."""

    tool: str
    connections: int
    duration: float
    requests: int
    bytes: int
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.duration / 1e6 if self.duration else 0.0


def python_load(
    url: str, connections: int, duration: float, headers: Mapping[str, str]
) -> LoadResult:
    """A thread per connection, each sending GETs back to back on a keep-alive connection.

    Much weaker than wrk (the GIL), so its req/s are a floor; used only without wrk.
    """
    deadline = time.monotonic() + duration
    lock = threading.Lock()
    latencies: list[float] = []
    totals = {"bytes": 0, "errors": 0}

    def worker() -> None:
        conn, path = _connect(url, timeout=30.0)
        mine: list[float] = []
        received = errors = 0
        buffer = bytearray(READ_SIZE)
        try:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    conn.request("GET", path, headers=dict(headers))
                    response = conn.getresponse()
                    while n := response.readinto(buffer):
                        received += n
                except (OSError, http.client.HTTPException):
                    errors += 1
                    conn.close()
                    time.sleep(0.01)
                    continue
                mine.append(time.perf_counter() - start)
                if response.status != 200:
                    errors += 1
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                totals["bytes"] += received
                totals["errors"] += errors

    elapsed = run_threads(worker, connections, duration + 60)
    return threads_result(connections, elapsed, latencies, totals)


def run_threads(worker: Callable[[], None], connections: int, join_timeout: float) -> float:
    """``worker`` in a thread per connection; the seconds until the last one ended."""
    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join_timeout)
    return time.monotonic() - started


def threads_result(
    connections: int, elapsed: float, latencies: list[float], totals: dict[str, int]
) -> LoadResult:
    """What the threads of a pure-Python load measured (``bytes`` and ``errors`` totals)."""
    latencies.sort()
    return LoadResult(
        tool="python",
        connections=connections,
        duration=elapsed,
        requests=len(latencies),
        bytes=totals["bytes"],
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=totals["errors"],
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]
