"""Counting the processes a test leaves behind (with psutil when it is installed, else /proc).

:func:`tagged` finds a process by a tag in its command line wherever it is, so a server that
outlived the process that started it (an orphan, adopted by init) is still counted;
:func:`descendants` is every live process below this one. Zombies (dead, not yet reaped) are
not counted: they hold no resources but a pid.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import psutil
except ImportError:  # the /proc fallback below
    psutil = None


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process we may read."""
    table = {}
    if psutil is not None:
        for p in psutil.process_iter(["ppid", "cmdline", "status"]):
            if p.info["status"] != psutil.STATUS_ZOMBIE:
                table[p.pid] = (p.info["ppid"], " ".join(p.info["cmdline"] or []))
        return table
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            table[int(entry.name)] = (int(ppid), cmdline)
    return table


def tagged(tag: str) -> list[int]:
    """Live processes whose command line holds ``tag``."""
    return sorted(pid for pid, (_, cmdline) in _table().items() if tag in cmdline)


def descendants() -> set[int]:
    """Live processes below this one (children, their children...)."""
    table, found, frontier = _table(), set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found
