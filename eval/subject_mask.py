"""The subject mask without learned weights: find the subject once, then follow it.

:mod:`circle_rotate.eval.subject_find` finds the subject on the first frames (or takes it
from the user: a box or a mask); :mod:`circle_rotate.eval.subject_track` follows it through
the 16 sampled frames along the consecutive Farneback flows the clip already computes for
motion magnitude (so the mask costs a few GrabCuts and one small backward flow per sampled
pair, not a flow pass of its own). Both work at a reduced resolution (``WORK_SIDE``); masks
are scaled back to the frame's size, and centroids are in full-resolution pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from circle_rotate.eval.keyframe_boxes import bound_at, keyframe_evidence
from circle_rotate.eval.subject_find import FindParams, FoundSubject, find_subject, from_box
from circle_rotate.eval.subject_track import Step, StepEvidence, StepMotion, TrackParams, track

#: Long side (pixels) of the working resolution.
WORK_SIDE = 320


#: How far a box may reach past the frame's edges (a fraction of the frame, summed over the
#: two axes) and still be read, cut off at the edge: a box dragged to the edge overshoots it.
BOX_PAST_EDGE = 0.05
MIN_BOX_SIDE = 8  # a generated subject under 8 px is not one the evaluator can follow
#: A mask covering this much of the frame is the frame, not a subject (a box that big is a close-up:
#: the mask is cut inside it).
MAX_COVER = 0.95


@dataclass(frozen=True)
class SubjectHint:
    """Where the user says the subject is on the first frame, and with ``later_boxes`` on later
    ones (full-resolution pixels)."""

    box: Optional[Tuple[float, float, float, float]] = None  # x0, y0, x1, y1
    mask: Optional[np.ndarray] = None  # (H, W) bool
    #: (frame, box) the user also drew on later frames: they bound the subject there and, by
    #: interpolation, on the frames between (:mod:`circle_rotate.eval.keyframe_boxes`)
    later_boxes: Tuple[Tuple[int, Tuple[float, float, float, float]], ...] = ()

    def within(self, x0: int, y0: int, x1: int, y1: int) -> "SubjectHint":
        """The same hint on the part ``[x0, x1) x [y0, y1)`` of the frame, in that part's pixels."""
        def moved(b: Tuple[float, float, float, float]) -> Tuple[float, float, float, float]:
            return (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0)

        return SubjectHint(box=None if self.box is None else moved(self.box),
                           mask=None if self.mask is None else self.mask[y0:y1, x0:x1],
                           later_boxes=tuple((f, moved(b)) for f, b in self.later_boxes))

    def problem_in(self, width: int, height: int) -> Optional[str]:
        """What makes this hint unusable on a ``width`` x ``height`` frame, or None. A box must
        overlap the frame (a few pixels past its edge are cut off, as a box drawn to the edge
        is), be at least ``MIN_BOX_SIDE`` pixels a side, and a mask must leave some of the frame
        out: a centroid of the whole frame cannot move, so drift would read 0 by construction."""
        boxes = ([(None, self.box)] if self.box is not None else []) + list(self.later_boxes)
        for frame, (x0, y0, x1, y1) in boxes:
            shown = f"the box {x0:g},{y0:g},{x1:g},{y1:g}" + ("" if frame is None else f" of frame {frame}")
            if x0 >= width or y0 >= height:
                return f"{shown} lies outside the {width}x{height} frame"
            past = max(x1 - width, 0.0) / width + max(y1 - height, 0.0) / height
            if past > BOX_PAST_EDGE:
                return f"{shown} reaches past the {width}x{height} frame (is it in another size's or orientation's pixels?)"
            w, h = min(x1, width) - x0, min(y1, height) - y0
            if min(w, h) < MIN_BOX_SIDE:
                return f"{shown} is under {MIN_BOX_SIDE} pixels a side: too small to follow a subject in"
        if self.mask is not None:
            if self.mask.mean() >= MAX_COVER:
                return (f"the subject mask covers {self.mask.mean():.0%} of the frame: its centroid cannot move, so "
                        f"drift would read 0")
            ys, xs = np.nonzero(self.mask)
            if min(xs.max() - xs.min(), ys.max() - ys.min()) + 1 < MIN_BOX_SIDE:
                return f"the subject mask is under {MIN_BOX_SIDE} pixels across: too small to follow a subject in"
        return None

    @classmethod
    def from_boxes(cls, boxes: Mapping[int, Tuple[float, float, float, float]]) -> "SubjectHint":
        """The hint of boxes keyed by frame: the first frame's seeds the subject, the later ones bound it."""
        first = min(boxes)
        return cls(box=boxes[first], later_boxes=tuple(sorted((f, b) for f, b in boxes.items() if f != first)))


