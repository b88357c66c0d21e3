"""CPU time from /proc: what processes and the machine used while a load ran.

The shares are in % of one core. "others" is the busy CPU that none of the
processes counted accounts for: another program running, or the kernel's work
for loopback traffic, which no process is charged with. A run during which
others used more than ``OTHERS_LIMIT`` says as much about the machine as about
devpid, and the scripts flag it.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import attrs

#: % of a core used by other processes during a load run beyond which the run is flagged.
OTHERS_LIMIT = 15.0


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs, from the first line of /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _all_ticks() -> dict[int, int]:
    """utime + stime of every process, by pid."""
    return {
        int(p.name): _cpu_ticks(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()
    }


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "?"
    return f"{pid} {argv.decode(errors='replace').strip()[:70]}"


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (an nginx master's workers)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@attrs.define
class CpuMeter:
    """CPU used between ``__enter__`` and ``__exit__``, in % of one core.

    ``percent`` gets an entry for each name of ``pids`` (sum over its processes),
    "bench" (this script and the children it waited for: wrk), "machine" (busy
    share of all CPUs, in % of all of them) and "others": the machine's busy
    CPU that none of those account for, i.e. something else running; ``busiest``
    names the other processes that used the most.
    """

    pids: dict[str, list[int]]  # name -> the processes counted under it (disjoint)
    percent: dict[str, float] = attrs.field(factory=dict)
    busiest: list[tuple[str, float]] = attrs.field(factory=list)
    _start: dict[str, float] = attrs.field(factory=dict)
    _everyone: dict[int, int] = attrs.field(factory=dict)
    _machine: tuple[int, int] = (0, 0)
    _started: float = 0.0

    def _seconds(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        own = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        seconds = {name: sum(map(_cpu_ticks, pids)) / tick for name, pids in self.pids.items()}
        seconds["bench"] = sum(u.ru_utime + u.ru_stime for u in own)
        return seconds

    def __enter__(self) -> CpuMeter:
        self._start = self._seconds()
        self._everyone = _all_ticks()
        self._machine = _machine_ticks()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._started
        for name, seconds in self._seconds().items():
            self.percent[name] = 100 * (seconds - self._start[name]) / elapsed
        busy, total = _machine_ticks()
        machine = 100 * (busy - self._machine[0]) / max(1, total - self._machine[1])
        accounted = sum(self.percent.values())
        self.percent["machine"] = machine
        self.percent["others"] = max(0.0, machine * (os.cpu_count() or 1) - accounted)
        ours = {os.getpid(), *(pid for pids in self.pids.values() for pid in pids)}
        tick = os.sysconf("SC_CLK_TCK")
        used = {
            pid: 100 * (ticks - self._everyone.get(pid, 0)) / tick / elapsed
            for pid, ticks in _all_ticks().items()
            if pid not in ours
        }
        top = sorted(used.items(), key=lambda item: -item[1])[:3]
        self.busiest = [(_command(pid), share) for pid, share in top if share >= 1]


@attrs.frozen
class SchedStat:
    """From /proc/PID/schedstat: time on a CPU, time runnable but waiting for one, slices."""

    run_ns: int
    wait_ns: int
    slices: int

    def __sub__(self, other: SchedStat) -> SchedStat:
        return SchedStat(
            self.run_ns - other.run_ns, self.wait_ns - other.wait_ns, self.slices - other.slices
        )


def schedstat(pid: int) -> SchedStat | None:
    try:
        run_ns, wait_ns, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
    except (OSError, ValueError):
        return None
    return SchedStat(int(run_ns), int(wait_ns), int(slices))
