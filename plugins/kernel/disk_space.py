"""Free-space checks before long work: bytes each folder will receive, summed per disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Tuple


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (where the free space will be taken from)."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    return probe


def short_disks(needs: Iterable[Tuple[Path, int]], *, margin: int = 0) -> List[Tuple[Path, int, int]]:
    """``(folder, bytes needed, bytes free)`` for each disk that cannot take what its folders will receive.

    Args:
        needs: (folder, bytes) pairs; folders on one file system are summed.
        margin: bytes to keep free beyond the need.
    """
    per_disk: Dict[int, List] = {}
    for folder, size in needs:
        probe = existing_parent(folder)
        entry = per_disk.setdefault(probe.stat().st_dev, [probe, 0])
        entry[1] += size
    out = []
    for probe, total in per_disk.values():
        free = shutil.disk_usage(probe).free
        if total + margin > free:
            out.append((probe, total, free))
    return out
