"""Find the subject once, on the first frames of a clip (no weights).

An image-to-video model starts at its conditioning image, so the subject is what the first
frames are about; in an orbit the camera circles it, so it is also what stays put in the
image while the rest slides past. Here, at the working resolution:

1. Motion evidence over the first frames (the consecutive Farneback flows the clip already
   has): each textured pixel's flow length divided by the frame's typical flow length. A
   pixel that reads under ``still`` moves with the orbit's fixed point; one that reads over
   ``moving`` moves with the background. Flat pixels (sky, a bare table) have no reliable
   flow and give no evidence either way.
2. The still region that is largest once weighted by closeness to the image centre, and
   the still regions next to it (several parts stay one subject), is the subject's seed.
   Without motion (a static camera, a pan: nothing is still against anything) the seed is
   the centre of the image, and the frame's border is taken as background.
3. GrabCut (colour models and the image's edges) draws the outline from that seed; the
   moving pixels are surely background.

Or the user says where it is: a box (GrabCut inside it) or a mask. :class:`FoundSubject`
says what the seed rested on, which :mod:`circle_rotate.eval.drift_confidence` weighs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from circle_rotate.eval.grabcut import cut, disc, keep_overlapping

#: What a seed may rest on (``FoundSubject.basis``).
BASES = ("user_mask", "user_box", "motion", "centre")


@dataclass(frozen=True)
class FindParams:
    """Tuning of the first-frames search.

    Attributes:
        window: fraction of the clip whose first frames give the motion evidence (at least 3 pairs).
        still: relative flow length under which a textured pixel is still.
        moving: relative flow length over which a textured pixel moves with the background.
        least_motion: typical flow length (working pixels per frame) under which a pair
            shows no camera motion.
        texture: least local contrast (grey levels) for a pixel's flow to count.
        reach: the centre prior's width, as a fraction of each image side.
        least_seed: smallest seed, as a fraction of the frame.
    """

    window: float = 0.2
    still: float = 0.25
    moving: float = 0.8
    least_motion: float = 0.25
    texture: float = 6.0
    reach: float = 0.3
    least_seed: float = 0.01


@dataclass(frozen=True)
class FoundSubject:
    """The subject on the first frame (working resolution) and what it rests on."""

    mask: np.ndarray  # (h, w) bool, non-empty
    basis: str  # one of BASES
    contrast: float  # 0-1: how clearly the evidence parts the seed from its surroundings


def textured(grey: np.ndarray, level: float) -> np.ndarray:
    """Pixels with enough local contrast for dense flow to be trusted (both directions)."""
    g = grey.astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8, cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8
    xx, yy, xy = (cv2.blur(a, (7, 7)) for a in (gx * gx, gy * gy, gx * gy))
    # the smaller eigenvalue of the structure tensor: an edge alone does not pin the flow along it
    small = 0.5 * (xx + yy) - np.sqrt(0.25 * (xx - yy) ** 2 + xy ** 2)
    return np.sqrt(np.maximum(small, 0)) >= level / 4


def relative_motion(flows: Sequence[np.ndarray], least: float) -> Optional[np.ndarray]:
    """Mean over ``flows`` of each pixel's flow length / the frame's 75th percentile (pairs
    without camera motion left out); None when no pair moves."""
    acc, n = None, 0
    for f in flows:
        mag = cv2.magnitude(f[..., 0], f[..., 1])
        scale = float(np.percentile(mag, 75))
        if scale < least:
            continue
        acc = mag / scale if acc is None else acc + mag / scale
        n += 1
    return None if n == 0 else acc / n


def centre_prior(h: int, w: int, reach: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-((xs - w / 2) / (reach * w)) ** 2 - ((ys - h / 2) / (reach * h)) ** 2)


def still_seed(still: np.ndarray, prior: np.ndarray, least: int) -> Optional[np.ndarray]:
    """The still region that scores highest (area x centre prior), with the still regions
    that touch it once dilated (a ball on a box, a rider on a bike)."""
    closed = cv2.morphologyEx(still.astype(np.uint8), cv2.MORPH_CLOSE, disc(2))
    closed = cv2.morphologyEx(closed, cv2.MORPH_OPEN, disc(1))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed)
    if n <= 1:
        return None
    score = np.bincount(labels.ravel(), weights=prior.ravel(), minlength=n)
    score[0] = 0
    score[stats[:, cv2.CC_STAT_AREA] < least] = 0
    best = int(np.argmax(score))
    if score[best] <= 0:
        return None
    seed = labels == best
    h, w = still.shape
    near = cv2.dilate(seed.astype(np.uint8), disc(max(2, int(0.03 * max(h, w))))) > 0
    for i in np.unique(labels[near]):
        if i and score[i] > 0.1 * score[best]:
            seed |= labels == i
    return seed


def _contrast(seed: np.ndarray, rel: np.ndarray, valid: np.ndarray) -> float:
    """How much faster the textured surroundings move than the seed: 0 (alike) to 1."""
    ring = (cv2.dilate(seed.astype(np.uint8), disc(max(3, int(0.08 * max(seed.shape))))) > 0) & ~seed & valid
    inside = seed & valid
    if ring.sum() < 20 or inside.sum() < 20:
        return 0.0
    a, b = float(np.median(rel[inside])), float(np.median(rel[ring]))
    return float(np.clip((b - a) / max(b, 1e-6), 0.0, 1.0))


def find_subject(image: np.ndarray, grey: np.ndarray, first_flows: Sequence[np.ndarray], *,
                 params: FindParams = FindParams()) -> FoundSubject:
    """The subject on the first frame.

    Args:
        image: (h, w, 3) RGB uint8, the first frame at the working resolution.
        grey: (h, w) uint8, the same in grey.
        first_flows: consecutive flows of the first frames at the working resolution.
        params: tuning.

    Returns:
        :class:`FoundSubject` (never empty: the worst case is the central ellipse).
    """
    h, w = grey.shape
    prior = centre_prior(h, w, params.reach)
    valid = textured(grey, params.texture)
    rel = relative_motion(first_flows, params.least_motion)
    labels = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    seed = None
    if rel is not None:
        rel = cv2.blur(rel, (3, 3))
        seed = still_seed(valid & (rel < params.still), prior, int(params.least_seed * h * w))
    if seed is not None:
        basis, contrast = "motion", _contrast(seed, rel, valid)
        # the still pixels are where the subject has texture (edges, wheels, windows); its
        # plain surfaces between them read nothing, so the seed is their hull
        hull = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.argwhere(seed)[:, ::-1].astype(np.int32)), 1)
        hull = hull > 0
        labels[hull] = cv2.GC_PR_FGD
        labels[cv2.erode(seed.astype(np.uint8), disc(2)) > 0] = cv2.GC_FGD
        labels[valid & (rel > params.moving) & ~hull] = cv2.GC_BGD
        labels[valid & (rel > params.moving) & hull & (labels != cv2.GC_FGD)] = cv2.GC_PR_BGD
    else:
        basis, contrast = "centre", 0.0
        seed = prior > np.exp(-1.0)
        labels[seed] = cv2.GC_PR_FGD
        # with probable labels only the cut may give everything to the background: the
        # image's very centre is taken as surely the subject
        labels[prior > np.exp(-0.25)] = cv2.GC_FGD
        border = max(2, int(0.04 * min(h, w)))
        labels[:border], labels[-border:], labels[:, :border], labels[:, -border:] = (cv2.GC_BGD,) * 4
    out = cut(image, labels)
    out = keep_overlapping(out, seed) if out is not None else None
    if out is None or out.sum() < params.least_seed * h * w:
        out = seed
    return FoundSubject(out, basis, contrast)


def from_box(image: np.ndarray, box: Tuple[float, float, float, float]) -> FoundSubject:
    """The subject inside a user's box (working-resolution pixels): GrabCut within it,
    everything outside surely background; the whole box when the cut finds nothing."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = max(0, min(x0, x1)), min(w, max(x0, x1))
    y0, y1 = max(0, min(y0, y1)), min(h, max(y0, y1))
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    labels = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    # the box's middle is surely the subject
    my, mx = (y1 - y0) // 4, (x1 - x0) // 4
    labels[y0 + my:y1 - my, x0 + mx:x1 - mx] = cv2.GC_FGD
    out = cut(image, labels)
    if out is None or out.sum() < 0.2 * inside.sum():
        out = inside
    return FoundSubject(out, "user_box", 1.0)
