"""Orbit metrics: direction, angular speed and its steadiness, smoothness, loop closure, and
whether the camera orbits, pans or stands still.

All of it is :func:`circle_rotate.media.orbit.measure_orbit`, the estimator the dataset tools
use to check training clips; this module only feeds it the clip and, when motion
magnitude already computed them, the shared consecutive Farneback flows.
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
    "loop_closure": "loop_closure",
    "total_angle_deg": "total_angle_deg",
    "confidence": "orbit_confidence",
}


def compute_orbit(ctx: EvalContext) -> MetricResult:
    """Camera motion of the clip as :func:`circle_rotate.media.orbit.measure_orbit` measures it."""
    clip = ctx.clip
    pairs = range(clip.count - 1)
    # Reuse full-size flows only when another metric paid for them; the estimator's own
    # flow on 160-pixel frames costs far less than computing full-size ones for it.
    flows = [ctx.flows.get(i, i + 1) for i in pairs] if all(ctx.flows.has(i, i + 1) for i in pairs) else None
    m = measure_orbit(clip.grey, fps=clip.fps, flows=flows).to_dict()
    values = {col: m.get(field) for field, col in COLUMNS.items()}
    return MetricResult(values, notes=tuple(f"orbit: {r}" for r in m.get("reasons", ())))
