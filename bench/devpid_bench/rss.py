"""Peak resident memory of a process, from ``/proc/<pid>/status``."""

from __future__ import annotations

import threading
from pathlib import Path

import attrs


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


@attrs.define
class RssSampler:
    """Samples ``VmRSS`` of ``pid`` every ``interval`` seconds in a thread."""

    pid: int
    interval: float = 0.05
    peak_kib: int = 0
    samples: int = 0
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples += 1
            self._stop.wait(self.interval)
