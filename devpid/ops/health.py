"""The health verdict: whether this process can serve, and what degrades it.

``/+status`` shows it (and answers 503 to ``?check=1`` when unhealthy) and
``/+metrics`` exports it; the rules are documented in docs/api.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from devpid.common.clock import iso_time
from devpid.mirror.upstream import UpstreamHealth

GIB = 1024**3
#: Unhealthy when the serverdir's file system has less than both free: it can
#: no longer cache what clients ask for (5 % of a large disk is still plenty).
MIN_FREE_BYTES = 1 * GIB
MIN_FREE_PERCENT = 5.0
#: A warning when it has less than both free.
LOW_FREE_BYTES = 5 * GIB
LOW_FREE_PERCENT = 10.0
#: A warning when the last changelog poll is older than this many intervals.
POLLER_LAG_INTERVALS = 3


@attrs.frozen
class DiskUsage:
    free: int
    total: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


def statvfs_usage(path: Path) -> DiskUsage:
    """Bytes free (for an unprivileged user) and in all on the file system of ``path``."""
    st = os.statvfs(path)
    return DiskUsage(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


@attrs.frozen
class Health:
    """``healthy``: this process can serve (``reasons`` says why not); ``warnings``:
    it serves, degraded or soon in trouble."""

    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.reasons


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def judge(
    *,
    roots: Iterable[Path],
    serverdir: Path,
    disk: DiskUsage | str,
    draining: bool,
    store: Mapping[str, Any],
    upstream: UpstreamHealth,
    offline: bool,
    poller: Mapping[str, Any] | None,
) -> Health:
    """The verdict on what was gathered: ``roots`` are the cache's trees (checked for
    writing now), ``store`` the state store's health, ``poller`` its status if one runs."""
    reasons: list[str] = []
    warnings: list[str] = []
    for root in roots:
        if not os.access(root, os.W_OK | os.X_OK):
            reasons.append(f"cannot write to {root}: it is missing or not writable")
    if isinstance(disk, str):
        reasons.append(f"cannot tell the free space of {serverdir}: {disk}")
    elif disk.free < MIN_FREE_BYTES and disk.free_percent < MIN_FREE_PERCENT:
        reasons.append(
            f"disk nearly full: {_size(disk.free)} ({disk.free_percent:.1f}%) free for {serverdir}"
        )
    elif disk.free < LOW_FREE_BYTES and disk.free_percent < LOW_FREE_PERCENT:
        warnings.append(
            f"disk filling up: {_size(disk.free)} ({disk.free_percent:.1f}%) free for {serverdir}"
        )
    if draining:
        reasons.append("shutting down: finishing the running downloads, taking no new work")
    if store["state"] == "closed":
        reasons.append("the state store is closed (shutting down)")
    elif store["state"] == "down":
        warnings.append(
            f"redis is down since {iso_time(store.get('last_error_at'))} "
            f"({store.get('last_error')}): serving without coordination between processes"
        )
    elif store["state"] == "connecting":
        warnings.append("redis has not answered yet since start-up")
    if (
        not offline
        and upstream.last_error_at is not None
        and (upstream.last_success is None or upstream.last_error_at > upstream.last_success)
    ):
        warnings.append(
            f"upstream failing: the last request failed at {iso_time(upstream.last_error_at)} "
            f"({upstream.last_error}) and none succeeded since; cached pages are served stale"
        )
    if poller is not None:
        lag = poller["lag_seconds"]
        if poller["paused"] is not None:
            warnings.append(f"changelog poller paused: {poller['paused']}")
        elif poller["last_error"] is not None:
            warnings.append(f"changelog poller failing: {poller['last_error']}")
        elif (
            poller["supported"]
            and lag is not None
            and lag > POLLER_LAG_INTERVALS * poller["interval"]
        ):
            warnings.append(
                f"changelog poller behind: last poll {lag:.0f}s ago (every {poller['interval']:g}s)"
            )
    return Health(tuple(reasons), tuple(warnings))