@dataclass(frozen=True)
class MaskParams:
    find: FindParams = field(default_factory=FindParams)
    track: TrackParams = field(default_factory=TrackParams)


@dataclass(frozen=True)
class SubjectMasks:
    """One boolean mask per sampled frame, and how each was found."""

    masks: np.ndarray  # (K, H, W) bool, never empty
    frames: Tuple[int, ...]  # the K sampled frames' indices in the clip
    steps: Tuple[Step, ...]  # per sampled frame
    found: FoundSubject  # the first frame's search (working resolution)
    #: (K, H, W) bool: the forward pass's masks where they count towards :meth:`centroids`
    #: (a subject the user gave), else None
    forward: Optional[np.ndarray] = None
    #: per sampled frame, the box (full resolution, margin included) the user's boxes bound its
    #: mask to, or None where they say nothing; empty without later boxes
    bounds: Tuple[Optional[Tuple[float, float, float, float]], ...] = ()
    #: the part of the frame (x0, y0, x1, y1) the subject was looked for in, where bars were left
    #: out (:mod:`circle_rotate.media.borders`); None: the whole frame
    picture: Optional[Tuple[int, int, int, int]] = None

    @property
    def picture_area(self) -> int:
        """Pixels of the part of the frame the subject was looked for in."""
        if self.picture is None:
            return int(self.masks[0].size)
        x0, y0, x1, y1 = self.picture
        return (x1 - x0) * (y1 - y0)

    def placed(self, x0: int, y0: int, width: int, height: int) -> "SubjectMasks":
        """Masks found on a part of the frame whose corner is (x0, y0), put back in the whole
        (width x height) frame: the same masks, centroids and bounds in the frame's pixels."""
        def pad(m: Optional[np.ndarray]) -> Optional[np.ndarray]:
            if m is None:
                return None
            out = np.zeros((m.shape[0], height, width), bool)
            out[:, y0:y0 + m.shape[1], x0:x0 + m.shape[2]] = m
            return out

        h, w = self.masks.shape[1:3]
        bounds = tuple(None if b is None else (b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0) for b in self.bounds)
        return SubjectMasks(pad(self.masks), self.frames, self.steps, self.found, pad(self.forward), bounds,
                            (x0, y0, x0 + w, y0 + h))

    @property
    def sources(self) -> Tuple[str, ...]:
        return tuple(s.source for s in self.steps)

    @property
    def fallbacks(self) -> int:
        """Sampled frames whose mask is the propagation alone (the refinement was refused)."""
        return sum(s.source == "propagated" for s in self.steps)

    def centroids(self) -> np.ndarray:
        """(K, 2) subject centroids (x, y) in pixels: the masks' centroids, or, where the
        forward pass's are kept, the mean of both passes' (see :func:`segment_subject`)."""
        out = _centroids(self.masks)
        return out if self.forward is None else (out + _centroids(self.forward)) / 2


def _centroids(masks: Sequence[np.ndarray]) -> np.ndarray:
    out = np.empty((len(masks), 2))
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        out[i] = (xs.mean(), ys.mean())
    return out


def working_size(height: int, width: int) -> Tuple[float, Tuple[int, int]]:
    """The scale to the working resolution (at most 1) and the working (width, height)."""
    scale = min(1.0, WORK_SIDE / max(height, width))
    return scale, (max(1, int(round(width * scale))), max(1, int(round(height * scale))))


def window_pairs(n: int, params: FindParams = FindParams()) -> int:
    """How many consecutive flows from the first sampled frame on give the search its motion
    evidence, in a clip of ``n`` frames."""
    return max(3, int(params.window * (n - 1)))


