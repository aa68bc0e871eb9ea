"""Orbit parallax: how far each pixel moves unlike the ground plane and the backdrop.

In an orbit the camera circles the subject. The ground is a plane, so between two frames it
moves by one homography, and so do its cast shadows and markings; the backdrop is far and
moves smoothly across the image. The subject stands up from the ground, so its pixels move
unlike either, by an amount that grows linearly with their height above the ground
(plane + parallax). Measuring that with a dense flow, rather than with colour differences
after warping, keeps the evidence on plain or self-similar surfaces (a checkered box front
warped onto itself still differs in flow, not in colour).

For one frame and a neighbour in the clip on each side, far enough that the ground moved a
few percent of the width:

1. dense flow (OpenCV DIS, started at the phase-correlation shift so regular facades do not
   lock onto the wrong period), the ground homography from it by RANSAC;
2. the neighbour warped by that homography and a second flow: what is left is parallax; a
   small homography fitted to it takes out the first fit's error;
3. a smooth polynomial flow fitted on the backdrop band's sides explains the backdrop;
4. the residual against the better of the two, divided by the ground's own motion, so that
   slow and fast orbits read alike (the subject's top reads about 1-3, the ground about 0).
   Near the horizon a model must also match in brightness to explain a pixel: there the
   ground warp stretches far ground over everything and a plain surface's flow to that
   stretch can come out small. A pixel neither model explains reads ``UNEXPLAINED``.

The two sides are combined by their minimum: a background patch hidden in one neighbour
(next to the subject) is visible in the other. A frame with one usable side (the clip's
ends, or where the orbit stops) checks forward-backward consistency instead and gives
occluded pixels no evidence.

The neighbour is searched for on half-size frames, starting at the offset the previous
sampled frame needed. The half-size flow reads the motion a little low; until the clip has
shown by how much, the full flow checks every reading near the target, then the calibrated
reading decides alone: the neighbour that trying every offset at full size would pick, or
at the target's edge the offset next to it, for a third of the flows. Each side also says
how the frame *looks* next to the neighbour seen through the ground homography
(:func:`ground_look`): sharp to the pixel where the flow is smooth, and able to tell a
shadow from what casts it.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np


@dataclass(frozen=True)
class ParallaxParams:
    """Tuning of the parallax evidence.

    Attributes:
        side: long side (pixels) of the working resolution.
        target_motion: how far (fraction of the width) the ground should move between a
            frame and its neighbour; slow orbits look further for it.
        max_offset: the furthest neighbour, in clip frames.
    """

    side: int = 480
    target_motion: float = 0.03
    max_offset: int = 40


class WorkingClip:
    """The clip's frames in grey at the working resolution, converted on first use."""

    def __init__(self, frames: np.ndarray, side: int):
        self.frames = frames
        h, w = frames.shape[1:3]
        self.scale = min(1.0, side / max(h, w))
        self._grey: dict = {}
        self._small: dict = {}
        self._colour: dict = {}

    def __len__(self) -> int:
        return len(self.frames)

    def grey(self, i: int) -> np.ndarray:
        if i not in self._grey:
            self._grey[i] = cv2.cvtColor(self.colour(i), cv2.COLOR_RGB2GRAY)
        return self._grey[i]

    def colour(self, i: int) -> np.ndarray:
        """The RGB frame at the working resolution."""
        if i not in self._colour:
            f = self.frames[i]
            self._colour[i] = f if self.scale >= 1.0 else cv2.resize(f, None, fx=self.scale, fy=self.scale,
                                                                      interpolation=cv2.INTER_AREA)
        return self._colour[i]

    def small(self, i: int) -> np.ndarray:
        """The working frame at 1/``SEARCH_SCALE`` size: enough to tell how far the ground moved."""
        if i not in self._small:
            self._small[i] = cv2.resize(self.grey(i), None, fx=1 / SEARCH_SCALE, fy=1 / SEARCH_SCALE,
                                        interpolation=cv2.INTER_AREA)
        return self._small[i]


