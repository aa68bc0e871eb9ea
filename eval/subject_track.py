"""Follow a subject found on the first frame through the clip's sampled frames (no weights).

From one sampled frame to the next, at the working resolution:

1. Propagate: the consecutive Farneback flows the clip already has are chained, and a
   backward flow between the two sampled frames checks them (forward-backward: a pixel whose
   round trip misses by more than a pixel and 10% of its motion is not used). The mask moves
   by the subject's own motion, not each pixel's flow (an orbit turns the surface under the
   outline): the median checked flow of its inner rim where the user gave the subject
   (:func:`rim_motion`: the outline is the silhouette), else a similarity fitted by RANSAC
   to the checked flow inside it (:func:`subject_motion`: a found mask's outline may lie in
   the background).
2. Refine: GrabCut on the new frame, seeded by the moved mask (its eroded core surely the
   subject; beyond a band around it surely not), judged against the first frame's colour
   models, and by the flow: a textured pixel next to the mask that moves unlike the subject
   (against the spread of the background's motion) is background. The cut follows the
   image's own edges, so the flow's error does not accumulate.
3. Rigid-object priors: a subject's area changes smoothly and its mask does not jump, so a
   refinement that disagrees with the propagation (IoU under ``agree``, or an area outside
   ``area_step`` of it) is not taken; the frame keeps the moved mask, flagged
   ``propagated``. Every part of the cut that lies mostly inside the moved mask stays (a
   ball on a box stays with the box).
4. Nothing moved (a static shot, a pause in the orbit: the flow in and around the mask
   under ``hold``): the mask is kept as it was, flagged ``held``; a new cut could only add
   noise and flicker to the outline.

The subject is followed forward, then backward from the last sampled frame (see
:func:`track`). What each step measured (:class:`Step`) is kept for the confidence verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from circle_rotate.eval.flow import FARNEBACK_PARAMS
from circle_rotate.eval.grabcut import colour_models, cut, disc, keep_overlapping
from circle_rotate.eval.subject_find import textured

#: Where a tracked frame's mask came from.
SOURCES = ("found", "refined", "propagated", "held")


@dataclass(frozen=True)
class TrackParams:
    """Tuning of the tracker.

    Attributes:
        band: how far the outline may move per step, as a fraction of the mask's size.
        agree: least IoU between the refined and the propagated mask for the refinement to stand.
        area_step: largest area ratio (either way) between them.
        fb_tolerance: round-trip miss allowed, in pixels, plus ``fb_relative`` of the motion.
        fb_relative: see ``fb_tolerance``.
        unlike: a pixel moves unlike the subject when its flow differs from the subject's by
            more than this fraction of the background's typical difference.
        texture: least local contrast (grey levels) for a pixel's flow to count.
        hold: flow (working pixels between two sampled frames, 90th percentile in and around
            the mask) under which nothing moved and the mask is kept as it was.
        rim: width of the inner rim whose flow moves a given mask, as a fraction of its size.
    """

    band: float = 0.08
    agree: float = 0.6
    area_step: float = 1.35
    fb_tolerance: float = 1.0
    fb_relative: float = 0.1
    unlike: float = 0.5
    texture: float = 6.0
    hold: float = 0.3
    rim: float = 0.06


@dataclass(frozen=True)
class Step:
    """One sampled frame's tracking, measured."""

    source: str  # one of SOURCES
    agreement: float  # IoU of the refined and the propagated mask (1 where nothing was refined)
    passes_agree: float = 1.0  # IoU of the forward and the backward pass's masks


