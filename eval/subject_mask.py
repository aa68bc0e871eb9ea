"""The subject mask without learned weights: what stands up from the ground at the orbit's centre.

:mod:`circle_rotate.eval.parallax` gives each sampled frame a map of relative parallax: about
0 on the ground (and its shadows) and the backdrop, growing linearly with height on anything
standing on the ground. Here, for each sampled frame:

1. Threshold it and keep the blob that is largest once weighted by closeness to where the
   subject was in the previous sampled frame (the image centre for the first: the camera
   looks at the orbit's centre). Clutter stands off the plane too, but smaller and elsewhere.
2. The outline: the flow smooths the evidence's edge over a few pixels, so each row is cut
   at half its own peak (parallax grows with height, so one cut for all rows would shave
   the lower rows and pad the upper ones). Holes are filled.
3. The bottom: parallax falls to zero where the subject meets the ground, so no threshold
   sees the last part. Per column, the fall is a straight line in the image row (a vertical
   surface at one depth); extrapolated to zero it gives the contact row, and the mask is
   extended down to it (smoothed across columns).
4. A frame with no blob keeps the previous frame's mask, flagged ``propagated``; a clip with
   none at all gets a central box, flagged ``centre``. Every sampled frame gets a non-empty
   mask. A frame whose mask is much smaller than its neighbours' lost a part (where the
   orbit slows, a face's parallax can fade for a few frames in a row): the nearest whole
   mask is added to it, flagged ``completed``, and the snap redraws the outline.
5. The outline is then snapped to the image's own edges (:mod:`circle_rotate.eval.mask_snap`):
   parallax finds the subject, colour and edges draw its outline, and the ground's look
   (:func:`circle_rotate.eval.parallax.ground_look`) keeps its shadows out.

Work is at a reduced resolution (``ParallaxParams.side``); masks are scaled back to the
frame's size, and centroids are in full-resolution pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage as ndi

from circle_rotate.eval.mask_snap import SnapParams, snap_clip
from circle_rotate.eval.parallax import ParallaxParams, WorkingClip, parallax_evidence

logger = logging.getLogger(__name__)

SOURCES = ("motion", "completed", "propagated", "centre")
_K3 = np.ones((3, 3), np.uint8)
_DISC5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


@dataclass(frozen=True)
class MaskParams:
    """Tuning of the weight-free segmentation (the defaults are what the tests check).

    Attributes:
        threshold: least relative parallax that counts as standing off the ground.
        reach: a blob's distance from the previous subject (fraction of the diagonal) at
            which its weight falls to 1/e.
        max_extension: the furthest the bottom is extended, as a fraction of the blob's height.
        row_cut: each row of the blob is cut at this fraction of its peak evidence.
        lost_area: a mask smaller than this fraction of its neighbourhood's lost a part
            (see :func:`complete_lost_parts`).
        parallax: the evidence's own tuning.
        snap: the tuning of the snap to the image's edges (None: keep the parallax outline).
    """

    threshold: float = 0.45
    reach: float = 0.12
    max_extension: float = 0.25
    row_cut: float = 0.5
    lost_area: float = 0.75
    parallax: ParallaxParams = field(default_factory=ParallaxParams)
    snap: Optional[SnapParams] = field(default_factory=SnapParams)


@dataclass(frozen=True)
class SubjectMasks:
    """One boolean mask per sampled frame and where it came from."""

    masks: np.ndarray  # (K, H, W) bool, never empty
    sources: Tuple[str, ...]  # per frame: one of SOURCES

    @property
    def fallbacks(self) -> int:
        """Frames whose mask is not backed by that frame's own evidence."""
        return sum(s != "motion" for s in self.sources)

    def centroids(self) -> np.ndarray:
        """(K, 2) mask centroids (x, y) in pixels."""
        out = np.empty((len(self.masks), 2))
        for i, m in enumerate(self.masks):
            ys, xs = np.nonzero(m)
            out[i] = (xs.mean(), ys.mean())
        return out


