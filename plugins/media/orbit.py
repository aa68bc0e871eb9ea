"""THE orbit estimator: direction, speed, steadiness and kind of camera motion, from pixels.

No learned weights: dense optical flow on small frames, read for the parallax signature
of an orbit. A camera orbiting a subject while looking at it keeps the subject still in
the image, slides what lies behind the subject one way and what lies in front of it the
other way; a pan slides everything the same way; a static camera moves nothing.

Cues, per pair of consecutive frames (see :mod:`circle_rotate.media.orbit_flow`):

- *pivot*: the four centre cells, where turntable footage keeps its subject; an orbit
  leaves them nearly still.
- *far field*: the top-most textured row of cells, which in turntable footage lies behind
  the subject (backdrop, sky line, far floor). Far field minus pivot flow points right in
  an orbit to the right (the project's convention: the camera travels towards its own
  right, counter-clockwise seen from above) and left in an orbit to the left.
- *curl*: the floor turns around the subject (clockwise in the image for an orbit to the
  right); a second, independent vote.
- *border*: the frame's edge cells move whenever the camera does; a subject spinning on
  a turntable in front of a still camera moves none of them.

A clip is an orbit when the pivot moves much less than the far field moves relative to
it and the flow spreads across directions; a pan when everything shares one motion;
static when the border stands still; shaky when the whole frame jitters from one pair to
the next; cut when a pair cannot be explained by motion.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import List, Optional, Sequence

import numpy as np

from circle_rotate.media.orbit_flow import (GRID_COLS, GRID_ROWS, FlowEstimator, PairStats, affine_curl, analysis_grey,
                                      cell_centres, pair_stats, resize_flow)

MOTIONS = ("orbit", "pan", "static", "shaky", "cut")
DEFAULT_HFOV_DEG = 60.0  # a phone's main camera shooting video; only the speed scale depends on it

STATIC_DEG_S = 0.6  # camera turning slower than this is standing still
PIVOT_RATIO = 0.18  # |pivot - far| / (|pivot - far| + |pivot|): an orbit's pivot stays put
SPREAD_MIN = 0.4  # flow spread across cells relative to its median: a pan's is small
SHAKE_MIN = 0.0016  # frame-to-frame jitter, fraction of the width per frame...
SHAKE_REL = 0.12  # ...and relative to the frame motion (flow noise grows with speed)
CUT_FACTOR, CUT_MIN = 2.5, 12.0  # a pair's warp residual this many times the median (and grey levels)
LOOP_MIN_DEG = 300.0
#: A frame repeats the one before when they differ (mean grey levels, at analysis size) by less
#: than this fraction of the larger change next to it, and by less than :data:`REPEAT_MAX_LEVELS`:
#: re-encoded repeats differ by 0.0-1.2 levels (CRF 16-28), the moves beside them by ~13, while a
#: camera that slows down changes its differences gradually.
REPEAT_RATIO = 0.1
REPEAT_MAX_LEVELS = 2.0
REPEAT_REACH = 3  # pairs on each side looked at: a frame shown up to four times
REVERSAL_REACH = 3  # frames on each side of a turning point compared (see _retraces)
REVERSAL_MIRROR = 0.8


@dataclass(frozen=True)
class OrbitMeasurement:
    """What :func:`measure_orbit` found. Angles and speeds assume ``hfov_deg``.

    Attributes:
        motion: "orbit" | "pan" | "static" | "shaky" | "cut".
        direction: "right" | "left" | "none": for an orbit, the way the camera travels
            around the subject (right = counter-clockwise seen from above); for a pan,
            the way it turns; "none" when static.
        seen_from_above: "ccw" (orbit right) | "cw" (orbit left) | "none" (not an orbit).
        angular_speed_deg_s: mean turning speed of the camera, degrees per second: the
            flow, relative to the pivot, of the three cells moving fastest the orbit's way
            (the farthest content), divided by the focal length ``hfov_deg`` implies (for
            a pan, the median flow). Exact for content at infinity and the right field of
            view; low by about subject distance / far-field distance otherwise. On the
            synthetic orbits (backdrop ~5x the subject's distance, true field of view) it
            reads 0.6-0.95 of the true speed, median 0.8; a wrong ``hfov_deg`` scales it.
        speed_cv: standard deviation / mean of the per-pair speed (0 = perfectly steady).
        jerk: RMS of the speed's second difference divided by the mean speed, per frame
            squared (0 = constant acceleration; flow noise alone gives ~0.1-0.5).
        centre_offset: distance of the pivot (the cells that move least) from the frame
            centre, as a fraction of the frame (x by width, y by height); NaN when no pivot.
        loop_closure: for orbits of at least 300 degrees, the correlation (-1..1) of the
            last frame with the first; None otherwise.
        confidence: 0..1, how unanimously the frame pairs agree on the direction.
        reasons: plain-language notes behind the verdict.
        total_angle_deg: estimated angle turned over the clip.
        shake: frame-to-frame jitter, fraction of the frame width per frame.
        pivot_ratio: how still the pivot stays relative to the far field (1 = perfectly).
        reversal: for an orbit, the longest stretch over which the camera goes back, as a
            fraction of the way it goes forward over the clip (0 = never turns back; a clip
            played forward then backward reads about the share it plays backward).
    """

    motion: str
    direction: str
    seen_from_above: str
    angular_speed_deg_s: float
    speed_cv: float
    jerk: float
    centre_offset: float
    loop_closure: Optional[float]
    confidence: float
    reasons: tuple
    total_angle_deg: float = 0.0
    shake: float = 0.0
    pivot_ratio: float = 0.0
    reversal: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None, floats rounded to 4 decimals)."""
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, float):
                v = None if math.isnan(v) else round(v, 4)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out


