"""devpid's own view of request times, from the access lines of its log.

devpid logs each request when it ends, with the time from the moment the request
(line and headers) was parsed to the end of the answer. Against the client's
latency this splits where the time went: inside devpid's handling, or before
devpid read the request at all (the socket waiting for a busy reactor or for a CPU).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs

from devpid_bench.http import percentile

# 2026-12-01T14:18:10+0000 [devpid.http.site.DevpidSite#info] 127.0.0.1 "GET /p" 200 546 5.8ms "-"
# (devpid.http.accesslog writes the line in the site's namespace). Any dotted namespace
# is accepted: the line's shape says it is an access line, not the module that logs it.
_ACCESS = re.compile(r'\[[\w.]+#info\] \S+ "GET (\S+)" (\d{3}) \d+ ([\d.]+)ms')


def classify(path: str, cold_markers: tuple[str, ...]) -> str:
    if any(marker in path for marker in cold_markers):
        return "cold"
    if "/+simple/" in path:
        return "page"
    if "/+f/" in path:
        return "file"
    return "other"


@attrs.define
class LogWindow:
    """The access lines appended to ``path`` between ``open()`` and ``read()``."""

    path: Path
    cold_markers: tuple[str, ...]  # strings in the paths of cold projects and files
    _offset: int = 0

    def open(self) -> LogWindow:
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        return self

    def read(self) -> dict[str, Any]:
        """Per kind (page, file, cold, other): count, non-200 count, p50, p99 and max ms."""
        times: dict[str, list[float]] = {}
        not_ok: dict[str, int] = {}
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            for raw in log:
                match = _ACCESS.search(raw.decode("utf-8", "replace"))
                if match is None:
                    continue
                kind = classify(match.group(1), self.cold_markers)
                times.setdefault(kind, []).append(float(match.group(3)))
                if match.group(2) != "200":
                    not_ok[kind] = not_ok.get(kind, 0) + 1
        out: dict[str, Any] = {}
        for kind, values in times.items():
            values.sort()
            out[kind] = {
                "count": len(values),
                "not_200": not_ok.get(kind, 0),
                "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
                "max_ms": values[-1],
            }
        return out