def centre_box(height: int, width: int) -> np.ndarray:
    """The fallback mask: the central third of the width, the middle 60% of the height."""
    m = np.zeros((height, width), bool)
    m[int(0.2 * height):int(0.8 * height), width // 3:2 * width // 3] = True
    return m


def nearest_blob(candidates: np.ndarray, near: Tuple[float, float], *, reach: float
                 ) -> Optional[Tuple[np.ndarray, Tuple[float, float]]]:
    """The blob that is largest once weighted by closeness to ``near``, and its centroid."""
    h, w = candidates.shape
    n, labels, stats, centres = cv2.connectedComponentsWithStats(candidates.astype(np.uint8))
    best, score = 0, 0.0
    for i in range(1, n):
        dist = np.hypot(centres[i, 0] - near[0], centres[i, 1] - near[1]) / np.hypot(w, h)
        s = stats[i, cv2.CC_STAT_AREA] * np.exp(-(dist / reach) ** 2)
        if s > score:
            best, score = i, s
    return (labels == best, (float(centres[best, 0]), float(centres[best, 1]))) if best else None


def outline(blob: np.ndarray, evidence: np.ndarray, threshold: float, *, row_cut: float = 0.5) -> np.ndarray:
    """Cut each row of ``blob`` at ``row_cut`` of the row's peak evidence; drop threads; fill holes."""
    peak = np.where(blob, evidence, 0).max(axis=1, keepdims=True)
    cut = blob & (evidence > np.maximum(threshold, row_cut * peak))
    # thin threads (a horizon line, a lit window edge) joining the subject are not part of it
    cut = cv2.morphologyEx(cut.astype(np.uint8), cv2.MORPH_OPEN, _DISC5) > 0
    if cut.sum() < 0.2 * blob.sum():
        return ndi.binary_fill_holes(blob)
    # every part above the cut stays (a limb may separate from the body), specks do not
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cut.astype(np.uint8))
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= 0.02 * cut.sum()
    return ndi.binary_fill_holes(keep[labels])


