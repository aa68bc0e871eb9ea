"""What makes a baseline video and a LoRA video one pair: their names without the counters and
timestamps generators add, and the first frame they share.

An image-to-video model starts every video of one scene at the same conditioning image, so a
baseline video and its LoRA video agree on their first frame (the study's 7 real pairs: 36.8 dB
and up at 64 px, grey; 25.8 dB and up re-encoded as MP4s), and two videos of different scenes do
not (the 42 wrong pairings of them: 13.7 dB and down). A pairing by
name can still be wrong: ComfyUI numbers its outputs ``Wan_00001_.mp4, Wan_00002_.mp4, ...`` on
each side, and one video missing on one side shifts every later number by one.
"""

from __future__ import annotations

import re
from typing import Optional

import cv2
import numpy as np

#: First-frame PSNR (dB, grey, 64 px short side) below which two videos do not start at the same
#: conditioning image. Real pairs read 25.8 dB and up, different scenes 13.7 dB and down: 18 dB
#: leaves over 4 dB either side.
SAME_START_DB = 18.0

#: Short side (px) the first frames are compared at: an encoder's noise and a decoder's rounding
#: average out, the picture stays.
START_SIDE = 64

#: ComfyUI's SaveVideo / SaveAnimated* counter (``name_00001_``) and VideoHelperSuite's (``name_00001``).
_COUNTER = re.compile(r"_\d{5}_?$")
#: Wan's generate.py: ``<task>_<size>_<ulysses>_<prompt>_YYYYmmdd_HHMMSS``.
_WAN_TIME = re.compile(r"_\d{8}_\d{6}$")
#: musubi-tuner's wan_generate_video.py: ``YYYYmmdd-HHMMSS-mmm_<seed>[_<image name>]``: the seed
#: (and the image name in batch mode) is what a baseline run and a LoRA run share.
_MUSUBI_TIME = re.compile(r"^\d{8}-\d{6}-\d{3}_(?=.)")
#: A side's mark at the end of a video's name: demo1_base, demo1-lora, demo1_ours.
SIDE_MARK = re.compile(r"[_\-. ](base|baseline|orig|original|lora|ours|others|theirs)$", re.IGNORECASE)


def name_key(stem: str) -> Optional[str]:
    """A video's name (``stem``, no extension) with what a generator adds to tell its runs apart
    removed: ComfyUI's and VideoHelperSuite's counter, Wan generate.py's timestamp, musubi-tuner's
    time prefix (the seed is kept), then a side mark (``_base``, ``_lora``).

    Returns:
        The key, or None when the name carries none of these (the name is then the key already).

    Example:
        >>> name_key("demo2_00003_"), name_key("20250801-101500-123_42")
        ('demo2', '42')
    """
    key = stem
    for pattern in (_COUNTER, _WAN_TIME, _MUSUBI_TIME):
        key = pattern.sub("", key)
    if key == stem or not key:
        return None
    return SIDE_MARK.sub("", key) or key


def start_thumbnail(frame: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3 RGB or H, W grey, uint8) as grey at :data:`START_SIDE` px on its short side."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    h, w = grey.shape
    scale = START_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def start_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two first frames at :data:`START_SIDE` px, grey; ``b`` is brought to ``a``'s
    thumbnail size (a pair of other sizes is named elsewhere). Infinite when they agree exactly.

    Args:
        a, b: frames, (H, W, 3) RGB or (H, W) grey, uint8.
    """
    ta = start_thumbnail(a).astype(np.float64)
    tb = cv2.resize(start_thumbnail(b), (ta.shape[1], ta.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float64)
    mse = float(np.mean((ta - tb) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def different_start(psnr_db: float) -> Optional[str]:
    """Why two videos whose first frames agree to ``psnr_db`` are not one pair; None when they are."""
    if psnr_db >= SAME_START_DB:
        return None
    return (f"first frames differ ({psnr_db:.1f} dB): not the same conditioning image; check the pairing "
            "(a missing video shifts ComfyUI's counters)")