@dataclass(frozen=True)
class _Regions:
    """Where the ground and the backdrop are fitted (the centre, where the subject is, left out)."""

    ground: Tuple[np.ndarray, np.ndarray]  # (x, y) sample points
    backdrop: Tuple[np.ndarray, np.ndarray]
    band: int  # rows above this may be backdrop
    grid: np.ndarray  # (H, W, 2) pixel coordinates
    band_basis: np.ndarray  # (band, W, 7) the backdrop model's basis at every band pixel

    @classmethod
    def of(cls, h: int, w: int) -> "_Regions":
        rows, cols = np.mgrid[0:h, 0:w]
        centre = (cols > 0.25 * w) & (cols < 0.75 * w) & (rows > 0.15 * h) & (rows < 0.85 * h)
        ground = (rows >= 0.5 * h) & ~centre
        backdrop = (rows < 0.38 * h) & ~((cols > 0.3 * w) & (cols < 0.7 * w))
        gy, gx = np.nonzero(ground[::4, ::4])
        by, bx = np.nonzero(backdrop[::3, ::3])
        grid = np.stack([cols, rows], -1).astype(np.float32)
        band = int(0.42 * h)
        g = grid[:band].astype(np.float64)
        return cls((gx * 4, gy * 4), (bx * 3, by * 3), band, grid, _basis(g[..., 0], g[..., 1], w, h))


_DIS: Optional[cv2.DISOpticalFlow] = None
_K5 = np.ones((5, 5), np.uint8)
_DISC5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
#: grey levels a backdrop pixel may differ from its match (noise, compression, exposure drift)
PHOTO_TOLERANCE = 16
#: the relative parallax given to a pixel that neither the ground nor the backdrop explains
UNEXPLAINED = 2.0
#: grey levels added to each channel before its hue (chromaticity) is taken
CHROMA_OFFSET = 8.0
#: hue difference (sum over r, g, b of |chromaticity difference|, x 255) under which two pixels share a hue
SAME_HUE = 6.0
#: brightness ratios within (STILL_GAIN, 1 / STILL_GAIN) are the same brightness ...
STILL_GAIN = 0.93
#: ... and beyond (SHADOW_GAIN, 1 / SHADOW_GAIN) a shadow came or went
SHADOW_GAIN = 0.85
#: the least area (fraction of the frame) of a region taken for a shadow that moved
SHADOW_AREA = 0.004
#: the search for a neighbour measures the ground's motion on frames this many times smaller
#: (a quarter of the cost) and computes the full flow only from where that reads at least
#: ``SEARCH_MARGIN`` of the target
SEARCH_SCALE = 2
SEARCH_MARGIN = 0.75
#: full-size flows measured before the half-size one's reading is trusted alone
CALIBRATION_PAIRS = 4


def _dis() -> cv2.DISOpticalFlow:
    global _DIS
    if _DIS is None:
        _DIS = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _DIS


def shifted_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow a -> b, started at the global shift found by phase correlation."""
    h, w = a.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    (tx, ty), _ = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32), window)
    shift = np.float32([[1, 0, tx], [0, 1, ty]])
    b_shifted = cv2.warpAffine(b, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    return _dis().calc(a, b_shifted, None) + np.float32([tx, ty])


def homography_flow(H: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The flow (H, W, 2) that the homography ``H`` gives each pixel of ``grid``."""
    h, w = grid.shape[:2]
    return cv2.perspectiveTransform(grid.reshape(1, -1, 2), H).reshape(h, w, 2) - grid


