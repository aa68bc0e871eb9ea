"""GrabCut from a label map, and the mask clean-ups the subject search and tracker share."""

from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

#: GrabCut iterations per cut: the seeds are good, so the colour models settle quickly.
ITERATIONS = 3
#: Long side (pixels) a cut works at, at most: the graph cut's cost grows with the pixels,
#: and the outline it draws moves the centroid by a fraction of a working pixel.
CUT_SIDE = 160


def disc(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def cut(image: np.ndarray, labels: np.ndarray, *, iterations: int = ITERATIONS,
        models: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Optional[np.ndarray]:
    """GrabCut of ``image`` (RGB uint8) from ``labels`` (cv2.GC_* per pixel), on the crop
    around everything not surely background (plus a margin for the background model).
    With ``models`` (background, foreground colour models, see :func:`colour_models`) the
    cut uses them as they are instead of learning its own from the labels.

    Returns:
        The foreground (bool, full size), or None when the labels leave nothing to learn
        one of the two colour models from or the cut fails.
    """
    fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    bg = (labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)
    if fg.sum() < 10 or bg.sum() < 10:
        return None
    ys, xs = np.nonzero(labels != cv2.GC_BGD)
    h, w = labels.shape
    pad = max(8, int(0.15 * max(ys.max() - ys.min(), xs.max() - xs.min())))
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    crop_labels = np.ascontiguousarray(labels[y0:y1, x0:x1])
    if not ((crop_labels == cv2.GC_BGD) | (crop_labels == cv2.GC_PR_BGD)).any():
        return None
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    scale = min(1.0, CUT_SIDE / max(y1 - y0, x1 - x0))
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        crop_labels = cv2.resize(crop_labels, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
    mode = cv2.GC_INIT_WITH_MASK
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    if models is not None:
        bgd, fgd, mode = models[0].copy(), models[1].copy(), cv2.GC_EVAL_FREEZE_MODEL
    # GrabCut seeds its colour models by k-means from OpenCV's global generator: without a
    # fixed seed a frame's cut would depend on whatever ran before it in the process
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), crop_labels, None, bgd, fgd, iterations, mode)
    except cv2.error:  # a degenerate colour model (a flat crop)
        return None
    fg = ((crop_labels == cv2.GC_FGD) | (crop_labels == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1.0:
        fg = cv2.resize(fg, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = fg >= 0.5
    return out


def keep_overlapping(mask: np.ndarray, reference: np.ndarray, *, share: float = 0.5) -> Optional[np.ndarray]:
    """The parts of ``mask`` with at least ``share`` of their own area inside ``reference``
    or holding at least ``share`` of it, holes filled (a subject of several parts stays
    whole; a patch of background the cut took in elsewhere goes). None when no part qualifies."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    if n <= 1:
        return None
    inside = np.bincount(labels[reference], minlength=n)
    keep = np.zeros(n, bool)
    keep[1:] = ((inside[1:] >= share * stats[1:, cv2.CC_STAT_AREA]) | (inside[1:] >= share * reference.sum())) \
        & (stats[1:, cv2.CC_STAT_AREA] >= 4)
    if not keep.any():
        return None
    out = keep[labels].astype(np.uint8)
    return fill_holes(out > 0)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every region the outside cannot reach filled."""
    m = np.pad(mask.astype(np.uint8), 1)
    flood = m.copy()
    cv2.floodFill(flood, np.zeros((m.shape[0] + 2, m.shape[1] + 2), np.uint8), (0, 0), 1)
    return (m | (1 - flood))[1:-1, 1:-1] > 0


def colour_models(image: np.ndarray, mask: np.ndarray, *, band: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """GrabCut's background and foreground colour models learned from ``mask`` on ``image``
    (the background from a ``band``-pixel ring around it); None when either side is too small."""
    ring = (cv2.dilate(mask.astype(np.uint8), disc(band)) > 0) & ~mask
    if mask.sum() < 20 or ring.sum() < 20:
        return None
    labels = np.where(mask, cv2.GC_FGD, np.where(ring, cv2.GC_BGD, cv2.GC_BGD)).astype(np.uint8)
    ys, xs = np.nonzero(mask | ring)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR),
                    np.ascontiguousarray(labels[y0:y1, x0:x1]), None, bgd, fgd, 1, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return bgd, fgd
