"""Write what the drift measured: a contact sheet PNG per video, and the masks themselves.

Called in the process that evaluated the video (the masks are not sent back); every file is
written atomically, so an interrupted run leaves no half-written PNG.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

from circle_rotate.eval.contact_sheet import contact_sheet, png_bytes
from circle_rotate.eval.frames import Clip
from circle_rotate.eval.subject_mask import SubjectMasks
from circle_rotate.kernel.atomic import write_bytes
from circle_rotate.kernel.errors import InputOverwriteError, UserError


def output_names(videos: Sequence[os.PathLike | str]) -> List[str]:
    """A name for each video's written files (contact sheet, masks folder), unique in one run.

    The file's stem; where stems clash (``x.mp4`` beside ``x.webp``, or ``a/x.mp4`` and
    ``b/x.mp4``) the file's name, then its folder's name and its own, then a number: one
    video's sheet must never overwrite another's.
    """
    paths = [Path(v) for v in videos]
    levels = (lambda p: p.stem or "video", lambda p: p.name, lambda p: f"{p.parent.name}_{p.name}")
    names: List[Optional[str]] = [None] * len(paths)
    for level in levels:
        todo = [i for i, n in enumerate(names) if n is None]
        wanted = {i: level(paths[i]) for i in todo}
        counts = Counter(wanted.values())
        taken = {n for n in names if n is not None}
        for i in todo:
            if counts[wanted[i]] == 1 and wanted[i] not in taken:
                names[i] = wanted[i]
    taken = {n for n in names if n is not None}
    for i, p in enumerate(paths):
        k = 2
        while names[i] is None:
            if f"{p.name}_{k}" not in taken:
                names[i] = f"{p.name}_{k}"
                taken.add(names[i])
            k += 1
    return [n for n in names if n is not None]


def _name(clip: Clip, name: Optional[str]) -> str:
    return name or Path(clip.path).stem or "video"


#: The end of a contact sheet's name (:func:`sheet_path`).
SHEET_SUFFIX = ".drift.png"


def is_masks_folder(folder: os.PathLike | str) -> bool:
    """Is ``folder`` what ``eval --save-masks`` wrote (it holds contact sheets), not a clip's
    frames? A rerun of ``eval outputs/ --save-masks outputs/masks`` would otherwise read the
    first run's sheets as the frames of one more video."""
    try:
        return any(f.name.endswith(SHEET_SUFFIX) and f.is_file() for f in Path(folder).iterdir())
    except OSError:  # an unreadable folder holds nothing of ours
        return False


#: Files only ``eval compare`` writes at the top of its report folder.
REPORT_FILES = ("compare.json", "report.html")


def is_report_folder(folder: os.PathLike | str) -> bool:
    """Is ``folder`` an ``eval compare`` report (its plots are PNGs, which would pass for a
    video's frames when the report is written beside or inside the videos)?"""
    return any((Path(folder) / n).is_file() for n in REPORT_FILES)


def sheet_path(folder: os.PathLike | str, clip: Clip, name: Optional[str] = None) -> Path:
    """``FOLDER/<name>.drift.png``; the name is the video's stem unless given (:func:`output_names`)."""
    return Path(folder) / f"{_name(clip, name)}{SHEET_SUFFIX}"


def write_contact_sheet(folder: os.PathLike | str, clip: Clip, masks: SubjectMasks, *, drift: float,
                        confidence: float, name: Optional[str] = None) -> Path:
    """The sampled frames, each numbered as in the video, with the mask outline and the centroid
    path, as a PNG (a given subject's centroid is the mean of two passes: both outlines are drawn)."""
    idx = masks.frames
    title = f"{clip.name}: drift {drift:.2f} px, confidence {confidence:.2f} (found by {masks.found.basis})"
    if masks.forward is not None:
        title += "; centroid = mean of the orange and the green pass"
    if masks.bounds:
        title += "; white: the bound your boxes set"
    sheet = contact_sheet([clip.frames[i] for i in idx], masks.masks, masks.centroids(), second=masks.forward,
                          bounds=masks.bounds, numbers=[int(i) for i in idx], title=title)
    return write_bytes(sheet_path(folder, clip, name), png_bytes(sheet))


