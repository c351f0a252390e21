"""Per-process CPU time and peak memory of a running stack, read from ``/proc``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from cli.stack import Stack


def processes(test: Callable[[int, str], bool]) -> list[int]:
    """Pids whose process group and ``/proc/PID/stat`` line pass ``test``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if test(int(stat.rsplit(")", 1)[1].split()[2]), stat):  # pgid
                    pids.append(int(entry.name))
    return pids


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of each stack process (its process group: gunicorn's workers
    too), of the PostgreSQL and Redis servers, and of this process (the clients) with the
    children it has waited for (a CLI run by ``subprocess.run``)."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pids: list[int]) -> float:
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    seconds = {
        name: of(processes(lambda pgid, _s, pid=proc.pid: pgid == pid))
        for name, proc in stack.processes.items()
    }
    for server in ("postgres", "redis-server"):
        seconds[server] = of(processes(lambda _g, stat, server=server: f"({server}" in stat))
    mine = os.times()
    seconds["clients"] = mine.user + mine.system + mine.children_user + mine.children_system
    return seconds


def peak_mb(pgid: int) -> float:
    """Peak resident memory of a process group (gunicorn's master and workers, summed)."""
    total = 0
    for pid in processes(lambda group, _stat: group == pgid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024
