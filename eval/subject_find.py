"""Find the subject once, on the first frames of a clip (no weights).

An image-to-video model starts at its conditioning image, so the subject is what the first
frame is about; in an orbit the camera circles it, so it is also what stays put in the
image while the rest slides past. Here, at the working resolution:

1. Saliency (:mod:`circle_rotate.eval.saliency`): how much each part of the image differs in
   colour from what is surely background (the regions that hold the image's border).
2. Motion evidence over the first frames (the consecutive Farneback flows the clip already
   has), where it tells anything: each textured pixel's flow length over the frame's
   typical one. Where part of the image holds still while the rest moves (an orbit's fixed
   point), saliency is lowered by the share of a pixel's textured neighbours that move with
   the background: a salient building or road marking sliding past is not the subject. A
   pan, a static shot or a subject livelier than its backdrop gives no such evidence, and
   the motion is not used (it would suppress the subject itself).
3. The salient region that scores highest once weighted by closeness to the image centre,
   with the salient regions next to it (several parts stay one subject), is the seed.
4. GrabCut (colour models and the image's edges) draws the outline within a band around
   the seed; what moves with the background is surely background. A cut that keeps too
   little of the seed did not part subject from surroundings, and the seed stands.

Or the user says where it is: a box (GrabCut inside it) or a mask. :class:`FoundSubject`
says what the seed rested on, and how clearly it stands out (the outline contrast), which
:mod:`circle_rotate.eval.drift_confidence` weighs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from circle_rotate.eval.grabcut import cut, disc, keep_overlapping
from circle_rotate.eval.saliency import saliency

#: What a seed may rest on (``FoundSubject.basis``).
BASES = ("user_mask", "user_box", "motion", "saliency", "centre")


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
        still_share: least share of the textured pixels that must hold still for motion to
            count as evidence at all.
        band: how far the cut may move the seed's outline, as a fraction of the seed's size.
        least_kept: smallest share of the seed's area the cut may keep before the seed is
            taken as it is.
        moving_seed: largest share of moving neighbours the most salient region may have for
            the motion evidence to be used.
    """

    window: float = 0.2
    still: float = 0.25
    moving: float = 0.8
    least_motion: float = 0.25
    texture: float = 6.0
    reach: float = 0.3
    least_seed: float = 0.01
    still_share: float = 0.05
    band: float = 0.15
    least_kept: float = 0.6
    moving_seed: float = 0.5


@dataclass(frozen=True)
class FoundSubject:
    """The subject on the first frame (working resolution) and what it rests on."""

    mask: np.ndarray  # (h, w) bool, non-empty
    basis: str  # one of BASES
    contrast: float  # 0-1: how much more salient the mask is than just outside it

    @property
    def given(self) -> bool:
        """Did the user give the subject (a box or a mask) rather than the search find it?"""
        return self.basis in ("user_mask", "user_box")


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


def _moving_share(valid: np.ndarray, rel: np.ndarray, moving: float, radius: int) -> np.ndarray:
    """Per pixel, the share of its textured neighbours that move with the background (0 where
    none is textured: no evidence)."""
    k = (2 * radius + 1, 2 * radius + 1)
    textured_near = cv2.blur(valid.astype(np.float32), k)
    moving_near = cv2.blur((valid & (rel > moving)).astype(np.float32), k)
    return np.where(textured_near > 0.05, moving_near / np.maximum(textured_near, 1e-6), 0.0).astype(np.float32)


def _pick(candidate: np.ndarray, score: np.ndarray, least: int) -> Optional[np.ndarray]:
    """The candidate region that scores highest, with the regions near it that score at
    least a tenth as much (several parts stay one subject)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidate.astype(np.uint8))
    if n <= 1:
        return None
    total = np.bincount(labels.ravel(), weights=score.ravel(), minlength=n)
    total[0] = 0
    total[stats[:, cv2.CC_STAT_AREA] < least] = 0
    best = int(np.argmax(total))
    if total[best] <= 0:
        return None
    seed = labels == best
    h, w = candidate.shape
    near = cv2.dilate(seed.astype(np.uint8), disc(max(2, int(0.03 * max(h, w))))) > 0
    for i in np.unique(labels[near]):
        if i and total[i] > 0.1 * total[best]:
            seed |= labels == i
    return seed


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
    least = int(params.least_seed * h * w)
    sal = saliency(image)
    score = sal * (0.5 + 0.5 * prior)
    seed = _salient_seed(score, least)
    basis = "saliency"
    valid = textured(grey, params.texture)
    rel = relative_motion(first_flows, params.least_motion)
    moving = np.zeros((h, w), bool)
    if rel is not None:
        rel = cv2.blur(rel, (3, 3))
        share = _moving_share(valid, rel, params.moving, max(2, int(0.03 * max(h, w))))
        # motion tells the subject only when part of the image holds still while the rest
        # moves (an orbit's fixed point) and the salient thing is not what moves: in a pan,
        # under a shaking camera or with a subject livelier than its backdrop the motion
        # evidence would suppress the subject itself
        some_still = (valid & (rel < params.still)).sum() >= params.still_share * max(int(valid.sum()), 1)
        subject_moves = seed is not None and float(share[seed].mean()) > params.moving_seed
        if some_still and not subject_moves:
            moving = valid & (rel > params.moving)
            sal = sal * (1.0 - share)
            score = sal * (0.5 + 0.5 * prior)
            seed = _salient_seed(score, least)
            basis = "motion"
    if seed is None:
        basis, seed = "centre", prior > np.exp(-1.0)
    # the cut may move the seed's outline by a band, no further: beyond it is background
    band = max(3, int(params.band * np.sqrt(seed.sum())))
    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    labels[cv2.dilate(seed.astype(np.uint8), disc(band)) > 0] = cv2.GC_PR_BGD
    labels[seed] = cv2.GC_PR_FGD
    core = cv2.erode(seed.astype(np.uint8), disc(2)) > 0
    core &= score >= np.percentile(score[seed], 50)
    labels[core] = cv2.GC_FGD
    labels[moving & ~core] = cv2.GC_BGD
    out = cut(image, labels)
    out = keep_overlapping(out, seed) if out is not None else None
    if out is None or out.sum() < max(params.least_seed * h * w, params.least_kept * seed.sum()):
        # the colours did not part the subject from its surroundings: the seed's own
        # outline is the better guess
        out = seed
    contrast = 0.0 if basis == "centre" else _outline_contrast(out, sal, band)
    return FoundSubject(out, basis, contrast)


def _outline_contrast(mask: np.ndarray, sal: np.ndarray, band: int) -> float:
    """How much more salient ``mask`` is than a ``band``-wide ring around it: 0 (alike) to 1.
    An outline on the subject's edge has background just outside; one drawn through the
    subject has more of the subject there."""
    ring = (cv2.dilate(mask.astype(np.uint8), disc(band)) > 0) & ~mask
    if not ring.any():
        return 0.0
    inside, outside = float(sal[mask].mean()), float(sal[ring].mean())
    return float(np.clip((inside - outside) / max(inside, 1e-6), 0.0, 1.0))


def _salient_seed(score: np.ndarray, least: int) -> Optional[np.ndarray]:
    """The best region of ``score`` over its Otsu threshold (see :func:`_pick`)."""
    top = max(float(score.max()), 1e-6)
    level, _ = cv2.threshold(np.clip(score * 255.0 / top, 0, 255).astype(np.uint8), 0, 255,
                             cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _pick(score >= level / 255.0 * top, score, least)


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
