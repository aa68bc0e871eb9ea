"""Write what the drift measured: a contact sheet PNG per video, and the masks themselves.

Called in the process that evaluated the video (the masks are not sent back); every file is
written atomically, so an interrupted run leaves no half-written PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import cv2
import numpy as np

from circle_rotate.eval.contact_sheet import contact_sheet, png_bytes
from circle_rotate.eval.frames import Clip
from circle_rotate.eval.subject_mask import SubjectMasks
from circle_rotate.kernel.atomic import write_bytes


def _stem(clip: Clip) -> str:
    return Path(clip.path).stem or "video"


def sheet_path(folder: os.PathLike | str, clip: Clip) -> Path:
    """``FOLDER/<video stem>.drift.png``."""
    return Path(folder) / f"{_stem(clip)}.drift.png"


def write_contact_sheet(folder: os.PathLike | str, clip: Clip, masks: SubjectMasks, *, drift: float,
                        confidence: float) -> Path:
    """The sampled frames, each numbered as in the video, with the mask outline and the centroid
    path, as a PNG (a given subject's centroid is the mean of two passes: both outlines are drawn)."""
    idx = clip.sampled()
    title = f"{clip.name}: drift {drift:.2f} px, confidence {confidence:.2f} (found by {masks.found.basis})"
    if masks.forward is not None:
        title += "; centroid = mean of the orange and the green pass"
    if masks.bounds:
        title += "; white: the bound your boxes set"
    sheet = contact_sheet([clip.frames[i] for i in idx], masks.masks, masks.centroids(), second=masks.forward,
                          bounds=masks.bounds, numbers=[int(i) for i in idx], title=title)
    return write_bytes(sheet_path(folder, clip), png_bytes(sheet))


def write_masks(folder: os.PathLike | str, clip: Clip, masks: SubjectMasks) -> List[Path]:
    """``FOLDER/<video stem>/frame_<index>.png`` per sampled frame: 255 on the subject, 0 elsewhere."""
    out = []
    for i, m in zip(clip.sampled(), masks.masks):
        ok, buf = cv2.imencode(".png", np.where(m, 255, 0).astype(np.uint8))
        if not ok:
            raise ValueError(f"{clip.path}: could not encode the mask of frame {i} as PNG")
        out.append(write_bytes(Path(folder) / _stem(clip) / f"frame_{int(i):04d}.png", buf.tobytes()))
    return out
