"""GrabCut from a label map, and the mask clean-ups the subject search and tracker share."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

#: GrabCut iterations per cut: the seeds are good, so the colour models settle quickly.
ITERATIONS = 3


def disc(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def cut(image: np.ndarray, labels: np.ndarray, *, iterations: int = ITERATIONS) -> Optional[np.ndarray]:
    """GrabCut of ``image`` (RGB uint8) from ``labels`` (cv2.GC_* per pixel), on the crop
    around everything not surely background (plus a margin for the background model).

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
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    # GrabCut seeds its colour models by k-means from OpenCV's global generator: without a
    # fixed seed a frame's cut would depend on whatever ran before it in the process
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR), crop_labels, None,
                    bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a degenerate colour model (a flat crop)
        return None
    out = np.zeros((h, w), bool)
    out[y0:y1, x0:x1] = (crop_labels == cv2.GC_FGD) | (crop_labels == cv2.GC_PR_FGD)
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
