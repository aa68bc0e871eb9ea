"""Atomic output: a file appears whole under its final name, or not at all.

Everything the project writes goes through :func:`atomic_path` (or the small helpers on
top of it). The data goes to a hidden temporary file in the destination directory (same
file system, so the final ``os.replace`` is atomic), is fsynced, then renamed. An
exception, Ctrl-C or a full disk removes the temporary file and leaves any previous
output untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from circle_rotate.disk_space import existing_parent
from circle_rotate.errors import (DiskFullError, InputOverwriteError, NotARegularFileError, UnwritableOutputError,
                                  UserError)

PathLike = Union[str, os.PathLike]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(out: PathLike, *, inputs: Iterable[PathLike] = (), force: bool = False) -> Path:
    """Validate an output path before any work is done (the one guard every writing command uses).

    Args:
        out: the file that will be written.
        inputs: every file the command reads, those it finds in a folder included; the output
            may never be one of them, ``force`` or not.
        force: allow replacing an existing regular file.

    Returns:
        ``out`` as an absolute :class:`Path`.

    Raises:
        InputOverwriteError: the output is one of the inputs.
        NotARegularFileError: the output exists and is not a regular file (a folder, a device, a pipe).
        UnwritableOutputError: a parent is a file, or the folder cannot take new files.
        UserError: the output exists and ``force`` is off.
    """
    out_p = Path(out).absolute()
    for src in inputs:
        src_p = Path(src).absolute()
        if src_p == out_p or _same_file(src_p, out_p):
            raise InputOverwriteError(out_p, source=src_p)
    if os.path.lexists(out_p):
        mode = os.stat(out_p).st_mode if out_p.exists() else 0
        if stat.S_ISDIR(mode):
            raise NotARegularFileError(out_p, kind="folder", fix="give a file name")
        if not stat.S_ISREG(mode):  # a device node, pipe, socket or dangling link: replacing it is never meant
            raise NotARegularFileError(out_p, kind=_kind(mode), fix="choose a regular file as the output")
        if not force:
            raise UserError("output already exists", path=out_p, fix="pass --force to replace it, or choose another path")
    check_writable_dir(out_p.parent)
    return out_p


def _kind(mode: int) -> str:
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


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: PathLike, *, suffix: Optional[str] = None, size: int = 0) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` on success.

    The caller writes the temporary path by any means (a library that wants a file
    name, e.g. ``safetensors`` or PyAV). On exit without error the file is fsynced and
    renamed; on any exception (KeyboardInterrupt included) it is deleted.

    Args:
        final: the destination file.
        suffix: extension of the temporary name (defaults to ``final``'s own).
        size: the bytes the file will take, if known (said in the disk-full message).

    Example:
        >>> with atomic_path("clip.mp4") as tmp:
        ...     encode_video(frames, tmp)
    """
    final_p = Path(final)
    made = [d for d in (final_p.absolute().parent, *final_p.absolute().parent.parents) if not d.exists()]
    try:
        final_p.parent.mkdir(parents=True, exist_ok=True)
        # The real extension stays last so libraries that choose a format by suffix (PyAV) still do.
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final_p.stem}.", suffix=".part" + (suffix if suffix is not None else final_p.suffix),
            dir=final_p.parent,
        )
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(final_p, need=size) from None
        check_writable_dir(final_p.parent)  # names the parent that is a file, or the folder that takes no files
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final_p)
        _fsync_dir(final_p.parent)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for d in made:  # folders made for this file alone go too (deepest first; one holding anything stays)
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise disk_full(final_p, need=max(size, written)) from None
        raise


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON atomically and return the path."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
