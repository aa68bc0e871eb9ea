"""Ping-pong videos: played forward, then back.

VideoHelperSuite's Video Combine node has a ``pingpong`` switch that appends the frames in reverse
(``f0 ... fk, fk-1 ... f1``), and an FFmpeg ``reverse`` + ``concat`` gives ``f0 ... fk, fk ... f0``.
Read whole, such a clip's camera turns back halfway: its direction, speed, first-to-last PSNR and
``orbit_reversal`` describe the editing, not the generation. The first half is the video.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

#: Frames the shortest ping-pong clip has (three forward, back again).
MIN_FRAMES = 6
#: Side (px) the frames are compared at: encoding noise averages out.
SIDE = 48
#: A mirrored frame must be this much closer to its mirror than to the mirror's neighbours.
CLOSER = 0.5
#: Share of the mirrored frames that must be.
SHARE = 0.9
#: Grey levels (mean absolute difference, at SIDE px) two frames must differ by to be two.
DISTINCT = 1.0
#: Frames a neighbour is looked for away from its frame.
NEAR = 3
#: Grey levels (mean absolute difference) some frame of the forward half must lie from the first:
#: a still clip mirrors itself trivially. The largest change counts, not the turn frame's: a
#: 360-degree orbit turns back at the view it started from.
MIN_CHANGE = 2.0


def _small(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape[1:3]
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in grey]).astype(np.float32)


def _neighbours(j: int, turn: int, mad) -> list:
    """The nearest frames before and after ``j`` (up to the turn) that differ from it: a GIF
    resampled to another rate repeats frames, and a repeat is no neighbour."""
    out = []
    for step in (-1, 1):
        k = j + step
        while 0 <= k <= turn and abs(k - j) <= NEAR and mad(j, k) < DISTINCT:
            k += step
        if 0 <= k <= turn and abs(k - j) <= NEAR:
            out.append(k)
    return out


def pingpong_length(grey: np.ndarray) -> Optional[int]:
    """How many frames the forward half of a ping-pong clip has (the turn frame included); None
    when ``grey`` is not one.

    Frame ``i`` of the second half is frame ``s - i`` of the first, with ``s = n - 1`` (the reversed
    copy whole) or ``s = n`` (VideoHelperSuite: neither end repeated). It must be closer to that
    frame than to that frame's neighbours, in nearly every frame of the second half.

    Args:
        grey: (T, H, W) uint8 frames.
    """
    n = int(grey.shape[0])
    if n < MIN_FRAMES:
        return None
    small = _small(grey)

    def mad(i: int, j: int) -> float:
        return float(np.mean(np.abs(small[i] - small[j])))

    for s in (n - 1, n):
        turn = s // 2  # the last forward frame
        second = [i for i in range(turn + 1, n) if 0 <= s - i < turn]
        if len(second) < 2:
            continue
        closer = 0
        for i in second:
            j = s - i
            near = [mad(i, k) for k in _neighbours(j, turn, mad)]
            closer += bool(near) and mad(i, j) < CLOSER * min(near)
        if closer >= SHARE * len(second) and max(mad(0, j) for j in range(1, turn + 1)) >= MIN_CHANGE:
            return turn + 1
    return None
