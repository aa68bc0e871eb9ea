"""Contact sheets, masks and reports written into hidden folders beside their own, and moved into
place only once the whole run has finished.

``eval --save-masks DIR --force`` replaces an earlier run's files, which that run's results JSON
names. Written in place, an interrupted run would leave some replaced and some not, and removing
what it had written would remove the earlier run's too. Staged, an interrupted or failed run
leaves every earlier file as it was: the staging folder (``.DIR.circle-rotate-partial-XXXXXXXX``,
beside DIR, so on its file system and moved by rename) goes, and that is all. A run killed
outright (SIGKILL) cannot remove it; it holds an ``flock`` on it while it lives, and the next run
into DIR removes the ones nobody holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

try:
    import fcntl
except ImportError:  # Windows: no flock, so no way to tell a live staging folder from a dead one
    fcntl = None

from circle_rotate.eval.mask_outputs import _is_mask_png, foreign_files
from circle_rotate.kernel.errors import UserError

logger = logging.getLogger(__name__)
_TAG = ".circle-rotate-partial-"


def _prefix(final: Path) -> str:
    return f".{final.name}{_TAG}"


def remove_stale(final: os.PathLike | str) -> None:
    """Remove the staging folders of ``final`` that no live run holds (a run killed outright)."""
    final = Path(final).absolute()
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(_prefix(final))]
    except OSError:
        return
    for name in names:
        path = final.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds it: leave it be
            shutil.rmtree(path)
            logger.info("removed %s, left by a run that was killed", path)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done (main thread only): moving a run's
    files into place takes milliseconds, and stopped halfway it would leave two runs' files mixed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: List[int] = []
    wanted = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
    old = {s: signal.getsignal(s) for s in wanted}
    for s, h in old.items():
        if h not in (signal.SIG_IGN, None):
            signal.signal(s, lambda signum, frame: got.append(signum))
    done = False
    try:
        yield
        done = True
    finally:
        for s, h in old.items():
            if h is not None:
                signal.signal(s, h)
        if got:
            try:
                signal.raise_signal(got[0])  # to the handler that was there: the stop happens now
            except KeyboardInterrupt as exc:
                if done:  # the CLI's last line says what was kept
                    exc.kept = "the run had finished first: its outputs were all written"
                raise


class Staging:
    """Staging folders for ``finals`` (folders, made at :meth:`commit` if absent); a folder inside
    another is staged inside the other's staging folder."""

    def __init__(self, finals: Sequence[os.PathLike | str]):
        self._pairs: List[Tuple[Path, Path]] = []  # (final, staging), outermost first
        self._fds: List[int] = []
        self._made: List[Path] = []
        try:
            for final in sorted({Path(f).absolute() for f in finals}, key=lambda p: len(p.parts)):
                outer = next(((f, s) for f, s in self._pairs if final.is_relative_to(f)), None)
                if outer is not None:
                    self._pairs.append((final, outer[1] / final.relative_to(outer[0])))
                    continue
                self._made += [d for d in (final.parent, *final.parent.parents) if not d.exists()][::-1]
                final.parent.mkdir(parents=True, exist_ok=True)
                remove_stale(final)
                staging = Path(tempfile.mkdtemp(prefix=_prefix(final), dir=final.parent))
                fd = os.open(staging, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds.append(fd)
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # held while this run lives (remove_stale)
                self._pairs.append((final, staging))
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, UserError):  # a full disk met while staging: named as the user named it
            for final, staging in reversed(self._pairs):
                exc.args = tuple(a.replace(str(staging), str(final)) if isinstance(a, str) else a for a in exc.args)
                exc.problem = exc.problem.replace(str(staging), str(final))
                exc.message = exc.message.replace(str(staging), str(final))
                if exc.path:
                    exc.path = exc.path.replace(str(staging), str(final))
        self.discard()

    def here(self, final: os.PathLike | str) -> Path:
        """Where what belongs in ``final`` (one of the folders staged) is written meanwhile."""
        final = Path(final).absolute()
        return next(s for f, s in self._pairs if f == final)

    def final_path(self, path: Any) -> Any:
        """A staged path as it will read once moved into place (other values as they are)."""
        if not isinstance(path, (str, os.PathLike)):
            return path
        p = Path(path).absolute()
        for final, staging in reversed(self._pairs):  # innermost first
            if p.is_relative_to(staging):
                return str(final / p.relative_to(staging))
        return path

    def final_rows(self, rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """``rows`` with their ``contact_sheet`` and ``masks_dir`` as they will read once moved."""
        return [{k: (self.final_path(v) if k in ("contact_sheet", "masks_dir") else v) for k, v in r.items()}
                for r in rows]

    def _moves(self) -> Tuple[List[Tuple[Path, Path]], Dict[Path, set]]:
        """(staged file, its place) for every file staged, and the masks each masks folder gets."""
        moves = [(src, final / src.relative_to(staging)) for final, staging in self._pairs
                 if not any(staging.is_relative_to(s) and staging != s for _, s in self._pairs)
                 for src in sorted(staging.rglob("*")) if src.is_file()]
        mask_dirs: Dict[Path, set] = {}
        for src, dest in moves:
            if _is_mask_png(src):
                mask_dirs.setdefault(dest.parent, set()).add(dest.name)
        return moves, mask_dirs

    def check(self) -> None:
        """Refuse when a masks folder has come to hold files eval did not write meanwhile (the
        run checked them before its work; this keeps a folder made since safe).

        Raises:
            UserError: naming the folder and its first such file.
        """
        for folder in self._moves()[1]:
            foreign = foreign_files(folder)
            if foreign:
                raise UserError(f"--save-masks would write into {folder}, which holds files eval did not write "
                                f"(first: {foreign[0].name})", path=folder, fix="name another --save-masks folder")

    def commit(self) -> None:
        """Move every staged file into place: all of them, or (:meth:`check`) none.

        Raises:
            UserError: as :meth:`check`.
        """
        self.check()
        moves, mask_dirs = self._moves()
        with deferred_stop():
            for src, dest in moves:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):  # a replaced file keeps its mode, as atomic writes do
                    os.chmod(src, stat.S_IMODE(dest.stat().st_mode))
                os.replace(src, dest)
            for folder, names in mask_dirs.items():  # an earlier run's frames this one did not sample
                for stale in folder.glob("frame_*.png"):  # would pass for its own
                    if stale.name not in names and _is_mask_png(stale):
                        stale.unlink(missing_ok=True)
        self._made = []  # the folders made are in use now

    def discard(self) -> None:
        """Remove the staging folders (what was not committed goes with them), and the folders
        made for them alone."""
        for final, staging in self._pairs:
            if not any(staging.is_relative_to(s) and staging != s for _, s in self._pairs):
                shutil.rmtree(staging, ignore_errors=True)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pairs, self._fds = [], []
        for d in reversed(self._made):  # deepest first; one holding anything stays
            with contextlib.suppress(OSError):
                d.rmdir()
        self._made = []


@contextlib.contextmanager
def staged(options: Optional[Mapping[str, Any]], keys: Sequence[str] = ("sheet_dir", "mask_dir")
           ) -> Iterator[Tuple[Optional[Mapping[str, Any]], Optional[Staging]]]:
    """``options`` with its ``keys`` folders pointed at staging folders, and the :class:`Staging`
    (None where no such folder is set); the staging folders are removed on the way out, and
    what was not committed with them."""
    finals = [options[k] for k in keys if options and options.get(k)]
    if not finals:
        yield options, None
        return
    with Staging(finals) as stage:
        yield {**options, **{k: str(stage.here(options[k])) for k in keys if options.get(k)}}, stage
