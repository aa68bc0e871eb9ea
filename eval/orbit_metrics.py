"""Orbit metrics: direction, angular speed and its steadiness, smoothness, loop closure, and
whether the camera orbits, pans or stands still.

All of it is :func:`circle_rotate.media.orbit.measure_orbit`, the estimator the dataset tools
use to check training clips, on its own flow of 160-pixel frames. It is not fed the full-size
Farneback flows other metrics share: with the reference's window (15 px) those under-read motion
at 1080p (1.25 px a frame for a true 4 on fine texture) and turned an orbit into a pan the other
way at confidence 1, and its own flow costs a few milliseconds a clip.
"""

from __future__ import annotations

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


def compute_orbit(ctx: EvalContext) -> MetricResult:
    """Camera motion of the clip as :func:`circle_rotate.media.orbit.measure_orbit` measures it."""
    clip = ctx.clip
    m = measure_orbit(clip.grey, fps=clip.fps).to_dict()
    values = {col: m.get(field) for field, col in COLUMNS.items()}
    return MetricResult(values, notes=tuple(f"orbit: {r}" for r in m.get("reasons", ())))
