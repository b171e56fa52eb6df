"""Naming a live process on this host: its pid and its start time, as the kernel reports them."""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """When live process `pid` started (clock ticks since boot); None if gone or a zombie.

    The pair (pid, start) names one process: a recycled pid has another start. Reads /proc
    rather than `kill -0`: a zombie answers `kill -0` too, and PID 1 in some containers reaps
    slowly.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def has_open(pid: int, path: Path) -> bool:
    """Whether live process `pid` holds `path` open: tells the launcher named in a run dir's
    `launch.lock` from an unrelated process that took the pid of a killed one."""
    target = str(path.resolve())
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:  # closed meanwhile
            continue
    return False
