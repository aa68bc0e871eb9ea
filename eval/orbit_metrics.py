"""Orbit metrics: direction, angular speed and its steadiness, smoothness, loop closure, and
whether the camera orbits, pans or stands still.

All of it is :func:`circle_rotate.media.orbit.measure_orbit`, the estimator the dataset tools
use to check training clips, on its own flow of 160-pixel frames. It is not fed the full-size
Farneback flows other metrics share: with the reference's window (15 px) those under-read motion
at 1080p (1.25 px a frame for a true 4 on fine texture) and turned an orbit into a pan the other
way at confidence 1, and its own flow costs a few milliseconds a clip.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from circle_rotate.eval.context import EvalContext, MetricResult
from circle_rotate.media.orbit import measure_orbit

#: OrbitMeasurement field -> result column.
COLUMNS = {
    "motion": "orbit_motion",
    "direction": "orbit_direction",
    "seen_from_above": "seen_from_above",
    "angular_speed_deg_s": "angular_speed_deg_s",
    "speed_cv": "speed_cv",
    "jerk": "jerk",
    "reversal": "orbit_reversal",
    "loop_closure": "loop_closure",
    "total_angle_deg": "total_angle_deg",
    "confidence": "orbit_confidence",
}


#: Fewer distinct frames than this give one or two flows: a direction and a speed, but nothing
#: that tells an orbit from noise or a skipped stretch.
MIN_DISTINCT_FRAMES = 4
#: Degrees a frame (at the 60 degree field of view) beyond which the frames are too far apart to
#: follow: a tenth of the picture a frame; generated orbits turn about 1 degree a frame.
MAX_DEG_PER_FRAME = 6.0
#: The confidence a reading gets when either holds.
DOUBTFUL_CONFIDENCE = 0.25
#: Grey levels (mean absolute difference) a frame must differ from the one before to count as new.
NEW_FRAME = 0.5


def distinct_frames(grey: np.ndarray) -> int:
    """How many frames of ``grey`` (T, H, W) differ from the one before (the first counts): a clip
    resampled to a higher rate repeats its frames."""
    small = grey[:, ::4, ::4].astype(np.int16)
    steps = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2)) if len(small) > 1 else np.zeros(0)
    return 1 + int(np.count_nonzero(steps > NEW_FRAME))


def doubt(distinct: int, deg_per_frame: float) -> Optional[str]:
    """Why an orbit reading cannot be trusted whatever its frames agree on; None when it can."""
    if distinct < MIN_DISTINCT_FRAMES:
        return (f"only {distinct} distinct frame(s): direction and speed rest on {max(distinct - 1, 0)} step(s), "
                f"confidence capped at {DOUBTFUL_CONFIDENCE}")
    if deg_per_frame > MAX_DEG_PER_FRAME:
        return (f"{deg_per_frame:.1f} degrees a frame is more than frames this far apart can show (frames skipped?), "
                f"confidence capped at {DOUBTFUL_CONFIDENCE}")
    return None


def compute_orbit(ctx: EvalContext) -> MetricResult:
    """Camera motion of the clip as :func:`circle_rotate.media.orbit.measure_orbit` measures it,
    its confidence capped where the clip is too short or its frames too far apart (:func:`doubt`)."""
    clip = ctx.clip
    m = measure_orbit(clip.grey, fps=clip.fps).to_dict()
    values = {col: m.get(field) for field, col in COLUMNS.items()}
    notes = [f"orbit: {r}" for r in m.get("reasons", ())]
    speed = values.get("angular_speed_deg_s") or 0.0
    why = doubt(distinct_frames(clip.grey), speed / clip.fps if clip.fps > 0 else 0.0)
    if why and values.get("orbit_motion") != "static":
        values["orbit_confidence"] = min(values.get("orbit_confidence") or 0.0, DOUBTFUL_CONFIDENCE)
        notes.append(f"orbit: {why}")
    return MetricResult(values, notes=tuple(notes))
