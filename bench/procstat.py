"""Read a process's CPU time and resident memory from /proc (Linux only).

Why: the machine has 2 cores shared by the server and the load generator, so
throughput alone says little; CPU time consumed by the server process per
delivered message is the figure that survives the noise.  utime+stime in
/proc/<pid>/stat cover every thread of the process (Node's helper threads,
Python's none), at clock-tick resolution (usually 10 ms), which is why the
measured windows last seconds.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

CLOCK_TICKS_PER_SECOND: int = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """User and system CPU seconds consumed by a process since it started."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def cpu_times(pid: int) -> CpuTimes:
    """Return utime and stime of ``pid`` in seconds (all threads, not children).

    The command name in field 2 may contain spaces and parentheses, so the
    fields are counted from the last ')'.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    utime, stime = int(fields[11]), int(fields[12])
    return CpuTimes(utime / CLOCK_TICKS_PER_SECOND, stime / CLOCK_TICKS_PER_SECOND)


def rss_bytes(pid: int) -> int:
    """Return the resident set size of ``pid`` in bytes (VmRSS from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                parts = line.split()
                return int(parts[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid} (zombie or kernel thread?)")


async def settled_rss(pid: int, max_wait: float = 3.0, interval: float = 0.25, tolerance: float = 0.005) -> int:
    """RSS once it stops moving (two reads ``interval`` s apart within ``tolerance``), or after ``max_wait``.

    Why: a server goes on allocating for a moment after its last connection
    opened (buffers, deferred set-up), so a single read would miss part of
    what the connections cost.
    """
    previous = rss_bytes(pid)
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        current = rss_bytes(pid)
        if abs(current - previous) <= tolerance * previous:
            return current
        previous = current
    return previous


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    state = data[data.rindex(b")") + 2 : data.rindex(b")") + 3]
    return state not in (b"Z", b"X")


@dataclass(frozen=True)
class MachineTimes:
    """Cumulative CPU seconds of the whole machine (all cores), from the first line of /proc/stat."""

    busy: float
    softirq: float
    total: float


def machine_times() -> MachineTimes:
    """Busy = everything but idle and iowait; softirq is listed apart because loopback
    networking is mostly accounted there rather than to the processes that cause it."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return MachineTimes(
        busy=(total - idle) / CLOCK_TICKS_PER_SECOND,
        softirq=fields[6] / CLOCK_TICKS_PER_SECOND,
        total=total / CLOCK_TICKS_PER_SECOND,
    )
