"""How much memory this machine has, and how much a process can still take: for sizing worker
pools and warning before a plan would not fit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional


def machine_ram_bytes() -> Optional[int]:
    """This machine's physical memory, where the OS says (Linux, macOS)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still take: the kernel's MemAvailable (free memory and
    the caches it would give up), within a cgroup's limit (a container); None where unknown."""
    found: List[int] = []
    try:
        with open("/proc/meminfo") as fh:
            found += [int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:  # free pages only (no cache): low, which errs on the side of fewer workers
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    try:  # cgroup v2: a container's limit, less what it holds already
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None