def chain(flows: Sequence[np.ndarray]) -> np.ndarray:
    """The flow from the first frame of ``flows`` to the frame after the last (consecutive
    flows composed: each later one looked up where the earlier ones carried the pixel)."""
    total = flows[0].copy()
    h, w = total.shape[:2]
    grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    for f in flows[1:]:
        at = grid + total
        total += cv2.remap(f, at[..., 0], at[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return total


def subject_motion(mask: np.ndarray, flow: np.ndarray, ok: np.ndarray, size: float) -> np.ndarray:
    """The subject's own image motion as a similarity (2x3): fitted by RANSAC to the flow of
    its forward-backward consistent pixels. An orbit turns the subject's surface under its
    outline, so the outline follows the fit, not each pixel's flow (a patch of background the
    mask took in, moving with the background, is an outlier)."""
    ys, xs = np.nonzero(mask & ok)
    if xs.size < 20:
        ys, xs = np.nonzero(mask)
    step = max(1, xs.size // 1500)
    src = np.stack([xs[::step], ys[::step]], -1).astype(np.float32)
    dst = src + flow[ys[::step], xs[::step]]
    fit, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=max(1.0, 0.03 * size),
                                         maxIters=500, confidence=0.99, refineIters=5)
    if fit is None:
        fit = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
        fit[:, 2] = np.median(dst - src, axis=0)
    return fit


def rim_motion(mask: np.ndarray, flow: np.ndarray, ok: np.ndarray, size: float, *, rim: float) -> np.ndarray:
    """The subject's image motion as a translation (2x3): the median checked flow of the
    mask's inner rim (``rim`` of its size wide).

    An orbit turns the subject's surface under its outline: the texture inside moves with the
    turn (the near side one way) while the outline stays, and a similarity fitted to it carries
    the outline along. At the silhouette the surface moves along the line of sight, so there
    the image motion is the subject's own. Against the exact masks' centroids on the
    development orbits, the rim's median is off by 1.6 working pixels per sampled step (mean;
    median 0.9), the fitted similarity by 3.0 (1.9). Only where the outline is the subject's:
    the rim of a found mask that took in background moves with the background."""
    width = max(1, int(rim * size))
    band = mask & ~(cv2.erode(mask.astype(np.uint8), disc(width)) > 0)
    use = band & ok if (band & ok).sum() >= 20 else band
    if use.sum() < 5:  # a mask too thin for a rim
        use = mask
    fit = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    fit[:, 2] = np.median(flow[use], axis=0)
    return fit


def round_trip(forward: np.ndarray, grey_a: np.ndarray, grey_b: np.ndarray, params: TrackParams) -> np.ndarray:
    """Per pixel of frame a: does its forward flow come back (backward flow b -> a, started
    from the reversed forward flow)?"""
    h, w = grey_a.shape
    init = -forward
    back = cv2.calcOpticalFlowFarneback(grey_b, grey_a, init.copy(), *FARNEBACK_PARAMS[:-1],
                                        cv2.OPTFLOW_USE_INITIAL_FLOW)
    grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    at = grid + forward
    back_at = cv2.remap(back, at[..., 0], at[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    miss = np.linalg.norm(forward + back_at, axis=-1)
    inside = (at[..., 0] >= 0) & (at[..., 0] <= w - 1) & (at[..., 1] >= 0) & (at[..., 1] <= h - 1)
    return inside & (miss <= params.fb_tolerance + params.fb_relative * np.linalg.norm(forward, axis=-1))


def unlike_subject(flow: np.ndarray, mask: np.ndarray, valid: np.ndarray, params: TrackParams) -> np.ndarray:
    """Textured pixels whose flow differs from the subject's (its median) by more than
    ``unlike`` of the background's typical difference; none when the background moves with it."""
    own = np.median(flow[mask], axis=0)
    dev = np.linalg.norm(flow - own, axis=-1)
    h, w = mask.shape
    around = (cv2.dilate(mask.astype(np.uint8), disc(max(3, int(0.1 * max(h, w))))) == 0) & valid
    if around.sum() < 50:
        return np.zeros_like(mask)
    typical = float(np.median(dev[around]))
    if typical < 0.5:  # the background moves with the subject (static camera, pan)
        return np.zeros_like(mask)
    return valid & (dev > params.unlike * typical)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


@dataclass(frozen=True)
class Evidence:
    """Pixels of a sampled frame known from elsewhere to be the subject or the background
    (working resolution): the cut takes them as sure labels."""

    subject: Optional[np.ndarray] = None  # (h, w) bool
    background: Optional[np.ndarray] = None  # (h, w) bool; None: the flow's unlike-the-subject labels
    #: (h, w) bool: where the subject cannot be (outside a box the user drew on this frame); the
    #: propagated mask is clipped to the rest, and the cut takes it as background on top of the
    #: ``background`` labels or the flow's
    outside: Optional[np.ndarray] = None


#: Evidence for a sampled frame, ``(frame, moved mask) -> Evidence or None``, where it is known
#: from elsewhere (``bench follower --labels`` gives the truth's, to measure what evidence the
#: cut would need).
StepEvidence = Callable[[int, np.ndarray], Optional[Evidence]]


def refine(image: np.ndarray, grey: np.ndarray, motion: np.ndarray, moved: np.ndarray, params: TrackParams,
           models=None, evidence: Optional[Evidence] = None) -> Tuple[np.ndarray, str, float]:
    """GrabCut of ``image`` seeded by the propagated mask ``moved`` and the flow ``motion``
    (see the module docstring), and by ``evidence`` where given; the kept mask, its source and
    the refinement's IoU with ``moved``."""
    size = np.sqrt(moved.sum())
    sure = cv2.erode(moved.astype(np.uint8), disc(max(1, int(0.1 * size)))) > 0
    near = cv2.dilate(moved.astype(np.uint8), disc(max(2, int(params.band * size)))) > 0
    labels = np.full(moved.shape, cv2.GC_BGD, np.uint8)
    labels[near] = cv2.GC_PR_BGD
    labels[moved] = cv2.GC_PR_FGD
    labels[sure] = cv2.GC_FGD
    if evidence is None or evidence.background is None:
        unlike = unlike_subject(motion, moved, textured(grey, params.texture), params)
        labels[near & ~moved & unlike] = cv2.GC_BGD
        labels[moved & ~sure & unlike] = cv2.GC_PR_BGD
    else:
        labels[evidence.background] = cv2.GC_BGD
    if evidence is not None and evidence.outside is not None:
        labels[evidence.outside] = cv2.GC_BGD
    if evidence is not None and evidence.subject is not None:
        labels[evidence.subject] = cv2.GC_FGD
    refined = cut(image, labels, models=models)
    refined = keep_overlapping(refined, moved) if refined is not None else None
    if refined is None:
        return moved, "propagated", 0.0
    agreement = _iou(refined, moved)
    ratio = refined.sum() / max(moved.sum(), 1)
    if agreement >= params.agree and 1 / params.area_step <= ratio <= params.area_step:
        return refined, "refined", agreement
    return moved, "propagated", agreement


def _unmoved(flow: np.ndarray, mask: np.ndarray, params: TrackParams) -> bool:
    """Did nothing move in and around ``mask`` (a static shot, a pause in the orbit)? Then
    a new cut could only add the image's noise and the lighting's flicker to the outline."""
    near = cv2.dilate(mask.astype(np.uint8), disc(max(3, int(params.band * np.sqrt(mask.sum()))))) > 0
    return float(np.percentile(np.linalg.norm(flow[near], axis=-1), 90)) < params.hold


def _warp(mask: np.ndarray, fit: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    return cv2.warpAffine(mask.astype(np.uint8), fit, (w, h), flags=cv2.INTER_NEAREST) > 0


def _pull(mask: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Pixels of the earlier frame that ``forward`` carries into ``mask``."""
    h, w = mask.shape
    grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))) + forward
    return cv2.remap(mask.astype(np.uint8), grid[..., 0], grid[..., 1], cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0


def _motion_at(flows: Sequence[np.ndarray], i: int) -> np.ndarray:
    return flows[i] if i < len(flows) else flows[i - 1]


def _evidence_at(evidence: Optional[StepEvidence], frame: int, moved: np.ndarray) -> Optional[Evidence]:
    return None if evidence is None else evidence(frame, moved)


def _inside(moved: np.ndarray, evidence: Optional[Evidence]) -> np.ndarray:
    """``moved`` without what ``evidence`` says lies outside the subject: a propagated mask that
    leaked beyond the user's box would otherwise stand wherever the cut is refused."""
    if evidence is None or evidence.outside is None:
        return moved
    kept = moved & ~evidence.outside
    return kept if kept.sum() >= 10 else moved


#: The subject's image motion from one sampled frame to the next, ``(a, b) -> (dx, dy)`` in working
#: pixels, where it is known from elsewhere (``bench follower`` gives the truth's, to tell the motion
#: estimate's share of the error from the refinement's).
StepMotion = Callable[[int, int], Tuple[float, float]]


def track(images: Sequence[np.ndarray], greys: Sequence[np.ndarray], flows: Sequence[np.ndarray],
          indices: Sequence[int], first: np.ndarray, *, params: TrackParams = TrackParams(),
          given: bool = False, keep_first: bool = False,
          step_motion: Optional[StepMotion] = None,
          evidence: Optional[StepEvidence] = None) -> Tuple[List[np.ndarray], List[Step], List[np.ndarray]]:
    """Masks on every sampled frame, starting from ``first`` on ``indices[0]``.

    The subject is followed forward to the last sampled frame, then back from there to the
    first (along the same flows, the subject's motion inverted); each frame keeps the
    backward pass's mask, and how far the two passes agree feeds the confidence. The forward
    pass's masks are returned too (a given subject's centroid is the mean of both passes'). A patch the
    first mask took in wrongly is usually dropped by the forward pass's refinements before
    the end, so the backward pass never had it, and the frames before no longer carry it
    either: the mask is one consistent subject throughout.

    Args:
        images: the clip's RGB frames at the working resolution (indexable by frame).
        greys: the same in grey.
        flows: consecutive flows ``i -> i + 1`` at the working resolution.
        indices: the sampled frame indices (increasing, repeats allowed).
        first: the subject on ``indices[0]``.
        params: tuning.
        given: the user gave ``first`` (a box or a mask): its outline is the subject's, and
            the mask moves by its rim (:func:`rim_motion`).
        keep_first: ``first`` stands on ``indices[0]`` (the user drew it), whatever the
            backward pass finds there.
        step_motion: the subject's motion between sampled frames, known from elsewhere; by
            default it is estimated from the flows (:func:`rim_motion` or :func:`subject_motion`).
        evidence: pixels of a sampled frame known to be the subject or the background, from
            elsewhere; by default there is none and the flow labels the background.

    Returns:
        The backward pass's mask per sampled frame, one :class:`Step` per sampled frame (the
        first is ``found``), and the forward pass's mask per sampled frame.
    """
    idx = list(indices)
    k = len(idx)

    def motion(mask: np.ndarray, j: int) -> np.ndarray:
        if step_motion is not None:
            dx, dy = step_motion(idx[j - 1], idx[j])
            return np.array([[1, 0, dx], [0, 1, dy]], np.float64)
        size = np.sqrt(mask.sum())
        if given:
            return rim_motion(mask, chains[j], oks[j], size, rim=params.rim)
        return subject_motion(mask, chains[j], oks[j], size)

    # the subject's and its surroundings' colours as the first frame shows them: each later
    # cut is judged against them, so a mask cannot grow or shrink by re-learning its own colours
    models = colour_models(images[idx[0]], first, band=max(3, int(0.15 * np.sqrt(first.sum()))))
    forward_masks, sources, agreements = [first], ["found"], [1.0]
    chains, oks = [None] * k, [None] * k
    for j in range(1, k):
        a, b = idx[j - 1], idx[j]
        prev = forward_masks[-1]
        if b == a:
            forward_masks.append(prev)
            sources.append(sources[-1])
            agreements.append(1.0)
            continue
        chains[j] = chain(flows[a:b])
        if _unmoved(chains[j], prev, params):  # no round trip to check: both passes hold the mask
            forward_masks.append(prev)
            sources.append("held")
            agreements.append(1.0)
            continue
        oks[j] = round_trip(chains[j], greys[a], greys[b], params)
        moved = _warp(prev, motion(prev, j))
        if moved.sum() < 10:  # carried out of the frame: keep what there was
            kept, source, agreement = prev, "propagated", 0.0
        else:
            known = _evidence_at(evidence, b, moved)
            kept, source, agreement = refine(images[b], greys[b], _motion_at(flows, b), _inside(moved, known), params,
                                             models, known)
        forward_masks.append(kept)
        sources.append(source)
        agreements.append(agreement)
    backward_masks = [None] * k
    backward_masks[-1] = forward_masks[-1]
    for j in range(k - 1, 0, -1):
        later = backward_masks[j]
        if chains[j] is None or sources[j] == "held":
            backward_masks[j - 1] = later
            continue
        pulled = _pull(later, chains[j])
        if pulled.sum() < 10:
            backward_masks[j - 1] = forward_masks[j - 1]
            continue
        fit = motion(pulled, j)
        moved = _warp(later, cv2.invertAffineTransform(fit))
        a = idx[j - 1]
        if moved.sum() < 10:
            backward_masks[j - 1] = forward_masks[j - 1]
            continue
        known = _evidence_at(evidence, a, moved)
        backward_masks[j - 1] = refine(images[a], greys[a], _motion_at(flows, a), _inside(moved, known), params,
                                       models, known)[0]
    # the backward pass's disagreement with a kept first mask still says how well it was followed
    steps = [Step(sources[j], agreements[j], _iou(forward_masks[j], backward_masks[j])) for j in range(k)]
    if keep_first:  # every sample of the first frame (a short clip samples it more than once)
        for j in range(k):
            if idx[j] != idx[0]:
                break
            backward_masks[j] = first
    return backward_masks, steps, forward_masks
