"""Snap a parallax mask to the image's own edges.

The parallax evidence finds the subject but draws its outline a few pixels wide of the
truth, and by different amounts in different frames (the flow's smoothing grows with the
motion); that jitter reads as drift. The image itself has a sharp edge where the subject
ends. Here each sampled frame's mask is redrawn by a graph cut on colour (OpenCV's GrabCut)
within a band around the parallax outline:

- the mask's core (eroded) is surely the subject, everything beyond a band around it surely
  not, the band between is decided by colour models and the image's edges;
- outside the mask, pixels the parallax evidence explains as ground or backdrop (``ground_evidence``)
  are surely not the subject, so a cast shadow that is as dark as the subject's dark side
  cannot be taken in; except just below the mask, where the subject's own base has no
  parallax either;
- then each frame is cut again, seeded by the majority of itself and its two sampled
  neighbours, which removes a frame's own slip (a missed face, a patch of ground) when the
  frames on either side agree.

The cut runs on a crop around the mask, scaled to at most ``crop`` pixels on its long side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class SnapParams:
    """Tuning of the snap (the defaults are what the accuracy tests measure).

    Attributes:
        core: erosion of the mask that is surely the subject, as a fraction of its size.
        band: how far outside the mask the edge may move, as a fraction of its size.
        below: how far below the mask the base may still be found, as a fraction of its size.
        ground_evidence: relative parallax under which a pixel outside the mask is surely
            ground or backdrop.
        crop: the long side (pixels) the cut works at, at most.
        iterations: GrabCut iterations per cut.
        agree: the IoU with its neighbours' majority above which a frame is not cut again.
    """

    core: float = 0.10
    band: float = 0.08
    below: float = 0.06
    ground_evidence: float = 0.12
    crop: int = 256
    iterations: int = 3
    agree: float = 0.98


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _below(mask: np.ndarray, reach: int) -> np.ndarray:
    """The ``reach`` rows under the mask's lowest pixel, in each of its columns."""
    out = np.zeros(mask.shape, bool)
    cols = np.nonzero(mask.any(axis=0))[0]
    bottoms = mask.shape[0] - 1 - np.argmax(mask[::-1, cols], axis=0)
    for x, b in zip(cols, bottoms):
        out[b:b + reach, x] = True
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    if n <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def snap_to_edges(image: np.ndarray, mask: np.ndarray, evidence: Optional[np.ndarray],
                  params: SnapParams = SnapParams()) -> np.ndarray:
    """``mask`` redrawn along ``image``'s edges (both full resolution).

    Args:
        image: (H, W, 3) RGB uint8.
        mask: (H, W) bool, the subject roughly.
        evidence: (H, W) relative parallax, or None where the frame has none.
        params: tuning.

    Returns:
        The snapped mask, or ``mask`` unchanged when it is too small or the cut leaves nothing.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return mask
    h, w = mask.shape
    size = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    pad = int((params.band + 0.17) * size) + 10
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    scale = min(1.0, params.crop / max(y1 - y0, x1 - x0))
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    inside = mask[y0:y1, x0:x1].astype(np.uint8)
    ev = None if evidence is None else evidence[y0:y1, x0:x1]
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        dsize = (crop.shape[1], crop.shape[0])
        inside = cv2.resize(inside, dsize, interpolation=cv2.INTER_NEAREST)
        ev = None if ev is None else cv2.resize(ev, dsize, interpolation=cv2.INTER_LINEAR)
    size *= scale
    core = cv2.erode(inside, _disc(max(1, int(params.core * size))))
    if core.sum() < 20:
        return mask
    near = cv2.dilate(inside, _disc(max(1, int(params.band * size)))) > 0
    labels = np.full(inside.shape, cv2.GC_BGD, np.uint8)
    labels[near] = cv2.GC_PR_BGD
    if ev is not None:
        explained = near & (inside == 0) & (ev < params.ground_evidence)
        explained &= ~_below(inside > 0, max(2, int(params.below * size)))
        labels[explained] = cv2.GC_BGD
    labels[inside > 0] = cv2.GC_PR_FGD
    labels[core > 0] = cv2.GC_FGD
    if not (labels == cv2.GC_BGD).any():
        return mask  # the subject fills the frame: nothing to learn the background from
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), labels, None, bgd, fgd, params.iterations,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a degenerate colour model (a flat crop): keep what parallax found
        return mask
    cut = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1.0:
        cut = cv2.resize(cut, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = cut >= 0.5
    out = _largest(out)
    return out if out.any() else mask


def neighbour_majority(masks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Per frame, the pixels in at least two of itself and its two neighbours (the first
    and last frames take the two after or before them)."""
    k = len(masks)
    if k < 3:
        return [m.copy() for m in masks]
    out = []
    for i in range(k):
        start = max(0, min(k - 3, i - 1))
        out.append((masks[start].astype(np.uint8) + masks[start + 1] + masks[start + 2]) >= 2)
    return out


def _agree(a: np.ndarray, b: np.ndarray, iou: float) -> bool:
    return (a & b).sum() >= iou * max((a | b).sum(), 1)


def snap_clip(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], evidence: Sequence[Optional[np.ndarray]],
              params: SnapParams = SnapParams()) -> List[np.ndarray]:
    """Snap each sampled frame's mask, then snap again from the neighbours' majority where
    that differs from the frame's own (most frames agree, and a second cut would not move them)."""
    first = [snap_to_edges(im, m, e, params) for im, m, e in zip(images, masks, evidence)]
    second = []
    for im, seed, own, e in zip(images, neighbour_majority(first), first, evidence):
        redo = seed.sum() >= 50 and not _agree(seed, own, params.agree)
        second.append(snap_to_edges(im, seed, e, params) if redo else own)
    return second
