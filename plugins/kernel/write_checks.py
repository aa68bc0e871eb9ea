"""Why a file cannot be written, found before the work (a parent that is a file, a folder that
takes no files) or said in one line when it happens (a full disk, naming the device and the shortfall).

:mod:`circle_rotate.kernel.atomic` uses these for every output; commands that write folders of their
own (``prepare``) call :func:`check_writable_dir` directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Union

from circle_rotate.kernel.disk_space import existing_parent
from circle_rotate.kernel.errors import DiskFullError, UnwritableOutputError

PathLike = Union[str, os.PathLike]


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (from its ``st_mode``; 0 for a dangling link)."""
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "pipe"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "broken link" if not mode else "special file"


def check_writable_dir(directory: PathLike) -> None:
    """Raise :class:`UnwritableOutputError` unless files can be created in ``directory`` (made if absent).

    Probes the nearest existing ancestor with a real (deleted) temporary file: permission bits
    say nothing for root, and virtual file systems (``/proc``) refuse only at creation time.
    """
    probe = Path(directory).absolute()
    while not os.path.lexists(probe):
        probe = probe.parent
    if not probe.is_dir():
        raise UnwritableOutputError(directory, reason=f"{probe} is a file, not a folder",
                                    fix="choose an output inside a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".circle-rotate-probe.", dir=probe)
    except OSError as exc:
        raise UnwritableOutputError(directory, reason=f"{probe} takes no new files ({exc.strerror})") from None
    os.close(fd)
    os.unlink(name)


def device_of(path: PathLike) -> str:
    """The file system holding ``path``, as ``SOURCE (MOUNTPOINT)`` from the mount table (else the path)."""
    target = os.path.realpath(existing_parent(path))
    best = ("", "")
    with contextlib.suppress(OSError):
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                source, mount = (line.split() + ["", ""])[:2]
                mount = mount.replace("\\040", " ")
                if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[1]):
                    best = (source, mount)
    return f"{best[0]} ({best[1]})" if best[1] else str(target)


#: Errors of a write that ran out of room: a full disk, a full quota, the process's file-size limit.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(path: PathLike, *, need: int = 0) -> DiskFullError:
    """The one-line error for a write to ``path`` that ran out of room; ``need``: bytes the whole file takes."""
    free = shutil.disk_usage(existing_parent(Path(path).parent)).free
    short = max(need - free, 0)
    return DiskFullError(path, device=device_of(Path(path).parent), need_gb=short / 1e9 if short else None)


def check_output_dir(directory: PathLike, *, flag: str = "the output folder") -> Path:
    """``directory`` as a :class:`Path` when it is (or can be made as) a folder that takes files.

    Raises:
        UnwritableOutputError: it is a file, or under one, or on a file system that takes no files.
    """
    d = Path(directory)
    if os.path.lexists(d) and not d.is_dir():
        raise UnwritableOutputError(d, reason="it is a file, not a folder", fix=f"give a folder as {flag}")
    check_writable_dir(d)
    return d