def _sampled(flow: np.ndarray, pts: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = pts
    p = np.stack([xs, ys], 1).astype(np.float32)
    return p, p + flow[ys, xs]


def _basis(x: np.ndarray, y: np.ndarray, w: int, h: int) -> np.ndarray:
    # cubic across the image (a cylinder's depth changes along it), quadratic down it
    u, v = x / w - 0.5, y / h - 0.5
    return np.stack([np.ones_like(u), u, u * u, u ** 3, v, u * v, v * v], -1)


def backdrop_residual(a: np.ndarray, b: np.ndarray, flow: np.ndarray, regions: _Regions) -> np.ndarray:
    """How far ``flow`` (a -> b) is from a smooth flow fitted (robustly) on the backdrop band's
    sides; infinite below the band and where ``b`` moved by the smooth flow does not look like
    ``a`` (a plain surface can take the backdrop's motion in the flow without moving with it)."""
    h, w = flow.shape[:2]
    xs, ys = regions.backdrop
    A = _basis(xs.astype(np.float64), ys.astype(np.float64), w, h)
    F = flow[ys, xs].astype(np.float64)
    keep = np.ones(len(xs), bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(A[keep], F[keep], rcond=None)
        r = np.linalg.norm(A @ coef - F, axis=1)
        keep = r < max(0.5, 2.5 * float(np.median(r[keep])))
    band = regions.band
    model = (regions.band_basis @ coef).astype(np.float32)
    out = np.full((h, w), np.inf, np.float32)
    out[:band] = np.linalg.norm(flow[:band] - model, axis=-1)
    g = regions.grid[:band]
    moved = cv2.remap(b, g[..., 0] + model[..., 0], g[..., 1] + model[..., 1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)
    differs = _tolerant_diff(a[:band], _gain_matched(moved, a[:band])) > PHOTO_TOLERANCE
    out[:band][differs] = np.inf
    return out


def _gain_matched(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``b`` scaled to ``a``'s median brightness (exposure ramps and flicker change it)."""
    gain = (float(np.median(a[::4, ::4])) + 1.0) / (float(np.median(b[::4, ::4])) + 1.0)
    return b if abs(gain - 1.0) < 0.01 else cv2.convertScaleAbs(b, alpha=gain)


def _tolerant_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far ``a`` lies outside the 5x5 min..max of ``b``, per pixel (uint8): a model
    that is off by a pixel or two at a window's edge still explains it."""
    return cv2.max(cv2.subtract(a, cv2.dilate(b, _K5)), cv2.subtract(cv2.erode(b, _K5), a))


def plane_parallax(a: np.ndarray, b: np.ndarray, flow: np.ndarray, regions: _Regions, *,
                   check_occlusion: bool) -> Optional[Tuple[np.ndarray, float, np.ndarray]]:
    """Relative parallax of ``a``'s pixels seen from ``b``, the ground's motion (pixels), and
    the ground's homography (``a``'s pixel ``x`` shows the ground point that ``b`` shows at
    ``H x``).

    Returns None when no ground homography fits the flow.
    """
    h, w = a.shape
    ground, q = _sampled(flow, regions.ground)
    H, _ = cv2.findHomography(ground, q, cv2.RANSAC, 2.0, maxIters=2000)
    if H is None:
        return None
    b_ground = cv2.warpPerspective(b, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REPLICATE)
    rest = _dis().calc(a, b_ground, None)
    band = regions.band
    # near the horizon the ground warp stretches far ground over everything, and the flow
    # between a plain surface and that stretch can come out small: there the ground must
    # also look the same once warped
    ground_differs = _tolerant_diff(a[:band], _gain_matched(b_ground[:band], a[:band])) > PHOTO_TOLERANCE
    occluded = None
    if check_occlusion:
        back = _dis().calc(b_ground, a, None)
        g = regions.grid
        there = cv2.remap(back, g[..., 0] + rest[..., 0], g[..., 1] + rest[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
        # a pixel that b does not show has a flow that does not come back; the subject's own
        # large parallax is measured less exactly, hence the relative allowance
        occluded = np.linalg.norm(rest + there, axis=-1) > 1.5 + 0.5 * np.linalg.norm(rest, axis=-1)
    p, q = _sampled(rest, regions.ground)
    H_fix, _ = cv2.findHomography(p, q, cv2.RANSAC, 0.7, maxIters=2000)
    if H_fix is not None:
        rest = rest - homography_flow(H_fix, regions.grid)
        H = H @ H_fix
    on_ground = np.linalg.norm(rest, axis=-1)
    on_ground[:band][ground_differs] = np.inf
    residual = np.minimum(on_ground, backdrop_residual(a, b, flow, regions))
    moved = float(np.median(np.linalg.norm(cv2.perspectiveTransform(ground[None], H)[0] - ground, axis=1)))
    # explained by neither model, by flow or by look: it stands off the ground
    residual[~np.isfinite(residual)] = UNEXPLAINED * max(moved, 1.0)
    if occluded is not None:
        residual[occluded] = 0.0
    return residual / max(moved, 1.0), moved, H


@dataclass(frozen=True)
class GroundLook:
    """How a frame's pixels look next to a neighbour's seen through the ground homography
    (bool maps, working resolution).

    Attributes:
        still: the same hue and brightness: the ground, and shadows that stay where they are.
        moved_shadow: the same hue, another brightness: a shadow that slid over the ground.
    """

    still: np.ndarray
    moved_shadow: np.ndarray

    def __or__(self, other: "GroundLook") -> "GroundLook":
        return GroundLook(self.still | other.still, self.moved_shadow | other.moved_shadow)


def ground_look(a: np.ndarray, b: np.ndarray, H: np.ndarray) -> GroundLook:
    """Compare ``a`` (RGB) with ``b`` seen through the ground homography ``H``, pixel by pixel.

    The parallax comes from a flow, which smooths over a few pixels: the evidence bleeds
    from the subject onto the ground next to it, and a cast shadow there joins the subject.
    The look is sharp to the pixel. A shadow scales a colour; it does not change its hue. So
    ground that looks the same once warped (a shadow included) is ground; and where the
    light moves, its shadow slides over the ground, which the flow reads as standing up, but
    the hue still matches. The frame's overall gain is divided out first (exposure ramps and
    flicker scale everything). The subject's own foot has next to no parallax and can look
    the same: the snap only uses this outside the parallax mask, and for shadows inside it.
    """
    h, w = a.shape[:2]
    b_ground = cv2.warpPerspective(b, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REPLICATE)
    # the offset keeps near-black pixels (noise over almost nothing) from reading as any hue
    ca = a.astype(np.float32) + CHROMA_OFFSET
    cb = b_ground.astype(np.float32) + CHROMA_OFFSET
    sa, sb = ca.sum(axis=-1, keepdims=True), cb.sum(axis=-1, keepdims=True)
    same_hue = np.abs(ca / sa - cb / sb).sum(axis=-1) * 255.0 < SAME_HUE
    ratio = (sa / sb)[..., 0]
    ratio /= float(np.median(ratio[::4, ::4]))
    still = same_hue & (ratio > STILL_GAIN) & (ratio < 1.0 / STILL_GAIN)
    moved = same_hue & ((ratio < SHADOW_GAIN) | (ratio > 1.0 / SHADOW_GAIN))
    # ground and shadows are regions; specks are a texture's spots landing on others of their hue
    still, moved = (cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, _DISC5) for m in (still, moved))
    # and a shadow is a large one: a subject's own pattern (dots, stripes) can also land on
    # spots of its hue and another brightness, in patches larger than the opening
    n, labels, stats, _ = cv2.connectedComponentsWithStats(moved)
    large = stats[:, cv2.CC_STAT_AREA] >= SHADOW_AREA * h * w
    large[0] = False
    return GroundLook(still > 0, large[labels])


def offsets(params: ParallaxParams) -> List[int]:
    """The neighbour offsets tried, nearest first: every frame up to 4, then 25% further each."""
    out, offset = [], 0
    while offset < params.max_offset:
        offset = offset + 1 if offset < 4 else int(round(offset * 1.25))
        out.append(offset)
    return out


def first_reaching(n: int, reaches: Callable[[int], bool], hint: int) -> Tuple[int, bool]:
    """The first of ``0..n-1`` where ``reaches`` (true from some point on) holds, found by
    walking from ``hint``: (index, whether it holds there; if it never does, the last index)."""
    i = min(max(hint, 0), n - 1)
    if reaches(i):
        while i > 0 and reaches(i - 1):
            i -= 1
        return i, True
    while i < n - 1:
        i += 1
        if reaches(i):
            return i, True
    return i, False


class _Calibration:
    """How the half-size flow's reading of the ground's motion compares with the full one's,
    in this clip (full / half-size, one ratio per pair measured both ways)."""

    def __init__(self) -> None:
        self.ratios: List[float] = []

    def add(self, full: float, coarse: float) -> None:
        if coarse > 0.1:
            self.ratios.append(full / coarse)

    def predict(self, coarse: float) -> Optional[float]:
        """The full reading expected from a half-size one; None until enough pairs were measured."""
        if len(self.ratios) < CALIBRATION_PAIRS:
            return None
        return coarse * float(np.median(self.ratios[-4 * CALIBRATION_PAIRS:]))


def _neighbour(clip: WorkingClip, s: int, step: int, regions: _Regions, params: ParallaxParams, hint: int,
               calibration: _Calibration) -> Optional[Tuple[int, np.ndarray, float, int]]:
    """The nearest frame on one side where the ground moved ``target_motion`` of the width,
    else the furthest one tried: (index, flow, ground motion in pixels, position in
    :func:`offsets`). The walk starts at ``hint``, the position the previous sampled frame
    found (the orbit's speed changes slowly), instead of at the nearest frame."""
    w = clip.grey(s).shape[1]
    target = params.target_motion * w
    tried = [o for o in offsets(params) if 0 <= s + step * o < len(clip)]
    if not tried:
        return None
    sh, sw = clip.small(s).shape
    coarse_pts = (np.minimum(regions.ground[0] // SEARCH_SCALE, sw - 1),
                  np.minimum(regions.ground[1] // SEARCH_SCALE, sh - 1))
    full: dict = {}
    coarse: dict = {}

    def coarse_reading(k: int) -> float:
        if k not in coarse:
            j = s + step * tried[k]
            coarse[k] = SEARCH_SCALE * _ground_motion(shifted_flow(clip.small(s), clip.small(j)), coarse_pts)
        return coarse[k]

    def measured(k: int) -> Tuple[np.ndarray, float]:
        if k not in full:
            flow = shifted_flow(clip.grey(s), clip.grey(s + step * tried[k]))
            full[k] = (flow, _ground_motion(flow, regions.ground))
            calibration.add(full[k][1], coarse_reading(k))
        return full[k]

    def reaches(k: int) -> bool:
        # the half-size flow reads the motion low by up to a fifth: once this clip has shown
        # by how much, its reading decides; before, it only spares the full flow far below
        # the target
        expected = calibration.predict(coarse_reading(k))
        if expected is not None:
            return expected >= target
        if coarse_reading(k) < SEARCH_MARGIN * target:
            return False
        return measured(k)[1] >= target

    k, _ = first_reaching(len(tried), reaches, hint)
    flow, moved = measured(k)
    return s + step * tried[k], flow, moved, k


def _ground_motion(flow: np.ndarray, pts: Tuple[np.ndarray, np.ndarray]) -> float:
    """The median flow length at the ground's sample points."""
    xs, ys = pts
    return float(np.median(np.linalg.norm(flow[ys, xs], axis=1)))


@dataclass(frozen=True)
class FrameEvidence:
    """What a sampled frame's neighbours say about each of its pixels (working resolution).

    Attributes:
        parallax: relative parallax, float32 (about 0 on the ground and the backdrop).
        ground: :func:`ground_look`, true where either neighbour says so.
    """

    parallax: np.ndarray
    ground: GroundLook


def parallax_evidence(clip: WorkingClip, indices: List[int], params: ParallaxParams = ParallaxParams()
                      ) -> List[Optional[FrameEvidence]]:
    """The evidence of each frame in ``indices``; None for a frame with no usable neighbour."""
    h, w = clip.grey(indices[0]).shape
    regions = _Regions.of(h, w)
    out: List[Optional[FrameEvidence]] = []
    hints = {-1: 0, 1: 0}
    calibration = _Calibration()
    for s in indices:
        sides = []
        for step in (-1, 1):
            found = _neighbour(clip, s, step, regions, params, hints[step], calibration)
            if found is not None:
                hints[step] = found[3]
                sides.append(found[:3])
        enough = [n for n in sides if n[2] >= 0.5 * params.target_motion * w]
        if enough:
            # a side that barely moved (the orbit stops, or the clip ends) only adds noise
            sides = enough
        maps, looks = [], []
        for j, flow, _ in sides:
            got = plane_parallax(clip.grey(s), clip.grey(j), flow, regions, check_occlusion=len(sides) == 1)
            if got is not None:
                maps.append(got[0])
                looks.append(ground_look(clip.colour(s), clip.colour(j), got[2]))
        out.append(FrameEvidence(np.minimum.reduce(maps).astype(np.float32), functools.reduce(operator.or_, looks))
                   if maps else None)
    return out
