"""Atomic output: a file appears whole under its final name, or not at all.

Everything the project writes goes through :func:`atomic_path` (or the small helpers on
top of it). The data goes to a hidden temporary file in the destination directory (same
file system, so the final ``os.replace`` is atomic), is fsynced, then renamed. An
exception, Ctrl-C or a full disk removes the temporary file and leaves any previous
output untouched.

The finished file gets the mode any ordinary new file would (``0o666`` less the umask), or
keeps the mode of the file it replaces: ``mkstemp`` creates 0600 files, and outputs that only
their writer can read break a ComfyUI running as another user or a shared dataset folder.

A run killed outright (SIGKILL, the OOM killer, a power cut) cannot remove its temporary file,
which for a merged expert is 14-28 GB, hidden. So the writer holds an ``flock`` on it while it
writes, and the next write of the same output removes the ones nobody holds. And an output that
did not exist when the write began is published without replacing: if another run wrote it
meanwhile, this one says so instead of silently replacing it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Union

try:
    import fcntl
except ImportError:  # Windows: no flock, so no way to tell a live temporary file from a dead one
    fcntl = None

from circle_rotate.kernel.errors import InputOverwriteError, NotARegularFileError, UserError
from circle_rotate.kernel.write_checks import NO_SPACE, check_writable_dir, disk_full, file_kind

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)

#: The longest file name (bytes) the usual file systems take (ext4, XFS, APFS, NTFS in UTF-16 units).
NAME_MAX = 255
_PART = ".part"
_RANDOM = 8  # tempfile.mkstemp's random part


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(out: PathLike, *, inputs: Iterable[PathLike] = (), force: bool = False,
                      suffix: Optional[str] = None) -> Path:
    """Validate an output path before any work is done (the one guard every writing command uses).

    Args:
        out: the file that will be written.
        inputs: every file the command reads, those it finds in a folder included; the output
            may never be one of them, ``force`` or not.
        force: allow replacing an existing regular file.
        suffix: the extension the output's format has (".safetensors"): another one misleads
            whatever loads the file by its name (ComfyUI reads a ``.ckpt`` with ``torch.load``).

    Returns:
        ``out`` as an absolute :class:`Path`.

    Raises:
        InputOverwriteError: the output is one of the inputs.
        NotARegularFileError: the output exists and is not a regular file (a folder, a device, a pipe).
        UnwritableOutputError: a parent is a file, or the folder cannot take new files.
        UserError: the output exists and ``force`` is off.
    """
    out_p = Path(out).absolute()
    _check_name_length(out_p)
    for src in inputs:
        src_p = Path(src).absolute()
        if src_p == out_p or _same_file(src_p, out_p):
            raise InputOverwriteError(out_p, source=src_p)
    if os.path.lexists(out_p):
        mode = os.stat(out_p).st_mode if out_p.exists() else 0
        if stat.S_ISDIR(mode):
            raise NotARegularFileError(out_p, kind="folder", fix="give a file name")
        if not stat.S_ISREG(mode):  # a device node, pipe, socket or dangling link: replacing it is never meant
            raise NotARegularFileError(out_p, kind=file_kind(mode), fix="choose a regular file as the output")
        if not force:
            raise UserError("output already exists", path=out_p, fix="pass --force to replace it, or choose another path")
    if suffix is not None and out_p.suffix.lower() != suffix:
        raise UserError(f"the output is written as {suffix} but named {out_p.suffix or 'with no extension'}", path=out_p,
                        fix=f"name it {out_p.stem}{suffix} (a loader goes by the extension)")
    check_writable_dir(out_p.parent)
    return out_p


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # The umask can only be read by setting it; the lock keeps two writers from racing on it.
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def output_mode(final: Path) -> int:
    """The permission bits ``final`` gets: those of the file it replaces, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(final.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_name_length(path: Path) -> None:
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise UserError(f"the file name is {len(os.fsencode(path.name))} bytes long; file systems take {NAME_MAX}",
                        path=path, fix="choose a shorter output name")


def _temp_affixes(final: Path, suffix: Optional[str]) -> tuple:
    """(prefix, suffix) of the temporary name: ``.<stem>.XXXXXXXX.part<ext>``, the stem cut short
    (whole characters) where the name would pass :data:`NAME_MAX` bytes."""
    tail = _PART + (suffix if suffix is not None else final.suffix)
    room = NAME_MAX - len(os.fsencode(tail)) - _RANDOM - 2
    stem = final.stem
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return f".{stem}.", tail


def _remove_dead_temporaries(final: Path, prefix: str, tail: str) -> None:
    """Remove the temporary files of earlier writes of ``final`` that no live writer holds."""
    if fcntl is None:
        return
    pattern = re.compile(re.escape(prefix) + r"[A-Za-z0-9_]{%d}" % _RANDOM + re.escape(tail))
    try:
        names = [n for n in os.listdir(final.parent) if pattern.fullmatch(n)]
    except OSError:
        return
    for name in names:
        path = final.parent / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live writer holds it: leave it be
            size = os.fstat(fd).st_size
            path.unlink()
            logger.info("removed %s (%.1f MB), left by a write that was killed", name, size / 1e6)
        except OSError:
            pass
        finally:
            os.close(fd)


def _same_bytes(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(chunk), fb.read(chunk)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _publish(tmp: Path, final: Path, replace: bool) -> None:
    """Rename ``tmp`` onto ``final``; without ``replace``, only if ``final`` still does not exist."""
    if replace:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if ``final`` exists, unlike a rename
    except FileExistsError:
        if _same_bytes(tmp, final):  # the same file written twice (each node of a multi-node run writes
            tmp.unlink()  # the shared accelerate config): nothing to refuse
            return
        raise UserError("another run wrote this output while this one was writing it; it was left as that run "
                        "wrote it", path=final, fix="run one command per output at a time (or pass --force "
                        "and run again to replace it)") from None
    except OSError:  # a file system without hard links (FAT, some network shares): a plain rename
        os.replace(tmp, final)
        return
    tmp.unlink()


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
    _check_name_length(final_p)
    made = [d for d in (final_p.absolute().parent, *final_p.absolute().parent.parents) if not d.exists()]
    prefix, tail = _temp_affixes(final_p, suffix)
    try:
        final_p.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(final_p, prefix, tail)
        # The real extension stays last so libraries that choose a format by suffix (PyAV) still do.
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=tail, dir=final_p.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(final_p, need=size) from None
        check_writable_dir(final_p.parent)  # names the parent that is a file, or the folder that takes no files
        raise
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the end: this temporary file is alive
    tmp = Path(tmp_name)
    replace = os.path.lexists(final_p)  # replacing was checked (--force, or this run's own file)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # after writing: a library may have recreated the temporary file with a mode of its own
        os.chmod(tmp, output_mode(final_p))
        _publish(tmp, final_p, replace)
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
    finally:
        os.close(fd)


#: The folder locks this process holds (file descriptor -> the folder's real path), closed in every
#: child it forks: a pool worker holding one would keep the folder locked after its parent was killed.
_FOLDER_LOCKS: Dict[int, str] = {}


def _close_folder_locks_in_child() -> None:
    for fd in list(_FOLDER_LOCKS):  # the parent's descriptor keeps its lock
        with contextlib.suppress(OSError):
            os.close(fd)
    _FOLDER_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_folder_locks_in_child)


@contextlib.contextmanager
def exclusive_folder(folder: PathLike, *, command: str,
                     busy: Optional[Callable[[], UserError]] = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` while ``command`` writes into it, so that a second
    run into the same folder is refused rather than interleaving its files and lines with this
    one's. The lock goes with the process, however it ends. (No lock where there is no flock,
    or where ``folder`` is not a folder: the command's own checks say what is wrong then.)

    Args:
        busy: the error to refuse with when another run holds the lock (where other commands than
            ``command`` share the folder); by default "another ``command`` is writing".
    """
    path = Path(folder)
    if fcntl is None or not path.is_dir():
        yield
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise (busy() if busy else UserError(f"another {command} is writing into this folder", path=path,
                                                 fix="let it finish (or stop it), then run this one again")) from None
        _FOLDER_LOCKS[fd] = os.path.realpath(path)
        yield
    finally:
        _FOLDER_LOCKS.pop(fd, None)
        os.close(fd)


def held_elsewhere(folder: PathLike) -> bool:
    """Whether another process holds ``folder``'s :func:`exclusive_folder` lock right now (this
    process's own lock is no sign of another run)."""
    path = Path(folder)
    if fcntl is None or not path.is_dir() or os.path.realpath(path) in _FOLDER_LOCKS.values():
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


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
