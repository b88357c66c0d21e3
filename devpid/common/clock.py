"""Wall-clock times as the JSON documents show them (``/+status``, the poller's status)."""

from __future__ import annotations

import time


def iso_time(timestamp: float | None) -> str | None:
    """A Unix timestamp as ISO 8601 UTC, for JSON status documents."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
