"""Run metrics over files and folders: one row per video, aggregates, error rows.

Each video is decoded once and its flows are computed once (:class:`EvalContext`); videos
run in parallel worker processes (``jobs``). A video that cannot be evaluated (corrupt,
empty, a single frame, unreadable) becomes an error row with its reason and the others
still run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import re
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import cv2
import numpy as np

import circle_rotate
from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.frames import load_clip
from circle_rotate.eval.mask_outputs import (foreign_files, is_masks_folder, is_report_folder, output_names,
                                             write_contact_sheet, write_masks)
from circle_rotate.eval.registry import COLUMNS, MASK_COLUMNS, resolve
from circle_rotate.eval.staging import deferred_stop, staged
from circle_rotate.eval.subject_hints import only_for
from circle_rotate.kernel.errors import DiskFullError, UserError
from circle_rotate.kernel.memory import available_memory
from circle_rotate.kernel.progress import progress
from circle_rotate.kernel.video_io import VIDEO_SUFFIXES, animations_in, is_frame_folder, probe_video
from circle_rotate.kernel.worker_signals import quiet_stop, stop_workers

logger = logging.getLogger(__name__)
#: Where the results say their metrics are defined: a stable name, not this machine's install path.
DEFINITIONS = "METRICS.md of the circle_rotate.eval package (eval/METRICS.md in the source)"


@dataclass(frozen=True)
class EvalResults:
    """Rows (input order), aggregates and the metric names that ran."""

    rows: List[Dict[str, Any]]
    metrics: List[str]
    aggregate: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)  # about the run, not one video (unused --subject-boxes keys)

    @property
    def failed(self) -> List[Dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]

    def to_dict(self, results_dir: Optional[os.PathLike | str] = None) -> Dict[str, Any]:
        """As a results file stores it (:func:`stored_row`; ``results_dir``: the file's folder)."""
        return {"tool": "circle-rotate eval", "version": circle_rotate.__version__, "metrics": self.metrics,
                "definitions": DEFINITIONS, "seconds": round(self.seconds, 2),
                "failed": len(self.failed), "aggregate": self.aggregate, **({"notes": self.notes} if self.notes else {}),
                "videos": [stored_row(r, results_dir) for r in self.rows]}


def stored_row(row: Mapping[str, Any], results_dir: Optional[os.PathLike | str] = None) -> Dict[str, Any]:
    """``row`` as a results file stores it: its ``path`` absolute, and, with ``results_dir`` (the
    results file's folder), also relative to it (``path_from_results``). A results file is read
    from other folders (``eval compare``), where a path relative to the folder this run started in
    would name another video, or none; and it may move with its videos (a project folder copied
    elsewhere), where only the relative path still finds them (:func:`~circle_rotate.eval.results_io.resolve_paths`).
    (In memory the path stays as given: callers look rows up by it.)"""
    path = row.get("path")
    if not (isinstance(path, str) and path):
        return dict(row)
    out = {**row, "path": os.path.abspath(path)}
    if results_dir is not None:
        try:
            out["path_from_results"] = Path(os.path.relpath(out["path"], os.path.abspath(results_dir))).as_posix()
        except ValueError:  # another drive (Windows): no relative path
            pass
    return out


def find_videos(paths: Iterable[os.PathLike | str]) -> List[Path]:
    """Expand files and folders into videos: video files, animated WebP/PNG files, and
    folders of image frames.

    A folder contributes its video files, its animations and its frame-folder subfolders
    (not recursively beyond that); a folder that is itself a frame folder is one video.
    Still images beside animations are not frames of anything and are passed over, and so is
    what ``--save-masks`` wrote (:func:`~circle_rotate.eval.mask_outputs.is_masks_folder`).

    Raises:
        UserError: a folder that holds no video at all, or whose videos are all in its
            subfolders (the error names them).
    """
    out: List[Path] = []
    # a path that is not there is a typo, not a video that failed: said before any work, all at once
    missing = [Path(raw) for raw in paths if not os.path.lexists(raw)]
    if missing:
        raise UserError("not found" if len(missing) == 1 else
                        f"{len(missing)} paths not found: {', '.join(map(str, missing[:5]))}",
                        path=missing[0] if len(missing) == 1 else None,
                        fix="check the path" + ("s" if len(missing) > 1 else ""))
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            out.append(p)  # odd or unreadable files become error rows, not a stop
            continue
        if is_masks_folder(p) or is_masks_folder(p.resolve().parent):  # the sheets, or one video's masks
            raise UserError("folder holds the contact sheets and masks eval --save-masks wrote, not a video's frames",
                            path=p, fix="pass the folder of the videos they were made from")
        if is_report_folder(p):
            raise UserError("folder is an eval compare report, not a video's frames", path=p,
                            fix="pass the folder of the videos it compared")
        videos = _videos_in(p)
        folders = sorted(c for c in p.iterdir() if c.is_dir() and not is_masks_folder(c) and not is_report_folder(c)
                         and is_frame_folder(c))
        if videos or folders:
            out.extend(videos + folders)
            continue
        # ComfyUI's SaveVideo writes into output/video/ by default, beside the stills of image
        # workflows: such a folder is not one clip's frames, and its videos are a level down
        below = [c for c in sorted(p.iterdir()) if c.is_dir() and not c.name.startswith(".") and _videos_in(c)]
        if below:
            raise UserError("folder holds no videos; its subfolders do", path=p,
                            fix=f"pass the folder{'s' if len(below) > 1 else ''} they are in: "
                                f"{', '.join(map(str, below[:3]))}")
        if not is_frame_folder(p):
            raise UserError("folder holds no videos", path=p,
                            fix=f"pass {'/'.join(VIDEO_SUFFIXES)} files, animated .webp/.png files, folders of "
                                "them, or folders of frames")
        out.append(p)
    # the same video named twice (a file and its folder, ./a.mp4 and a.mp4) is one row: twice,
    # it would count twice in every mean
    seen: set = set()
    return [p for p in out if not (os.path.realpath(p) in seen or seen.add(os.path.realpath(p)))]


def unmatched_box_keys(videos: Sequence[Path], boxes: Mapping[str, Any]) -> List[str]:
    """Keys of a ``--subject-boxes`` file that name none of ``videos`` (by file name or stem)."""
    names = {v.name for v in videos} | {v.stem for v in videos}
    return [k for k in boxes if k not in names]


def box_key_notes(videos: Sequence[Path], boxes: Mapping[str, Any]) -> List[str]:
    """A note naming the keys of a ``--subject-boxes`` file that name none of ``videos`` (a
    labelled set's file names many videos; a comparison gives each side the whole file).

    Raises:
        UserError: no key names any of ``videos`` (a typo, or the wrong file or folder).
    """
    unmatched = unmatched_box_keys(videos, boxes)
    if not boxes or not unmatched:
        return []
    if len(unmatched) == len(boxes):
        raise UserError(f"no --subject-boxes key names a video given ({len(unmatched)} key(s): "
                        + ", ".join(repr(k) for k in unmatched[:5]) + ")",
                        fix=f"key each box by a video's file name or stem (here: {', '.join(v.name for v in videos[:3])})")
    return [f"--subject-boxes: {len(unmatched)} key(s) name no video given, so their boxes are not used: "
            + ", ".join(repr(k) for k in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")]


def _videos_in(folder: Path) -> List[Path]:
    """The video files and animations directly in ``folder``, sorted by name."""
    return sorted([c for c in folder.iterdir() if c.is_file() and c.suffix.lower() in VIDEO_SUFFIXES
                   and not c.name.startswith(".")] + animations_in(folder))


def _clean(value: Any) -> Any:
    """JSON-safe scalars: numpy to Python, non-finite floats to None."""
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def evaluate_video(path: os.PathLike | str, metric_names: Sequence[str], *,
                   options: Optional[Mapping[str, Any]] = None, threads: int = 1) -> Dict[str, Any]:
    """All requested metrics on one video; never raises for a bad video (an error row instead).
    Its flows are computed ``threads`` at a time.

    Returns:
        ``{"video", "path", "status": "ok"|"error", "error", ...columns, "notes", "skipped", "series"}``.
    """
    p = Path(path)
    row: Dict[str, Any] = {"video": p.name, "path": str(p), "status": "ok", "error": None}
    try:
        clip = load_clip(p)
        row.update(frames=clip.count, fps=round(clip.fps, 4), width=clip.size[0], height=clip.size[1])
        ctx = EvalContext(clip, options=options, threads=threads)
        notes: List[str] = list(clip.notes)
        skipped: List[str] = []
        series: Dict[str, Any] = {}
        for metric in resolve(metric_names):
            result = metric.compute(ctx)
            if result.skipped:
                skipped.append(result.skipped)
                continue
            row.update({k: _clean(v) for k, v in result.values.items()})
            notes.extend(result.notes)
            if result.series:
                series[metric.name] = result.series
        row.update(notes=notes, skipped=skipped, series=series)
        row.update(_write_mask_outputs(ctx, row, options or {}))
    except DiskFullError:
        raise  # the output's disk, not this video: every later video would fail the same way
    except UserError as exc:
        row.update(status="error", error=error_text(exc, p))
    except MemoryError:
        # the whole clip is decoded and its flows kept, so the clip's size is what to cut
        size = f" ({row['frames']} frames of {row['width']}x{row['height']})" if "frames" in row else ""
        row.update(status="error", error=f"{p}: out of memory while evaluating{size}; fix: evaluate it alone "
                                        "(--jobs 1) with other programs closed, or trim it to the generated clip")
    except Exception as exc:  # a bug, or a file no reader anticipated: keep the batch going, say so
        logger.debug("%s", traceback.format_exc())
        row.update(status="error", error=f"{p}: internal error {exc.__class__.__name__}: {exc}; "
                                        "fix: rerun with -v and report it")
    return row


#: FFmpeg's error number and the path it repeats, as PyAV words them: ``[Errno 1094995529] Invalid
#: data found when processing input: '/x/cut.mp4'``.
_ERRNO = re.compile(r"\[Errno -?\d+\] ")


def error_text(exc: UserError, path: Path) -> str:
    """An error row's text, the video's path first: a decoder's message that names the path at its
    end (a truncated MP4 whose index was never written) is reworded with it at the start, without
    FFmpeg's error number."""
    text = str(exc)
    if text.startswith(str(path)):
        return text
    for quoted in (f": '{path}'", f": \"{path}\"", f" '{path}'"):
        text = text.replace(quoted, "")
    return f"{path}: {_ERRNO.sub('', text)}"


def _write_mask_outputs(ctx: EvalContext, row: Mapping[str, Any], options: Mapping[str, Any]) -> Dict[str, Any]:
    """The contact sheet (``options["sheet_dir"]``) and masks (``options["mask_dir"]``) of a
    video whose subject drift ran; their paths for the row."""
    masks = ctx.peek("subject_masks")
    if masks is None or not (options.get("sheet_dir") or options.get("mask_dir")):
        return {}
    out: Dict[str, Any] = {}
    if options.get("sheet_dir"):
        out["contact_sheet"] = str(write_contact_sheet(options["sheet_dir"], ctx.clip, masks, drift=row["drift"],
                                                       confidence=row["drift_confidence"],
                                                       name=options.get("output_name")))
    if options.get("mask_dir"):
        out["masks_dir"] = str(write_masks(options["mask_dir"], ctx.clip, masks,
                                           name=options.get("output_name"))[0].parent)
    return out


def _init_worker() -> None:
    # One process per core already: OpenCV's own threads would only compete with them.
    cv2.setNumThreads(1)
    quiet_stop()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes for OpenCV work, one OpenCV thread each. Spawned, not
    forked: a forked child inherits OpenCV's and tqdm's threads mid-state and can deadlock in
    its first cv2 call."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                               mp_context=multiprocessing.get_context("spawn"))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Per numeric column n/mean/std/median/min/max over the ok rows; counts for text columns.
    The :data:`MASK_COLUMNS` leave out the rows whose drift is unreliable, and say how many
    (``left_out_unreliable``)."""
    ok = [r for r in rows if r["status"] == "ok"]
    out: Dict[str, Any] = {"videos": len(rows), "ok": len(ok), "failed": len(rows) - len(ok)}
    for name in COLUMNS:
        doubtful = sum(r.get(name) is not None for r in ok if r.get("drift_unreliable")) if name in MASK_COLUMNS else 0
        values = [r.get(name) for r in ok if r.get(name) is not None
                  and not (name in MASK_COLUMNS and r.get("drift_unreliable"))]
        left_out = {"left_out_unreliable": doubtful} if name in MASK_COLUMNS else {}
        if not values:
            if doubtful:  # every reading unreliable: no mean, and the count says why
                out[name] = {"n": 0, **left_out}
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            a = np.asarray(values, np.float64)
            out[name] = {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)),
                         "min": float(a.min()), "max": float(a.max()), **left_out}
        else:
            counts: Dict[str, int] = {}
            for v in values:
                counts[str(v)] = counts.get(str(v), 0) + 1
            out[name] = {"n": len(values), "counts": counts}
    return out


def options_for(video: Path, options: Optional[Mapping[str, Any]], *,
                output_name: Optional[str] = None) -> Optional[Mapping[str, Any]]:
    """``options`` as one video needs them: ``subject_boxes`` (hints keyed by video name, a
    whole first-frame mask each) narrowed to that video's entry, so a worker task is not sent
    every video's mask; and the name its contact sheet and masks are written under
    (:func:`~circle_rotate.eval.mask_outputs.output_names`) where they are written."""
    if not options:
        return options
    out = dict(options)
    if options.get("subject_boxes"):
        out["subject_boxes"] = only_for(video.name, options["subject_boxes"])
    if output_name and (options.get("sheet_dir") or options.get("mask_dir")):
        out["output_name"] = output_name
    return out


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def evaluate(paths: Iterable[os.PathLike | str], *, metrics: Sequence[str] = ("default",), jobs: int = 1,
             options: Optional[Mapping[str, Any]] = None, threads: Optional[int] = None,
             finish: Optional[Callable[[EvalResults], Any]] = None, staged_by_caller: bool = False) -> EvalResults:
    """Evaluate every video under ``paths``.

    Args:
        paths: files and folders (see :func:`find_videos`).
        metrics: metric names ("default", "all", names, comma lists).
        jobs: worker processes (1 runs in this process); 0: one per core, fewer where the
            memory available would not hold that many of these videos at once
            (:func:`memory_workers`).
        options: backend settings for learned metrics (e.g. ``{"weights": {"clip": DIR}}``).
        threads: flows each video computes at once; by default the cores are shared out
            between the videos evaluated at once (one video alone gets them all).
        finish: called with the results (their contact sheets and masks named where they will
            be) before those are moved into place, e.g. to write the results file; if it
            raises, nothing is moved.
        staged_by_caller: ``options``' ``sheet_dir`` and ``mask_dir`` are a staging area the
            caller moves into place (:mod:`~circle_rotate.eval.staging`); otherwise this run's
            sheets and masks are written into one of its own, and moved into place only once
            every video is done: an interrupted or failed run leaves an earlier run's as they were.

    Returns:
        :class:`EvalResults` with one row per video in input order.

    Raises:
        UserError: unknown metric names, or a folder without videos.
    """
    names = [m.name for m in resolve(metrics)]
    videos = find_videos(paths)
    boxes = (options or {}).get("subject_boxes") or {}
    box_notes = box_key_notes(videos, boxes)
    for key in boxes:  # one box for two videos of one name (a/x.mp4, b/x.mp4): their subjects differ
        named = [v for v in videos if key in (v.name, v.stem)]
        if len(named) > 1:
            raise UserError(f"--subject-boxes key {key!r} names {len(named)} videos given ({named[0]}, {named[1]})",
                            fix="evaluate those folders one at a time, each with its own boxes file")
    written_as = output_names(videos)
    mask_dir = (options or {}).get("mask_dir")
    for name in written_as if mask_dir else ():  # before any work: a user's files there are never overwritten
        foreign = foreign_files(Path(mask_dir) / name)
        if foreign:
            raise UserError(f"--save-masks would write the masks of {name} into {Path(mask_dir) / name}, which holds "
                            f"files eval did not write (first: {foreign[0].name})", path=mask_dir,
                            fix="name another --save-masks folder")
    start = time.perf_counter()
    if staged_by_caller:
        rows = _evaluate_all(videos, names, jobs=jobs, options=options, threads=threads, written_as=written_as)
        results = EvalResults(rows, names, aggregate(rows), time.perf_counter() - start, box_notes)
        if finish is not None:
            finish(results)
        return results
    with staged(options) as (stage_options, stage):
        rows = _evaluate_all(videos, names, jobs=jobs, options=stage_options, threads=threads, written_as=written_as)
        if stage is not None:
            rows = stage.final_rows(rows)
        results = EvalResults(rows, names, aggregate(rows), time.perf_counter() - start, box_notes)
        if stage is not None:
            stage.check()  # before the results file is written: it must not name masks never moved
        with deferred_stop():  # the results file and the files it names: all of them, or none
            if finish is not None:
                finish(results)
            if stage is not None:
                stage.commit()
    return results


#: Bytes a video's evaluation holds at its peak per pixel of its frames (the whole clip is decoded
#: and its flows kept): 481 frames of 1280x720 peaked at 6.06 GB RSS (13.7 bytes a pixel, the
#: process's own memory included), 81 frames of 832x480 at 0.61 GB (14.3), default metrics.
BYTES_PER_PIXEL = 14
#: A worker's own memory before its video (Python, numpy, OpenCV, PyAV): 0.15 GB measured.
WORKER_BYTES = 200 * 2 ** 20


def video_bytes(path: Path) -> int:
    """The memory evaluating ``path`` takes at its peak, estimated from its header (frames, size);
    0 for a file that cannot be probed (it fails at once, as an error row)."""
    try:
        info = probe_video(path)
    except Exception:  # noqa: BLE001 - a bad file is the worker's to name, not the estimate's
        return 0
    return max(0, info.frame_count) * info.width * info.height * BYTES_PER_PIXEL


def memory_workers(videos: Sequence[Path], workers: int, estimates: Optional[Dict[Path, int]] = None) -> int:
    """How many of ``workers`` fit in the memory available when the largest of ``videos`` are
    evaluated at once (at least 1); logged when fewer. A worker the kernel kills for memory (the
    OOM killer) costs a rerun of every video unfinished, its own alone (:func:`_in_pools`).

    Args:
        estimates: filled with each video's :func:`video_bytes`, for the error of a video whose
            worker is killed.
    """
    free = available_memory()
    if free is None or workers <= 1:
        return workers
    estimates = {} if estimates is None else estimates
    estimates.update((v, video_bytes(v)) for v in videos)
    need = sorted((estimates[v] + WORKER_BYTES for v in videos), reverse=True)[:workers]
    fit = next((k for k in range(len(need), 1, -1) if sum(need[:k]) <= free), 1)
    if fit < workers:
        logger.info("evaluating %d video%s at once, not %d: %.1f GB of memory is available, and the %d largest "
                    "would need about %.1f GB together (the largest alone %.1f GB); --jobs N sets the number", fit,
                    "s" if fit > 1 else "", workers, free / 1e9, workers, sum(need) / 1e9, need[0] / 1e9)
    return fit


def _marked(marker: str, evaluate: Callable[..., Dict[str, Any]], *args, **kwargs) -> Dict[str, Any]:
    """``evaluate(*args, **kwargs)`` in a worker, a file at ``marker`` while it runs: a worker
    killed outright (SIGKILL: the OOM killer) leaves it, a worker the broken pool then stops
    unwinds and leaves ``<marker>.stopped`` (busy at the death, not its cause), and a finished
    video leaves nothing (:func:`_in_pools`)."""
    with contextlib.suppress(OSError):  # unmarked, a video is only not suspected when its worker dies
        os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        row = evaluate(*args, **kwargs)
    except Exception:
        with contextlib.suppress(OSError):
            os.remove(marker)
        raise
    except BaseException:  # SystemExit: stopped by a signal (worker_signals), the pool's after a death
        with contextlib.suppress(OSError):
            os.replace(marker, marker + ".stopped")
        raise
    with contextlib.suppress(OSError):
        os.remove(marker)
    return row


def _error_row(video: Path, error: str) -> Dict[str, Any]:
    """The row of a video that could not be evaluated in its worker (``error``: the one-line message)."""
    return {"video": video.name, "path": str(video), "status": "error", "error": error}


def _killed_row(video: Path, need: int = 0) -> Dict[str, Any]:
    """The row of a video whose worker process died under it alone (the OOM killer, most likely),
    with ``need`` (:func:`video_bytes`) where it was estimated: not probed now, in this process,
    as a file that crashed a codec in its worker would crash it here too."""
    size = f"; it needs about {need / 1e9:.1f} GB" if need >= 0.1e9 else ""
    return _error_row(video, f"{video}: the worker process evaluating it was killed, most likely for want of "
                             f"memory{size}; fix: evaluate it alone (--jobs 1) with other programs closed, or trim it "
                             "to the generated clip")


def _evaluate_all(videos: Sequence[Path], names: Sequence[str], *, jobs: int, options: Optional[Mapping[str, Any]],
                  threads: Optional[int], written_as: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per video, in their order, ``jobs`` videos at once (0: :func:`memory_workers`)."""
    rows: List[Optional[Dict[str, Any]]] = [None] * len(videos)
    wanted = 1 if len(videos) <= 1 or jobs == 1 or jobs < 0 else min(jobs or usable_cores(), len(videos))
    # one per core unless the user said how many: as many as the memory holds
    estimates: Dict[Path, int] = {}
    workers = memory_workers(videos, wanted, estimates) if jobs == 0 else wanted
    # a video's flows are most of its cost, and OpenCV computes each on one core: a video
    # evaluated alone (or two on many cores) would otherwise leave the other cores idle
    per_video = threads if threads is not None else max(1, usable_cores() // workers)
    bar = progress(total=len(videos), desc="eval", unit="video")
    try:
        # memory tight enough to cap the workers, one alone still runs in a worker: killed for
        # memory, it is named and the others still run, where this process would die with them all
        if wanted == 1:
            for i, v in enumerate(videos):
                bar.set_postfix_str(v.name)
                rows[i] = evaluate_video(v, names, options=options_for(v, options, output_name=written_as[i]),
                                         threads=per_video)
                bar.update()
        else:
            _in_pools(videos, names, rows, workers=workers, threads=per_video,
                      alone_threads=threads if threads is not None else usable_cores(),
                      options=options, written_as=written_as, bar=bar, estimates=estimates)
    finally:
        bar.close()
    return [r for r in rows if r is not None]


def _in_pools(videos: Sequence[Path], names: Sequence[str], rows: List[Optional[Dict[str, Any]]], *, workers: int,
              threads: int, alone_threads: int, options: Optional[Mapping[str, Any]], written_as: Sequence[str],
              bar, estimates: Mapping[Path, int]) -> None:
    """Fill ``rows`` from worker pools. A worker killed (the OOM killer, a crash in a codec) breaks
    its whole pool, and every video not yet finished would read as its victim: so a fresh pool
    takes the unfinished videos on again. The video of the worker killed (:func:`_marked`) runs
    again alone, with all the memory, and is named only when its worker dies with it alone in
    flight (then, or at the first death)."""
    todo = list(range(len(videos)))  # run ``workers`` at once
    alone: List[int] = []  # killed beside other videos in flight: each runs again by itself
    fruitless = 0  # deaths in a row that no video's worker marked (a worker that cannot start)
    with tempfile.TemporaryDirectory(prefix="circle-rotate-eval-") as marks:
        for round_no in itertools.count():
            if not (todo or alone):
                break
            batch, size, t = (todo, min(workers, len(todo)), threads) if todo else (alone, 1, alone_threads)
            unfinished = _one_pool(videos, names, rows, batch, size=size, threads=t, options=options,
                                   written_as=written_as, bar=bar, marks=Path(marks, str(round_no)))
            if unfinished is None:
                todo, alone = ([], alone) if batch is todo else (todo, [])
                continue
            killed = [i for i in unfinished if Path(marks, f"{round_no}.{i}").exists()]
            busy = killed + [i for i in unfinished if Path(marks, f"{round_no}.{i}.stopped").exists()]
            named = killed if len(busy) == 1 else []  # alone in flight: its worker died of it
            for i in named:
                rows[i] = _killed_row(videos[i], estimates.get(videos[i], 0))
                bar.update()
            rest = [i for i in unfinished if i not in killed]
            if batch is todo:
                todo, alone = rest, alone + [i for i in killed if i not in named]
            else:
                alone = rest
            fruitless = 0 if killed else fruitless + 1
            if fruitless >= 2:  # no video to blame, and no progress: said, not tried for ever
                for i in todo + alone:
                    rows[i] = _error_row(videos[i], f"{videos[i]}: not evaluated: worker processes died twice with "
                                                    "no video to blame; fix: rerun with --jobs 1")
                    bar.update()
                break


def _one_pool(videos: Sequence[Path], names: Sequence[str], rows: List[Optional[Dict[str, Any]]],
              batch: Sequence[int], *, size: int, threads: int, options: Optional[Mapping[str, Any]],
              written_as: Sequence[str], bar, marks: Path) -> Optional[List[int]]:
    """Evaluate the videos ``batch`` indexes in a pool of ``size`` workers, each marking its start
    as ``<marks>.<index>``; the indexes left unfinished when a worker died (None when none died)."""
    pool = worker_pool(size)
    broken: List[int] = []
    try:
        futures = {}
        for n, i in enumerate(batch):
            try:
                futures[pool.submit(_marked, f"{marks}.{i}", evaluate_video, videos[i], names, threads=threads,
                                    options=options_for(videos[i], options, output_name=written_as[i]))] = i
            except BrokenProcessPool:  # a worker died while the rest were being handed out
                broken += batch[n:]
                break
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                rows[i] = fut.result()
            except DiskFullError:
                raise
            except SystemExit:  # a worker stopped by a signal (worker_signals): the run is interrupted
                raise KeyboardInterrupt from None
            except BrokenProcessPool:  # a worker died: this video's or another's
                broken.append(i)
                continue
            except Exception as exc:  # its row could not be sent back: a bug
                rows[i] = _error_row(videos[i], f"{videos[i]}: internal error {exc.__class__.__name__}: {exc}; "
                                                "fix: rerun with -v and report it")
            bar.set_postfix_str(videos[i].name)
            bar.update()
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown()
    return sorted(broken, key=list(batch).index) if broken else None
