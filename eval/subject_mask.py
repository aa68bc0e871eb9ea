"""The subject mask without learned weights: what moves like neither the ground nor the backdrop.

In an orbit the camera circles the subject. The ground is a plane, so between two frames
it moves by one homography; the backdrop is far, so it moves (nearly) by another. A cast
shadow lies on the ground and moves with it. The subject stands up from the ground, so
its pixels follow neither warp (plane + parallax), and neither do objects on the floor
(clutter), which tracking tells apart from the subject.

Steps, for each sampled frame (the drift's 16):

1. Pick a neighbour on each side, far enough that the ground has moved visibly (slow or
   stopping orbits look further away), and fit the ground and backdrop homographies to
   it by direct image alignment (OpenCV ECC, coarse to fine), each on its own part of the
   frame with the frame's centre left out. Direct alignment uses every edge, so a floor of
   plain tiles and grout lines aligns where corner matching has little to hold on to, and
   ECC ignores exposure changes.
2. Warp each neighbour onto the frame with each homography, match brightness, and compare
   colours with a 1-pixel tolerance (3x3 min/max). Keep the smallest difference over
   warps and sides: a patch hidden in one neighbour is visible in the other. What stays
   large is off-plane: the subject, exactly to its outline, and clutter.
3. Threshold (relative to the frame's own noise), close small gaps, fill holes.
4. Seed the subject in the frame whose evidence holds the largest central blob, then
   track it forwards and backwards with the shared Farneback flow between sampled
   frames: each frame keeps the blobs that overlap the tracked mask.
5. A frame without such a blob (the camera stood still) keeps the tracked mask, flagged
   ``propagated``; a clip without any evidence gets a central box, flagged ``centre``.
   Every sampled frame gets a non-empty mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

SOURCES = ("motion", "propagated", "centre")
_K3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class MaskParams:
    """Tuning of the weight-free segmentation (the defaults are what the tests check).

    Attributes:
        min_threshold: least colour difference (grey levels, 3x3 mean) that counts as off-plane.
        noise_factor: the threshold is at least this times the frame's median difference.
        target_motion: how far (fraction of the frame width) the ground should move between
            a frame and its neighbour; slow orbits look further for it.
        max_reach: the furthest neighbour, in sampled frames.
        coarse_side, fine_side: long sides of the two ECC levels (pixels).
        min_far_motion: a backdrop warp must move the frame by at least this many pixels,
            or it would explain a subject that stays put as well.
        close: radius of the gap closing, as a fraction of the frame diagonal.
        keep_overlap: a blob joins the tracked subject when this share of it (or of the
            tracked mask) overlaps the tracked mask.
    """

    min_threshold: float = 8.0
    noise_factor: float = 4.0
    target_motion: float = 0.03
    max_reach: int = 2
    coarse_side: int = 160
    fine_side: int = 320
    min_far_motion: float = 3.0
    close: float = 0.006
    keep_overlap: float = 0.3


@dataclass(frozen=True)
class SubjectMasks:
    """One boolean mask per sampled frame and where it came from."""

    masks: np.ndarray  # (K, H, W) bool, never empty
    sources: Tuple[str, ...]  # per frame: "motion" | "propagated" | "centre"

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


def _scaled(img: np.ndarray, side: int) -> Tuple[np.ndarray, float]:
    scale = min(1.0, side / max(img.shape[:2]))
    if scale == 1.0:
        return img, 1.0
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), scale


def align_plane(grey_a: np.ndarray, grey_b: np.ndarray, region: np.ndarray, *, init: Optional[np.ndarray] = None,
                sides: Sequence[int] = (240, 480)) -> Optional[np.ndarray]:
    """Homography ``H`` with ``a(x) ~ b(H x)`` over ``region`` (ECC, coarse to fine).

    Returns None when the region is too small or ECC converges at no level.
    """
    if np.count_nonzero(region) < 0.02 * region.size:
        return None
    H = np.eye(3) if init is None else init.astype(np.float64)
    found = False
    for side, iters in zip(sides, (40, 12)):
        a, s = _scaled(grey_a, side)
        b, _ = _scaled(grey_b, side)
        m = cv2.resize(region.astype(np.uint8), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
        S = np.diag([s, s, 1.0])
        warp = (S @ H @ np.linalg.inv(S)).astype(np.float32)
        try:
            _, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_HOMOGRAPHY,
                                           (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iters, 1e-4), m, 5)
        except cv2.error:  # no convergence at this level: keep the previous estimate
            continue
        found = True
        H = np.linalg.inv(S) @ warp.astype(np.float64) @ S
    return H / H[2, 2] if found else None


def displacement(H: np.ndarray, region: np.ndarray) -> float:
    """Median distance (pixels) that ``H`` moves the points of ``region`` (every 8th pixel)."""
    ys, xs = np.nonzero(region[::8, ::8])
    if len(xs) == 0:
        return 0.0
    pts = np.stack([xs * 8, ys * 8], axis=1).astype(np.float64)
    moved = cv2.perspectiveTransform(pts[None], H)[0]
    return float(np.median(np.linalg.norm(moved - pts, axis=1)))


def _tolerant_diff(frame: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """How far ``frame`` lies outside the 3x3 min..max of ``warped``, per pixel (max over channels), uint8."""
    # Saturating uint8 subtraction: one of the two terms is always 0.
    out = cv2.max(cv2.subtract(frame, cv2.dilate(warped, _K3)), cv2.subtract(cv2.erode(warped, _K3), frame))
    r, g, b = cv2.split(out)
    return cv2.max(cv2.max(r, g), b)


def _match_gain(src: np.ndarray, ref: np.ndarray, region: np.ndarray) -> np.ndarray:
    # Exposure ramps and flicker change brightness between frames; ECC ignores that, the
    # colour comparison must not. Every 4th pixel of the region is plenty for two medians.
    sel = region[::4, ::4] & (src[::4, ::4].max(axis=-1) > 8)
    if np.count_nonzero(sel) < 100:
        return src
    gain = (float(np.median(ref[::4, ::4][sel])) + 1) / (float(np.median(src[::4, ::4][sel])) + 1)
    return src if abs(gain - 1) < 0.01 else cv2.convertScaleAbs(src, alpha=gain)


class BackgroundWarps:
    """Ground and backdrop homographies between any two frames of a clip, fitted once each."""

    def __init__(self, frames: np.ndarray, params: MaskParams):
        self._frames = frames
        self._params = params
        h, w = frames.shape[1:3]
        keep_out = cv2.dilate(centre_box(h, w).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
        rows = np.arange(h)[:, None]
        self.ground = (rows >= h // 2) & ~keep_out
        self.far = (rows < int(0.4 * h)) & ~keep_out
        self.centre = keep_out
        self.target = params.target_motion * w
        self._grey: Dict[int, np.ndarray] = {}
        self._cache: Dict[Tuple[int, int], List[np.ndarray]] = {}

    def grey(self, i: int) -> np.ndarray:
        if i not in self._grey:
            self._grey[i] = cv2.cvtColor(self._frames[i], cv2.COLOR_RGB2GRAY)
        return self._grey[i]

    def between(self, i: int, j: int) -> List[np.ndarray]:
        """[ground, backdrop (when it moves)] homographies mapping frame i's pixels to frame j's."""
        if (i, j) not in self._cache and (j, i) in self._cache:
            return [np.linalg.inv(H) for H in self._cache[(j, i)]]
        if (i, j) not in self._cache:
            sides = (self._params.coarse_side, self._params.fine_side)
            out = []
            ground = align_plane(self.grey(i), self.grey(j), self.ground, sides=sides)
            if ground is not None:
                out.append(ground)
                far = align_plane(self.grey(i), self.grey(j), self.far, init=ground, sides=sides)
                # A backdrop fit that leaves the centre in place would also explain a
                # subject that stays put (the point of an orbit): it is no backdrop.
                if far is not None and displacement(far, self.centre) >= self._params.min_far_motion:
                    out.append(far)
            self._cache[(i, j)] = out
        return self._cache[(i, j)]

    def moved(self, i: int, j: int) -> float:
        """How far (pixels, median) the ground moves from frame i to frame j."""
        warps = self.between(i, j)
        return displacement(warps[0], self.ground | self.centre) if warps else 0.0


def evidence(frames: np.ndarray, warps: BackgroundWarps, s: int, neighbours: Sequence[int]) -> Optional[np.ndarray]:
    """Off-plane evidence of frame ``s``: the smallest colour difference to its
    neighbours warped by each background homography (None when nothing aligned)."""
    h, w = frames.shape[1:3]
    frame = cv2.GaussianBlur(frames[s], (3, 3), 0)
    best = None
    for j in neighbours:
        other = cv2.GaussianBlur(frames[j], (3, 3), 0)
        for H in warps.between(s, j):
            warped = cv2.warpPerspective(other, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                         borderMode=cv2.BORDER_REPLICATE)
            diff = _tolerant_diff(frame, _match_gain(warped, frame, warps.ground))
            best = diff if best is None else np.minimum(best, diff)
    return best


def neighbours(warps: BackgroundWarps, idx: Sequence[int], k: int, *, reach: int) -> List[int]:
    """The sampled frames next to ``idx[k]`` on each side; when the ground barely moved, the
    next ones out (up to ``reach`` samples away) so that slow orbits still show parallax."""
    target = warps.target
    out = []
    for step in (-1, 1):
        chosen = None
        for m in range(1, reach + 1):
            j = k + m * step
            if not 0 <= j < len(idx) or idx[j] == idx[k]:
                continue
            chosen = idx[j]
            if warps.moved(idx[k], chosen) >= target:
                break
        if chosen is not None:
            out.append(chosen)
    return out


def candidates(diff: np.ndarray, params: MaskParams) -> np.ndarray:
    """Off-plane blobs: thresholded above the frame's noise, speckle removed, gaps closed, holes filled."""
    e = cv2.blur(diff.astype(np.float32), (3, 3))
    threshold = max(params.min_threshold, params.noise_factor * float(np.median(e)))
    c = cv2.morphologyEx((e > threshold).astype(np.uint8), cv2.MORPH_OPEN, _K3)
    r = max(1, int(round(params.close * np.hypot(*diff.shape))))
    c = cv2.morphologyEx(c, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return ndi.binary_fill_holes(c > 0)


def central_blob(cand: np.ndarray) -> Tuple[np.ndarray, float]:
    """The blob that is largest once weighted by closeness to the centre, and its score."""
    h, w = cand.shape
    n, lab, stats, cent = cv2.connectedComponentsWithStats(cand.astype(np.uint8))
    best, score = 0, 0.0
    diag = np.hypot(w, h)
    for i in range(1, n):
        dist = np.hypot(cent[i, 0] - w / 2, cent[i, 1] - h / 2) / diag
        s = stats[i, cv2.CC_STAT_AREA] * np.exp(-(dist / 0.15) ** 2)
        if s > score:
            best, score = i, s
    return (lab == best) if best else np.zeros_like(cand), score / cand.size


def warp_forward(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Move mask pixels along ``flow`` (defined on the mask's frame) and close the gaps."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    qx = np.clip(np.rint(xs + flow[ys, xs, 0]).astype(np.int64), 0, w - 1)
    qy = np.clip(np.rint(ys + flow[ys, xs, 1]).astype(np.int64), 0, h - 1)
    out = np.zeros((h, w), np.uint8)
    out[qy, qx] = 1
    return cv2.morphologyEx(out, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) > 0


def warp_backward(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The pixels of the earlier frame that ``flow`` (earlier -> later) carries into ``mask``."""
    h, w = mask.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(mask.astype(np.uint8), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_NEAREST,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out > 0


def follow(cand: np.ndarray, predicted: np.ndarray, *, overlap: float) -> Optional[np.ndarray]:
    """The blobs of ``cand`` that overlap the tracked mask; None when they cover less than
    half of it (no evidence of its own in this frame)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(cand.astype(np.uint8))
    hits = np.bincount(lab[predicted].ravel(), minlength=n)
    area = max(int(predicted.sum()), 1)
    keep = [i for i in range(1, n) if hits[i] > overlap * stats[i, cv2.CC_STAT_AREA] or hits[i] > overlap * area]
    m = np.isin(lab, keep)
    return m if np.count_nonzero(m) >= 0.5 * area else None


def segment_subject(frames: np.ndarray, indices: Sequence[int], flows: Sequence[np.ndarray], *,
                    params: MaskParams = MaskParams()) -> SubjectMasks:
    """Segment the subject in the frames ``indices`` of a clip.

    Args:
        frames: (T, H, W, 3) RGB uint8, the whole clip (neighbours are looked up in it).
        indices: the K sampled frame indices, increasing.
        flows: K - 1 Farneback flows, ``flows[k]`` from frame ``indices[k]`` to ``indices[k + 1]``.
        params: tuning (see :class:`MaskParams`).

    Returns:
        :class:`SubjectMasks` with a non-empty mask for each sampled frame.
    """
    idx = [int(i) for i in indices]
    k_count, (h, w) = len(idx), frames.shape[1:3]
    warps = BackgroundWarps(frames, params)
    cands, scores = [], []
    for k, s in enumerate(idx):
        diff = evidence(frames, warps, s, neighbours(warps, idx, k, reach=params.max_reach))
        cand = candidates(diff, params) if diff is not None else np.zeros((h, w), bool)
        cands.append(cand)
        scores.append(central_blob(cand)[1])
    anchor = int(np.argmax(scores))
    if scores[anchor] <= 1e-4:
        logger.info("no off-plane evidence in any sampled frame: the subject mask is the central box")
        return SubjectMasks(np.repeat(centre_box(h, w)[None], k_count, axis=0), ("centre",) * k_count)
    masks: List[Optional[np.ndarray]] = [None] * k_count
    sources = ["motion"] * k_count
    masks[anchor] = central_blob(cands[anchor])[0]
    order = [(k, k - 1) for k in range(anchor + 1, k_count)] + [(k, k + 1) for k in range(anchor - 1, -1, -1)]
    for k, ref in order:
        if ref < k:
            predicted = warp_forward(masks[ref], flows[ref])
        else:
            predicted = warp_backward(masks[ref], flows[k])
        if not predicted.any():
            predicted = masks[ref]
        got = follow(cands[k], predicted, overlap=params.keep_overlap)
        if got is None:
            got, sources[k] = predicted, "propagated"
        masks[k] = got
    return SubjectMasks(np.stack(masks), tuple(sources))