def _nanmedian(x, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=axis)


def _top_row(u: np.ndarray) -> np.ndarray:
    """Per pair, the median flow of the top-most cell row with two textured cells."""
    out = np.full(len(u), np.nan)
    for i, grid in enumerate(u):
        for row in grid:
            if np.sum(~np.isnan(row)) >= 2:
                out[i] = _nanmedian(row)
                break
    return out


def _pivot(u: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """(pivot flow per pair, pivot offset from centre as a fraction of the frame).

    The pivot flow is read at the four centre cells, where turntable footage keeps its
    subject; the offset comes from the inner cells that move least over the clip.
    """
    r0, c0 = GRID_ROWS // 2 - 1, GRID_COLS // 2 - 1
    flow = np.nan_to_num(_nanmedian(u[:, r0:r0 + 2, c0:c0 + 2].reshape(len(u), -1), axis=1))
    stillness = _nanmedian(np.abs(u[:, 1:-1, 1:-1]), axis=0)
    if np.all(np.isnan(stillness)):
        return flow, float("nan")
    pick = np.argsort(np.where(np.isnan(stillness), np.inf, stillness).ravel())[:3]
    rows, cols = np.unravel_index(pick, stillness.shape)
    xx, yy = cell_centres(width, height)
    dx = float(np.mean(xx[rows + 1, cols + 1])) / 2
    dy = float(np.mean(yy[rows + 1, cols + 1])) * width / height / 2
    return flow, math.hypot(dx, dy)


def _far_speed(u: np.ndarray, pivot: np.ndarray, sign: float) -> np.ndarray:
    """Per pair, the mean of the three cells moving fastest in the orbit's direction
    relative to the pivot: the farthest content, whose flow approaches focal length x
    turning rate (content at infinity moves by exactly that)."""
    rel = ((u - pivot[:, None, None]) * sign).reshape(len(u), -1)
    top3 = np.sort(np.where(np.isnan(rel), -np.inf, rel), axis=1)[:, -3:]
    speed = np.mean(np.where(np.isinf(top3), 0.0, top3), axis=1)
    return np.clip(speed, 0, None)


def _spread(u: np.ndarray) -> float:
    vals = []
    for grid in u:
        g = grid[~np.isnan(grid)]
        if g.size >= 4:
            q10, q50, q90 = np.percentile(g, [10, 50, 90])
            vals.append((q90 - q10) / (q90 - q10 + abs(q50) + 1e-6))
    return float(np.median(vals)) if vals else 0.0


def _shake(v: np.ndarray, width: int) -> float:
    """Frame-to-frame jitter of the vertical motion, as a fraction of the width.

    Vertical only: an orbit or pan moves the frame smoothly sideways at any speed, and
    flow errors at high speed are mostly horizontal. A hand shakes the whole frame, so the
    jitter is measured in the top, middle and bottom thirds of the frame separately and
    the smallest counts: a repetitive floor pattern that fools the flow in one band does
    not make a clip shaky.
    """
    if len(v) < 5:
        return 0.0
    bands = np.array_split(np.arange(GRID_ROWS), 3)
    jitter = []
    for rows in bands:
        g = _nanmedian(v[:, rows, :].reshape(len(v), -1), axis=1)
        if np.mean(np.isnan(g)) > 0.5:
            continue  # an untextured band (sky, backdrop) tells nothing
        g = np.nan_to_num(g, nan=float(np.nanmedian(g)))
        smooth = np.convolve(np.pad(g, 2, mode="edge"), np.ones(5) / 5, "valid")
        jitter.append(1.4826 * np.median(np.abs(g - smooth)))
    return float(min(jitter)) / width if jitter else 0.0


def _border_motion(u: np.ndarray, v: np.ndarray) -> float:
    """Typical flow length (px per frame) of the cells on the frame's border."""
    ring = np.ones((GRID_ROWS, GRID_COLS), bool)
    ring[1:-1, 1:-1] = False
    length = np.hypot(u[:, ring], v[:, ring])
    value = _nanmedian(_nanmedian(length, axis=1))
    return 0.0 if np.isnan(value) else float(value)


def _grey_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def _retraces(frames: Sequence[np.ndarray], start: int, stop: int) -> bool:
    """Whether the camera, going back from frame ``start`` to frame ``stop``, retraces its path.
    At a turning point t, a frame a few steps into the run going back shows a view the camera
    passed on the other side of t: it is closer to one of those frames than to frame t itself.
    Without a turn it moves away from t, and the frames beyond t are farther still (ratio > 1);
    with one the ratio is ~0 for an exact retrace and ~0.3-0.6 coming back at another speed."""
    n = len(frames)
    for t, side, room in ((start, 1, start), (stop, -1, n - 1 - stop)):  # the run lies after start, before stop
        j = min(REVERSAL_REACH, stop - start)
        if room < 1 or j < 1:
            continue
        leg = frames[t + side * j]
        passed = min(_grey_distance(leg, frames[t - side * k]) for k in range(1, min(2 * REVERSAL_REACH, room) + 1))
        if passed < REVERSAL_MIRROR * _grey_distance(leg, frames[t]):
            return True
    return False


def _reversal(rel: np.ndarray, sign: float, frames: Optional[Sequence[np.ndarray]]) -> float:
    """The largest run of going back (far-field parallax against the orbit's direction),
    summed over its pairs, over all the going forward: a run, so flow noise scattered over
    single pairs counts for little, and a share, so it holds at any speed. The parallax alone
    misreads some stretches of hard footage (a subject that drifts, a bare backdrop), so a run
    counts only where the frames show the camera retracing its path (:func:`_retraces`);
    without ``frames`` nothing counts."""
    ahead = np.asarray(rel, float) * sign
    forward = float(np.sum(np.clip(ahead, 0, None)))
    if frames is None or forward <= 0:
        return 0.0
    worst, start, back = 0.0, None, 0.0
    for i, x in enumerate([*ahead, 0.0]):  # pair i goes from frames[i] to frames[i + 1]
        if x < 0:
            start, back = (i if start is None else start), back - x
            continue
        if start is not None and back > worst * forward and _retraces(frames, start, i):
            worst = back / forward
        start, back = None, 0.0
    return worst


def _cut_pairs(residual: np.ndarray) -> List[int]:
    if len(residual) == 0:
        return []
    limit = max(CUT_FACTOR * float(np.median(residual)), CUT_MIN)
    return [int(i) for i in np.nonzero(residual > limit)[0]]


def _loop_closure(first: np.ndarray, last: np.ndarray) -> float:
    a = first.astype(np.float64).ravel() - first.mean()
    b = last.astype(np.float64).ravel() - last.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def _speed_stats(speed: np.ndarray) -> tuple[float, float]:
    """(speed_cv, jerk); NaN (None in results) where too few pairs define them: a two-frame
    video's 0.0 would enter a comparison's means as a perfectly steady orbit."""
    mean = float(np.mean(speed)) if len(speed) else 0.0
    cv = float(np.std(speed) / mean) if len(speed) >= 2 and mean > 0 else (0.0 if len(speed) >= 2 else math.nan)
    jerk = float(np.sqrt(np.mean(np.diff(speed, 2) ** 2)) / mean) if len(speed) >= 3 and mean > 0 else (
        0.0 if len(speed) >= 3 else math.nan)
    return cv, jerk


def measure_orbit(frames: np.ndarray, *, fps: float, flows: Optional[Sequence[np.ndarray]] = None,
                  hfov_deg: float = DEFAULT_HFOV_DEG) -> OrbitMeasurement:
    """Measure the camera motion of a clip.

    Args:
        frames: (T, H, W, 3) RGB or (T, H, W) grey uint8 frames, any resolution (they
            are analysed at 160 px on the long side); T >= 2. Already-prepared analysis
            frames (:func:`circle_rotate.media.orbit_flow.analysis_grey`) are used as they are.
        fps: frame rate, for speeds in degrees per second.
        flows: optional precomputed dense flows, ``flows[i]`` from frame i to frame i+1
            (T - 1 of them, (h, w, 2) float, (dx, dy) in pixels of their own resolution,
            e.g. Farneback at full size). They are rescaled to the analysis size and used
            for each pair where they explain the frames better (smaller warp residual)
            than the estimator's own flow, which costs ~1 ms a pair at analysis size.
        hfov_deg: the camera's horizontal field of view (only scales speeds and angles).

    Returns:
        An :class:`OrbitMeasurement`.

    Raises:
        ValueError: not uint8, fewer than 2 frames, smaller than 16 px, or a ``flows``
            count that does not match.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or len(frames) < 2 or frames.dtype != np.uint8:
        raise ValueError(f"measure_orbit needs (T, H, W[, 3]) uint8 frames with T >= 2, got {frames.dtype} "
                         f"{frames.shape}")
    if min(frames.shape[1:3]) < 16:
        raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} are too small to measure (16 px at least)")
    if flows is not None and len(flows) != len(frames) - 1:
        raise ValueError(f"flows must hold T - 1 = {len(frames) - 1} flows, got {len(flows)}")
    grey = [analysis_grey(f) for f in frames]
    h, w = grey[0].shape
    # A frame that repeats the one before (a 16 fps clip converted to 32 fps) carries no motion:
    # measure between the distinct frames, at the rate they come at. The flow from the last
    # repeat of a run to the next frame is that pair's own flow.
    ends = distinct_frame_ends(grey)
    repeats = len(grey) - len(ends)
    if repeats and len(ends) >= 2:
        fps = fps * (len(ends) - 1) / (ends[-1] - ends[0])  # ends rise: two of them span a frame at least
    else:
        ends, repeats = list(range(len(grey))), 0
    flow_of = FlowEstimator()
    stats = []
    for i, j in zip(ends[:-1], ends[1:]):
        a, b = grey[i], grey[j]
        own = pair_stats(a, b, flow_of(a, b))
        if flows is not None and j == i + 1:
            # Full-size flows lose track of fast motion (Farneback's pyramid is too shallow for
            # tens of pixels a frame), so each pair keeps whichever flow explains it better.
            given = pair_stats(a, b, resize_flow(flows[i], (w, h)))
            own = given if given.residual <= own.residual else own
        stats.append(own)
    m = classify_pairs(stats, width=w, height=h, fps=fps, hfov_deg=hfov_deg, first=grey[0], last=grey[-1],
                       frames=[grey[i] for i in ends])
    if repeats:
        m = replace(m, reasons=m.reasons + (f"{repeats} of {len(grey)} frames repeat the one before (a frame-rate "
                                            f"conversion): measured on the {len(ends)} distinct ones",))
    return m


def distinct_frame_ends(grey: Sequence[np.ndarray]) -> List[int]:
    """The index of the last frame of each run of repeated frames (a frame and the ones that
    repeat it: :data:`REPEAT_RATIO`)."""
    diffs = [float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(grey[:-1], grey[1:])]
    ends = []
    for i, d in enumerate(diffs):
        # up to three on each side: a run of repeats at the clip's start has no move before it
        beside = max(diffs[max(0, i - REPEAT_REACH):i] + diffs[i + 1:i + 1 + REPEAT_REACH], default=0.0)
        if not d < min(REPEAT_MAX_LEVELS, REPEAT_RATIO * beside):
            ends.append(i)
    return ends + [len(grey) - 1]


def classify_pairs(stats: Sequence[PairStats], *, width: int, height: int, fps: float, hfov_deg: float = DEFAULT_HFOV_DEG,
                   first: Optional[np.ndarray] = None, last: Optional[np.ndarray] = None,
                   frames: Optional[Sequence[np.ndarray]] = None) -> OrbitMeasurement:
    """The decision part of :func:`measure_orbit`, on per-pair summaries already computed
    (``prepare`` computes them while it decodes). ``frames``: the analysis frames the pairs
    join (``stats[i]`` from ``frames[i]`` to ``frames[i + 1]``), to confirm a turn back; without
    them ``reversal`` reads 0."""
    u = np.stack([s.u for s in stats])
    v = np.stack([s.v for s in stats])
    focal = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    to_deg_s = fps * 180 / math.pi / focal
    far = np.nan_to_num(_top_row(u))
    pivot, offset = _pivot(u, width, height)
    rel = far - pivot  # far field relative to the pivot: + in an orbit right
    curl = affine_curl(_nanmedian(u, axis=0), _nanmedian(v, axis=0), width, height)
    glob_u = np.nan_to_num(_nanmedian(u.reshape(len(u), -1), axis=1))
    reasons: List[str] = []
    shake = _shake(v, width)
    cuts = _cut_pairs(np.array([s.residual for s in stats]))
    border = _border_motion(u, v)
    moving = border * to_deg_s  # a subject turning on a turntable moves no border
    pivot_ratio = abs(np.median(rel)) / (abs(np.median(rel)) + abs(np.median(pivot)) + 1e-9)
    is_orbit = pivot_ratio >= PIVOT_RATIO and _spread(u) >= SPREAD_MIN
    if is_orbit:
        sign = np.sign(np.median(rel)) or np.sign(curl) or 1.0
        votes = np.sign(rel) if abs(np.median(rel)) > 1e-3 else np.full(len(rel), sign)
        speed = _far_speed(u, pivot, sign) * to_deg_s
        if np.sign(curl) not in (0, sign):
            reasons.append("floor rotation disagrees with the far-field parallax")
    else:
        votes = -np.sign(glob_u)  # a scene sliding left means the camera turns right
        sign = np.sign(np.median(-glob_u)) or 1.0
        speed = np.abs(glob_u) * to_deg_s
    direction = "right" if sign > 0 else "left"
    confidence = max(0.0, 2 * float(np.mean(votes == sign)) - 1)
    if cuts:
        motion = "cut"
        reasons.append(f"content jumps between frames {cuts[0]} and {cuts[0] + 1}")
    elif shake >= max(SHAKE_MIN, SHAKE_REL * border / width):
        motion = "shaky"
        reasons.append(f"frame-to-frame jitter {shake:.2%} of the width")
    elif moving < STATIC_DEG_S:
        motion, direction, confidence = "static", "none", 0.0
        reasons.append("the background does not move")
    elif is_orbit:
        motion = "orbit"
        reasons.append(f"subject still while the background slides {'right' if sign > 0 else 'left'}")
    else:
        motion = "pan"
        reasons.append("everything moves together; no still subject" if pivot_ratio < PIVOT_RATIO
                       else "little depth parallax")
    mean_speed = float(np.mean(speed)) if len(speed) else 0.0
    cv, jerk = _speed_stats(speed)
    total = mean_speed * len(stats) / fps
    loop = _loop_closure(first, last) if motion == "orbit" and total >= LOOP_MIN_DEG and first is not None else None
    return OrbitMeasurement(
        motion=motion, direction=direction, seen_from_above={"right": "ccw", "left": "cw"}[direction]
        if motion == "orbit" else "none", angular_speed_deg_s=mean_speed if motion != "static" else 0.0,
        speed_cv=cv, jerk=jerk, centre_offset=offset if motion == "orbit" else float("nan"), loop_closure=loop,
        confidence=confidence, reasons=tuple(reasons), total_angle_deg=total if motion != "static" else 0.0,
        shake=shake, pivot_ratio=float(pivot_ratio), reversal=_reversal(rel, sign, frames) if motion == "orbit" and frames is not None and len(frames) == len(stats) + 1
        else 0.0)