def find_on_first_frame(frames: np.ndarray, flows: Sequence[np.ndarray], *, first: int = 0,
                        params: FindParams = FindParams()) -> FoundSubject:
    """The subject on ``frames[first]``, found from the :func:`window_pairs` consecutive
    full-resolution flows after it (``flows[i]``: ``i -> i + 1``; only those are read, so a
    caller may compute just them). The mask is at the working resolution (:func:`working_size`)."""
    height, width = frames.shape[1:3]
    scale, size = working_size(height, width)
    image = frames[first] if scale >= 1.0 else cv2.resize(frames[first], size, interpolation=cv2.INTER_AREA)
    window = [working_flow(f, size, scale) for f in flows[first:first + window_pairs(len(frames), params)]]
    return find_subject(image, cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), window, params=params)


def working_flow(flow: np.ndarray, size: Tuple[int, int], scale: float) -> np.ndarray:
    """A full-resolution flow at the working resolution (``size``, ``scale``: :func:`working_size`)."""
    if scale >= 1.0:
        return flow
    return cv2.resize(flow, size, interpolation=cv2.INTER_AREA) * scale


def segment_subject(frames: np.ndarray, indices: Sequence[int], flows: Sequence[np.ndarray], *,
                    hint: Optional[SubjectHint] = None, params: MaskParams = MaskParams(),
                    step_motion: Optional[StepMotion] = None,
                    evidence: Optional[StepEvidence] = None) -> SubjectMasks:
    """Find the subject on ``indices[0]`` and follow it through the other sampled frames.

    Args:
        frames: (T, H, W, 3) RGB uint8, the whole clip.
        indices: the K sampled frame indices, increasing (repeats allowed).
        flows: the T - 1 consecutive full-resolution flows ``i -> i + 1``.
        hint: the user's box or mask on the first frame, if any.
        params: tuning.
        step_motion: the subject's motion between sampled frames in working pixels
            (:func:`working_size`), where it is known; by default estimated from ``flows``.
        evidence: pixels of a sampled frame known to be the subject or the background
            (working resolution), where known from elsewhere; by default there is none, or
            the outside of the boxes of a hint with ``later_boxes``.

    Returns:
        :class:`SubjectMasks` with a non-empty full-resolution mask per sampled frame.
    """
    idx = [int(i) for i in indices]
    height, width = frames.shape[1:3]
    scale, size = working_size(height, width)
    last = idx[-1]
    small = {}
    for i in range(idx[0], last + 1):
        small[i] = frames[i] if scale >= 1.0 else cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA)
    greys = {i: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for i, f in small.items()}
    work_flows = [working_flow(f, size, scale) for f in flows]
    if hint is not None and hint.mask is not None:
        m = cv2.resize(hint.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        found = FoundSubject(m, "user_mask", 1.0)
    elif hint is not None and hint.box is not None:
        found = from_box(small[idx[0]], tuple(v * scale for v in hint.box))
    else:
        found = find_on_first_frame(frames, flows, first=idx[0], params=params.find)
    bounds: Tuple[Optional[Tuple[float, float, float, float]], ...] = ()
    if hint is not None and hint.later_boxes:
        if evidence is not None or hint.box is None:
            raise ValueError("later boxes bound a subject given by its first box, and stand for the evidence")
        drawn = {idx[0]: hint.box, **dict(hint.later_boxes)}
        evidence = keyframe_evidence(drawn, scale)
        bounds = tuple(bound_at(drawn, i) for i in idx)
    # a mask the user drew is the subject on the first frame exactly (a box is only its bounds:
    # its cut may still be corrected by the backward pass)
    masks, steps, forward = track(small, greys, work_flows, idx, found.mask, params=params.track,
                                  given=found.given, keep_first=found.basis == "user_mask", step_motion=step_motion,
                                  evidence=evidence)
    full = [_full_size(m, (width, height), scale) for m in masks]
    # Each pass sheds what turns into view on its leading side (new faces the first frame's
    # colours do not describe), and the two passes run the turn in opposite directions, so
    # their centroids err to opposite sides. Only where the subject was given: a found mask
    # may have taken in background, which the forward pass carries until a refinement drops
    # it and the backward pass never had. On the development orbits with the first frame's
    # box given: median error 3.71 -> 2.74 px, Spearman 0.88 -> 0.92.
    kept = np.stack([_full_size(m, (width, height), scale) for m in forward]) if found.given else None
    return SubjectMasks(np.stack(full), tuple(idx), tuple(steps), found, kept, bounds)


def _full_size(mask: np.ndarray, size: Tuple[int, int], scale: float) -> np.ndarray:
    return mask if scale >= 1.0 else cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_LINEAR) > 0
