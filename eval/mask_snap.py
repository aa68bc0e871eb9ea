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
- there the ground's look decides instead (:class:`~circle_rotate.eval.parallax.GroundLook`):
  outside the mask, what looks as the ground warp predicts, or is a shadow that slid over
  the ground, is surely not the subject (this also teaches the background model the
  shadow's colours, so the part of it inside the mask goes too); inside, a shadow that slid
  is not either (probably not, in the core);
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

from circle_rotate.eval.parallax import GroundLook


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


def _crop_scaled(evidence: np.ndarray, full: tuple, box: tuple, size: tuple) -> np.ndarray:
    """The part of ``evidence`` under ``box`` (y0, y1, x0, x1 in a ``full``-sized frame),
    resized to ``size`` (rows, cols): only the crop is scaled, not the whole map."""
    (h, w), (y0, y1, x0, x1) = full, box
    sy, sx = evidence.shape[0] / h, evidence.shape[1] / w
    if sy == 1.0 and sx == 1.0 and (y1 - y0, x1 - x0) == tuple(size):
        return evidence[y0:y1, x0:x1]
    # the crop's pixel centres, mapped into the evidence's own grid
    ys = (y0 + (np.arange(size[0], dtype=np.float32) + 0.5) * (y1 - y0) / size[0]) * sy - 0.5
    xs = (x0 + (np.arange(size[1], dtype=np.float32) + 0.5) * (x1 - x0) / size[1]) * sx - 0.5
    mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    return cv2.remap(evidence.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def snap_to_edges(image: np.ndarray, mask: np.ndarray, evidence: Optional[np.ndarray],
                  params: SnapParams = SnapParams(), *, ground: Optional[GroundLook] = None) -> np.ndarray:
    """``mask`` redrawn along ``image``'s edges (both full resolution).

    Args:
        image: (H, W, 3) RGB uint8.
        mask: (H, W) bool, the subject roughly.
        evidence: relative parallax at any resolution (it is scaled to the mask's), or None
            where the frame has none.
        params: tuning.
        ground: the frame's :class:`GroundLook` at any resolution, or None.

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
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        inside = cv2.resize(inside, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
    ev = None if evidence is None else _crop_scaled(evidence, (h, w), (y0, y1, x0, x1), crop.shape[:2])
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
    if ground is not None:
        box = (h, w), (y0, y1, x0, x1), crop.shape[:2]
        still = _crop_scaled(ground.still.astype(np.float32), *box) >= 0.5
        moved = _crop_scaled(ground.moved_shadow.astype(np.float32), *box) >= 0.5
        labels[near & (inside == 0) & (still | moved)] = cv2.GC_BGD
        # the core stays probable: a plain face whose shading changed with the light has the
        # same signature, and the core is where the subject surely is
        labels[(inside > 0) & moved] = cv2.GC_BGD
        labels[(core > 0) & moved] = cv2.GC_PR_BGD
    if not (labels == cv2.GC_BGD).any():
        return mask  # the subject fills the frame: nothing to learn the background from
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    # GrabCut seeds its colour models by k-means from OpenCV's global generator: without a
    # fixed seed a frame's cut would depend on whatever ran before it in the process
    cv2.setRNGSeed(0)
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
              params: SnapParams = SnapParams(), *, ground: Optional[Sequence[Optional[GroundLook]]] = None
              ) -> List[np.ndarray]:
    """Snap each sampled frame's mask, then snap again from the neighbours' majority where
    that differs from the frame's own (most frames agree, and a second cut would not move them).
    ``evidence`` and ``ground`` are per frame, as :func:`snap_to_edges` takes them."""
    looks = ground if ground is not None else [None] * len(masks)
    first = [snap_to_edges(im, m, e, params, ground=g) for im, m, e, g in zip(images, masks, evidence, looks)]
    second = []
    for im, seed, own, e, g in zip(images, neighbour_majority(first), first, evidence, looks):
        redo = seed.sum() >= 50 and not _agree(seed, own, params.agree)
        second.append(snap_to_edges(im, seed, e, params, ground=g) if redo else own)
    return second