def _is_mask_png(path: Path) -> bool:
    """A file :func:`write_masks` wrote: ``frame_NNNN.png``, one grey channel of 0 and 255 only
    (a video's frames extracted under the same names are colour, or grey of many levels)."""
    if not (path.is_file() and re.fullmatch(r"frame_\d{4,}\.png", path.name)):
        return False
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image is not None and image.ndim == 2 and image.dtype == np.uint8 and not np.any((image > 0) & (image < 255))


def foreign_files(folder: os.PathLike | str) -> List[Path]:
    """The files in a masks folder (``DIR/<video>/``) that :func:`write_masks` did not write, which
    it must neither overwrite nor remove: the user's own, say a video's frames extracted there."""
    root = Path(folder)
    if not root.exists():
        return []
    if not root.is_dir():
        return [root]
    # hidden files (the .DS_Store a Mac's Finder leaves in any folder it shows) hold no one's work
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and not _is_mask_png(p))


def write_masks(folder: os.PathLike | str, clip: Clip, masks: SubjectMasks, *, name: Optional[str] = None) -> List[Path]:
    """``FOLDER/<name>/frame_<index>.png`` per sampled frame: 255 on the subject, 0 elsewhere
    (the name as :func:`sheet_path`'s).

    Raises:
        UserError: the folder holds files this did not write (:func:`foreign_files`).
    """
    out = []
    own = Path(folder) / _name(clip, name)
    foreign = foreign_files(own)
    if foreign:  # checked before the run too (runner); this keeps a folder made meanwhile safe
        raise UserError(f"--save-masks would write into {own}, which holds files eval did not write (first: "
                        f"{foreign[0].name})", path=own, fix="name another --save-masks folder")
    earlier = set(own.glob("frame_*.png")) if own.is_dir() else set()
    for i, m in zip(masks.frames, masks.masks):
        ok, buf = cv2.imencode(".png", np.where(m, 255, 0).astype(np.uint8))
        if not ok:
            raise ValueError(f"{clip.path}: could not encode the mask of frame {i} as PNG")
        out.append(write_bytes(own / f"frame_{int(i):04d}.png", buf.tobytes()))
    for stale in earlier - set(out):  # an earlier run's frames this one did not sample would pass for its own
        stale.unlink(missing_ok=True)
    return out


def holds_outputs(folder: os.PathLike | str) -> bool:
    """Does ``folder`` (or a side's subfolder of it, as compare writes) hold contact sheets already?"""
    root = Path(folder)
    return root.is_dir() and (is_masks_folder(root) or any(is_masks_folder(d) for d in root.iterdir() if d.is_dir()))


def files_read(paths: Sequence[os.PathLike | str]) -> List[Path]:
    """``paths`` with every file under those that are folders (a folder of frames, of weights)."""
    out: List[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return out


def check_inputs_kept(folder: os.PathLike | str, names: Sequence[str], inputs: Sequence[os.PathLike | str], *,
                      masks: bool = True) -> None:
    """Refuse, ``--force`` or not, to write contact sheets (``FOLDER/<name>.drift.png``) or masks
    (``FOLDER/<name>/``, where an earlier run's frames are removed too) where a file the run
    reads is (:func:`files_read`): a ``--subject-mask`` taken from an earlier run's masks, say.

    Raises:
        InputOverwriteError: naming the output and the input.
    """
    root = Path(folder)
    read = [(Path(p).absolute(), Path(p).resolve()) for p in inputs]
    for name in names:
        sheet, own = root / f"{name}{SHEET_SUFFIX}", root / name
        for given, real in read:
            if given == sheet.absolute() or real == sheet.resolve():
                raise InputOverwriteError(sheet, source=given)
            if masks and (own.absolute() in given.parents or own.resolve() in real.parents):
                raise InputOverwriteError(own / given.name, source=given)
