"""Boxes the user drew on several frames: where the subject cannot be on the frames between.

``--subject-boxes`` in a labelled set's layout (``{"NAME": {"boxes": {"0": [...], "12": [...]}}}``,
as ``../shared/eval-real`` is labelled) gives the subject's tight box on a few frames. The first
one seeds the subject, as ``--subject-box`` does; all of them then bound it. Between two labelled
frames the box is interpolated linearly, corner by corner; past the last labelled frame nothing is
assumed. On each sampled frame in the labelled span, what lies outside the box grown by a
margin on every side (:data:`LEAST_MARGIN` of its size on a labelled frame, up to :data:`MARGIN`
halfway to the next) is surely not the subject: the tracker clips its
propagated mask to the rest, and the cut labels it background
(:class:`circle_rotate.eval.subject_track.Evidence`). A subject the first frame's colours cannot
part from its surroundings (a dark car against hills of its colour) then still cannot spread
past what the user drew.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from circle_rotate.eval.boxes import Box, grown, in_box
from circle_rotate.eval.subject_track import Evidence, StepEvidence

#: How far beyond a drawn box (a fraction of its width and height, on each side) the subject may
#: still reach on a labelled frame (hand-drawn boxes are tight to a pixel or two), and halfway
#: between two labelled frames, where an interpolated box lags a subject that does not move at a
#: steady pace the most; linear between.
LEAST_MARGIN, MARGIN = 0.02, 0.1


def box_at(boxes: Mapping[int, Box], frame: int) -> Optional[Box]:
    """The box on ``frame``: a labelled one, or the linear interpolation between the labelled
    frames on either side; None before the first or after the last labelled frame."""
    frames = sorted(boxes)
    if not frames or frame < frames[0] or frame > frames[-1]:
        return None
    after = next(f for f in frames if f >= frame)
    if after == frame:
        return tuple(float(v) for v in boxes[frame])  # type: ignore[return-value]
    before = max(f for f in frames if f < frame)
    t = (frame - before) / (after - before)
    a, b = np.asarray(boxes[before], np.float64), np.asarray(boxes[after], np.float64)
    return tuple(float(v) for v in (1 - t) * a + t * b)  # type: ignore[return-value]


def margin_at(frames: Sequence[int], frame: int, *, least: float = LEAST_MARGIN, most: float = MARGIN) -> float:
    """The margin on ``frame`` (within the span of the labelled ``frames``): ``least`` on a
    labelled frame, ``most`` halfway between two, linear between."""
    labelled = sorted(frames)
    after = next((f for f in labelled if f >= frame), labelled[-1])
    before = max((f for f in labelled if f <= frame), default=labelled[0])
    if after == before:
        return least
    lag = min(frame - before, after - frame) / ((after - before) / 2)
    return least + (most - least) * min(1.0, lag)


def bound_at(boxes: Mapping[int, Box], frame: int) -> Optional[Box]:
    """Where the subject may be on ``frame``: its box (:func:`box_at`) grown by the frame's margin
    (:func:`margin_at`); None outside the labelled span."""
    box = box_at(boxes, frame)
    return None if box is None else grown(box, margin_at(list(boxes), frame))


def outside(bound: Box, shape: Tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the pixels whose centres lie outside ``bound``."""
    h, w = shape
    return ~in_box((np.arange(w) + 0.5)[None, :], (np.arange(h) + 0.5)[:, None], bound)


def keyframe_evidence(boxes: Mapping[int, Box], scale: float) -> StepEvidence:
    """Evidence for the tracker from the boxes the user drew (``boxes``: frame -> box in
    full-resolution pixels; the tracker works at ``scale`` of them): on a frame in the labelled
    span, the outside of its bound (:func:`bound_at`); elsewhere none."""

    def evidence(frame: int, moved: np.ndarray) -> Optional[Evidence]:
        bound = bound_at(boxes, frame)
        if bound is None:
            return None
        return Evidence(outside=outside(tuple(v * scale for v in bound), moved.shape))  # type: ignore[arg-type]

    return evidence
