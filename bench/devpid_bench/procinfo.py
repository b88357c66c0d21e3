"""What /proc says about a process: open files and their limit, RSS and its peak, a sampler."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

MB = 1e6


def status_kib(pid: int, field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` (KiB) of ``pid``, or None when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux: write 5 to clear_refs); True if it worked."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def fd_count(pid: int) -> int | None:
    """How many file descriptors ``pid`` has open (None when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors of ``pid`` by kind: socket, pipe, eventpoll, file, ..."""
    kinds: Counter[str] = Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target.removeprefix("anon_inode:").strip("[]")] += 1
        elif target.startswith("/dev/"):
            kinds["device"] += 1
        else:
            kinds["file"] += 1
    return dict(kinds)


def nofile_limit(pid: int) -> tuple[int, int] | None:
    """(soft, hard) "Max open files" of ``pid`` from /proc/PID/limits."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            unlimited = resource.RLIM_INFINITY
            return (
                unlimited if soft == "unlimited" else int(soft),
                unlimited if hard == "unlimited" else int(hard),
            )
    return None


def raise_own_nofile(wanted: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (capped by the hard limit).

    Children inherit it: wrk and devpid start with the same limit. Returns the new limits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def ensure_nofile(pid: int, wanted: int) -> tuple[int, int] | None:
    """Make sure ``pid`` may open ``wanted`` files (prlimit(2) on it when not); its limits."""
    limits = nofile_limit(pid)
    if limits is not None and limits[0] < wanted:
        hard = limits[1] if limits[1] >= wanted else wanted
        # a failure shows in the limits read again below, which the caller reports
        with contextlib.suppress(OSError, ValueError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (wanted, hard))
        limits = nofile_limit(pid)
    return limits


def uses_epoll(pid: int) -> bool:
    """Whether ``pid`` holds an epoll descriptor (Twisted's epollreactor: no 1024-fd ceiling)."""
    return fd_kinds(pid).get("eventpoll", 0) > 0


@attrs.frozen
class Sample:
    at: float  # seconds since the sampler started
    phase: str
    rss_kib: int | None
    fds: int | None


@attrs.define
class ProcessSampler:
    """Samples VmRSS and the open descriptors of ``pid`` every ``interval`` seconds.

    ``phase`` labels the samples; ``samples_in(phase)`` selects them afterwards.
    """

    pid: int
    interval: float = 2.0
    phase: str = "start"
    samples: list[Sample] = attrs.field(factory=list)
    _started: float = attrs.field(factory=time.monotonic)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ProcessSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self) -> Sample:
        """Take one sample now (also recorded)."""
        taken = Sample(
            at=time.monotonic() - self._started,
            phase=self.phase,
            rss_kib=status_kib(self.pid, "VmRSS"),
            fds=fd_count(self.pid),
        )
        with self._lock:
            self.samples.append(taken)
        return taken

    def samples_in(self, phase: str) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.phase == phase]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def peak_rss_kib(self) -> int:
        with self._lock:
            return max((s.rss_kib for s in self.samples if s.rss_kib is not None), default=0)

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [attrs.asdict(s) for s in self.samples]


def kib_to_mb(kib: int | None) -> float | None:
    return None if kib is None else kib * 1024 / MB


def listen_overflows() -> int | None:
    """The machine's count of connections dropped because a listen queue was full.

    (``TcpExt ListenOverflows`` in /proc/net/netstat: machine-wide, every listener.)
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            value = fields.get("ListenOverflows")
            return int(value) if value is not None else None
    return None


def listen_backlog(port: int) -> int | None:
    """The backlog of the socket listening on ``port`` (``ss``'s Send-Q), if ``ss`` is there."""
    try:
        result = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            return int(fields[2])
    return None
