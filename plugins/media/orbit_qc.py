"""Orbit QC policy: which measured clips ``prepare`` keeps (``--qc strict|lenient|off``).

- ``strict``: only clean orbits: motion "orbit", a clear direction, no turning back,
  steady speed, no jerks, subject near the centre, no repeated frames.
- ``lenient``: everything with camera motion and no cut; what strict would have
  rejected is kept with "warning:" reasons.
- ``off``: keep everything (still measured and recorded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Sequence, Tuple

if TYPE_CHECKING:  # the measurement imports cv2; the CLI reads QC_MODES at start-up without it
    from circle_rotate.media.orbit import OrbitMeasurement

QC_MODES = ("strict", "lenient", "off")


@dataclass(frozen=True)
class QcLimits:
    """Strict limits (synthetic constant-speed orbits measure speed_cv ~0.05-0.3 and jerk
    ~0.1-1; ease-in/out orbits speed_cv ~0.5-0.7)."""

    min_confidence: float = 0.5
    max_speed_cv: float = 0.8
    max_jerk: float = 2.0
    max_centre_offset: float = 0.35
    max_reversal: float = 0.05  # a clean orbit reads 0-0.01; a clip played back and forth, its backward share


def strict_failures(m: OrbitMeasurement, *, notes: Sequence[str] = (), limits: QcLimits = QcLimits()) -> List[str]:
    """Every strict check a measurement fails, in words."""
    out = []
    if m.motion != "orbit":
        why = f" ({m.reasons[0]})" if m.reasons else ""
        out.append(f"not an orbit: {m.motion}{why}")
    else:
        if m.confidence < limits.min_confidence:
            out.append(f"direction unclear (confidence {m.confidence:.2f} < {limits.min_confidence})")
        if m.speed_cv > limits.max_speed_cv:
            out.append(f"unsteady speed (speed_cv {m.speed_cv:.2f} > {limits.max_speed_cv})")
        if m.reversal > limits.max_reversal:
            out.append(f"the camera turns back ({m.reversal:.0%} of the way it goes forward)")
        if m.jerk > limits.max_jerk:
            out.append(f"jerky motion (jerk {m.jerk:.2f} > {limits.max_jerk})")
        if not math.isnan(m.centre_offset) and m.centre_offset > limits.max_centre_offset:
            out.append(f"subject off-centre (offset {m.centre_offset:.2f} > {limits.max_centre_offset})")
    out.extend(notes)
    return out


def qc_verdict(m: OrbitMeasurement, *, mode: str, notes: Sequence[str] = (),
               limits: QcLimits = QcLimits()) -> Tuple[str, Tuple[str, ...]]:
    """("accept" | "reject", reasons) for a clip under ``mode``.

    Args:
        m: the clip's orbit measurement.
        mode: "strict", "lenient" or "off".
        notes: problems found outside the measurement (e.g. repeated frames); strict
            rejects on them, lenient reports them.
        limits: strict limits.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in QC_MODES:
        raise ValueError(f"qc mode must be one of {QC_MODES}, not {mode!r}")
    failures = strict_failures(m, notes=notes, limits=limits)
    if mode == "off":
        return "accept", tuple(f"warning: {f}" for f in failures)
    if mode == "strict":
        return ("reject" if failures else "accept"), tuple(failures)
    if m.motion in ("static", "cut"):
        return "reject", tuple(failures)
    return "accept", tuple(f"warning: {f}" for f in failures)