def contact_rows(mask: np.ndarray, evidence: np.ndarray, *, threshold: float, max_extension: float) -> np.ndarray:
    """Per column of ``mask``, the row where the straight-line fall of parallax reaches zero
    (NaN where a column has too little of it to fit), smoothed across columns."""
    ys, xs = np.nonzero(mask)
    height = ys.max() - ys.min() + 1
    strength = float(np.percentile(evidence[mask], 90))
    rows = np.full(mask.shape[1], np.nan)
    for x in range(xs.min(), xs.max() + 1):
        col = np.nonzero(mask[:, x])[0]
        if len(col) < 0.3 * height:
            continue
        top_value = evidence[col, x].max()
        if top_value < 0.6 * strength:
            continue
        span = np.arange(max(col.min(), col.max() - height // 2), col.max() + 1)
        v = evidence[span, x]
        # the straight part: above the noise, below the flow's rounding of the top edge
        ok = (v > 0.9 * threshold) & (v < 0.85 * top_value)
        if ok.sum() < 5:
            continue
        slope, intercept = np.polyfit(span[ok], v[ok], 1)
        if slope < -1e-4:
            rows[x] = min(-intercept / slope, col.max() + max_extension * height)
    good = np.nonzero(np.isfinite(rows))[0]
    if len(good) >= 3:
        rows[good] = ndi.median_filter(rows[good], size=min(15, len(good) | 1), mode="nearest")
    return rows


def extend_to_ground(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``mask`` with each column filled down to its contact row (columns without one unchanged)."""
    out = mask.copy()
    for x in np.nonzero(np.isfinite(rows))[0]:
        col = np.nonzero(mask[:, x])[0]
        bottom = int(round(rows[x]))
        if len(col) and bottom > col.max():
            out[col.max():bottom + 1, x] = True
    return out


def subject_in_frame(evidence: np.ndarray, near: Tuple[float, float], params: MaskParams
                     ) -> Optional[Tuple[np.ndarray, Tuple[float, float]]]:
    """The subject's mask in one frame's evidence (working resolution) and its blob's centre."""
    candidates = cv2.morphologyEx((evidence > params.threshold).astype(np.uint8), cv2.MORPH_OPEN, _K3) > 0
    found = nearest_blob(candidates, near, reach=params.reach)
    if found is None:
        return None
    blob, centre = found
    mask = outline(blob, evidence, params.threshold, row_cut=params.row_cut)
    rows = contact_rows(mask, evidence, threshold=params.threshold, max_extension=params.max_extension)
    return extend_to_ground(mask, rows), centre


def complete_lost_parts(masks: Sequence[np.ndarray], sources: Sequence[str], lost_area: float
                        ) -> Tuple[List[np.ndarray], List[str]]:
    """Masks that lost a part, completed by the nearest whole one.

    The subject's size in the image changes slowly along an orbit, so a mask smaller than
    ``lost_area`` of its neighbourhood (the 75th percentile of the areas within three
    sampled frames either side: up to four frames in a row may have lost the same part)
    lost something. The nearest mask that did not is added to it (not put in its place:
    what the frame found itself is where the subject is now); the snap then redraws the
    outline from the image. Such frames are flagged ``completed``.
    """
    areas = np.array([m.sum() for m in masks], np.float64)
    local = np.array([np.percentile(areas[max(0, k - 3):k + 4], 75) for k in range(len(masks))])
    lost = areas < lost_area * local
    whole = np.nonzero(~lost)[0]
    out, flags = list(masks), list(sources)
    for k in np.nonzero(lost)[0]:
        nearest = whole[np.argmin(np.abs(whole - k))]
        out[k] = masks[k] | masks[nearest]
        if flags[k] == "motion":
            flags[k] = "completed"
    return out, flags


def segment_subject(frames: np.ndarray, indices: Sequence[int], *, params: MaskParams = MaskParams()) -> SubjectMasks:
    """Segment the subject in the frames ``indices`` of a clip.

    Args:
        frames: (T, H, W, 3) RGB uint8, the whole clip (neighbours are looked up in it).
        indices: the K sampled frame indices, increasing.
        params: tuning (see :class:`MaskParams`).

    Returns:
        :class:`SubjectMasks` with a non-empty mask (full resolution) for each sampled frame.
    """
    idx = [int(i) for i in indices]
    height, width = frames.shape[1:3]
    clip = WorkingClip(frames, params.parallax.side)
    found_evidence = parallax_evidence(clip, idx, params.parallax)
    evidence = [None if e is None else cv2.blur(e.parallax, (3, 3)) for e in found_evidence]
    ground = [None if e is None else e.ground for e in found_evidence]
    h, w = clip.grey(idx[0]).shape
    near = (w / 2, h / 2)
    masks: List[Optional[np.ndarray]] = []  # None until the first frame with evidence
    sources: List[str] = []
    for e in evidence:
        found = subject_in_frame(e, near, params) if e is not None else None
        if found is None:
            masks.append(masks[-1] if masks else None)
            sources.append("propagated")
            continue
        mask, near = found
        masks.append(mask)
        sources.append("motion")
    if all(s != "motion" for s in sources):
        logger.info("no parallax evidence in any sampled frame: the subject mask is the central box")
        return SubjectMasks(np.repeat(centre_box(height, width)[None], len(idx), axis=0), ("centre",) * len(idx))
    # frames before the first one with evidence take its mask
    first = sources.index("motion")
    masks[:first] = [masks[first]] * first
    masks, sources = complete_lost_parts(masks, sources, params.lost_area)
    full = [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR) > 0 for m in masks]
    if params.snap is not None:
        full = snap_clip([frames[i] for i in idx], full, evidence, params.snap, ground=ground)
    return SubjectMasks(np.stack(full), tuple(sources))
